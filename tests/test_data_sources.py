"""Source loaders: real data where present, tiny files written here for every format and bad input."""

from __future__ import annotations

import gzip
import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import shared_data

from data_builders.sources import SOURCES, DataError, Loaded, load_source, register_source, source_options
from data_builders.sources.common import INTERACTION_SCHEMA
from data_builders.splits import SPLIT_SCHEMA
from onereason.errors import UsageError


def assert_canonical(loaded: Loaded) -> None:
    assert loaded.interactions.schema.equals(INTERACTION_SCHEMA)
    assert loaded.items.column_names[:2] == ["item_id", "title"]
    assert loaded.items.schema.field("item_id").type == pa.string()
    assert loaded.items.schema.field("title").type == pa.string()
    if "categories" in loaded.items.column_names:
        assert loaded.items.schema.field("categories").type == pa.list_(pa.string())
    assert loaded.interactions.column("user_id").null_count == 0
    assert loaded.interactions.column("timestamp").null_count == 0


def write_lines(path, lines, gz=False):
    data = b"".join((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n" for line in lines)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# ---------------------------------------------------------------- registry


def test_registry_lists_every_issue_format_and_rejects_unknown_names():
    assert {
        "lcrec",
        "minionerec",
        "amazon2018",
        "amazon2023",
        "movielens",
        "recbole",
        "tabular",
        "synthetic",
    } <= set(SOURCES)
    with pytest.raises(DataError, match="unknown source 'nope'"):
        load_source("nope")
    with pytest.raises(UsageError, match="source_options"):  # a config mistake: exit code 2
        load_source("lcrec", path=".", bogus=1)


def test_register_source_makes_a_custom_loader_selectable():
    @register_source("two_rows")
    def load_two_rows(strict=False):
        table = pa.table(
            {
                "user_id": ["u", "u"],
                "item_id": ["a", "b"],
                "timestamp": [1, 2],
                "event": ["interact"] * 2,
                "weight": [1.0, 1.0],
            }
        )
        return Loaded(table.cast(INTERACTION_SCHEMA), pa.table({"item_id": ["a", "b"], "title": ["A", "B"]}))

    try:
        assert load_source("two_rows").interactions.num_rows == 2
    finally:
        del SOURCES["two_rows"]


def test_build_data_help_lists_every_source_with_its_options(capsys):
    from onereason.cli import main

    assert main(["build-data", "--help"]) == 0
    sections = capsys.readouterr().out.split("their `source_options`", 1)[1].split("\n\n  ")[1:]
    listed = {section.split(":", 1)[0]: section.splitlines()[1:] for section in sections}
    assert list(listed) == list(SOURCES)
    for name, lines in listed.items():
        options = source_options(name)
        assert options, f"source {name} lists no options"
        assert [line.split()[0] for line in lines] == [option for option, _, _ in options]
        for (option, default, help), line in zip(options, lines):
            assert help, f"source {name}: option {option} has no line under `Options:` in its docstring"
            assert line.split()[1] == default.split()[0] and line.rstrip().endswith(help)
    # the names and defaults are the loaders' own keyword arguments
    assert [o for o, _, _ in source_options("amazon2023")] == ["reviews", "meta", "item_key"]
    assert ("item_key", "'parent_asin'") in [(o, d) for o, d, _ in source_options("amazon2023")]
    assert ("num_users", "1000") in [(o, d) for o, d, _ in source_options("synthetic")]
    assert source_options("lcrec")[0][:2] == ("path", "required")


# ---------------------------------------------------------------- LC-Rec JSON


def test_lcrec_real_scientific_counts_and_published_index():
    folder = shared_data("amazon-scientific")
    loaded = load_source("lcrec", path=str(folder), name="Scientific", index="rkmeans_zcr")
    assert_canonical(loaded)
    inter = pl.from_arrow(loaded.interactions)
    assert (inter["user_id"].n_unique(), loaded.items.num_rows, inter.height) == (8317, 4344, 58492)
    assert loaded.extra["published_index_path"].endswith("Scientific.rkmeans_zcr.index.json")
    first = loaded.items.slice(0, 1).to_pylist()[0]
    assert first["categories"] == [
        "Industrial & Scientific",
        "Industrial Electrical",
        "Passive Components",
        "Capacitors",
    ]
    # ordinal timestamps: user 0's items in file order
    user0 = inter.filter(pl.col("user_id") == "0")
    assert user0["item_id"].to_list() == [str(i) for i in range(9)] and user0["timestamp"].to_list() == list(
        range(9)
    )


def test_lcrec_tiny_fixture_counts_malformed_users_and_strict_fails(tmp_path):
    (tmp_path / "Toy.inter.json").write_text(json.dumps({"0": [0, 1, 2], "1": "oops", "2": [1, None, 0]}))
    (tmp_path / "Toy.item.json").write_text(
        json.dumps(
            {
                "0": {"title": "A &amp; B", "categories": "['Tools', 'Hand Tools']"},
                "1": {"title": " x\n y "},
                "2": {"title": "C"},
            }
        )
    )
    loaded = load_source("lcrec", path=str(tmp_path))
    assert_canonical(loaded)
    assert loaded.drops == {"malformed_row": 2}
    assert loaded.interactions.num_rows == 5
    assert loaded.items.column("title").to_pylist() == ["A & B", "x y", "C"]
    assert loaded.items.column("categories").to_pylist()[0] == ["Tools", "Hand Tools"]
    assert "published_index_path" not in loaded.extra
    with pytest.raises(DataError, match=r"Toy.inter.json: user '1'"):
        load_source("lcrec", path=str(tmp_path), strict=True)


def test_lcrec_missing_files_and_bad_json_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no file matching"):
        load_source("lcrec", path=str(tmp_path))
    (tmp_path / "Toy.inter.json").write_text("{not json")
    (tmp_path / "Toy.item.json").write_text("{}")
    with pytest.raises(DataError, match=r"Toy.inter.json: invalid JSON at line 1"):
        load_source("lcrec", path=str(tmp_path))
    (tmp_path / "Toy.inter.json").write_bytes(b'{"0": ["\xff"]}')
    with pytest.raises(DataError, match="not UTF-8"):
        load_source("lcrec", path=str(tmp_path))


# ---------------------------------------------------------------- MiniOneRec CSV


def _write_minionerec(root, valid_rows, test_rows, items=("0", "1", "2", "3", "4")):
    (root / "index").mkdir(parents=True)
    (root / "index" / "Toy.item.json").write_text(json.dumps({i: {"title": f"item {i}"} for i in items}))
    (root / "index" / "Toy.index.json").write_text(
        json.dumps({i: ["<a_1>", "<b_2>", f"<c_{i}>"] for i in items})
    )
    header = "user_id,history_item_title,item_title,history_item_id,item_id,history_item_sid,item_sid"
    for split, rows in (("valid", valid_rows), ("test", test_rows)):
        (root / split).mkdir()
        lines = [header] + [f'{u},"[]",t,"{h}",{t},"[]",s' for u, h, t in rows]
        (root / split / "Toy_5.csv").write_text("\n".join(lines) + "\n")


def test_minionerec_reconstructs_sequences_from_chained_windows(tmp_path):
    _write_minionerec(
        tmp_path,
        [("A", "[0, 1]", "2"), ("A", "[0, 1, 2]", "3")],
        [("A", "[1, 2, 3]", "4"), ("B", "[3]", "9")],
    )
    loaded = load_source("minionerec", path=str(tmp_path), name="Toy")
    assert_canonical(loaded)
    inter = pl.from_arrow(loaded.interactions)
    assert inter.filter(pl.col("user_id") == "A")["item_id"].to_list() == ["0", "1", "2", "3", "4"]
    assert loaded.drops == {"unknown_item": 1}  # B's target 9 is not in the catalogue
    assert set(loaded.given_splits) == {"valid", "test"}
    test = loaded.given_splits["test"]
    assert test.schema.equals(SPLIT_SCHEMA)
    assert test.to_pylist() == [
        {
            "user_id": "A",
            "history": ["1", "2", "3"],
            "history_ts": [1, 2, 3],
            "target": "4",
            "target_ts": 4,
            "target_event": "interact",
        }
    ]
    assert loaded.extra["published_index_path"].endswith("Toy.index.json")
    with pytest.raises(DataError, match=r"unknown item at .*Toy_5.csv:3: item\(s\) \['9'\]"):
        load_source("minionerec", path=str(tmp_path), name="Toy", strict=True)


def test_minionerec_missing_column_is_an_error_naming_the_file(tmp_path):
    _write_minionerec(tmp_path, [("A", "[0]", "1")], [("A", "[0, 1]", "2")])
    (tmp_path / "test" / "Toy_5.csv").write_text("user_id,item_id\nA,1\n")
    with pytest.raises(DataError, match=r"Toy_5.csv: missing column\(s\) \['history_item_id'\]"):
        load_source("minionerec", path=str(tmp_path), name="Toy")


def test_minionerec_real_given_rows_match_the_reconstruction():
    folder = shared_data("minionerec-industrial")
    loaded = load_source("minionerec", path=str(folder), name="Industrial_and_Scientific")
    assert_canonical(loaded)
    assert {k: v.num_rows for k, v in loaded.given_splits.items()} == {"valid": 4532, "test": 4533}
    assert loaded.drops == {}
    seqs = pl.from_arrow(loaded.interactions).group_by("user_id", maintain_order=True).agg("item_id")
    seq_of = dict(zip(seqs["user_id"], seqs["item_id"].to_list()))
    for row in loaded.given_splits["test"].slice(0, 500).to_pylist():
        seq = seq_of[row["user_id"]]
        assert seq[row["target_ts"]] == row["target"]
        assert [seq[t] for t in row["history_ts"]] == row["history"]


# ---------------------------------------------------------------- Amazon 2018 / 2023


def test_amazon2018_gz_reviews_and_literal_meta_with_bad_lines_counted(tmp_path):
    reviews = write_lines(
        tmp_path / "Toy.json.gz",
        [
            json.dumps({"reviewerID": "u1", "asin": "A", "overall": 5.0, "unixReviewTime": 100}),
            json.dumps({"reviewerID": "u1", "asin": "B", "overall": 3.0, "unixReviewTime": 200}),
            json.dumps({"reviewerID": "u2", "asin": "A", "overall": 4.0}),  # no time
            "{broken",
            b'{"reviewerID": "u3", "asin": "\xff\xfe", "overall": 1.0, "unixReviewTime": 5}',
        ],
        gz=True,
    )
    meta = write_lines(
        tmp_path / "meta_Toy.json",
        [
            str(
                {
                    "asin": "A",
                    "title": "Beaker &amp; lid",
                    "category": ["Lab", "Glass"],
                    "price": "$12.50",
                    "description": ["x", " y"],
                }
            ),
            json.dumps(
                {"asin": "B", "title": "Tape", "category": [], "price": "$1.00 - $3.00", "brand": "3M"}
            ),
            json.dumps({"asin": "A", "title": "again"}),
        ],
    )
    loaded = load_source("amazon2018", reviews=str(reviews), meta=str(meta))
    assert_canonical(loaded)
    assert loaded.interactions.to_pylist()[0] == {
        "user_id": "u1",
        "item_id": "A",
        "timestamp": 100,
        "event": "rating",
        "weight": 5.0,
    }
    assert loaded.drops == {"malformed_row": 2, "non_utf8_row": 1, "duplicate_item": 1}
    items = {r["item_id"]: r for r in loaded.items.to_pylist()}
    assert (
        items["A"]["title"] == "Beaker & lid"
        and items["A"]["price"] == 12.5
        and items["A"]["categories"] == ["Lab", "Glass"]
    )
    assert items["A"]["description"] == "x y" and items["B"]["price"] is None and items["B"]["brand"] == "3M"
    with pytest.raises(DataError, match=r"Toy.json.gz:3"):
        load_source("amazon2018", reviews=str(reviews), strict=True)


def test_amazon2023_uses_parent_asin_and_milliseconds(tmp_path):
    reviews = write_lines(
        tmp_path / "Toy.jsonl",
        [
            json.dumps(
                {
                    "user_id": "U",
                    "asin": "A-red",
                    "parent_asin": "A",
                    "rating": 4.0,
                    "timestamp": 1_600_000_000_123,
                }
            )
        ],
    )
    meta = write_lines(
        tmp_path / "meta_Toy.jsonl",
        [
            json.dumps(
                {"parent_asin": "A", "title": "Scope", "store": "Acme", "categories": ["Lab"], "price": None}
            )
        ],
    )
    loaded = load_source("amazon2023", reviews=str(reviews), meta=str(meta))
    assert_canonical(loaded)
    assert loaded.interactions.to_pylist() == [
        {"user_id": "U", "item_id": "A", "timestamp": 1_600_000_000, "event": "rating", "weight": 4.0}
    ]
    assert loaded.items.to_pylist()[0]["brand"] == "Acme"
    assert load_source("amazon2023", reviews=str(reviews), item_key="asin").interactions.column(
        "item_id"
    ).to_pylist() == ["A-red"]
    with pytest.raises(DataError, match="Amazon 2023 meta not found"):
        load_source("amazon2023", reviews=str(reviews), meta=str(tmp_path / "absent.jsonl"))


# ---------------------------------------------------------------- MovieLens


def test_movielens_100k_latin1_titles_and_genre_flags(tmp_path):
    write_lines(tmp_path / "u.data", ["1\t10\t5\t881250949", "1\t20\t3\t881250950", "2\t10\tx\t1"])
    flags = ["0"] * 19
    flags[1] = flags[5] = "1"
    (tmp_path / "u.item").write_bytes(
        (
            "10|Misérables, Les (1995)|01-Jan-1995||url|"
            + "|".join(flags)
            + "\n20|Toy|01-Jan-1995||u|"
            + "|".join(["0"] * 19)
            + "\n"
        ).encode("latin-1")
    )
    loaded = load_source("movielens", path=str(tmp_path))
    assert_canonical(loaded)
    assert loaded.extra["variant"] == "100k" and loaded.drops == {"malformed_row": 1}
    first = loaded.items.to_pylist()[0]
    assert first["title"] == "Misérables, Les (1995)" and first["categories"] == ["Action", "Comedy"]


def test_movielens_1m_and_latest_layouts(tmp_path):
    one_m = tmp_path / "ml-1m"
    one_m.mkdir()
    write_lines(one_m / "ratings.dat", ["1::1193::5::978300760", "1::661::3::978302109"])
    write_lines(
        one_m / "movies.dat",
        ["1193::One Flew (1975)::Drama", "661::James (1996)::Animation|Children's|Musical"],
    )
    loaded = load_source("movielens", path=str(one_m))
    assert loaded.extra["variant"] == "1m" and loaded.interactions.num_rows == 2
    assert loaded.items.to_pylist()[1]["categories"] == ["Animation", "Children's", "Musical"]

    latest = tmp_path / "ml-latest"
    latest.mkdir()
    write_lines(
        latest / "ratings.csv",
        ["userId,movieId,rating,timestamp", "1,1,4.0,964982703", "1,3,4.0,964981247,extra"],
    )
    write_lines(
        latest / "movies.csv",
        [
            "movieId,title,genres",
            '1,"Toy Story (1995)",Adventure|Animation',
            "3,Heat (1995),(no genres listed)",
        ],
    )
    loaded = load_source("movielens", path=str(latest))
    assert_canonical(loaded)
    assert loaded.drops == {"malformed_row": 1} and loaded.interactions.num_rows == 1
    assert loaded.items.to_pylist()[1]["categories"] == []


# ---------------------------------------------------------------- RecBole


def test_recbole_typed_headers(tmp_path):
    write_lines(
        tmp_path / "toy.inter",
        [
            "user_id:token\titem_id:token\trating:float\ttimestamp:float",
            "1\t10\t4\t100.0",
            "1\t11\t2\t90",
            "2\t10",
        ],
    )
    write_lines(
        tmp_path / "toy.item",
        [
            "item_id:token\tmovie_title:token_seq\tclass:token_seq\tyear:float",
            "10\tThe Film\tDrama Crime\t1994",
            "11\tOther\t\t",
        ],
    )
    loaded = load_source("recbole", path=str(tmp_path), name="toy")
    assert_canonical(loaded)
    assert loaded.drops == {"malformed_row": 1}
    assert loaded.interactions.column("timestamp").to_pylist() == [100, 90]
    item = loaded.items.to_pylist()[0]
    assert item["title"] == "The Film" and item["categories"] == ["Drama", "Crime"] and item["year"] == 1994.0
    write_lines(tmp_path / "toy.inter", ["user_id\titem_id"])
    with pytest.raises(DataError, match="has no type"):
        load_source("recbole", path=str(tmp_path), name="toy")


# ---------------------------------------------------------------- generic tabular


def test_tabular_csv_mapping_and_bad_rows_counted(tmp_path):
    path = tmp_path / "log.csv"
    write_lines(
        path,
        [
            "uid,sku,ts,kind",
            "u1,a,1000,view",
            "u1,b,2000,buy,extra",
            b"u2,\xe9,3000,view",
            "u2,c,notatime,view",
            "u2,d,4000,buy",
        ],
    )
    loaded = load_source(
        "tabular",
        interactions=str(path),
        columns={"user_id": "uid", "item_id": "sku", "timestamp": "ts", "event": "kind"},
        timestamp_unit="ms",
    )
    assert_canonical(loaded)
    assert loaded.drops == {"non_utf8_row": 1, "malformed_row": 2}
    assert loaded.interactions.to_pylist() == [
        {"user_id": "u1", "item_id": "a", "timestamp": 1, "event": "view", "weight": 1.0},
        {"user_id": "u2", "item_id": "d", "timestamp": 4, "event": "buy", "weight": 1.0},
    ]
    assert loaded.items.column("item_id").to_pylist() == ["a", "d"]  # no catalogue: ids only
    with pytest.raises(DataError, match=r"log.csv:4: "):
        load_source(
            "tabular",
            interactions=str(path),
            columns={"user_id": "uid", "item_id": "sku", "timestamp": "ts"},
            strict=True,
        )
    with pytest.raises(DataError, match=r"missing column\(s\) \['item_id <- item'\]"):
        load_source(
            "tabular",
            interactions=str(path),
            columns={"user_id": "uid", "item_id": "item", "timestamp": "ts"},
        )
    with pytest.raises(DataError, match="interactions file not found"):
        load_source("tabular", interactions=str(tmp_path / "absent.csv"))


def test_tabular_parquet_jsonl_datetime_and_order_timestamps(tmp_path):
    pq.write_table(
        pa.table(
            {"user": ["u", "u"], "item": ["x", "y"], "when": ["2020-01-01T00:00:00", "2020-01-02T00:00:00"]}
        ),
        tmp_path / "log.parquet",
    )
    write_lines(
        tmp_path / "items.jsonl",
        [
            json.dumps({"id": "x", "name": "X &amp; Co", "cats": ["A", "B"], "stock": 3}),
            "not json",
            json.dumps({"id": "y", "name": "Y"}),
        ],
    )
    loaded = load_source(
        "tabular",
        interactions=str(tmp_path / "log.parquet"),
        columns={"user_id": "user", "item_id": "item", "timestamp": "when"},
        timestamp_unit="datetime",
        items=str(tmp_path / "items.jsonl"),
        item_columns={"item_id": "id", "title": "name", "categories": "cats"},
    )
    assert_canonical(loaded)
    assert loaded.interactions.column("timestamp").to_pylist() == [1577836800, 1577923200]
    assert loaded.drops == {"malformed_row": 1}
    assert loaded.items.to_pylist()[0] == {
        "item_id": "x",
        "title": "X & Co",
        "categories": ["A", "B"],
        "stock": 3.0,
    }

    write_lines(tmp_path / "seq.tsv", ["u\ti", "a\t1", "b\t2", "a\t3"])
    ordered = load_source(
        "tabular",
        interactions=str(tmp_path / "seq.tsv"),
        delimiter="\t",
        columns={"user_id": "u", "item_id": "i"},
        timestamp_unit="order",
    )
    assert ordered.interactions.column("timestamp").to_pylist() == [0, 1, 2]


# ---------------------------------------------------------------- synthetic


def test_synthetic_source_is_canonical_and_seeded():
    a = load_source("synthetic", num_users=30, num_items=40, seed=3)
    b = load_source("synthetic", num_users=30, num_items=40, seed=3)
    assert_canonical(a)
    assert a.interactions.equals(b.interactions)
    assert "world" in a.extra and len(a.interactions.column("user_id").unique()) == 30
