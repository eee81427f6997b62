"""Prediction examples from cleaned sequences: leave-one-out, global sliding windows, or a given split.

Each example is one target interaction with the (capped) history before it, in the
split-row contract of docs/ARCHITECTURE.md. Splitting is done in two passes so memory
stays at the size of the interaction table however many users there are:

1. `assign_roles` adds one small integer column: which split (if any) each interaction is
   the *target* of. Leave-one-out looks at the position in the user's sequence; sliding
   ranks all candidate targets globally by time (MiniOneRec's 8:1:1).
2. `write_splits` walks the table in chunks of whole users, gathers each target's history
   with vectorised index arithmetic (no Python loop per user), and appends the rows to one
   Parquet file per split. Statistics are accumulated on the way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_builders.sources.common import DataError

SPLITS = ("train", "valid", "test")
NONE, TRAIN, VALID, TEST = -1, 0, 1, 2
SPLIT_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("history", pa.list_(pa.string())),
        ("history_ts", pa.list_(pa.int64())),
        ("target", pa.string()),
        ("target_ts", pa.int64()),
        ("target_event", pa.string()),
    ]
)
METHODS = ("leave_one_out", "sliding", "given")


def _positions(df: pl.DataFrame) -> pl.DataFrame:
    """Position of each row in its user's sequence (0-based) and the sequence length; `df` is user-sorted."""
    return df.with_columns(
        pl.int_range(pl.len()).over("user_id").alias("_pos"),
        pl.len().over("user_id").alias("_len"),
    )


