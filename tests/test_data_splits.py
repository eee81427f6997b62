"""Splits: leave-one-out, sliding 8:1:1 and given, checked against a plain-Python reference."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_builders.cleaning import order_events
from data_builders.sources.common import DataError
from data_builders.splits import SPLIT_SCHEMA, SPLITS, assign_roles, cap_history, write_splits


def log(sequences: dict[str, list[tuple[str, int]]]) -> pl.DataFrame:
    rows = [(u, item, ts, "interact", 1.0) for u, seq in sequences.items() for item, ts in seq]
    df = pl.DataFrame(
        rows,
        schema={
            "user_id": pl.String,
            "item_id": pl.String,
            "timestamp": pl.Int64,
            "event": pl.String,
            "weight": pl.Float64,
        },
        orient="row",
    )
    return order_events(df)


def read(folder) -> dict[str, list[dict]]:
    out = {}
    for s in SPLITS:
        table = pq.read_table(folder / f"{s}.parquet")
        assert table.schema.equals(SPLIT_SCHEMA)
        out[s] = table.to_pylist()
    return out


def reference_loo(sequences, max_history):
    """Leave-one-out written the obvious way, one user at a time."""
    out = {s: [] for s in SPLITS}
    for user in sorted(sequences):
        seq = sorted(sequences[user], key=lambda x: x[1])  # stable: ties keep order
        n = len(seq)
        for pos in range(1, n):
            split = "test" if pos == n - 1 else "valid" if pos == n - 2 else "train"
            hist = seq[max(0, pos - max_history) : pos]
            out[split].append(
                {
                    "user_id": user,
                    "history": [i for i, _ in hist],
                    "history_ts": [t for _, t in hist],
                    "target": seq[pos][0],
                    "target_ts": seq[pos][1],
                    "target_event": "interact",
                }
            )
    return out


def test_leave_one_out_small_example(tmp_path):
    df = log({"u": [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)], "v": [("x", 7), ("y", 8)]})
    stats = write_splits(assign_roles(df, "leave_one_out"), tmp_path, max_history=2)
    rows = read(tmp_path)
    assert [(r["user_id"], r["history"], r["target"]) for r in rows["test"]] == [
        ("u", ["c", "d"], "e"),
        ("v", ["x"], "y"),
    ]
    assert [(r["history"], r["target"]) for r in rows["valid"]] == [(["b", "c"], "d")]
    assert [(r["history"], r["target"]) for r in rows["train"]] == [(["a"], "b"), (["a", "b"], "c")]
    assert rows["test"][0]["history_ts"] == [3, 4] and rows["test"][0]["target_ts"] == 5
    assert stats["test"]["users"] == 2 and stats["valid"]["users"] == 1 and stats["train"]["examples"] == 2
    assert stats["test"]["history_length"]["histogram"] == {"1": 1, "2": 1}
    assert stats["train"]["items"] == 3 and stats["train"]["target_items"] == 2


sequences_strategy = st.dictionaries(
    st.text("uvwxyz", min_size=1, max_size=2),
    st.lists(st.tuples(st.sampled_from("abcdefg"), st.integers(0, 9)), min_size=1, max_size=12),
    min_size=1,
    max_size=8,
)


@settings(max_examples=40, deadline=None)
@given(sequences_strategy, st.integers(1, 5), st.integers(1, 30))
def test_leave_one_out_matches_reference_for_any_chunking(
    tmp_path_factory, sequences, max_history, chunk_rows
):
    out = tmp_path_factory.mktemp("loo")
    write_splits(
        assign_roles(log(sequences), "leave_one_out"), out, max_history=max_history, chunk_rows=chunk_rows
    )
    assert read(out) == reference_loo(sequences, max_history)


@settings(max_examples=40, deadline=None)
@given(sequences_strategy, st.integers(1, 30))
def test_sliding_split_is_global_in_time_and_8_1_1(tmp_path_factory, sequences, chunk_rows):
    out = tmp_path_factory.mktemp("sliding")
    stats = write_splits(assign_roles(log(sequences), "sliding"), out, max_history=3, chunk_rows=chunk_rows)
    rows = read(out)
    total = sum(len(seq) - 1 for seq in sequences.values())
    assert len(rows["train"]) == int(total * 0.8)
    assert len(rows["train"]) + len(rows["valid"]) == int(total * 0.9)
    assert sum(stats[s]["examples"] for s in SPLITS) == total
    if rows["train"] and rows["valid"]:
        assert max(r["target_ts"] for r in rows["train"]) <= min(r["target_ts"] for r in rows["valid"])
    if rows["valid"] and rows["test"]:
        assert max(r["target_ts"] for r in rows["valid"]) <= min(r["target_ts"] for r in rows["test"])
    every = sorted(
        (r["user_id"], r["target_ts"], r["target"], tuple(r["history"])) for s in SPLITS for r in rows[s]
    )
    loo = reference_loo(sequences, 3)
    assert every == sorted(
        (r["user_id"], r["target_ts"], r["target"], tuple(r["history"])) for s in SPLITS for r in loo[s]
    )


def test_given_split_writes_given_rows_and_derives_train_before_them(tmp_path):
    df = log({"u": [("a", 0), ("b", 1), ("c", 2), ("d", 3)], "w": [("p", 0), ("q", 1)]})
    given_test = pa.table(
        {
            "user_id": ["u"],
            "history": [["a", "b", "c"]],
            "history_ts": [[0, 1, 2]],
            "target": ["d"],
            "target_ts": [3],
            "target_event": ["interact"],
        },
        schema=SPLIT_SCHEMA,
    )
    given_targets = pl.DataFrame({"user_id": ["u"], "first_ts": [3]})
    stats = write_splits(
        assign_roles(df, "given", given_targets=given_targets),
        tmp_path,
        max_history=2,
        given_splits={"test": given_test},
    )
    rows = read(tmp_path)
    assert rows["test"] == [
        {
            "user_id": "u",
            "history": ["b", "c"],
            "history_ts": [1, 2],
            "target": "d",
            "target_ts": 3,
            "target_event": "interact",
        }
    ]
    assert [(r["user_id"], r["target"]) for r in rows["train"]] == [("u", "b"), ("u", "c"), ("w", "q")]
    assert rows["valid"] == [] and stats["test"]["examples"] == 1
    with pytest.raises(DataError, match="given needs a source"):
        assign_roles(df, "given")


def test_bad_split_settings_are_errors(tmp_path):
    df = log({"u": [("a", 0), ("b", 1)]})
    with pytest.raises(DataError, match="unknown method 'random'"):
        assign_roles(df, "random")
    with pytest.raises(DataError, match="sum below 1"):
        assign_roles(df, "sliding", valid_ratio=0.5, test_ratio=0.5)
    with pytest.raises(DataError, match="max_history must be >= 1"):
        write_splits(assign_roles(df), tmp_path, max_history=0)


def test_cap_history_keeps_most_recent():
    table = pa.table(
        {
            "user_id": ["u"],
            "history": [["a", "b", "c"]],
            "history_ts": [[1, 2, 3]],
            "target": ["d"],
            "target_ts": [4],
            "target_event": ["x"],
        }
    )
    assert cap_history(table, 2).to_pylist()[0]["history"] == ["b", "c"]
