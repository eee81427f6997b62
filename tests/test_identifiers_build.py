"""`onereason build-ids` end to end on the synthetic catalogue, and its bad-input paths."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_builders.identifiers.build import BuildIdsConfig, build_semantic_ids, main
from data_builders.identifiers.embed import cache_key, item_texts
from data_builders.synthetic import SyntheticConfig, generate_world


@pytest.fixture(scope="module")
def items_path(tmp_path_factory):
    items = generate_world(SyntheticConfig(num_items=120, num_users=20, seed=2)).items
    path = tmp_path_factory.mktemp("built") / "items.parquet"
    pq.write_table(items, path)
    return path


def run(items_path, out, *extra):
    argv = ["--items_path", str(items_path), "--out_dir", str(out), "--codebook_size", "8", *extra]
    assert main(argv) == 0
    return json.loads((out / "stats.json").read_text())


def test_build_ids_writes_a_loadable_unique_index_deterministically(items_path, tmp_path):
    from onereason.item_index import ItemIndex

    stats = run(items_path, tmp_path / "a")
    index = ItemIndex.load(tmp_path / "a" / "item_index.json")
    assert len(index) == 120 and index.n_levels == 3
    sids = {index.sid(i) for i in index.item_ids}
    assert len(sids) == 120  # every item its own SID
    assert index.sid_text(index.item_ids[0]).startswith("<|sid_begin|><s_a_")
    assert all(len(index.terms(i)) == 5 for i in index.item_ids)
    assert stats["sids"]["after"]["collisions"]["collision_rate"] == 0.0
    assert stats["sids"]["before"]["collisions"]["collision_rate"] > 0.0  # 8^3 codes for 120 items collide
    assert stats["terms"]["after"]["legal_rate"] == 1.0 and stats["terms"]["after"]["collision_rate"] == 0.0
    assert stats["sids"]["after"]["coherence"]["gap"] > 0.05  # first code groups similar items
    assert list((tmp_path / "a" / "cache").glob("*.npy")), "embeddings are cached"
    # same config twice -> same bytes (second run reads the embeddings cache of its own folder)
    run(items_path, tmp_path / "b")
    assert (tmp_path / "a" / "item_index.json").read_bytes() == (
        tmp_path / "b" / "item_index.json"
    ).read_bytes()


def test_extra_level_and_minionerec_format(items_path, tmp_path):
    from onereason.item_index import ItemIndex

    stats = run(
        items_path,
        tmp_path,
        "--collision_strategy",
        "extra_level",
        "--sid_format",
        "minionerec",
        "--term_generator",
        "none",
    )
    index = ItemIndex.load(tmp_path / "item_index.json")
    assert index.n_levels == 4 and index.sid_text(index.item_ids[0]).startswith("<a_")
    assert stats["sids"]["resolution"]["strategy"] == "extra_level" and "terms" not in stats
    assert len({index.sid(i) for i in index.item_ids}) == 120


def test_published_index_is_used_instead_of_building(items_path, tmp_path):
    from onereason.item_index import ItemIndex

    ids = pq.read_table(items_path).column("item_id").to_pylist()
    published = {item: [f"<a_{n % 5}>", f"<b_{n % 7}>", f"<c_{n}>"] for n, item in enumerate(ids)}
    (tmp_path / "pub.json").write_text(json.dumps(published))
    stats = run(
        items_path,
        tmp_path / "out",
        "--published_index",
        str(tmp_path / "pub.json"),
        "--term_generator",
        "none",
    )
    index = ItemIndex.load(tmp_path / "out" / "item_index.json")
    assert index.sid(ids[9]) == (4, 2, 9)
    assert stats["sids"]["published_index"].endswith("pub.json")
    missing = dict(list(published.items())[:-1])
    (tmp_path / "short.json").write_text(json.dumps(missing))
    with pytest.raises(ValueError, match="lacks 1 item"):
        run(items_path, tmp_path / "out2", "--published_index", str(tmp_path / "short.json"))


def test_duplicate_item_ids_are_an_error_naming_them(tmp_path):
    table = pa.table({"item_id": ["a", "b", "a"], "title": ["x", "y", "z"]})
    pq.write_table(table, tmp_path / "items.parquet")
    with pytest.raises(ValueError, match="duplicate item_id.*'a'"):
        main(["--items_path", str(tmp_path), "--out_dir", str(tmp_path / "out")])


def test_empty_text_items_are_counted_and_still_get_text():
    table = pa.table({"item_id": ["a", "b"], "title": ["Beaker", ""], "description": [None, "  "]})
    texts = item_texts(table, ("title", "description"))
    assert texts.empty_text_items == ["b"] and texts.texts[1] == "item b"
    assert texts.texts[0] == "Title: Beaker"  # empty fields drop with their labels


def test_missing_items_file_and_bad_choices_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="items table not found"):
        main(["--items_path", str(tmp_path / "nope.parquet"), "--out_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="quantizer"):
        BuildIdsConfig(quantizer="kmeans++")


def test_nan_embeddings_name_the_item():
    emb = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    emb[3] = np.nan
    ids = [f"item{i}" for i in range(50)]
    with pytest.raises(ValueError, match="item3"):
        build_semantic_ids(emb, BuildIdsConfig(codebook_size=4), ids)


def test_cache_key_depends_on_model_and_every_text():
    assert cache_key("m", ["a", "b"]) != cache_key("m", ["a", "c"])
    assert cache_key("m", ["a", "b"]) != cache_key("n", ["a", "b"])
    assert cache_key("m", ["ab"]) != cache_key("m", ["a", "b"])
    assert cache_key("m", ["a", "b"]) == cache_key("m", ["a", "b"])


def test_encoder_threads_are_restored_and_max_length_keys_the_cache(tmp_path):
    import torch

    from data_builders.identifiers.embed import encode_texts

    texts = ["Title: Digital caliper. Brand: Acme", "Title: Lab goggles", "item 7"]
    threads = torch.get_num_threads()
    short = encode_texts(texts, cache_dir=tmp_path, show_progress=False, max_length=8, num_threads=1)
    assert torch.get_num_threads() == threads  # the encode's thread count does not leak out
    long = encode_texts(texts, cache_dir=tmp_path, show_progress=False, max_length=32, num_threads=1)
    assert short.shape == long.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(long, axis=1), 1.0, atol=1e-5)
    assert len(list(tmp_path.glob("*.npy"))) == 2  # max_length is part of the cache key
    assert not np.allclose(short[0], long[0])  # 8 tokens cut the first text, 32 do not
    cached = encode_texts(texts, cache_dir=tmp_path, show_progress=False, max_length=32)
    np.testing.assert_array_equal(cached, long)
