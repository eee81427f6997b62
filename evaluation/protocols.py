"""Evaluation protocols: which examples, which targets, which cut-offs.

- `loo` (leave-one-out, the LC-Rec / LETTER convention): one test row per user (the last
  item), full ranking over the catalogue, K in {1, 5, 10, 20, 32}. Rows come from a split
  folder (`<data>/splits/test.parquet`) or a task dataset (`onereason build-tasks`).
- `minionerec`: MiniOneRec's CSV rows as given (sliding windows, one target per row),
  HR@{3,5,10} and NDCG@{3,5,10}.

Every protocol yields `EvalExample`s: a chat prompt (the user turn ends with a thinking
switch, replaced per mode by `onereason.thinking.switch_mode`, so both modes see the same
text), the target item ids and the history. Examples from a task dataset keep its prompt
(the phrasing the model was trained on); examples from split rows or CSVs get a plain prompt
listing the history's SIDs, numbered oldest first (the `item_text: none` style of
`data_builders.tasks.history`).
"""

from __future__ import annotations

import ast
import csv
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.metrics import DEFAULT_KS, MINIONEREC_KS
from onereason.thinking import with_switch


@dataclass(frozen=True)
class Protocol:
    name: str
    ks: tuple[int, ...]
    families: tuple[str, ...]  # which metric families the report shows


PROTOCOLS = {
    "loo": Protocol("loo", DEFAULT_KS, ("hit", "recall", "ndcg", "mrr")),
    "minionerec": Protocol("minionerec", MINIONEREC_KS, ("hit", "ndcg")),
}

HISTORY_HEADER = "The user's history, oldest first:"
QUESTION = "What will the user interact with next?"


@dataclass
class EvalExample:
    """One user to rank for: the prompt both modes share, and what counts as a hit."""

    key: str  # unique per example (a user can have several rows in sliding-window protocols)
    user_id: str
    messages: list[dict]
    targets: list[str]
    history: list[str] = field(default_factory=list)

    def to_row(self) -> dict:
        """The split-row view the baselines read."""
        return {"key": self.key, "user_id": self.user_id, "history": self.history, "targets": self.targets}


def numbered_sids(history_sids: Sequence[str]) -> str:
    return "\n".join(f"{n}. {sid}" for n, sid in enumerate(history_sids, 1))


def plain_prompt(history_sids: Sequence[str], mode: str = "no_think") -> list[dict]:
    """The prompt for examples without a task dataset: numbered SIDs, then the question."""
    lines = numbered_sids(history_sids)
    return [{"role": "user", "content": with_switch(f"{HISTORY_HEADER}\n{lines}\n{QUESTION}", mode)}]


def examples_from_rows(
    rows: Iterable[Mapping], index, max_history: int = 20, source: str = "rows"
) -> list[EvalExample]:
    """Split rows (`user_id, history, target` or `targets`) -> examples with a plain SID prompt.

    History items missing from the index cannot be shown as SIDs: they are left out of the
    prompt (the target check happens in `check_targets`).
    """
    out = []
    for n, row in enumerate(rows):
        try:
            history = [str(i) for i in row["history"]][-max_history:]
            targets = [str(t) for t in row["targets"]] if row.get("targets") else [str(row["target"])]
        except KeyError as err:
            raise ValueError(
                f"{source}: row {n} has no {err.args[0]!r} field (need user_id, history, target)"
            ) from err
        shown = [index.sid_text(i) for i in history if i in index]
        user = str(row.get("user_id", n))
        out.append(EvalExample(f"{user}#{n}", user, plain_prompt(shown), targets, history))
    return out


def read_split(path: str | Path) -> list[dict]:
    """Rows of a split parquet file (docs/ARCHITECTURE.md, splits on disk)."""
    from onereason.tables import SPLIT_COLUMNS
    from onereason.tables import read_split as read_split_table

    return read_split_table(path).select(list(SPLIT_COLUMNS)).to_pylist()


def examples_from_tasks(
    path: str | Path, split: str = "test", tasks: Sequence[str] = ("rec_sid",)
) -> list[EvalExample]:
    """Examples from a task dataset (`onereason build-tasks`): each distinct
    (user, history, targets) once, whichever mode its row was built in."""
    from datasets import load_from_disk

    dataset = load_from_disk(str(path))
    if split not in dataset:
        raise ValueError(f"{path}: task dataset has no split {split!r} (has {list(dataset)})")
    rows = dataset[split]
    for column in ("prompt", "task", "user_id", "history_items", "target_items"):
        if column not in rows.column_names:
            raise ValueError(f"{path}: task dataset split {split!r} has no column {column!r}")
    seen: set[tuple] = set()
    out = []
    for n, row in enumerate(rows):
        if row["task"] not in tasks or not row["target_items"]:
            continue
        ident = (row["user_id"], tuple(row["history_items"]), tuple(row["target_items"]))
        if ident in seen:
            continue
        seen.add(ident)
        out.append(
            EvalExample(
                f"{row['user_id']}#{n}",
                row["user_id"],
                row["prompt"],
                list(row["target_items"]),
                list(row["history_items"]),
            )
        )
    if not out:
        raise ValueError(f"{path}: split {split!r} has no rows of task(s) {list(tasks)}")
    return out


