"""Recommendation tasks: a history -> the next item(s), in TRL conversational prompt/completion form.

Seven tasks, one row of the split each (a user's history and what came next):

| task | answer |
| --- | --- |
| `rec_sid` | the next item's SID |
| `rec_seq` | the same row as `rec_sid` (same prompt text), built only for the train rows that end a
  user's windows (`sequence_window_ends`): SFT puts the loss on *every* SID of the row, each
  history item predicted from those before it, so one row teaches a whole training sequence |
| `rec_pair` | the next item's SID from one history item alone (train rows only, no trace): the
  item-to-item transitions that co-occurrence counts, taught one pair a row so that items seen a
  few times are remembered, not only sequences. `pair_window` rows per transition, the k-th
  showing the k-th last item (k = 1: the last one), as co-occurrence counts a window |
| `rec_term` | its Term ID (the history is shown by Term IDs too) |
| `rec_hybrid` | its SID then its title |
| `rec_multi` | the next `top_k` items' SIDs, back to back (the trie decodes them one after another) |
| `rec_behavior` | the SID of the next item of the asked event type ("what will they buy") |

Both modes share the prompt text up to the switch; a thinking answer carries the trace.
"""

from __future__ import annotations

from dataclasses import dataclass

from data_builders.tasks.catalog import ItemCatalog
from data_builders.tasks.history import HistoryRenderer, HistoryStyle, clip, render_terms
from data_builders.tasks.phrasing import load_templates, pick
from onereason.tasks import RECOMMENDATION_TASKS, TRAIN_ONLY_TASKS
from onereason.thinking import format_answer, with_switch


def sequence_window_ends(rows: list[RecRow]) -> list[bool]:
    """Which rows end a window of a user's training sequence (rows grouped by user, oldest first).

    A user's rows are prefixes of one sequence: the row whose target is item j shows the
    (at most `max_history`) items before j. The last row covers its history and target; the
    next window ends at the item just before that history begins, and so on back. Every item
    but the user's first is then a next item of exactly one window.
    """
    ends = [False] * len(rows)
    by_user: dict[str, list[int]] = {}
    for k, row in enumerate(rows):
        by_user.setdefault(row.user_id, []).append(k)
    for ks in by_user.values():
        pos = len(ks) - 1
        while pos >= 0:
            ends[ks[pos]] = True
            pos -= len(rows[ks[pos]].history)
    return ends


@dataclass
class RecRow:
    """One prediction example of a split, items as catalogue positions."""

    key: str  # unique and stable (split:row number): seeds the phrasing
    user_id: str
    history: list[int]
    timestamps: list[int]
    targets: list[int]  # the target, then (rec_multi) the user's following targets
    event: str = ""


def example(
    prompt, answer, trace, task, mode, user_id, history_ids, target_ids, catalog: ItemCatalog, targets
) -> dict:
    """A row of the task-dataset contract (docs/ARCHITECTURE.md)."""
    first = targets[0] if targets else None
    return {
        "prompt": prompt,
        "completion": [{"role": "assistant", "content": format_answer(answer, trace)}],
        "task": task,
        "mode": mode,
        "user_id": user_id,
        "history_items": history_ids,
        "target_items": target_ids,
        "target_sids": [catalog.sid_texts[t] or "" for t in targets],
        "target_terms": list(catalog.terms[first] or []) if first is not None else [],
        "domain": (catalog.categories[first] or [""])[0] if first is not None else "",
    }


