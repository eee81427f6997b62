"""Task names and thinking modes of the task-dataset contract, listed once.

The `task` column of a `onereason build-tasks` dataset holds one of `KNOWN_TASKS` and the
`mode` column one of `MODES` (docs/ARCHITECTURE.md, "task datasets"); training stages
filter rows by them and evaluation picks its tasks from them.
"""

from __future__ import annotations

from onereason.thinking import MODES

RECOMMENDATION_TASKS = (
    "rec_sid",
    "rec_seq",
    "rec_pair",
    "rec_term",
    "rec_hybrid",
    "rec_multi",
    "rec_behavior",
)
# Rows that only train, without a trace: built for the train split, non-thinking; evaluation and
# RL read the per-target rows.
TRAIN_ONLY_TASKS = ("rec_seq", "rec_pair")
PERCEPTION_TASKS = ("caption", "text2sid", "sid2term", "term2sid", "item_qa", "association")
TEXT_TASKS = ("text",)
KNOWN_TASKS = (*RECOMMENDATION_TASKS, *PERCEPTION_TASKS, *TEXT_TASKS)

__all__ = [
    "KNOWN_TASKS",
    "MODES",
    "PERCEPTION_TASKS",
    "RECOMMENDATION_TASKS",
    "TEXT_TASKS",
    "TRAIN_ONLY_TASKS",
]
