"""Interest recovery: do a trace's Evolution interest points match the planted ones?

Only the synthetic world knows why each interaction happened (`world.truth`: the
interest id behind it, or null for noise), so only there can a trace's interest points be
scored. Matching is by evidence, not by wording: an interest point is matched to the
planted interest that produced the strict majority of its evidence items (one-to-one).
A planted interest counts as recoverable when it produced at least `min_support` of the
history items (one visit is not an interest anyone could see). Micro-averaged over
examples: precision = matched points / points, recall = matched / recoverable interests.

`PlantedInterests` answers the evaluation's question about the same truth: which planted
interest produced a *target* interaction (so a generated trace can be checked for naming it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa

from data_builders.tasks.cot import InterestPoint


class InterestRecovery:
    """Accumulates matches over examples; `report()` gives precision, recall, F1, pattern accuracy."""

    def __init__(self, truth: pa.Table, interests: pa.Table, min_support: int = 2):
        self.label = {
            (u, i, int(t)): iid
            for u, i, t, iid in zip(
                truth.column("user_id").to_pylist(),
                truth.column("item_id").to_pylist(),
                truth.column("timestamp").to_pylist(),
                truth.column("interest_id").to_pylist(),
            )
        }
        self.pattern = dict(
            zip(interests.column("interest_id").to_pylist(), interests.column("pattern").to_pylist())
        )
        self.min_support = min_support
        self.examples = self.predicted = self.recoverable = self.matched = self.pattern_hits = 0

    def add(
        self, user_id: str, history: list[str], timestamps: list[int], points: Iterable[InterestPoint]
    ) -> None:
        labels = [self.label.get((user_id, item, int(ts))) for item, ts in zip(history, timestamps)]
        planted = Counter(x for x in labels if x is not None)
        recoverable = {iid for iid, k in planted.items() if k >= self.min_support}
        taken: set[str] = set()
        points = list(points)
        for p in points:
            votes = Counter(labels[q] for q in p.evidence)
            iid, k = votes.most_common(1)[0]
            if iid is not None and k * 2 > len(p.evidence) and iid in recoverable and iid not in taken:
                taken.add(iid)
                self.pattern_hits += self.pattern.get(iid) == p.pattern
        self.examples += 1
        self.predicted += len(points)
        self.recoverable += len(recoverable)
        self.matched += len(taken)

    def totals(self) -> dict[str, int]:
        """The raw counts: totals of several shards add up to the totals of one pooled build."""
        return {
            "examples": self.examples,
            "predicted": self.predicted,
            "recoverable": self.recoverable,
            "matched": self.matched,
            "pattern_hits": self.pattern_hits,
        }

    def report(self) -> dict:
        return recovery_report(self.totals())


def recovery_report(totals: dict[str, int]) -> dict:
    """Precision, recall, F1 and pattern accuracy of `InterestRecovery.totals()` (one build's or summed)."""
    matched, predicted, recoverable = totals["matched"], totals["predicted"], totals["recoverable"]
    precision = matched / predicted if predicted else 0.0
    recall = matched / recoverable if recoverable else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "examples": totals["examples"],
        "interest_points": predicted,
        "planted_recoverable": recoverable,
        "matched": matched,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "pattern_accuracy": totals["pattern_hits"] / matched if matched else 0.0,
    }


TRUTH_FILES = ("truth.parquet", "interests.parquet")  # beside a build-data folder's tables (synthetic world)


def read_truth(folder: str | Path) -> tuple[pa.Table, pa.Table] | None:
    """(truth, interests) of a build-data folder, or None when it holds no ground truth (real data)."""
    import pyarrow.parquet as pq

    paths = [Path(folder) / name for name in TRUTH_FILES]
    if not all(p.is_file() for p in paths):
        return None
    return pq.read_table(paths[0]), pq.read_table(paths[1])


class PlantedInterests:
    """The planted interest behind a target interaction, found in the user's logged sequence.

    Evaluation examples carry item ids, not timestamps, so the target's event is the
    occurrence of the target item whose preceding items agree longest with the history.
    """

    def __init__(self, truth: pa.Table, interests: pa.Table):
        self.sequences: dict[str, list[tuple[str, str | None]]] = {}
        for user, item, iid in zip(
            truth.column("user_id").to_pylist(),
            truth.column("item_id").to_pylist(),
            truth.column("interest_id").to_pylist(),
        ):
            self.sequences.setdefault(user, []).append((item, iid))
        self.interests = {row["interest_id"]: row for row in interests.to_pylist()}

    def behind(self, user_id: str, history: Sequence[str], target: str) -> dict | None:
        """The interests-table row of the interest that produced `target` after `history`;
        None when it was noise or the event is not in the log."""
        seq = self.sequences.get(user_id, [])
        best, best_agree = None, -1
        for j, (item, iid) in enumerate(seq):
            if item != target:
                continue
            agree = 0
            while agree < min(j, len(history)) and seq[j - 1 - agree][0] == history[-1 - agree]:
                agree += 1
            if agree >= best_agree:
                best, best_agree = iid, agree
        return self.interests.get(best) if best is not None else None
