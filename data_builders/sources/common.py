"""What every loader shares: the `Loaded` result, drop counting, the canonical schemas, file helpers."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from data_builders.text import normalize_list_field, normalize_text
from onereason.errors import InputError

INTERACTION_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("timestamp", pa.int64()),
        ("event", pa.string()),
        ("weight", pa.float64()),
    ]
)
INTERACTION_COLUMNS = INTERACTION_SCHEMA.names
# Item columns with a fixed type; any other column is a free attribute.
ITEM_TYPES = {
    "item_id": pa.string(),
    "title": pa.string(),
    "description": pa.string(),
    "brand": pa.string(),
    "categories": pa.list_(pa.string()),
    "price": pa.float64(),
}
TEXT_COLUMNS = ("title", "description", "brand")
# Drop reasons that mean "the input was bad" (strict mode fails on these), as opposed to
# drops the config asked for (k-core, event filters, minimum history).
BAD_INPUT_REASONS = frozenset({"malformed_row", "non_utf8_row", "unknown_item", "missing_value"})


class DataError(InputError):
    """Input that cannot be loaded as asked; the message names the file, row or field (exit code 1)."""


@dataclass
class Loaded:
    """One source, converted: canonical tables, drop counts, and an optional given split."""

    interactions: pa.Table
    items: pa.Table
    drops: dict[str, int] = field(default_factory=dict)
    given_splits: dict[str, pa.Table] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class DropCounter:
    """Counts dropped rows per reason; in strict mode a bad-input drop raises instead.

    `where` names the file and row so the strict error (and the first examples kept for the
    report) point at the offending line.
    """

    def __init__(self, strict: bool = False, max_examples: int = 5):
        self.strict = strict
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self.max_examples = max_examples

    def add(self, reason: str, n: int = 1, where: str = "") -> None:
        if n <= 0:
            return
        if self.strict and reason in BAD_INPUT_REASONS:
            raise DataError(
                f"{reason.replace('_', ' ')} at {where or 'input'} (strict mode; set strict: false to count and drop such rows)"
            )
        self.counts[reason] = self.counts.get(reason, 0) + n
        if where:
            examples = self.examples.setdefault(reason, [])
            if len(examples) < self.max_examples:
                examples.append(where)

    def merge(self, counts: dict[str, int], examples: dict[str, list[str]] | None = None) -> None:
        """Add counts already taken (a loader's) without re-checking strict mode."""
        for reason, n in counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
        for reason, wheres in (examples or {}).items():
            kept = self.examples.setdefault(reason, [])
            kept.extend(wheres[: self.max_examples - len(kept)])


def require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    return path


def find_file(folder: str | Path, patterns: list[str], what: str) -> Path:
    """The single file in `folder` matching the first pattern that matches anything."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{what}: folder not found: {folder}")
    for pattern in patterns:
        hits = sorted(folder.glob(pattern))
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise DataError(
                f"{what}: several files match {pattern!r} in {folder}: {[h.name for h in hits]}; set `name`"
            )
    raise DataError(f"{what}: no file matching {' or '.join(patterns)} in {folder}")


def open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def iter_lines(path: Path, drops: DropCounter, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(line number, text) for each non-empty line; lines that are not valid `encoding` are counted drops.

    Shows a progress bar in bytes on a terminal (files of millions of reviews take a while).
    """
    from tqdm.auto import tqdm

    with (
        open(path, "rb") as raw_file,
        tqdm(
            total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, disable=None, leave=False
        ) as bar,
    ):
        f = gzip.open(raw_file, "rb") if path.suffix == ".gz" else raw_file
        last = 0
        for lineno, raw in enumerate(f, start=1):
            if lineno % 10_000 == 0:
                bar.update(raw_file.tell() - last)
                last = raw_file.tell()
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as err:
                drops.add("non_utf8_row", where=f"{path}:{lineno}: {err.reason} at byte {err.start}")
                continue
            if line.strip():
                yield lineno, line


def iter_json_lines(path: Path, drops: DropCounter) -> Iterator[tuple[int, dict]]:
    """Parsed JSON objects of a json-lines file (gzipped or not); bad lines are counted drops.

    Older Amazon dumps hold Python dict literals rather than JSON; those are read with
    `ast.literal_eval` (safe: literals only).
    """
    import ast

    for lineno, line in iter_lines(path, drops):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            try:
                record = ast.literal_eval(line.strip())
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                drops.add("malformed_row", where=f"{path}:{lineno}: not JSON")
                continue
        if not isinstance(record, dict):
            drops.add("malformed_row", where=f"{path}:{lineno}: not a JSON object")
            continue
        yield lineno, record


def read_json_file(path: Path) -> Any:
    try:
        with open_binary(path) as f:
            return json.loads(f.read().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err


def read_item_catalogue(path: Path, drops: DropCounter) -> list[dict[str, Any]]:
    """Item records from a JSON catalogue `{item_id: {title, ...}}` (the LC-Rec and MiniOneRec
    `.item.json`); an entry that is not an object is dropped and counted."""
    catalogue = read_json_file(path)
    if not isinstance(catalogue, dict):
        raise DataError(f"{path}: expected {{item: {{title, ...}}}}, got {type(catalogue).__name__}")
    records = []
    for item_id, fields in catalogue.items():
        if not isinstance(fields, dict):
            drops.add("malformed_row", where=f"{path}: item {item_id!r} is not an object")
            continue
        records.append(
            {
                "item_id": str(item_id),
                "title": fields.get("title"),
                **{k: v for k, v in fields.items() if k != "title"},
            }
        )
    return records


def interactions_table(df: pl.DataFrame) -> pa.Table:
    """Canonical interactions from a polars frame with at least user_id, item_id, timestamp."""
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in df.columns]
    if missing:
        raise DataError(f"interactions lack column(s) {missing}")
    if "event" not in df.columns:
        df = df.with_columns(pl.lit("interact").alias("event"))
    if "weight" not in df.columns:
        df = df.with_columns(pl.lit(1.0).alias("weight"))
    df = df.select(
        pl.col("user_id").cast(pl.String),
        pl.col("item_id").cast(pl.String),
        pl.col("timestamp").cast(pl.Int64),
        pl.col("event").cast(pl.String).fill_null("interact"),
        pl.col("weight").cast(pl.Float64).fill_null(1.0),
    )
    return df.to_arrow().cast(INTERACTION_SCHEMA)


def drop_null_keys(df: pl.DataFrame, drops: DropCounter, where: str) -> pl.DataFrame:
    """Rows whose user, item or timestamp is missing (or failed to parse) are counted `malformed_row`."""
    keys = [c for c in ("user_id", "item_id", "timestamp") if c in df.columns]
    bad = df.select(pl.any_horizontal([pl.col(c).is_null() for c in keys]).sum()).item()
    if bad:
        first = (
            df.with_row_index("_row")
            .filter(pl.any_horizontal([pl.col(c).is_null() for c in keys]))
            .row(0, named=True)
        )
        lacking = " and ".join(c.replace("_id", "") for c in keys if first[c] is None)
        drops.add(
            "malformed_row",
            n=bad,
            where=f"{where}: row {first['_row'] + 1} (first of {bad}) has no valid {lacking}",
        )
        df = df.drop_nulls(keys)
    return df


# Seconds since the epoch beyond this (about year 5138) are not a timestamp in seconds:
# they are milliseconds or finer read with the wrong unit, or garbage.
MAX_SECONDS = 10**11


def seconds_column(values: pl.Expr, scale: int = 1) -> pl.Expr:
    """Numbers (or numeric strings) divided by `scale` -> int64 seconds; NaN, inf, junk and
    values that cannot be seconds (beyond `MAX_SECONDS`) become null, to be counted as malformed."""
    x = values.cast(pl.Float64, strict=False) / scale
    ok = x.is_finite() & (x.abs() < MAX_SECONDS)
    return pl.when(ok).then(x.floor()).otherwise(None).cast(pl.Int64)


def check_text_encoding(raw: bytes, path: Path) -> None:
    """A clear error for UTF-16/32 files (byte-order mark or NUL bytes) read as UTF-8."""
    boms = {
        b"\xff\xfe\x00\x00": "UTF-32",
        b"\x00\x00\xfe\xff": "UTF-32",
        b"\xff\xfe": "UTF-16",
        b"\xfe\xff": "UTF-16",
    }
    name = next((n for bom, n in boms.items() if raw.startswith(bom)), "")
    if not name and b"\x00" in raw[:4096]:
        name = "UTF-16"
    if name:
        raise DataError(
            f"{path}: the file is {name}, not UTF-8; save it as UTF-8 or set encoding: {name.lower()} "
            "in source_options"
        )


def items_table(records: list[dict[str, Any]] | pl.DataFrame) -> pa.Table:
    """Canonical items: text normalised, categories as list<string>, price as float, ids unique."""
    rows = records.to_dicts() if isinstance(records, pl.DataFrame) else records
    columns: dict[str, list] = {}
    names: list[str] = ["item_id", "title"]
    for row in rows:
        for key in row:
            if key not in names:
                names.append(key)
    for name in names:
        values = [row.get(name) for row in rows]
        if name == "item_id":
            values = [str(v) for v in values]
        elif name in TEXT_COLUMNS:
            values = [normalize_text(v) for v in values]
        elif name == "categories":
            values = [normalize_list_field(v) for v in values]
        elif name == "price":
            values = [parse_price(v) for v in values]
        columns[name] = values
    arrays = {}
    for name, values in columns.items():
        if name in ITEM_TYPES:
            arrays[name] = pa.array(values, type=ITEM_TYPES[name])
        else:
            arrays[name] = _attribute_array(values)
    table = pa.table(arrays)
    ids = table.column("item_id")
    if pc.count_distinct(ids).as_py() != len(ids):
        raise DataError("item catalogue has duplicate item ids")
    return table


def _attribute_array(values: list) -> pa.Array:
    """A free attribute column: numbers stay numbers, everything else becomes normalised text."""
    kinds = {type(v) for v in values if v is not None}
    if kinds and kinds <= {int, float} and bool not in kinds:
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    if kinds and all(k in (list, tuple) for k in kinds):
        return pa.array([normalize_list_field(v) for v in values], type=pa.list_(pa.string()))
    return pa.array(
        [None if v is None else normalize_text(v if isinstance(v, str) else json.dumps(v)) for v in values],
        type=pa.string(),
    )


def parse_price(value: Any) -> float | None:
    """`12.5`, `"$12.50"`, `"1,299.00"` -> float; ranges, blanks and junk -> None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().replace("$", "").replace(",", "")
    try:
        return float(text)
    except ValueError:
        return None


def items_from_ids(item_ids: pa.Array | pa.ChunkedArray) -> pa.Table:
    """A title-less catalogue for sources that ship only interactions (title = "")."""
    ids = pc.unique(item_ids).cast(pa.string())
    ids = ids.take(pc.sort_indices(ids))
    return pa.table({"item_id": ids, "title": pa.array([""] * len(ids), type=pa.string())})
