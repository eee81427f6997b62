"""Generic CSV / TSV / Parquet / JSON-lines logs with a column mapping from the data YAML.

    source: tabular
    source_options:
      interactions: logs/events.csv
      columns: {user_id: uid, item_id: sku, timestamp: ts, event: behavior, weight: rating}
      timestamp_unit: ms          # s | ms | us | ns | datetime | order
      items: logs/catalogue.parquet
      item_columns: {item_id: sku, title: name, categories: cat_path}

CSV goes through pyarrow's multi-threaded reader: rows with the wrong number of fields
are counted (`malformed_row`) by its invalid-row handler, lines that are not valid UTF-8 are
counted (`non_utf8_row`) before parsing. This is the path the 5-million-row benchmark takes.
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from data_builders.sources.common import (
    DataError,
    DropCounter,
    Loaded,
    check_text_encoding,
    drop_null_keys,
    interactions_table,
    items_from_ids,
    items_table,
    iter_json_lines,
    open_binary,
    read_json_file,
    require_file,
    seconds_column,
)

TIMESTAMP_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffixes = [s for s in path.suffixes if s != ".gz"]
    ext = suffixes[-1].lstrip(".") if suffixes else ""
    if ext in ("csv", "tsv", "txt"):
        return "csv"
    if ext in ("parquet", "pq"):
        return "parquet"
    if ext in ("jsonl", "ndjson", "json"):
        return "jsonl"
    raise DataError(f"{path}: cannot tell the format from the extension; set format: csv | parquet | jsonl")


def _valid_utf8_bytes(raw: bytes, path: Path, drops: DropCounter) -> bytes:
    """`raw` without the lines that are not UTF-8 (each one counted), or `raw` itself when all are."""
    try:
        raw.decode("utf-8")
        return raw
    except UnicodeDecodeError:
        pass
    kept = []
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            drops.add("non_utf8_row", where=f"{path}:{lineno}: {err.reason} at byte {err.start}")
            continue
        kept.append(line)
    return b"\n".join(kept)


def read_csv(
    path: Path,
    drops: DropCounter,
    delimiter: str = ",",
    encoding: str = "utf-8",
    header: bool = True,
    column_names: list[str] | None = None,
    string_columns: list[str] = (),
) -> pl.DataFrame:
    """A CSV as polars; malformed and non-UTF-8 rows counted (or fatal in strict mode)."""
    with open_binary(path) as f:
        raw = f.read()
    if encoding.lower().replace("-", "") in ("utf8", "utf_8"):
        check_text_encoding(raw, path)
        raw = _valid_utf8_bytes(raw, path, drops)
        encoding = "utf8"
    bad_rows = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad_rows.append(row)
        return "skip"

    read_options = pacsv.ReadOptions(
        encoding=encoding,
        column_names=column_names,
        autogenerate_column_names=not header and not column_names,
    )
    parse_options = pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid)
    try:
        table = pacsv.read_csv(
            io.BytesIO(raw),
            read_options=read_options,
            parse_options=parse_options,
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(string_columns, pa.string()), strings_can_be_null=True
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read as CSV: {err}") from err
    for row in bad_rows:
        drops.add(
            "malformed_row",
            where=f"{path}:{row.number}: expected {row.expected_columns} fields, got {row.actual_columns}",
        )
    return pl.from_arrow(table)


def read_frame(
    path: Path, fmt: str | None, drops: DropCounter, delimiter: str, encoding: str, string_columns: list[str]
) -> pl.DataFrame:
    kind = _format_of(path, fmt)
    if kind == "csv":
        return read_csv(path, drops, delimiter=delimiter, encoding=encoding, string_columns=string_columns)
    if kind == "parquet":
        try:
            return pl.read_parquet(path)
        except Exception as err:  # polars raises several error types for a bad file
            raise DataError(f"{path}: cannot read as Parquet: {err}") from err
    records = _json_array(path)
    if records is None:
        records = [record for _, record in iter_json_lines(path, drops)]
    try:
        return pl.DataFrame(records, infer_schema_length=None) if records else pl.DataFrame()
    except Exception as err:  # mixed types in one field: polars says which
        raise DataError(f"{path}: cannot make a table of its JSON lines: {err}") from err


def _json_array(path: Path) -> list[dict] | None:
    """The records of a file holding one JSON array of objects; None for JSON lines."""
    with open_binary(path) as f:
        head = f.read(4096)
    check_text_encoding(head, path)
    if not head.lstrip().startswith(b"["):
        return None
    data = read_json_file(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects or JSON lines")
    bad = next((i for i, r in enumerate(data) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"{path}: element {bad} of the JSON array is not an object: {str(data[bad])[:60]!r}")
    return data


def _rename(df: pl.DataFrame, mapping: dict[str, str], path: Path, required: list[str]) -> pl.DataFrame:
    """Select and rename mapped columns; a missing one is an error naming the file and its columns."""
    missing = [f"{canon} <- {src}" for canon, src in mapping.items() if src not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the file has {df.columns}")
    absent = [c for c in required if c not in mapping]
    if absent:
        raise DataError(f"{path}: no column mapped to {absent}; set columns: {{{absent[0]}: <name>}}")
    keep = {src: canon for canon, src in mapping.items()}
    extras = (
        [c for c in df.columns if c not in keep] if "item_id" in mapping and "user_id" not in mapping else []
    )
    return df.select([pl.col(src).alias(canon) for src, canon in keep.items()] + [pl.col(c) for c in extras])


def convert_timestamp(df: pl.DataFrame, unit: str, path: Path) -> pl.DataFrame:
    """Timestamps to int64 seconds (`order`: the row's position in the file, per user order kept)."""
    if unit == "order":
        return df.with_row_index("timestamp").with_columns(pl.col("timestamp").cast(pl.Int64))
    if "timestamp" not in df.columns:
        raise DataError(f"{path}: no timestamp column mapped; map one or set timestamp_unit: order")
    col = pl.col("timestamp")
    if unit == "datetime":
        parsed = col.cast(pl.String).str.to_datetime(strict=False, time_zone="UTC").dt.epoch("s")
        return df.with_columns(parsed.alias("timestamp"))
    if unit not in TIMESTAMP_UNITS:
        raise DataError(f"timestamp_unit: unknown unit {unit!r}; choose s, ms, us, ns, datetime or order")
    # NaN, inf, junk and values too large for the unit become null: counted as malformed rows.
    return df.with_columns(seconds_column(col, TIMESTAMP_UNITS[unit]).alias("timestamp"))


def load_tabular(
    interactions: str,
    columns: dict[str, str] | None = None,
    items: str | None = None,
    item_columns: dict[str, str] | None = None,
    format: str | None = None,
    item_format: str | None = None,
    delimiter: str = ",",
    encoding: str = "utf-8",
    timestamp_unit: str = "s",
    event: str = "interact",
    strict: bool = False,
) -> Loaded:
    """Load a log file (and optionally a catalogue file) with canonical names mapped from source ones.

    Options:
        interactions: log file (CSV, TSV, Parquet or JSON lines, gzipped or not)
        columns: canonical name -> log column, e.g. {user_id: uid, item_id: sku, timestamp: ts}
        items: catalogue file (default: items with their ids only)
        item_columns: canonical name -> catalogue column, e.g. {item_id: sku, title: name}
        format: csv | parquet | jsonl (default: from the extension)
        item_format: format of the catalogue file (default: from the extension)
        delimiter: CSV field separator
        encoding: text encoding of CSV and JSON files
        timestamp_unit: s | ms | us | ns | datetime | order (the file order is the time)
        event: event name of every row when the log has no event column
    """
    path = require_file(interactions, "interactions file")
    drops = DropCounter(strict)
    mapping = dict(columns or {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"})
    if timestamp_unit == "order":
        mapping.pop("timestamp", None)
    id_columns = [mapping[c] for c in ("user_id", "item_id") if c in mapping]
    df = read_frame(path, format, drops, delimiter, encoding, id_columns)
    df = _rename(df, mapping, path, ["user_id", "item_id"])
    df = convert_timestamp(df, timestamp_unit, path)
    if "event" not in df.columns:
        df = df.with_columns(pl.lit(event).alias("event"))
    if "weight" in df.columns:
        df = df.with_columns(pl.col("weight").cast(pl.Float64, strict=False))
    df = drop_null_keys(df, drops, str(path))
    table = interactions_table(df)

    if items:
        item_path = require_file(items, "items file")
        item_mapping = dict(item_columns or {"item_id": "item_id", "title": "title"})
        item_df = read_frame(
            item_path, item_format, drops, delimiter, encoding, [item_mapping.get("item_id", "item_id")]
        )
        item_df = _rename(item_df, item_mapping, item_path, ["item_id"])
        if "title" not in item_df.columns:
            item_df = item_df.with_columns(pl.lit("").alias("title"))
        item_df = item_df.filter(pl.col("item_id").is_not_null()).unique(
            "item_id", keep="first", maintain_order=True
        )
        catalogue = items_table(item_df)
    else:
        catalogue = items_from_ids(table.column("item_id"))
    return Loaded(table, catalogue, drops.counts, None, {"drop_examples": drops.examples})
