"""Checks `onereason build-tasks` runs before building anything (cheap: file headers and id columns).

    config, safety = parse_config([BuildTasksConfig, SafetyArguments], argv)
    check_task_inputs(config, safety)

Refuses, with one line naming the file and what to do: a missing or incomplete build-data
folder, an unreadable item index, mixture or tokenizer, an output folder that would eat an
input or a user's folder, an index whose SIDs collide, and an index that does not know
more than `max_unknown_share` of the catalogue items or of the users' targets.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from onereason.consistency import (
    SafetyArguments,
    check_collisions,
    check_unknown,
    load_index,
    require_path,
)
from onereason.errors import InputError
from onereason.io import check_output_dir

SPLIT_FILES = ("train", "valid", "test")


def _column(path: Path, name: str) -> list:
    try:
        table = pq.read_table(path, columns=[name])
    except Exception as err:  # pyarrow raises several types for a bad file
        raise InputError(
            f"{path}: cannot read it as a Parquet table with a {name!r} column ({err})"
        ) from None
    return table.column(name).to_pylist()


def check_task_inputs(config, safety: SafetyArguments) -> None:
    """Validate a `BuildTasksConfig` before the build; raises InputError / UsageError."""
    hint = "run `onereason build-data` first and pass its out_dir"
    data_dir = require_path(config.data_dir, "data_dir", "dir", hint)
    items_path = require_path(data_dir / "items.parquet", "items table", "file", hint)
    for split in SPLIT_FILES:
        require_path(data_dir / "splits" / f"{split}.parquet", "split", "file", hint)
    index = load_index(config.item_index)
    if config.mixture:
        require_path(config.mixture, "mixture", "file")
        import yaml

        with open(config.mixture, encoding="utf-8") as f:
            yaml.safe_load(f)  # a syntax error names the file and line
    if config.tokenizer:
        require_path(config.tokenizer, "tokenizer", "dir")
    if config.truth_dir:
        require_path(config.truth_dir, "truth_dir", "dir")
    inputs = [config.data_dir, config.item_index, config.mixture, config.tokenizer, config.truth_dir]
    check_output_dir(config.out_dir, inputs=inputs, overwrite=safety.overwrite)

    check_collisions(index, f"item_index {config.item_index}", safety.allow_unknown)
    items = _column(items_path, "item_id")
    unknown = [i for i in items if i not in index]
    check_unknown(
        "catalogue items", len(unknown), len(items), f"{items_path} vs item_index {config.item_index}",
        unknown, safety.allow_unknown, safety.max_unknown_share,
    )  # fmt: skip
    test = data_dir / "splits" / "test.parquet"
    users = _column(test, "user_id")
    targets = _column(test, "target")
    lost = [u for u, t in zip(users, targets) if t not in index]
    check_unknown(
        "test users (their target item)", len(lost), len(users), f"{test} vs item_index {config.item_index}",
        lost, safety.allow_unknown, safety.max_unknown_share,
    )  # fmt: skip
