"""Every registered SID format, by name: 3 and 4 levels, and build-ids' extra level."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from onereason.item_index import SID_FORMATS, ItemIndex, SIDFormat


@pytest.mark.parametrize("name", SID_FORMATS)
@pytest.mark.parametrize("levels", [1, 3, 4])
def test_named_format_renders_parses_and_round_trips(name, levels, tmp_path):
    fmt = SIDFormat.named(name, levels)
    assert len(fmt.prefixes) == levels
    codes = np.arange(2 * levels).reshape(2, levels)
    index = ItemIndex(["a", "b"], codes, sid_format=fmt)
    text = index.sid_text("b")
    assert index.parse(f"junk {text} more") == [tuple(codes[1])]
    assert fmt.level_tokens(codes[1]) == tuple(fmt.token(i, c) for i, c in enumerate(codes[1]))
    assert text == "".join([fmt.begin or "", *fmt.level_tokens(codes[1]), fmt.end or ""])
    index.save(tmp_path / "index.json")
    assert ItemIndex.load(tmp_path / "index.json").sid_text("b") == text


def test_unknown_format_name_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="openonerec"):
        SIDFormat.named("lcrec-ish", 3)


def test_openonerec_boundary_tokens_are_the_tokenizer_s():
    from onereason.modeling import SID_BOUNDARY_TOKENS

    assert SIDFormat.named("openonerec").boundary_tokens == SID_BOUNDARY_TOKENS
    assert SIDFormat.named("minionerec").boundary_tokens == []


@pytest.fixture(scope="module")
def items_dir(tmp_path_factory):
    from data_builders.synthetic import SyntheticConfig, generate_world

    items = generate_world(SyntheticConfig(num_items=60, num_users=10, seed=3)).items
    folder = tmp_path_factory.mktemp("built")
    pq.write_table(items, folder / "items.parquet")
    return folder


@pytest.mark.parametrize("name", SID_FORMATS)
@pytest.mark.parametrize(
    "extra",
    [
        ["--levels", "4", "--codebook_size", "8"],
        ["--collision_strategy", "extra_level", "--codebook_size", "4"],  # 4^3 codes for 60 items collide
    ],
    ids=["4-levels", "extra-level"],
)
def test_build_ids_with_four_levels_or_an_extra_level_under_every_format(items_dir, tmp_path, name, extra):
    from data_builders.identifiers.build import main

    out = tmp_path / "ids"
    argv = [
        "--items_path", str(items_dir / "items.parquet"),
        "--out_dir", str(out),
        "--cache_dir", str(items_dir / "cache"),  # embeddings shared by every case
        "--term_generator", "none",
        "--sid_format", name,
        *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    index = ItemIndex.load(out / "item_index.json")
    assert index.n_levels == 4
    assert index.sid_format == SIDFormat.named(name, 4)
    first = index.item_ids[0]
    assert index.parse(index.sid_text(first)) == [index.sid(first)]
    if "extra_level" in extra:
        assert len({index.sid(i) for i in index.item_ids}) == len(index)
    assert json.loads((out / "stats.json").read_text())["items"] == len(index)
