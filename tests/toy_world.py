"""A tiny, learnable recommendation task for the RL tests and benchmarks (not part of the library).

Each item has a cue word; a prompt names the cue of the item the user wants next, so a
policy can learn the answer from the prompt alone — which is what a short RL run on a
0.3M-parameter model needs to show its reward rising. Rows follow the task-dataset
contract (prompt, completion, task, mode, target_items, target_sids, target_terms,
domain, …), half thinking and half not; domains are the items' first SID code.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import datasets
import numpy as np

from onereason.io import atomic_dir
from onereason.thinking import format_answer, with_switch

CUES = [
    "amber",
    "birch",
    "cobalt",
    "dune",
    "ember",
    "fjord",
    "glacier",
    "harbor",
    "iris",
    "jade",
    "kelp",
    "lotus",
]


def toy_index(n_items: int = 8, levels: tuple[int, ...] = (2, 2, 2)):
    """An `ItemIndex` of `n_items` items with codes enumerating `levels` and three Term IDs each."""
    from onereason.item_index import ItemIndex

    codes = np.array(list(itertools.product(*[range(n) for n in levels]))[:n_items], dtype=np.int64)
    if len(codes) < n_items:
        raise ValueError(f"levels {levels} hold only {len(codes)} codes, fewer than n_items={n_items}")
    item_ids = [f"item{i}" for i in range(n_items)]
    terms = [[f"group {c[0]}", f"kind {c[1]}", CUES[i % len(CUES)]] for i, c in enumerate(codes)]
    return ItemIndex(item_ids, codes, terms=terms)


def toy_rows(index, n_rows: int, think_share: float = 0.5, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for r in range(n_rows):
        k = rng.randrange(len(index))
        item = index.item_ids[k]
        mode = "think" if rng.random() < think_share else "no_think"
        cue = CUES[k % len(CUES)]
        user = with_switch(f"The user keeps asking about {cue}. Which item comes next?", mode)
        sid = index.sid_text(item)
        trace = f"The user likes {cue}." if mode == "think" else None
        rows.append(
            {
                "prompt": [{"role": "user", "content": user}],
                "completion": [{"role": "assistant", "content": format_answer(sid, trace)}],
                "task": "rec_sid",
                "mode": mode,
                "user_id": f"u{r}",
                "history_items": [],
                "target_items": [item],
                "target_sids": [sid],
                "target_terms": index.terms(item),
                "domain": f"group{index.sid(item)[0]}",
            }
        )
    return rows


def write_toy_dataset(
    out_dir: str | Path, index, n_train: int = 64, n_eval: int = 16, think_share: float = 0.5, seed=0
):
    """Save train/validation/test splits of `toy_rows` as a DatasetDict (the build-tasks layout)."""
    splits = {
        "train": toy_rows(index, n_train, think_share, seed),
        "validation": toy_rows(index, n_eval, think_share, seed + 1),
        "test": toy_rows(index, n_eval, think_share, seed + 2),
    }
    with atomic_dir(out_dir) as tmp:
        datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(
            str(tmp)
        )
    return Path(out_dir)


def toy_model(out_dir: str | Path, index, preset: str = "tiny", seed: int = 0) -> Path:
    """A fresh tiny Qwen3 model whose tokenizer has the index's itemic tokens, with the index beside it."""
    from onereason.modeling import init_model

    corpus = [
        r["prompt"][0]["content"] + " " + r["completion"][0]["content"] for r in toy_rows(index, 64)
    ] * 4
    out = init_model(out_dir, corpus, preset=preset, itemic_tokens=index.itemic_tokens(), seed=seed)
    index.save(Path(out) / "item_index.json")
    return Path(out)
