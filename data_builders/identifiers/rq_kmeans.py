"""Residual k-means (RQ-KMeans): the OpenOneRec way to turn embeddings into semantic IDs.

Level 1 clusters the embeddings; level l clusters what is left after subtracting the
centroid chosen at level l-1. An item's SID is its centroid index at each level, so items
that share a prefix are close in embedding space. faiss does the k-means (trained on a
sample when the catalogue is large) and the nearest-centroid search (in batches, float32),
which keeps 1M x 384 inside a few GB.

`balanced=True` caps each centroid at ~n/K items (capacity-constrained greedy assignment
plus centroid updates), which spreads items over the codebook and lowers collisions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import faiss
import numpy as np

from data_builders.identifiers.embed import check_finite

logger = logging.getLogger(__name__)


def nearest(
    x: np.ndarray, centroids: np.ndarray, k: int = 1, batch: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distances and indices of the `k` nearest centroids, searched in batches."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    dists = np.empty((len(x), k), dtype=np.float32)
    ids = np.empty((len(x), k), dtype=np.int64)
    for start in range(0, len(x), batch):
        chunk = np.ascontiguousarray(x[start : start + batch], dtype=np.float32)
        dists[start : start + batch], ids[start : start + batch] = index.search(chunk, k)
    return dists, ids


def balanced_assign(
    x: np.ndarray, centroids: np.ndarray, slack: float = 0.05, candidates: int = 8
) -> np.ndarray:
    """Assign each row to a near centroid with each centroid holding at most ceil(n/K·(1+slack)).

    Greedy by distance over each row's `candidates` nearest centroids: the globally
    closest (row, centroid) pairs are taken first; rows whose candidates all filled up
    take the nearest centroid that still has room. Deterministic (stable sort).
    """
    n, k = len(x), len(centroids)
    capacity = int(np.ceil(n / k * (1.0 + slack)))
    m = min(candidates, k)
    dists, ids = nearest(x, centroids, k=m)
    order = np.argsort(dists.ravel(), kind="stable")
    rows, cols = np.divmod(order, m)
    assign = np.full(n, -1, dtype=np.int64)
    load = np.zeros(k, dtype=np.int64)
    for r, c in zip(rows.tolist(), ids[rows, cols].tolist()):
        if assign[r] < 0 and load[c] < capacity:
            assign[r] = c
            load[c] += 1
    left = np.flatnonzero(assign < 0)
    if left.size:  # every candidate full: nearest centroid with room, over all centroids
        d_all, i_all = nearest(x[left], centroids, k=k)
        for r, row_d, row_i in zip(left.tolist(), d_all, i_all):
            del row_d
            for c in row_i.tolist():
                if load[c] < capacity:
                    assign[r] = c
                    load[c] += 1
                    break
    return assign


def kmeans(x: np.ndarray, k: int, niter: int, seed: int, max_points_per_centroid: int) -> np.ndarray:
    """faiss k-means -> centroids (k, d). Fewer distinct points than k is an error worth naming."""
    if len(x) < k:
        raise ValueError(
            f"k-means needs at least codebook_size={k} points, got {len(x)}; lower codebook_size"
        )
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=seed,
        verbose=False,
        max_points_per_centroid=max_points_per_centroid,
        spherical=False,
    )
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.centroids.copy()


@dataclass
class ResidualKMeans:
    """Residual k-means quantizer: `fit(x)` learns the codebooks, `encode(x)` gives codes."""

    levels: int = 3
    codebook_size: int = 256
    niter: int = 20
    seed: int = 0
    train_size: int = 65_536  # rows sampled for training (all rows when fewer): 256 per centroid at K=256
    balanced: bool = False
    balanced_iters: int = 5
    balance_slack: float = 0.05
    codebooks: list[np.ndarray] = field(default_factory=list)

    def _assign(self, x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        if self.balanced:
            return balanced_assign(x, centroids, slack=self.balance_slack)
        return nearest(x, centroids)[1][:, 0]

    def fit(self, x: np.ndarray) -> ResidualKMeans:
        check_finite(x)
        rng = np.random.default_rng(self.seed)
        sample = (
            x if len(x) <= self.train_size else x[np.sort(rng.choice(len(x), self.train_size, replace=False))]
        )
        residual = np.array(sample, dtype=np.float32, copy=True)
        self.codebooks = []
        for level in range(self.levels):
            centroids = kmeans(
                residual, self.codebook_size, self.niter, self.seed + level, max(1, len(residual))
            )
            assign = self._assign(residual, centroids)
            if self.balanced:  # balanced k-means: re-centre on the capacity-constrained assignment
                for _ in range(self.balanced_iters):
                    centroids = _update_centroids(residual, assign, centroids)
                    assign = self._assign(residual, centroids)
            self.codebooks.append(centroids)
            residual -= centroids[assign]
            logger.info(
                "rq-kmeans level %d: residual mean norm %.4f",
                level,
                float(np.linalg.norm(residual, axis=1).mean()),
            )
        return self

    def encode(self, x: np.ndarray, return_residuals: bool = False):
        """Codes (n, levels) int64; with `return_residuals`, also the input of the last level."""
        check_finite(x)
        residual = np.array(x, dtype=np.float32, copy=True)
        codes = np.empty((len(x), self.levels), dtype=np.int64)
        last_input = None
        for level, centroids in enumerate(self.codebooks):
            if level == self.levels - 1 and return_residuals:
                last_input = residual.copy()
            codes[:, level] = self._assign(residual, centroids)
            residual -= centroids[codes[:, level]]
        return (codes, last_input) if return_residuals else codes


def _update_centroids(x: np.ndarray, assign: np.ndarray, old: np.ndarray) -> np.ndarray:
    k = len(old)
    sums = np.zeros_like(old, dtype=np.float64)
    np.add.at(sums, assign, x)
    counts = np.bincount(assign, minlength=k)
    new = old.copy()
    used = counts > 0
    new[used] = (sums[used] / counts[used, None]).astype(np.float32)
    return new
