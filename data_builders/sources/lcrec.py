"""LC-Rec / LETTER JSON layout: `<name>.inter.json`, `<name>.item.json`, optional `<name>.*index.json`.

`inter.json` maps a user index to its item indices in time order, with no timestamps: the
position in the list becomes an ordinal timestamp (0, 1, 2, ...), which keeps the order and
is all leave-one-out needs. A published semantic-ID index beside it is passed on in
`extra["published_index_path"]` for `ItemIndex.from_published_json`.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from data_builders.sources.common import (
    DataError,
    DropCounter,
    Loaded,
    find_file,
    interactions_table,
    items_table,
    read_item_catalogue,
    read_json_file,
)


def load_lcrec(path: str, name: str | None = None, index: str | None = None, strict: bool = False) -> Loaded:
    """Load `<path>/<name>.inter.json` + `.item.json` (LC-Rec / LETTER JSON).

    Options:
        path: folder holding `<name>.inter.json` and `<name>.item.json`
        name: file stem when the folder holds several data sets (default: the only one)
        index: published SID index to pass on, e.g. `rkmeans_zcr` (default: the only or first one)
    """
    folder = Path(path)
    prefix = f"{name}." if name else ""
    inter_path = find_file(folder, [f"{prefix}inter.json", f"{prefix}*inter.json"], "LC-Rec interactions")
    stem = inter_path.name[: -len("inter.json")]
    item_path = find_file(folder, [f"{stem}item.json"], "LC-Rec items")
    drops = DropCounter(strict)

    sequences = read_json_file(inter_path)
    if not isinstance(sequences, dict):
        raise DataError(f"{inter_path}: expected {{user: [items...]}}, got {type(sequences).__name__}")
    users: list[str] = []
    items: list[str] = []
    positions: list[int] = []
    for user, seq in sequences.items():
        if not isinstance(seq, list):
            drops.add("malformed_row", where=f"{inter_path}: user {user!r} has no item list")
            continue
        for pos, item in enumerate(seq):
            if item is None or isinstance(item, (dict, list)):
                drops.add("malformed_row", where=f"{inter_path}: user {user!r} position {pos}: {item!r}")
                continue
            users.append(str(user))
            items.append(str(item))
            positions.append(pos)
    interactions = interactions_table(
        pl.DataFrame({"user_id": users, "item_id": items, "timestamp": positions})
    )

    records = read_item_catalogue(item_path, drops)

    extra: dict = {"order_only": True, "drop_examples": drops.examples}
    index_files = sorted(folder.glob(f"{stem}*index.json"))
    if index:
        index_files = [p for p in index_files if index in p.name[len(stem) :]]
        if not index_files:
            raise DataError(f"no published index matching {index!r} beside {inter_path}")
    if index_files:
        extra["published_index_path"] = str(index_files[0])
        extra["published_index_paths"] = [str(p) for p in index_files]
    return Loaded(interactions, items_table(records), drops.counts, None, extra)
