"""Ranking metrics of one ranked list: the one definition every part of onereason uses.

Binary relevance, the conventions `ranx` and `pytrec_eval` use:

- `hit@K`    1 if any relevant entry is among the first K, else 0;
- `recall@K` relevant entries among the first K / number of relevant entries;
- `ndcg@K`   sum over the first K positions of rel/log2(pos+1), divided by the same sum for
             an ideal list (min(K, #relevant) relevant entries first);
- `mrr`      1 / position of the first relevant entry in the whole returned list (0 if none).

`onereason eval` reports them (evaluation/metrics.py), the SFT validation callback picks the
best checkpoint by them, and the SASRec baseline stops early by them: one formula, so a
validation figure and a report figure of the same list are the same number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

RANK_FAMILIES = ("hit", "recall", "ndcg")


def user_metrics(ranked: Sequence[str], relevant: Iterable[str], ks: Sequence[int]) -> dict[str, float]:
    """All metrics of one ranked list against one set of relevant entries."""
    relevant = set(relevant)
    gains = [1.0 if entry in relevant else 0.0 for entry in ranked]
    discounted = np.cumsum([g / math.log2(pos + 2) for pos, g in enumerate(gains)]) if gains else np.zeros(0)
    found = np.cumsum(gains) if gains else np.zeros(0)
    out: dict[str, float] = {}
    for k in ks:
        top = min(k, len(gains))
        hits = float(found[top - 1]) if top else 0.0
        dcg = float(discounted[top - 1]) if top else 0.0
        ideal = sum(1.0 / math.log2(pos + 2) for pos in range(min(k, len(relevant))))
        out[f"hit@{k}"] = 1.0 if hits > 0 else 0.0
        out[f"recall@{k}"] = hits / len(relevant) if relevant else 0.0
        out[f"ndcg@{k}"] = dcg / ideal if ideal else 0.0
    first = next((pos for pos, g in enumerate(gains) if g), None)
    out["mrr"] = 0.0 if first is None else 1.0 / (first + 1)
    return out


def mean_hit_ndcg(
    ranked: Sequence[Sequence], relevant: Sequence[Iterable], k: int = 10
) -> tuple[float, float]:
    """Hit@k and NDCG@k averaged over users (lists and relevant sets, one per user)."""
    per_user = [user_metrics(list(items), rel, (k,)) for items, rel in zip(ranked, relevant)]
    n = max(len(per_user), 1)
    return sum(m[f"hit@{k}"] for m in per_user) / n, sum(m[f"ndcg@{k}"] for m in per_user) / n
