"""Paired bootstrap over users: is the difference between two runs real?

Two runs of the same users (thinking vs non-thinking, SFT vs RL) give, per metric, one value
per user in each run. Resampling *users* with replacement and taking the mean of the paired
differences each time gives the sampling distribution of the mean difference; its 2.5 and
97.5 percentiles are the 95% interval. Pairing matters: the users' difficulty is shared by
both runs, so the interval is much tighter than two independent intervals would suggest.

All metrics of one comparison use the same resampled user sets (one index matrix), so the
intervals of different metrics are consistent with each other, and the seed makes reports
reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

_CHUNK = 200  # resamples per block: bounds the index matrix to 200 x n_users


@dataclass(frozen=True)
class Interval:
    """`diff` = mean(a) - mean(b); [`low`, `high`] its (1 - alpha) bootstrap interval."""

    diff: float
    low: float
    high: float
    p_value: float  # two-sided: twice the smaller tail of the resampled differences around 0
    n_users: int
    n_resamples: int

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant}


def _resampled_means(values: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Means of `values` (shape [metrics, users]) over `n` user resamples: shape [metrics, n]."""
    rng = np.random.default_rng(seed)
    n_users = values.shape[1]
    out = np.empty((values.shape[0], n))
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        idx = rng.integers(0, n_users, size=(stop - start, n_users))
        out[:, start:stop] = values[:, idx].mean(axis=2)
    return out


def _interval(point: float, samples: np.ndarray, alpha: float, n_users: int) -> Interval:
    low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    tail = min(float(np.mean(samples <= 0)), float(np.mean(samples >= 0)))
    return Interval(float(point), float(low), float(high), min(1.0, 2 * tail), n_users, len(samples))


def paired_bootstrap_many(
    a: Mapping[str, Sequence[float]],
    b: Mapping[str, Sequence[float]],
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Interval]:
    """Per metric name present in both: the interval of mean(a) - mean(b) over the same users."""
    names = [name for name in a if name in b]
    if not names:
        return {}
    diffs = np.stack([np.asarray(a[m], float) - np.asarray(b[m], float) for m in names])
    if diffs.shape[1] == 0:
        raise ValueError("paired bootstrap needs at least one user")
    sizes = {len(a[m]) for m in names} | {len(b[m]) for m in names}
    if len(sizes) != 1:
        raise ValueError(f"paired bootstrap needs the same users in both runs; got lengths {sorted(sizes)}")
    samples = _resampled_means(diffs, n, seed)
    return {m: _interval(diffs[i].mean(), samples[i], alpha, diffs.shape[1]) for i, m in enumerate(names)}


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], n: int = 1000, seed: int = 0, alpha: float = 0.05
) -> Interval:
    """The paired-bootstrap interval of mean(a) - mean(b) (`a[i]`, `b[i]`: user i in each run)."""
    if len(a) != len(b):
        raise ValueError(
            f"paired bootstrap needs the same users in both runs; got {len(a)} and {len(b)} values"
        )
    return paired_bootstrap_many({"x": a}, {"x": b}, n, seed, alpha)["x"]


def mean_interval(values: Sequence[float], n: int = 1000, seed: int = 0, alpha: float = 0.05) -> Interval:
    """Bootstrap interval of one run's mean (the error bars of the report's plot)."""
    values = np.asarray(values, float)[None, :]
    if values.shape[1] == 0:
        raise ValueError("bootstrap needs at least one user")
    samples = _resampled_means(values, n, seed)[0]
    point = float(values.mean())
    low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return Interval(point, float(low), float(high), 1.0, values.shape[1], n)


def align_users(
    a_users: Sequence[str],
    a_values: Mapping[str, np.ndarray],
    b_users: Sequence[str],
    b_values: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """Restrict two runs to their common users, in the same order; returns (a, b, users dropped)."""
    b_pos = {u: i for i, u in enumerate(b_users)}
    keep_a = [i for i, u in enumerate(a_users) if u in b_pos]
    keep_b = [b_pos[a_users[i]] for i in keep_a]
    dropped = len(a_users) + len(b_users) - 2 * len(keep_a)
    a_out = {m: np.asarray(v)[keep_a] for m, v in a_values.items()}
    b_out = {m: np.asarray(v)[keep_b] for m, v in b_values.items()}
    return a_out, b_out, dropped
