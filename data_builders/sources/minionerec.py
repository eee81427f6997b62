"""MiniOneRec CSV layout: `train|valid|test/<name>*.csv`, `info/<name>*.txt`, `index/<name>*.{index,item}.json`.

Each CSV row is already an example: `user_id, history_item_id` (a Python-literal list, at
most 10 items), `item_id` (the target), plus titles and SIDs. Two things come out of it:

- `given_splits`: the rows themselves in the split-row contract, so `split: given`
  reproduces MiniOneRec's published protocol exactly (same histories, same targets);
- canonical interactions reconstructed per user by chaining the windows (train, then valid,
  then test; file order within each): each row's history is overlapped with the sequence
  so far and the new items plus the target are appended. The CSVs carry no times, so the
  position in the reconstructed sequence is the timestamp (an ordinal, as for LC-Rec).

Rows naming an item absent from the catalogue are counted (`unknown_item`) and left out.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import polars as pl
import pyarrow as pa

from data_builders.sources.common import (
    DataError,
    DropCounter,
    Loaded,
    find_file,
    interactions_table,
    items_table,
    read_item_catalogue,
)
from data_builders.splits import SPLIT_SCHEMA

SPLIT_FOLDERS = ("train", "valid", "test")
REQUIRED = ("user_id", "history_item_id", "item_id")


def _parse_id_list(cell: str) -> list[str] | None:
    try:
        value = json.loads(cell)
    except (json.JSONDecodeError, TypeError):
        try:
            value = ast.literal_eval(cell)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    if not isinstance(value, (list, tuple)) or any(isinstance(v, (list, dict)) or v is None for v in value):
        return None
    return [str(v) for v in value]


def _overlap(seq: list[str], history: list[str]) -> int:
    """Largest k with seq[-k:] == history[:k]: how much of `history` the sequence already ends with."""
    for k in range(min(len(seq), len(history)), 0, -1):
        if seq[-k:] == history[:k]:
            return k
    return 0


def _read_catalogue(folder: Path, name: str, drops: DropCounter) -> tuple[list[dict], str | None]:
    index_dir = folder / "index"
    item_json = sorted(index_dir.glob(f"{name}*.item.json")) if index_dir.is_dir() else []
    index_json = sorted(index_dir.glob(f"{name}*.index.json")) if index_dir.is_dir() else []
    published = str(index_json[0]) if index_json else None
    if item_json:
        records = read_item_catalogue(item_json[0], drops)
        return records, published
    info = find_file(folder / "info", [f"{name}*.txt"], "MiniOneRec item info")
    records = []
    with open(info, encoding="utf-8", errors="strict") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                drops.add("malformed_row", where=f"{info}:{lineno}: expected SID<TAB>title<TAB>item_id")
                continue
            records.append({"item_id": parts[2], "title": parts[1], "sid": parts[0]})
    return records, published


def load_minionerec(path: str, name: str = "", strict: bool = False) -> Loaded:
    """Load every split folder present (MiniOneRec CSVs); at least one CSV is required.

    Options:
        path: folder holding `train/`, `valid/`, `test/` CSVs, `info/` and `index/`
        name: file-name prefix when the folders hold several data sets
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"MiniOneRec folder not found: {folder}")
    drops = DropCounter(strict)
    records, published = _read_catalogue(folder, name, drops)
    known = {r["item_id"] for r in records}

    sequences: dict[str, list[str]] = {}
    given: dict[str, dict[str, list]] = {}
    for split in SPLIT_FOLDERS:
        split_dir = folder / split
        if not split_dir.is_dir():
            continue
        csv_path = find_file(split_dir, [f"{name}*.csv"], f"MiniOneRec {split} CSV")
        try:
            frame = pl.read_csv(csv_path, infer_schema=False)
        except Exception as err:  # polars raises ComputeError / NoDataError variants
            raise DataError(f"{csv_path}: cannot read as CSV: {err}") from err
        missing = [c for c in REQUIRED if c not in frame.columns]
        if missing:
            raise DataError(f"{csv_path}: missing column(s) {missing}; the file has {frame.columns}")
        rows = given.setdefault(split, {name: [] for name in SPLIT_SCHEMA.names})
        for lineno, (user, hist_cell, target) in enumerate(frame.select(REQUIRED).iter_rows(), start=2):
            history = _parse_id_list(hist_cell) if hist_cell is not None else None
            if user is None or target is None or history is None:
                drops.add("malformed_row", where=f"{csv_path}:{lineno}: unreadable user, history or target")
                continue
            unknown = [i for i in [*history, target] if i not in known] if known else []
            if unknown:
                drops.add(
                    "unknown_item", where=f"{csv_path}:{lineno}: item(s) {unknown} not in the catalogue"
                )
                continue
            seq = sequences.setdefault(user, [])
            seq.extend(history[_overlap(seq, history) :])
            target_pos = len(seq)
            seq.append(target)
            rows["user_id"].append(user)
            rows["history"].append(history)
            rows["history_ts"].append(list(range(target_pos - len(history), target_pos)))
            rows["target"].append(target)
            rows["target_ts"].append(target_pos)
            rows["target_event"].append("interact")
    if not given:
        raise DataError(f"{folder}: no train/, valid/ or test/ folder with a CSV")

    users, items, positions = [], [], []
    for user, seq in sequences.items():
        users.extend([user] * len(seq))
        items.extend(seq)
        positions.extend(range(len(seq)))
    interactions = interactions_table(
        pl.DataFrame(
            {"user_id": users, "item_id": items, "timestamp": positions},
            schema={"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64},
        )
    )
    given_splits = {split: pa.table(cols, schema=SPLIT_SCHEMA) for split, cols in given.items()}
    extra = {"order_only": True, "drop_examples": drops.examples}
    if published:
        extra["published_index_path"] = published
    return Loaded(interactions, items_table(records), drops.counts, given_splits, extra)
