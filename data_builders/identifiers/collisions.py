"""Collision resolution: every item ends up with its own SID.

Two quantizers can send two items to the same code tuple. A model that emits that SID
cannot say which item it means, so we resolve collisions, two ways:

- `min_cost` (default): inside each last-level group (items sharing all but the last
  code) that contains a collision, re-choose the last codes with a minimum-cost assignment
  (Hungarian, `scipy.optimize.linear_sum_assignment`) of items to distinct last-level
  centroids; cost = squared distance from the item's last-level residual to the centroid.
  Items move to the nearest *free* codes, so the SID stays as meaningful as possible and
  the number of levels does not change.
- `extra_level`: append one level numbering the items of each colliding tuple (0 for the
  item closest to its centroid, 1, 2, … for the others) — TIGER's disambiguation token.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

STRATEGIES = ("min_cost", "extra_level")


def group_rows(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique tuples, inverse index, counts) of the rows of an int code matrix."""
    return np.unique(np.ascontiguousarray(codes), axis=0, return_inverse=True, return_counts=True)


def collision_stats(codes: np.ndarray) -> dict:
    """How many items share a SID with another item.

    `collision_rate` = 1 - unique SIDs / items (the usual LC-Rec / LETTER figure);
    `colliding_items` counts every item in a tuple held by more than one item.
    """
    n = len(codes)
    if n == 0:
        return {
            "items": 0,
            "unique_sids": 0,
            "collision_rate": 0.0,
            "colliding_items": 0,
            "max_items_per_sid": 0,
        }
    _, _, counts = group_rows(codes)
    return {
        "items": int(n),
        "unique_sids": int(len(counts)),
        "collision_rate": float(1.0 - len(counts) / n),
        "colliding_items": int(counts[counts > 1].sum()),
        "max_items_per_sid": int(counts.max()),
    }


def resolve_min_cost(
    codes: np.ndarray, last_inputs: np.ndarray, last_codebook: np.ndarray
) -> tuple[np.ndarray, dict]:
    """Re-assign last-level codes inside prefix groups that hold a collision (see module doc).

    `last_inputs` (n, d): what the last level quantized (the residual); `last_codebook` (K, d).
    Raises when a prefix group has more items than K: no last-level assignment can then be
    unique, and `extra_level` (or a larger codebook) is the answer.
    """
    codes = np.array(codes, dtype=np.int64, copy=True)
    k = len(last_codebook)
    prefixes, prefix_of, prefix_counts = (
        group_rows(codes[:, :-1])
        if codes.shape[1] > 1
        else (None, np.zeros(len(codes), np.int64), np.array([len(codes)]))
    )
    del prefixes
    _, full_of, full_counts = group_rows(codes)
    colliding_prefix = np.unique(prefix_of[full_counts[full_of] > 1])
    too_big = [int(p) for p in colliding_prefix if prefix_counts[p] > k]
    if too_big:
        worst = int(prefix_counts[too_big].max())
        raise ValueError(
            f"collision resolution (min_cost): {len(too_big)} SID prefix group(s) hold more items than "
            f"codebook_size={k} (largest: {worst}); use collision_strategy=extra_level or a larger codebook_size"
        )
    order = np.argsort(prefix_of, kind="stable")
    starts = np.searchsorted(prefix_of[order], colliding_prefix)
    moved = 0
    cb = np.asarray(last_codebook, dtype=np.float64)
    cb_sq = (cb * cb).sum(1)
    for p, s in zip(colliding_prefix.tolist(), starts.tolist()):
        rows = order[s : s + prefix_counts[p]]
        x = last_inputs[rows].astype(np.float64)
        cost = (x * x).sum(1)[:, None] - 2.0 * x @ cb.T + cb_sq[None, :]
        r_idx, c_idx = linear_sum_assignment(cost)
        new = np.empty(len(rows), dtype=np.int64)
        new[r_idx] = c_idx
        moved += int((codes[rows, -1] != new).sum())
        codes[rows, -1] = new
    return codes, {
        "strategy": "min_cost",
        "prefix_groups_reassigned": int(len(colliding_prefix)),
        "items_moved": moved,
    }


def resolve_extra_level(
    codes: np.ndarray, last_inputs: np.ndarray | None = None, last_codebook: np.ndarray | None = None
) -> tuple[np.ndarray, dict]:
    """Append a disambiguation level: rank of each item inside its identical-SID group.

    With `last_inputs`/`last_codebook` the item nearest its last centroid gets 0; otherwise
    the input order decides. The extra level's codebook size is the largest group.
    """
    codes = np.asarray(codes, dtype=np.int64)
    _, full_of, counts = group_rows(codes)
    if last_inputs is not None and last_codebook is not None:
        dist = ((last_inputs - last_codebook[codes[:, -1]]) ** 2).sum(axis=1)
    else:
        dist = np.zeros(len(codes))
    order = np.lexsort((np.arange(len(codes)), dist, full_of))  # by group, then distance, then row
    rank = np.empty(len(codes), dtype=np.int64)
    group_sorted = full_of[order]
    first = np.searchsorted(group_sorted, group_sorted)  # start of each row's group in sorted order
    rank[order] = np.arange(len(codes)) - first
    extra = np.concatenate([codes, rank[:, None]], axis=1)
    return extra, {
        "strategy": "extra_level",
        "extra_level_size": int(counts.max()),
        "items_moved": int((rank > 0).sum()),
    }


def resolve(
    codes: np.ndarray, strategy: str, last_inputs: np.ndarray | None, last_codebook: np.ndarray | None
) -> tuple[np.ndarray, dict]:
    """Dispatch to a strategy; report before/after collision figures."""
    before = collision_stats(codes)
    if strategy == "min_cost":
        if last_inputs is None or last_codebook is None:
            raise ValueError("collision_strategy=min_cost needs the last-level residuals and codebook")
        out, info = resolve_min_cost(codes, last_inputs, last_codebook)
    elif strategy == "extra_level":
        out, info = resolve_extra_level(codes, last_inputs, last_codebook)
    elif strategy == "none":
        out, info = np.asarray(codes), {"strategy": "none"}
    else:
        raise ValueError(f"unknown collision_strategy {strategy!r}; choose one of {(*STRATEGIES, 'none')}")
    return out, {**info, "before": before, "after": collision_stats(out)}
