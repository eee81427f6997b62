"""Cleaning steps: examples that pin the behaviour, hypothesis properties that must hold for any log."""

from __future__ import annotations

from collections import Counter

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_builders.cleaning import (
    ORDER,
    CleaningOptions,
    clean,
    deduplicate,
    drop_unknown_items,
    filter_events,
    kcore_filter,
    min_history_filter,
    order_events,
)
from data_builders.sources.common import DataError, DropCounter
from data_builders.text import normalize_list_field, normalize_text


def frame(rows):
    """rows: (user, item, timestamp[, event[, weight]])"""
    full = [(*r, "interact", 1.0)[:5] if len(r) == 3 else (*r, 1.0)[:5] if len(r) == 4 else r for r in rows]
    return pl.DataFrame(
        full,
        schema={
            "user_id": pl.String,
            "item_id": pl.String,
            "timestamp": pl.Int64,
            "event": pl.String,
            "weight": pl.Float64,
        },
        orient="row",
    )


logs = st.lists(
    st.tuples(
        st.sampled_from("abcdef"),
        st.sampled_from("pqrstuvw"),
        st.integers(0, 6),
        st.sampled_from(["view", "buy"]),
    ),
    max_size=80,
).map(frame)


# ---------------------------------------------------------------- examples


def test_order_events_sorts_by_user_then_time_and_keeps_file_order_on_ties():
    df = order_events(
        frame([("b", "x", 5), ("a", "late", 9), ("a", "tie1", 3), ("a", "tie2", 3), ("a", "early", 1)])
    )
    assert df["item_id"].to_list() == ["early", "tie1", "tie2", "late", "x"]


def test_filter_events_by_type_and_rating():
    df = frame([("u", "a", 1, "view", 5.0), ("u", "b", 2, "buy", 3.0), ("u", "c", 3, "buy", 4.0)])
    kept, n = filter_events(df, events=["buy"], min_rating=4)
    assert kept["item_id"].to_list() == ["c"] and n == 2


def test_dedup_modes():
    df = order_events(frame([("u", "a", 1), ("u", "a", 1), ("u", "b", 2), ("u", "b", 3), ("u", "a", 4)]))
    assert deduplicate(df, "exact")[0]["item_id"].to_list() == ["a", "b", "b", "a"]
    assert deduplicate(df, "consecutive")[0]["item_id"].to_list() == ["a", "b", "a"]
    assert deduplicate(df, "user_item")[0]["item_id"].to_list() == ["a", "b"]
    assert deduplicate(df, "none")[1] == 0
    with pytest.raises(DataError, match="unknown mode 'bogus'"):
        deduplicate(df, "bogus")


def test_kcore_needs_several_passes_to_reach_the_fixed_point():
    # item z has 2 interactions; removing it leaves user c with 1, which then drops item y below 2.
    df = frame(
        [
            ("a", "x", 1),
            ("a", "y", 2),
            ("b", "x", 1),
            ("b", "y", 2),
            ("c", "y", 1),
            ("c", "z", 2),
            ("d", "z", 1),
            ("d", "x", 2),
        ]
    )
    kept, dropped, passes = kcore_filter(df, 2, 3)
    assert passes >= 2 and dropped == df.height - kept.height
    assert set(kept["item_id"]) <= {"x", "y"}


def test_clean_counts_every_drop_and_names_the_step_that_empties_the_log():
    df = frame([("u", "a", 1), ("u", "a", 1), ("u", "ghost", 2), ("v", "b", 1)])
    items = pa.table({"item_id": ["a", "b", "unused"], "title": ["A", "B", "U"]})
    drops = DropCounter()
    kept, kept_items, item_drops = clean(df, items, CleaningOptions(min_history=1), drops)
    assert drops.counts == {"unknown_item": 1, "duplicate": 1}
    assert kept.height + sum(drops.counts.values()) == df.height
    assert kept_items.column("item_id").to_pylist() == ["a", "b"] and item_drops == {
        "item_without_interactions": 1
    }
    assert "ghost" in drops.examples["unknown_item"][0]
    with pytest.raises(DataError, match=r"no interactions left after k-core filtering \(kcore=5"):
        clean(df, items, CleaningOptions(kcore=5), DropCounter())
    with pytest.raises(DataError, match="unknown item at"):
        clean(df, items, CleaningOptions(), DropCounter(strict=True))


