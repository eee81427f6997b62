"""The item index: render/parse SIDs, collisions, one-file save/load, published indexes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import shared_data
from hypothesis import given, settings
from hypothesis import strategies as st

from onereason.item_index import ItemIndex, SIDFormat


def small_index(fmt: SIDFormat | None = None, terms: bool = True) -> ItemIndex:
    codes = np.array([[12, 3, 7], [12, 3, 8], [1, 0, 0], [12, 3, 7]])  # items 0 and 3 collide
    term_ids = [["beaker", "glass"], ["pipette"], [], ["flask"]] if terms else None
    return ItemIndex(["i0", "i1", "i2", "i3"], codes, term_ids, fmt, meta={"source": "test"})


def test_default_and_minionerec_rendering():
    index = small_index()
    assert index.sid_text("i0") == "<|sid_begin|><s_a_12><s_b_3><s_c_7><|sid_end|>"
    assert index.sid("i1") == (12, 3, 8)
    mini = small_index(SIDFormat.minionerec(3))
    assert mini.sid_text("i0") == "<a_12><b_3><c_7>"
    assert mini.render((1, 0, 0)) == "<a_1><b_0><c_0>"
    with pytest.raises(ValueError, match="3 levels"):
        index.render((1, 2))


def test_lookups_terms_and_collisions():
    index = small_index()
    assert len(index) == 4 and "i2" in index and "nope" not in index and index.n_levels == 3
    assert index.items_for_sid((12, 3, 7)) == ["i0", "i3"]
    assert index.items_for_sid((9, 9, 9)) == []
    assert index.collisions() == {(12, 3, 7): ["i0", "i3"]}
    assert index.n_collisions() == 1
    assert index.terms("i0") == ["beaker", "glass"]
    assert small_index(terms=False).terms("i0") == []
    with pytest.raises(KeyError, match="nope"):
        index.sid("nope")


def test_itemic_tokens_are_the_used_codes_per_level():
    tokens = small_index().itemic_tokens()
    assert tokens[:2] == ["<|sid_begin|>", "<|sid_end|>"]
    assert tokens[2:] == ["<s_a_1>", "<s_a_12>", "<s_b_0>", "<s_b_3>", "<s_c_0>", "<s_c_7>", "<s_c_8>"]
    assert small_index(SIDFormat.minionerec(3)).itemic_tokens()[0] == "<a_1>"


def test_parse_finds_sids_in_order_and_skips_unknown_codes():
    index = small_index()
    text = (
        "<think>\nmaybe <s_a_12></think>\n\n"  # an incomplete SID is not an item
        + index.sid_text("i2")
        + " then <|sid_begin|><s_a_99><s_b_3><s_c_7><|sid_end|>"  # well formed, not in the index
        + index.sid_text("i1")
    )
    assert index.parse(text) == [(1, 0, 0), (12, 3, 8)]
    assert index.parse_items(text) == ["i2", "i1"]
    assert index.parse_items(index.sid_text("i3")) == ["i0", "i3"]  # a shared SID names every item
    assert index.parse(None) == [] and index.parse(b"\xff") == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["<|sid_begin|>", "<|sid_end|>", "<s_a_12>", "<s_b_3>", "<s_c_7>", "<s_c_", "99>", "<"]
        )
        | st.text(max_size=6),
        max_size=20,
    ).map("".join)
)
def test_parse_never_raises_on_garbage(text):
    index = small_index()
    sids = index.parse(text)
    assert all(index.items_for_sid(s) for s in sids)
    assert all(i in index for i in index.parse_items(text))


def test_save_load_roundtrip_is_equal_and_byte_identical(tmp_path):
    for index in (small_index(), small_index(SIDFormat.minionerec(3), terms=False)):
        path = index.save(tmp_path / "item_index.json")
        loaded = ItemIndex.load(path)
        assert loaded == index
        assert loaded.sid_format == index.sid_format and loaded.collisions() == index.collisions()
        again = loaded.save(tmp_path / "again.json")
        assert again.read_bytes() == path.read_bytes()
        json.loads(path.read_text())  # one plain JSON document


def test_bad_indexes_fail_with_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="duplicate item id 'a'"):
        ItemIndex(["a", "a"], [[1, 2], [3, 4]], sid_format=SIDFormat.minionerec(2))
    with pytest.raises(ValueError, match="shape"):
        ItemIndex(["a", "b"], [[1, 2]])
    with pytest.raises(ValueError, match="negative"):
        ItemIndex(["a"], [[1, -2]], sid_format=SIDFormat.minionerec(2))
    with pytest.raises(ValueError, match="levels"):
        ItemIndex(["a"], [[1, 2]], sid_format=SIDFormat())  # the default format has 3 levels
    with pytest.raises(FileNotFoundError, match="missing.json"):
        ItemIndex.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        ItemIndex.load(tmp_path / "bad.json")
    (tmp_path / "pub.json").write_text(json.dumps({"1": ["<a_1>", "<b_2>"], "2": ["<a_1>", "oops"]}))
    with pytest.raises(ValueError, match="item '2' has a malformed SID"):
        ItemIndex.from_published_json(tmp_path / "pub.json")
    (tmp_path / "pub.json").write_text(json.dumps({"1": ["<a_1>", "<b_2>"], "2": ["<a_1>"]}))
    with pytest.raises(ValueError, match="item '2' has levels"):
        ItemIndex.from_published_json(tmp_path / "pub.json")
    (tmp_path / "pub.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="pub.json"):
        ItemIndex.from_published_json(tmp_path / "pub.json")


def test_published_json_infers_format_and_restricts_items(tmp_path):
    path = tmp_path / "toy.index.json"
    path.write_text(
        json.dumps(
            {
                "7": ["<a_1>", "<b_2>", "<c_3>"],
                "8": ["<a_1>", "<b_2>", "<c_3>"],
                "9": ["<a_0>", "<b_0>", "<c_1>"],
            }
        )
    )
    index = ItemIndex.from_published_json(path)
    assert index.sid_format == SIDFormat.minionerec(3)
    assert index.sid_text("9") == "<a_0><b_0><c_1>"
    assert index.n_collisions() == 1
    sub = ItemIndex.from_published_json(path, items=["9", "7"])
    assert sub.item_ids == ["9", "7"]
    with pytest.raises(ValueError, match="1 item"):
        ItemIndex.from_published_json(path, items=["9", "404"])


def test_real_published_indexes_keep_their_collisions(tmp_path):
    industrial = ItemIndex.from_published_json(
        shared_data("minionerec-industrial", "index", "Industrial_and_Scientific.index.json")
    )
    assert len(industrial) == 3686 and industrial.n_levels == 3
    assert industrial.n_collisions() == 16  # the figure the data README quotes
    sid, items = next(iter(industrial.collisions().items()))
    assert len(items) >= 2 and industrial.parse_items(industrial.render(sid)) == items
    rqvae = ItemIndex.from_published_json(
        shared_data("amazon-scientific", "Scientific.rqvae_native.index.json")
    )
    assert rqvae.n_levels == 4 and rqvae.n_collisions() > 0
    assert rqvae.sid_text("0") == "<a_70><b_138><c_190><d_249>"
    assert ItemIndex.load(rqvae.save(tmp_path / "i.json")) == rqvae
