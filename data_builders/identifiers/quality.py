"""Reports on an identifier scheme: is the SID space used, unique, and meaningful?

- utilisation: share of each level's codebook that at least one item uses;
- entropy: of each level's code distribution, in bits and as a share of log2(K) (1.0 = uniform);
- semantic coherence: mean cosine of item pairs that share a first-level code against random
  pairs — a SID whose first token means something gives a clear gap;
- collisions (see `collisions.collision_stats`).
"""

from __future__ import annotations

import numpy as np

from data_builders.identifiers.collisions import collision_stats


def level_stats(codes: np.ndarray, codebook_sizes: list[int] | None = None) -> list[dict]:
    """Per level: codes used, utilisation (used / K), entropy (bits), normalised entropy."""
    out = []
    for level in range(codes.shape[1]):
        col = codes[:, level]
        counts = np.bincount(col)
        k = int(codebook_sizes[level]) if codebook_sizes else int(col.max()) + 1
        p = counts[counts > 0] / len(col)
        entropy = float(-(p * np.log2(p)).sum())
        out.append(
            {
                "level": level,
                "codebook_size": k,
                "codes_used": int((counts > 0).sum()),
                "utilization": float((counts > 0).sum() / k),
                "entropy_bits": entropy,
                "normalized_entropy": float(entropy / np.log2(k)) if k > 1 else 0.0,
            }
        )
    return out


def semantic_coherence(codes: np.ndarray, embeddings: np.ndarray, pairs: int = 20000, seed: int = 0) -> dict:
    """Mean cosine of random pairs sharing the first-level code vs random pairs (sampled)."""
    rng = np.random.default_rng(seed)
    emb = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    n = len(emb)
    a, b = rng.integers(0, n, pairs), rng.integers(0, n, pairs)
    keep = a != b
    random_cos = float((emb[a[keep]] * emb[b[keep]]).sum(1).mean()) if keep.any() else float("nan")
    first = codes[:, 0]
    order = np.argsort(first, kind="stable")
    sorted_codes = first[order]
    starts = np.searchsorted(sorted_codes, sorted_codes)
    ends = np.searchsorted(sorted_codes, sorted_codes, side="right")
    sizes = ends - starts
    eligible = np.flatnonzero(sizes > 1)
    if eligible.size == 0:
        return {"same_first_code_cosine": float("nan"), "random_pair_cosine": random_cos, "gap": float("nan")}
    pick = eligible[rng.integers(0, eligible.size, pairs)]
    offset = rng.integers(1, sizes[pick])  # a different member of the same group
    partner = starts[pick] + (pick - starts[pick] + offset) % sizes[pick]
    same = float((emb[order[pick]] * emb[order[partner]]).sum(1).mean())
    return {"same_first_code_cosine": same, "random_pair_cosine": random_cos, "gap": same - random_cos}


def sid_report(
    codes: np.ndarray,
    embeddings: np.ndarray | None = None,
    codebook_sizes: list[int] | None = None,
    seed: int = 0,
) -> dict:
    """Everything above for one code matrix (n_items, n_levels)."""
    report = {"collisions": collision_stats(codes), "levels": level_stats(codes, codebook_sizes)}
    if embeddings is not None:
        report["coherence"] = semantic_coherence(codes, embeddings, seed=seed)
    return report
