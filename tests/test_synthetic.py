"""The synthetic world: deterministic, canonical, and its ground truth holds."""

from __future__ import annotations

import io
from collections import defaultdict

import pyarrow.parquet as pq
import pytest

from data_builders.synthetic import PATTERNS, SyntheticConfig, generate_world

SMALL = SyntheticConfig(num_users=150, num_items=200, seed=3)


def _bytes(table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def test_same_seed_same_bytes_other_seed_differs():
    a, b = generate_world(SMALL), generate_world(SMALL)
    for name in ("items", "interactions", "truth", "interests"):
        assert _bytes(getattr(a, name)) == _bytes(getattr(b, name)), name
    c = generate_world(SyntheticConfig(num_users=150, num_items=200, seed=4))
    assert _bytes(c.interactions) != _bytes(a.interactions)


def test_canonical_schema():
    w = generate_world(SMALL)
    assert w.interactions.schema.names == ["user_id", "item_id", "timestamp", "event", "weight"]
    assert str(w.interactions.schema.field("timestamp").type) == "int64"
    assert {"item_id", "title", "description", "brand", "categories"} <= set(w.items.column_names)
    assert w.items.column("item_id").to_pylist() == sorted(set(w.items.column("item_id").to_pylist()))
    assert len(set(w.items.column("title").to_pylist())) > 0.95 * w.items.num_rows


def test_ground_truth_explains_every_interaction():
    w = generate_world(SMALL)
    items = {r["item_id"]: r for r in w.items.to_pylist()}
    interests = {r["interest_id"]: r for r in w.interests.to_pylist()}
    assert {r["pattern"] for r in interests.values()} == set(PATTERNS)
    assert w.truth.column("item_id").to_pylist() == w.interactions.column("item_id").to_pylist()
    noise = 0
    style_match = 0
    served = 0
    for row in w.truth.to_pylist():
        if row["interest_id"] is None:
            noise += 1
            continue
        interest = interests[row["interest_id"]]
        assert interest["user_id"] == row["user_id"]  # only the user's own interests serve them
        item = items[row["item_id"]]
        assert item["subcategory"] == interest["subcategory"]  # every served item belongs to its interest
        served += 1
        style_match += item["style"] == interest["style"]
    assert 0.03 < noise / w.truth.num_rows < 0.2
    assert style_match / served > 0.75


def test_time_patterns_hold():
    w = generate_world(SMALL)
    patterns = {r["interest_id"]: r["pattern"] for r in w.interests.to_pylist()}
    seqs = defaultdict(list)
    for row in w.truth.to_pylist():
        seqs[row["user_id"]].append(row["interest_id"])
    for seq in seqs.values():
        n = len(seq)
        for step, interest in enumerate(seq):
            if interest is None:
                continue
            if patterns[interest] == "fading":
                assert step < int(0.5 * n)
            if patterns[interest] == "short_term":
                assert step >= int(0.6 * n)
    times = w.interactions.column("timestamp").to_pylist()
    users = w.interactions.column("user_id").to_pylist()
    assert all(
        t1 < t2 for (u1, t1), (u2, t2) in zip(zip(users, times), zip(users[1:], times[1:])) if u1 == u2
    )


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="num_items"):
        SyntheticConfig(num_items=3)
    with pytest.raises(ValueError, match="noise_rate"):
        SyntheticConfig(noise_rate=1.5)
