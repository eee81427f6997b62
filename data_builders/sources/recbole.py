"""RecBole atomic files: `<name>.inter`, `<name>.item` (and `<name>.user`), tab-separated with typed headers.

A header reads `user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float`. Types:
`token` (a string), `token_seq` (space-separated strings), `float`, `float_seq`. Field names
differ between data sets (`movie_title`, `class`), so they are options with usual defaults.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from data_builders.sources.common import (
    DataError,
    DropCounter,
    Loaded,
    drop_null_keys,
    find_file,
    interactions_table,
    items_from_ids,
    items_table,
    iter_lines,
    seconds_column,
)

TITLE_FIELDS = ("title", "movie_title", "item_name", "name")
CATEGORY_FIELDS = ("categories", "category", "class", "genre", "genres")


def read_atomic(path: Path, drops: DropCounter) -> tuple[list[str], dict[str, str], list[list[str]]]:
    """(field names, field -> type, rows of strings) of one atomic file; ragged rows counted."""
    lines = iter_lines(path, drops)
    try:
        _, header = next(lines)
    except StopIteration as err:
        raise DataError(f"{path}: empty file (a RecBole atomic file starts with a typed header)") from err
    names, types = [], {}
    for column in header.rstrip("\r\n").split("\t"):
        if ":" not in column:
            raise DataError(
                f"{path}: header field {column!r} has no type (expected name:token, name:float, ...)"
            )
        name, kind = column.rsplit(":", 1)
        names.append(name)
        types[name] = kind
    rows = []
    for lineno, line in lines:
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) != len(names):
            drops.add("malformed_row", where=f"{path}:{lineno}: {len(parts)} fields, header has {len(names)}")
            continue
        rows.append(parts)
    return names, types, rows


def _convert(value: str, kind: str):
    if kind == "token_seq":
        return [v for v in value.split(" ") if v]
    if kind == "float":
        try:
            return float(value) if value else None
        except ValueError:
            return None
    if kind == "float_seq":
        return [float(v) for v in value.split(" ") if v]
    return value


def load_recbole(
    path: str,
    name: str = "",
    user_field: str = "user_id",
    item_field: str = "item_id",
    time_field: str = "timestamp",
    rating_field: str = "rating",
    strict: bool = False,
) -> Loaded:
    """RecBole atomic files.

    Options:
        path: folder holding `<name>.inter` and `<name>.item`
        name: file stem when the folder holds several data sets (default: the only `.inter` file)
        user_field: `.inter` field naming the user
        item_field: `.inter` and `.item` field naming the item
        time_field: `.inter` field holding the time (absent: the file order is the time)
        rating_field: `.inter` field holding the rating (the weight)
    """
    folder = Path(path)
    drops = DropCounter(strict)
    inter_path = find_file(
        folder, [f"{name}.inter", f"{name}*.inter"] if name else ["*.inter"], "RecBole interactions"
    )
    names, types, rows = read_atomic(inter_path, drops)
    for required in (user_field, item_field):
        if required not in names:
            raise DataError(f"{inter_path}: no {required!r} field; header has {names}")
    columns = {n: [r[i] for r in rows] for i, n in enumerate(names)}
    df = pl.DataFrame(
        {"user_id": columns[user_field], "item_id": columns[item_field]},
        schema={"user_id": pl.String, "item_id": pl.String},
    )
    if time_field in names:
        # NaN, inf and junk become null and are counted as malformed rows below.
        df = df.with_columns(seconds_column(pl.Series("timestamp", columns[time_field])).alias("timestamp"))
    else:  # order-only logs: the row position is the timestamp
        df = df.with_row_index("timestamp").with_columns(pl.col("timestamp").cast(pl.Int64))
    if rating_field in names:
        df = df.with_columns(
            pl.Series("weight", columns[rating_field]).cast(pl.Float64, strict=False),
            pl.lit("rating").alias("event"),
        )
    df = drop_null_keys(
        df.with_columns(pl.col("user_id").replace("", None), pl.col("item_id").replace("", None)),
        drops,
        str(inter_path),
    )
    table = interactions_table(df)

    item_files = sorted(folder.glob(f"{inter_path.stem}.item"))
    if item_files:
        names, types, rows = read_atomic(item_files[0], drops)
        if item_field not in names:
            raise DataError(f"{item_files[0]}: no {item_field!r} field; header has {names}")
        title_field = next((f for f in TITLE_FIELDS if f in names), None)
        category_field = next((f for f in CATEGORY_FIELDS if f in names), None)
        records = []
        for row in rows:
            record = {}
            for n, value in zip(names, row):
                converted = _convert(value, types[n])
                if n == item_field:
                    record["item_id"] = value
                elif n == title_field:
                    record["title"] = " ".join(converted) if isinstance(converted, list) else converted
                elif n == category_field:
                    record["categories"] = converted
                else:
                    record[n] = converted
            records.append(record)
        catalogue = items_table(records)
    else:
        catalogue = items_from_ids(table.column("item_id"))
    return Loaded(table, catalogue, drops.counts, None, {"drop_examples": drops.examples})