def history_viewer(
    index,
    n_items: int,
    tasks_config: str | Path | None = None,
    data_folder: str | Path | None = None,
    n_views: int = 1,
) -> Callable[[EvalExample], list[list[dict]]]:
    """example -> its `n_views` views (decoding's `view_weight`): the prompt with the history cut
    to `n_items` consecutive items, the last ones for view 0, ending one item earlier for each
    view after it (a history too short for a view shows its first items), rendered as the prompt
    renders the history, the rest of the prompt kept. With a pair-trained model (`rec_pair`
    rows, `pair_window` w) the views of one item are the prompts of its pair rows: the last
    item alone, the one before it alone, ... `tasks_config` (the task build's `config.yaml`)
    and `data_folder` (its build-data folder) give the task build's renderer; without them the
    history is the numbered SIDs of `plain_prompt`.
    """
    if tasks_config is None:

        def render(history: Sequence[str]) -> str:
            return numbered_sids([index.sid_text(i) for i in history if i in index])
    else:
        import yaml

        from data_builders.tasks.build import BuildTasksConfig
        from data_builders.tasks.catalog import build_catalog
        from data_builders.tasks.history import HistoryRenderer
        from data_builders.tasks.shards import history_style
        from onereason.tables import read_items

        settings = yaml.safe_load(Path(tasks_config).read_text()) or {}
        known = BuildTasksConfig.__dataclass_fields__
        catalog = build_catalog(read_items(data_folder), index)
        renderer = HistoryRenderer(
            catalog, history_style(BuildTasksConfig(**{k: v for k, v in settings.items() if k in known}))
        )

        def render(history: Sequence[str]) -> str:
            return renderer([catalog.position[i] for i in history if i in catalog.position])

    def views(ex: EvalExample) -> list[list[dict]]:
        *before, user = ex.messages
        shown = [i for i in ex.history if i in index]
        full = render(shown)
        if full not in user["content"]:
            raise ValueError(
                f"user {ex.user_id}: the prompt does not show the history as "
                f"{tasks_config or 'plain_prompt'} renders it, so it cannot be cut to a view"
            )
        out = []
        for skip in range(n_views):
            end = max(min(n_items, len(shown)), len(shown) - skip)
            cut = render(shown[max(0, end - n_items) : end])
            out.append([*before, {**user, "content": user["content"].replace(full, cut, 1)}])
        return out

    return views


def read_minionerec_csv(path: str | Path) -> list[dict]:
    """MiniOneRec's CSV rows as split rows (`user_id, history, target`); list cells are Python literals."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"MiniOneRec CSV not found: {path}")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for field_name in ("user_id", "history_item_id", "item_id"):
            if field_name not in (reader.fieldnames or []):
                raise ValueError(
                    f"{path}: MiniOneRec CSV has no column {field_name!r} (has {reader.fieldnames})"
                )
        for line, row in enumerate(reader, start=2):
            try:
                history = ast.literal_eval(row["history_item_id"])
            except (ValueError, SyntaxError) as err:
                raise ValueError(
                    f"{path}:{line}: history_item_id is not a Python list: {row['history_item_id'][:60]!r}"
                ) from err
            rows.append(
                {
                    "user_id": row["user_id"],
                    "history": [str(i) for i in history],
                    "target": str(row["item_id"]),
                }
            )
    return rows


def leave_one_out_rows(sequences: Mapping[str, Sequence], max_history: int = 20) -> dict[str, list[dict]]:
    """Per-user item sequences (time order) -> train / valid / test split rows.

    Test = the last item, valid = the second to last, train = every earlier position with at
    least one history item; histories capped to the last `max_history` items. Used by the
    benchmark on `Scientific.inter.json`; real runs read the split folder `build-data` wrote.
    """
    out: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    for user, seq in sequences.items():
        seq = [str(i) for i in seq]
        if len(seq) < 3:
            continue
        for t in range(1, len(seq)):
            split = "test" if t == len(seq) - 1 else "valid" if t == len(seq) - 2 else "train"
            out[split].append(
                {"user_id": str(user), "history": seq[max(0, t - max_history) : t], "target": seq[t]}
            )
    return out


def read_inter_json(path: str | Path) -> dict[str, list]:
    """LC-Rec's `{user: [item, ...]}` interaction file."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping user -> item list")
    return data


def check_targets(examples: Sequence[EvalExample], index) -> tuple[list[EvalExample], dict[str, int]]:
    """Drop targets (and users) the catalogue does not know, counting each reason.

    A user whose every target is unknown can never be hit, so they leave the evaluation
    (`unknown_target_users`); users who keep at least one target stay, minus the unknown
    ones (`unknown_targets_removed`).
    """
    kept, drops = [], {"unknown_target_users": 0, "unknown_targets_removed": 0, "no_target": 0}
    for ex in examples:
        if not ex.targets:
            drops["no_target"] += 1
            continue
        known = [t for t in ex.targets if t in index]
        if not known:
            drops["unknown_target_users"] += 1
            continue
        drops["unknown_targets_removed"] += len(ex.targets) - len(known)
        kept.append(EvalExample(ex.key, ex.user_id, ex.messages, known, ex.history))
    return kept, drops