class RecommendationTasks:
    def __init__(
        self,
        catalog: ItemCatalog,
        style: HistoryStyle,
        system_prompt: bool = True,
        seed: int = 0,
        top_k: int = 5,
        short_prompts: bool = False,
        pair_window: int = 1,
    ):
        self.catalog = catalog
        self.style = style
        self.term_style = HistoryStyle(
            "term",
            "title" if style.item_text == "title" else "none",
            style.max_items,
            style.title_max_chars,
            style.numbered,
            style.countdown,
        )
        self.render = {
            "sid": HistoryRenderer(catalog, self.style),
            "term": HistoryRenderer(catalog, self.term_style),
        }
        self.system_prompt = system_prompt
        self.seed = seed
        self.top_k = top_k
        self.pair_window = pair_window
        self.templates = load_templates("recommendation")
        # One fixed short header and question instead of the pool (see BuildTasksConfig.short_prompts).
        self.phrasings = self.templates["short"] if short_prompts else self.templates

    def ineligible(self, task: str, row: RecRow) -> str | None:
        """Why `row` cannot make a `task` example (a drop reason), or None."""
        c = self.catalog
        if task == "rec_term" and (not c.terms[row.targets[0]] or not all(c.terms[i] for i in row.history)):
            return "no_term_id"
        if task == "rec_multi" and len(row.targets) < 2:
            return "single_target"
        if task == "rec_behavior" and not row.event:
            return "no_event"
        return None

    def verb(self, event: str) -> str:
        verbs = self.templates["event_verbs"]
        return verbs.get(event.lower(), f"interact with ({event})")

    def offsets(self, task: str, row: RecRow) -> range:
        """One row of `task` per offset: a pair row per history item of the window (1: the last,
        2: the one before, ...), every other task one row."""
        return range(1, min(self.pair_window, len(row.history)) + 1) if task == "rec_pair" else range(1, 2)

    @staticmethod
    def shown_history(task: str, row: RecRow, offset: int = 1) -> list[int]:
        """The history items a `task` row shows: a pair row shows the `offset`-th last one alone."""
        if task == "rec_pair":
            return row.history[-offset:][:1]
        return row.history

    def user_text(self, task: str, row: RecRow, copy: int = 0, offset: int = 1) -> str:
        """The user turn without its switch: identical for both modes of one (row, copy)."""
        t = self.phrasings
        render = self.render["term" if task == "rec_term" else "sid"]
        header = pick(t["history_header"], self.seed, "header", row.key, copy)
        phrasing = "rec_sid" if task in TRAIN_ONLY_TASKS else task  # worded as the rec_sid row
        question = pick(t["question"][phrasing], self.seed, phrasing, row.key, copy)
        question = question.format(k=len(row.targets[: self.top_k]), verb=self.verb(row.event))
        return f"{header}\n{render(self.shown_history(task, row, offset))}\n{question}"

    def answer(self, task: str, row: RecRow) -> tuple[str, list[int]]:
        c = self.catalog
        target = row.targets[0]
        if task == "rec_term":
            return f"[{render_terms(c.terms[target])}]", [target]
        if task == "rec_hybrid":
            return f"{c.sid_texts[target]} {clip(c.titles[target], self.style.title_max_chars)}".strip(), [
                target
            ]
        if task == "rec_multi":
            targets = row.targets[: self.top_k]
            return "".join(c.sid_texts[t] for t in targets), targets
        return c.sid_texts[target], [target]

    def build(
        self, task: str, mode: str, row: RecRow, trace: str | None, copy: int = 0, offset: int = 1
    ) -> dict:
        if task not in RECOMMENDATION_TASKS:
            raise ValueError(f"unknown recommendation task {task!r}; known: {RECOMMENDATION_TASKS}")
        prompt = []
        if self.system_prompt:
            prompt.append(
                {"role": "system", "content": pick(self.templates["system"], self.seed, "system", row.key)}
            )
        prompt.append({"role": "user", "content": with_switch(self.user_text(task, row, copy, offset), mode)})
        answer, targets = self.answer(task, row)
        c = self.catalog
        return example(
            prompt,
            answer,
            trace if mode == "think" else None,
            task,
            mode,
            row.user_id,
            [c.item_ids[i] for i in self.shown_history(task, row, offset)],
            [c.item_ids[t] for t in targets],
            c,
            targets,
        )
