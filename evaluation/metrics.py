"""Ranking metrics over run records, at SID level and at item level.

A *run* is a list of per-user records (the lines of `runs/<checkpoint>-<mode>.jsonl`):

    {"user_id": "u1", "targets": ["i7"], "target_sids": ["<a_1><b_2>"],
     "ranked_sids": ["<a_1><b_2>", ...], "ranked_items": ["i7", "i9", ...],
     "ranked_modes": ["think", "no_think", ...], "n_beams": 20, "n_valid": 20, "think_tokens": 0, "latency_s": 0.01}

The metrics are `onereason.ranking.user_metrics` (Hit, recall, NDCG at each K and MRR,
binary relevance, the conventions `ranx` and `pytrec_eval` use).

Two levels, because several items can share one SID (collisions):

- **SID level**: the list is `ranked_sids` (each SID once, beam order) and the relevant
  entries are the targets' SIDs. A beam "hits" when it names the target's SID, whichever of
  the items behind that SID the user actually took.
- **item level**: the list is `ranked_items`: every SID expanded to all its catalogue items
  (in item-index order), so K counts *item positions*. A SID shared by 3 items fills 3
  positions; a target that is the third item behind the top SID sits at position 3. This
  is the ranking a downstream system would receive, and it never credits a collision more
  than once. With a collision-free index the two levels agree.

Users with no valid beam have an empty list and score 0 everywhere (they are counted, not
dropped). Per-user values are kept so the paired bootstrap can resample users.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from onereason.ranking import RANK_FAMILIES, user_metrics
from onereason.thinking import MODES

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20, 32)
MINIONEREC_KS: tuple[int, ...] = (3, 5, 10)
LEVELS = ("item", "sid")


def metric_names(ks: Sequence[int]) -> list[str]:
    """`hit@1, recall@1, ndcg@1, …, mrr` in a stable order (the report's column order)."""
    return [f"{family}@{k}" for k in ks for family in RANK_FAMILIES] + ["mrr"]


def ranked_and_relevant(record: Mapping, level: str) -> tuple[list[str], list[str]]:
    """The (ranked list, relevant entries) of one run record at `level`."""
    if level == "item":
        return list(record.get("ranked_items") or []), list(record.get("targets") or [])
    if level == "sid":
        return list(record.get("ranked_sids") or []), list(record.get("target_sids") or [])
    raise ValueError(f"metric level must be one of {LEVELS}, got {level!r}")


@dataclass
class Metrics:
    """Means over users plus the per-user values they came from (for the bootstrap)."""

    level: str
    ks: tuple[int, ...]
    n_users: int
    means: dict[str, float]
    per_user: dict[str, np.ndarray] = field(repr=False)
    user_ids: list[str] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict:
        return {"level": self.level, "ks": list(self.ks), "n_users": self.n_users, **self.means}


def compute_metrics(run: Sequence[Mapping], ks: Sequence[int] = DEFAULT_KS, level: str = "item") -> Metrics:
    """Hit/Recall/NDCG@K and MRR of a run at `level` ("item" or "sid"); see the module doc."""
    if level not in LEVELS:
        raise ValueError(f"metric level must be one of {LEVELS}, got {level!r}")
    names = metric_names(ks)
    values = {name: np.zeros(len(run)) for name in names}
    for row, record in enumerate(run):
        ranked, relevant = ranked_and_relevant(record, level)
        if not relevant:
            raise ValueError(
                f"run record {row} (user {record.get('user_id')!r}) has no {level}-level targets; "
                "drop such users before generation (they are counted there)"
            )
        for name, value in user_metrics(ranked, relevant, ks).items():
            values[name][row] = value
    means = {name: float(v.mean()) if len(v) else 0.0 for name, v in values.items()}
    return Metrics(level, tuple(ks), len(run), means, values, [example_key(r, i) for i, r in enumerate(run)])


def example_key(record: Mapping, row: int) -> str:
    """The record's unique example key (`key`, else `user_id`, else its row): pairs runs for the bootstrap."""
    return str(record.get("key") or record.get("user_id") or row)


def generation_stats(run: Sequence[Mapping], wall_s: float | None = None) -> dict[str, float | int | None]:
    """Valid-SID rate, think length, latency and throughput of a generated run.

    - `valid_sid_rate`: beams that parsed to a catalogue SID / beams returned;
    - `users_without_valid_sid`: users whose list came back empty;
    - `think_tokens_mean` / `_p95`: sampled think tokens per user (0 in non-thinking mode);
    - `latency_p50_s` / `_p95_s`: per-user latency (batch wall time / batch size, see generate.py);
    - `users_per_s`: users / wall time (`wall_s`, else the sum of latencies).
    """
    if not run:
        return {"n_users": 0}
    beams = sum(int(r.get("n_beams", 0)) for r in run)
    valid = sum(int(r.get("n_valid", 0)) for r in run)
    think = np.array([float(r.get("think_tokens") or 0) for r in run])
    latency = np.array([float(r.get("latency_s") or 0.0) for r in run])
    total = float(wall_s) if wall_s is not None else float(latency.sum())
    return {
        "n_users": len(run),
        "valid_sid_rate": valid / beams if beams else None,
        "users_without_valid_sid": sum(1 for r in run if not r.get("ranked_sids")),
        "think_tokens_mean": float(think.mean()),
        "think_tokens_p95": float(np.percentile(think, 95)),
        "think_budget_exhausted": sum(1 for r in run if r.get("think_budget_exhausted")),
        "latency_p50_s": float(np.percentile(latency, 50)),
        "latency_p95_s": float(np.percentile(latency, 95)),
        "users_per_s": len(run) / total if total > 0 else None,
    }


def mode_shares(run: Sequence[Mapping], k: int = 10) -> dict:
    """Which mode put a race run's top-`k` SIDs there: `{k, sids, shares: {mode: share}}`.

    A record's `ranked_modes[i]` is the mode whose score `ranked_sids[i]` kept; the shares
    pool every user's top `k` SIDs (SID positions, not item positions) and sum to 1 (None
    when no user has a SID).
    """
    counts = Counter(m for r in run for m in (r.get("ranked_modes") or [])[:k])
    total = sum(counts.values())
    return {"k": k, "sids": total, "shares": {m: counts[m] / total if total else None for m in MODES}}
