"""The two tables of a `onereason build-data` folder, each read in one place.

- `read_items(path)`: the canonical items table (`<out>/items.parquet`; `item_id`, `title`
  required), from the file or its folder;
- `read_split(path)`: one split (`<out>/splits/<split>.parquet`; `user_id`, `history`,
  `target` required), as an Arrow table.

Both check the columns of the contract (docs/ARCHITECTURE.md, "splits on disk") and say
what is missing; builders, training stages and evaluation read the files through them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

ITEMS_FILE = "items.parquet"
ITEM_COLUMNS = ("item_id", "title")
SPLIT_COLUMNS = ("user_id", "history", "target")


def _read(path: Path, what: str, required: Sequence[str], columns: Sequence[str] | None) -> pa.Table:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (run `onereason build-data` first)")
    try:
        table = pq.read_table(path, columns=list(columns) if columns is not None else None)
    except (OSError, pa.ArrowException) as err:
        raise ValueError(f"{path}: cannot read it as a Parquet table ({err})") from None
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {missing} (columns: {table.column_names})")
    return table


def read_items(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """The items table from `items.parquet` or the build-data folder holding it (optionally only `columns`)."""
    path = Path(path)
    if path.is_dir():
        path = path / ITEMS_FILE
    return _read(path, "items table", [c for c in ITEM_COLUMNS if columns is None or c in columns], columns)


def read_split(path: str | Path) -> pa.Table:
    """One split's rows (`user_id`, `history`, `target`, and `history_ts`, … when present)."""
    return _read(Path(path), "split file", SPLIT_COLUMNS, None)