def test_text_normalisation_of_amazon_style_fields():
    assert normalize_text("['Relay &amp;amp; kit', '  second\tline ']") == "Relay & kit second line"
    assert normalize_text("<p>Bold&nbsp;<b>text</b></p>") == "Bold text"
    assert normalize_text("<a_12><b_3> stays") == "<a_12><b_3> stays"
    assert normalize_text(None) == "" and normalize_text(["x", ["y"]]) == "x y"
    assert normalize_list_field("Industrial & Scientific,Fasteners,Staples") == [
        "Industrial & Scientific",
        "Fasteners",
        "Staples",
    ]
    assert normalize_list_field([["A", "B"], ["A", "C"]]) == ["A", "B", "C"]
    assert normalize_list_field("['Lab &amp; Science', '']") == ["Lab & Science"]
    assert normalize_list_field(None) == []


# ---------------------------------------------------------------- properties


def naive_kcore(rows, k_user, k_item):
    rows = list(rows)
    while True:
        users = Counter(r[0] for r in rows)
        items = Counter(r[1] for r in rows)
        kept = [r for r in rows if users[r[0]] >= k_user and items[r[1]] >= k_item]
        if len(kept) == len(rows):
            return kept
        rows = kept


@settings(max_examples=60, deadline=None)
@given(logs, st.integers(1, 4), st.integers(1, 4))
def test_kcore_equals_the_naive_fixed_point_and_is_idempotent(df, k_user, k_item):
    kept, dropped, _ = kcore_filter(df, k_user, k_item)
    assert kept.rows() == naive_kcore(df.rows(), k_user, k_item)
    assert dropped == df.height - kept.height
    again, dropped_again, _ = kcore_filter(kept, k_user, k_item)
    assert again.equals(kept) and dropped_again == 0


@settings(max_examples=60, deadline=None)
@given(logs, st.sampled_from(["exact", "user_item", "consecutive"]))
def test_dedup_is_idempotent_keeps_first_occurrences_and_counts_exactly(df, mode):
    ordered = order_events(df)
    kept, n = deduplicate(ordered, mode)
    assert n == ordered.height - kept.height
    assert deduplicate(kept, mode)[1] == 0
    if mode == "exact":
        assert kept.select("user_id", "item_id", "timestamp", "event").n_unique() == kept.height
        assert set(kept.select("user_id", "item_id", "timestamp", "event").rows()) == set(
            ordered.select("user_id", "item_id", "timestamp", "event").rows()
        )
    if mode == "user_item":  # the earliest interaction (in time order) of each pair survives
        seen, expected = set(), []
        for user, item, order in ordered.select("user_id", "item_id", ORDER).rows():
            if (user, item) not in seen:
                seen.add((user, item))
                expected.append(order)
        assert kept[ORDER].to_list() == expected


@settings(max_examples=60, deadline=None)
@given(logs)
def test_order_events_is_a_stable_permutation(df):
    ordered = order_events(df)
    shuffled = order_events(df.sample(fraction=1.0, shuffle=True, seed=1))
    assert sorted(ordered.drop(ORDER).rows()) == sorted(df.rows()) == sorted(shuffled.drop(ORDER).rows())
    keys = ordered.select("user_id", "timestamp", ORDER).rows()
    assert keys == sorted(keys)


@settings(max_examples=60, deadline=None)
@given(logs, st.integers(0, 5))
def test_min_history_leaves_only_long_enough_users(df, n):
    kept, dropped = min_history_filter(df, n)
    assert dropped == df.height - kept.height
    if kept.height:
        assert kept.group_by("user_id").len()["len"].min() >= n
    long_users = {u for u, c in Counter(df["user_id"]).items() if c >= n}
    assert set(kept["user_id"]) == long_users


@settings(max_examples=60, deadline=None)
@given(logs, st.lists(st.sampled_from("pqrstuvw"), unique=True))
def test_unknown_items_are_all_counted(df, catalogue):
    kept, n, examples = drop_unknown_items(df, catalogue)
    assert set(kept["item_id"]) <= set(catalogue)
    assert n == sum(1 for i in df["item_id"] if i not in catalogue)
    assert all(e not in catalogue for e in examples)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.lists(st.text(), max_size=4)))
def test_normalized_text_is_one_clean_line(value):
    text = normalize_text(value)
    assert text == text.strip()
    assert "  " not in text and "\n" not in text and "\t" not in text
    for cat in normalize_list_field(value):
        assert cat and cat == cat.strip()
