"""A tiny item world for the training-stage tests: an item index and a task DatasetDict.

The rows have the columns of the task-dataset contract (docs/ARCHITECTURE.md) and the
shapes the task builders emit (prompt–completion conversations, think / no_think), built
here directly so the stage tests depend only on the contract, not on the builders.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np

TITLES = [
    "glass beaker 250 ml",
    "nitrile safety gloves",
    "digital caliper",
    "microscope slides",
    "test tube rack",
    "pipette tips",
    "lab notebook",
    "hot plate stirrer",
    "safety goggles",
    "measuring cylinder",
    "petri dishes",
    "wash bottle",
]
ITEM_IDS = [f"i{n:02d}" for n in range(len(TITLES))]
THINK = "Derivation: the recent items share lab glassware.\nEvolution: a long-term interest in measuring.\nRecommendation: a measuring instrument."


def make_index():
    """12 items, 3 SID levels of 4 codes each (`<|sid_begin|><s_a_1><s_b_2><s_c_3><|sid_end|>`)."""
    from onereason.item_index import ItemIndex, SIDFormat

    rng = np.random.default_rng(0)
    codes = np.stack([rng.permutation(12) % 4, np.arange(12) % 4, np.arange(12) // 4], axis=1).astype(
        np.int64
    )
    terms = [title.split()[:2] for title in TITLES]
    return ItemIndex(ITEM_IDS, codes, terms=terms, sid_format=SIDFormat(), meta={"source": "tests"})


def _row(prompt: str, answer: str, task: str, mode: str, history=(), targets=(), index=None) -> dict:
    target_sids = [index.sid_text(t) for t in targets]
    return {
        "prompt": [{"role": "user", "content": f"{prompt} /{mode}"}],
        "completion": [{"role": "assistant", "content": answer}],
        "task": task,
        "mode": mode,
        "user_id": f"u{len(history)}" if history else "",
        "history_items": list(history),
        "target_items": list(targets),
        "target_sids": target_sids,
        "target_terms": index.terms(targets[0]) if targets else [],
        "domain": "lab",
    }


def make_rows(index, n_users: int = 24) -> list[dict]:
    """Perception rows for every item, recommendation rows in both modes, a few text rows."""
    rows = []
    empty = "<think>\n\n</think>\n\n"
    for item, title in zip(ITEM_IDS, TITLES):
        sid = index.sid_text(item)
        rows.append(
            _row(
                f"Describe the item {sid}.", empty + title, "caption", "no_think", targets=[item], index=index
            )
        )
        rows.append(
            _row(
                f"Which item is the {title}?",
                empty + sid,
                "text2sid",
                "no_think",
                targets=[item],
                index=index,
            )
        )
    rng = np.random.default_rng(1)
    for u in range(n_users):
        history = [ITEM_IDS[j] for j in rng.choice(12, size=3, replace=False)]
        target = ITEM_IDS[(ITEM_IDS.index(history[-1]) + 1) % 12]
        shown = ", ".join(index.sid_text(h) for h in history)
        question = f"The user's history, oldest first: {shown}. Which item comes next?"
        mode = "think" if u % 2 else "no_think"
        answer = (f"<think>\n{THINK}\n</think>\n\n" if mode == "think" else empty) + index.sid_text(target)
        rows.append(_row(question, answer, "rec_sid", mode, history=history, targets=[target], index=index))
    for title in TITLES[:4]:
        rows.append(
            _row(
                f"Say something about {title}.",
                empty + f"A {title} is used in laboratories.",
                "text",
                "no_think",
            )
        )
    return rows


def make_task_dataset(out: Path, index) -> Path:
    """Save a DatasetDict with train/validation/test splits to `out`; returns `out`."""
    rows = make_rows(index)
    data = datasets.Dataset.from_list(rows)
    split = {
        "train": data,
        "validation": data.select(range(0, len(data), 4)),
        "test": data.select(range(1, len(data), 4)),
    }
    datasets.DatasetDict(split).save_to_disk(str(out))
    return out


def build_world(root: Path, make_tiny_model) -> dict[str, Path]:
    """A base model without itemic tokens, one with them, the index, items.parquet and the task data."""
    index = make_index()
    root.mkdir(parents=True, exist_ok=True)
    index_path = root / "item_index.json"
    index.save(index_path)
    import pyarrow as pa
    import pyarrow.parquet as pq

    items_path = root / "items.parquet"
    pq.write_table(pa.table({"item_id": ITEM_IDS, "title": TITLES}), items_path)
    return {
        "items": items_path,
        "base": make_tiny_model(),
        "itemic": make_tiny_model(itemic_tokens=index.itemic_tokens()),
        "index": index_path,
        "tasks": make_task_dataset(root / "tasks", index),
    }