def assign_roles(
    df: pl.DataFrame,
    method: str = "leave_one_out",
    valid_ratio: float = 0.1,
    test_ratio: float = 0.1,
    given_targets: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Add `_role` (-1 none, 0 train, 1 valid, 2 test): the split this row is the target of.

    A row at position 0 is never a target (an example needs at least one history item).
    - leave_one_out: last -> test, second to last -> valid, earlier -> train.
    - sliding: every position >= 1 is a window; windows ranked by (target time, user, position)
      across all users; the first (1 - valid - test) are train, then valid, then test.
    - given: the source fixed valid/test (`given_targets`: user_id, first_ts = the user's
      earliest given target time); rows strictly before it are train, later rows no target.
    """
    if method not in METHODS:
        raise DataError(f"split: unknown method {method!r}; choose from {METHODS}")
    df = _positions(df)
    pos, n = pl.col("_pos"), pl.col("_len")
    if method == "leave_one_out":
        role = (
            pl.when(pos == 0)
            .then(NONE)
            .when(pos == n - 1)
            .then(TEST)
            .when(pos == n - 2)
            .then(VALID)
            .otherwise(TRAIN)
        )
        return df.with_columns(role.cast(pl.Int8).alias("_role"))
    if method == "sliding":
        if not (0 <= valid_ratio < 1 and 0 <= test_ratio < 1 and valid_ratio + test_ratio < 1):
            raise DataError(
                f"sliding split: valid_ratio={valid_ratio}, test_ratio={test_ratio} must be in [0, 1) and sum below 1"
            )
        df = df.with_row_index("_row")
        candidates = df.filter(pos >= 1).select("_row", "timestamp", "user_id", "_pos")
        total = candidates.height
        train_end = int(total * (1 - valid_ratio - test_ratio))
        valid_end = int(total * (1 - test_ratio))
        ranked = candidates.sort(["timestamp", "user_id", "_pos"]).with_row_index("_rank")
        ranked = ranked.select(
            "_row",
            pl.when(pl.col("_rank") < train_end)
            .then(TRAIN)
            .when(pl.col("_rank") < valid_end)
            .then(VALID)
            .otherwise(TEST)
            .cast(pl.Int8)
            .alias("_role"),
        )
        df = df.join(ranked, on="_row", how="left", maintain_order="left")
        return df.with_columns(pl.col("_role").fill_null(NONE)).drop("_row")
    if given_targets is None:
        raise DataError(
            "split: given needs a source that ships its own split (given_splits), e.g. minionerec"
        )
    df = df.join(given_targets.select("user_id", "first_ts"), on="user_id", how="left", maintain_order="left")
    before = pl.col("first_ts").is_null() | (pl.col("timestamp") < pl.col("first_ts"))
    role = pl.when((pos >= 1) & before).then(TRAIN).otherwise(NONE)
    return df.with_columns(role.cast(pl.Int8).alias("_role")).drop("first_ts")


class SplitStats:
    """Per-split users, items and rows plus the history-length histogram, accumulated chunk by chunk."""

    def __init__(self, n_users: int, n_items: int, max_history: int):
        self.users = {s: np.zeros(n_users, dtype=bool) for s in SPLITS}
        self.targets = {s: np.zeros(n_items, dtype=bool) for s in SPLITS}
        self.items = {s: np.zeros(n_items, dtype=bool) for s in SPLITS}
        self.rows = dict.fromkeys(SPLITS, 0)
        self.hist = {s: np.zeros(max_history + 1, dtype=np.int64) for s in SPLITS}

    def add(self, split: str, user_codes, target_codes, history_codes, history_lengths) -> None:
        self.rows[split] += len(target_codes)
        self.users[split][user_codes] = True
        self.targets[split][target_codes] = True
        self.items[split][target_codes] = True
        self.items[split][history_codes] = True
        self.hist[split] += np.bincount(history_lengths, minlength=len(self.hist[split]))[
            : len(self.hist[split])
        ]

    def to_dict(self) -> dict:
        out = {}
        for s in SPLITS:
            hist = self.hist[s]
            total = int(hist.sum())
            out[s] = {
                "examples": self.rows[s],
                "interactions": self.rows[s],
                "users": int(self.users[s].sum()),
                "items": int(self.items[s].sum()),
                "target_items": int(self.targets[s].sum()),
                "history_length": {
                    "mean": round(float((np.arange(len(hist)) * hist).sum() / total), 4) if total else 0.0,
                    "histogram": {str(k): int(v) for k, v in enumerate(hist) if v},
                },
            }
        return out


def _chunk_bounds(user_codes: np.ndarray, chunk_rows: int) -> list[tuple[int, int]]:
    """Row ranges of about `chunk_rows` that never cut a user's sequence in two."""
    n = len(user_codes)
    if n == 0:
        return []
    starts = np.flatnonzero(np.r_[True, user_codes[1:] != user_codes[:-1]])
    bounds, begin = [], 0
    while begin < n:
        want = begin + chunk_rows
        if want >= n:
            bounds.append((begin, n))
            break
        k = np.searchsorted(starts, want)
        end = int(starts[k]) if k < len(starts) else n
        if end <= begin:
            end = n
        bounds.append((begin, end))
        begin = end
    return bounds


def write_splits(
    df: pl.DataFrame,
    out_dir: str | Path,
    max_history: int = 20,
    given_splits: dict[str, pa.Table] | None = None,
    chunk_rows: int = 1_000_000,
    progress: Callable | None = None,
) -> dict:
    """Write `<out_dir>/{train,valid,test}.parquet` from a role-assigned, user-sorted frame; return stats.

    `given_splits` rows (valid/test of a source's own protocol) are written as given, with
    their histories capped at `max_history` (the most recent items kept).
    """
    if max_history < 1:
        raise DataError(f"max_history must be >= 1, got {max_history}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = df.select("user_id", "item_id", "timestamp", "event", "_pos", "_role").to_arrow()
    user_dict = pc.dictionary_encode(table.column("user_id")).combine_chunks()
    item_dict = pc.dictionary_encode(table.column("item_id")).combine_chunks()
    users, user_codes = user_dict.dictionary, user_dict.indices.to_numpy(zero_copy_only=False)
    items, item_codes = item_dict.dictionary, item_dict.indices.to_numpy(zero_copy_only=False)
    ts = table.column("timestamp").to_numpy()
    events = table.column("event").combine_chunks()
    pos = table.column("_pos").to_numpy()
    role = table.column("_role").to_numpy()
    del table

    stats = SplitStats(len(users), len(items), max_history)
    writers = {s: pq.ParquetWriter(out_dir / f"{s}.parquet", SPLIT_SCHEMA) for s in SPLITS}
    try:
        bounds = _chunk_bounds(user_codes, chunk_rows)
        iterator = progress(bounds, desc="splits", unit="chunk") if progress else bounds
        for begin, end in iterator:
            for code, split in enumerate(SPLITS):
                targets = begin + np.flatnonzero(role[begin:end] == code)
                if len(targets) == 0:
                    continue
                lengths = np.minimum(pos[targets], max_history).astype(np.int64)
                offsets = np.zeros(len(targets) + 1, dtype=np.int64)
                np.cumsum(lengths, out=offsets[1:])
                starts = np.repeat(targets - lengths, lengths)
                gather = starts + (np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths))
                history_codes = item_codes[gather]
                offsets32 = pa.array(offsets.astype(np.int32))
                batch = pa.table(
                    {
                        "user_id": users.take(pa.array(user_codes[targets])),
                        "history": pa.ListArray.from_arrays(offsets32, items.take(pa.array(history_codes))),
                        "history_ts": pa.ListArray.from_arrays(offsets32, pa.array(ts[gather])),
                        "target": items.take(pa.array(item_codes[targets])),
                        "target_ts": pa.array(ts[targets]),
                        "target_event": events.take(pa.array(targets)),
                    },
                    schema=SPLIT_SCHEMA,
                )
                writers[split].write_table(batch)
                stats.add(split, user_codes[targets], item_codes[targets], history_codes, lengths)
        for split, given in (given_splits or {}).items():
            given = cap_history(given, max_history)
            writers[split].write_table(given)
            _add_given_stats(stats, split, given, users, items)
    finally:
        for w in writers.values():
            w.close()
    return stats.to_dict()


def cap_history(rows: pa.Table, max_history: int) -> pa.Table:
    """Keep the `max_history` most recent history items of each split row."""
    df = pl.from_arrow(rows.cast(SPLIT_SCHEMA))
    df = df.with_columns(
        pl.col("history").list.tail(max_history), pl.col("history_ts").list.tail(max_history)
    )
    return df.to_arrow().cast(SPLIT_SCHEMA)


def _add_given_stats(stats: SplitStats, split: str, rows: pa.Table, users: pa.Array, items: pa.Array) -> None:
    """Statistics of given rows; users or items absent from the cleaned table are not counted as such."""

    def codes(values: pa.Array, vocab: pa.Array) -> np.ndarray:
        return (
            pc.drop_null(pc.index_in(values, value_set=vocab)).to_numpy(zero_copy_only=False).astype(np.int64)
        )

    rows = rows.combine_chunks()
    user_codes = codes(rows.column("user_id").chunk(0), users) if rows.num_rows else np.zeros(0, np.int64)
    target_codes = codes(rows.column("target").chunk(0), items) if rows.num_rows else np.zeros(0, np.int64)
    history_codes = (
        codes(pc.list_flatten(rows.column("history")), items) if rows.num_rows else np.zeros(0, np.int64)
    )
    lengths = pc.list_value_length(rows.column("history")).to_numpy(zero_copy_only=False).astype(np.int64)
    stats.add(split, user_codes, target_codes, history_codes, lengths)
    stats.rows[split] += rows.num_rows - len(target_codes)
