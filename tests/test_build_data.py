"""`onereason build-data` end to end: files on disk, stats.json accounting, determinism, bad input."""

from __future__ import annotations

import hashlib
import json

import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import shared_data

from data_builders.build import main
from data_builders.sources.common import INTERACTION_SCHEMA, DataError
from data_builders.splits import SPLIT_SCHEMA


def run(tmp_path, config: dict, *overrides: str):
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(config))
    return main(["--config", str(path), "--progress", "false", *overrides])


def digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--source_options" in out and "leave_one_out | sliding | given" in out


def test_scientific_build_gives_the_published_counts(tmp_path):
    folder = shared_data("amazon-scientific")
    out = tmp_path / "sci"
    config = {
        "source": "lcrec",
        "source_options": {"path": str(folder), "name": "Scientific"},
        "out_dir": str(out),
        "max_history": 20,
    }
    assert run(tmp_path, config) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["users"], stats["items"], stats["interactions"]) == (8317, 4344, 58492)
    assert stats["splits"]["test"]["examples"] == 8317 and stats["splits"]["valid"]["examples"] == 8317
    assert stats["dropped"] == {}
    assert pq.read_schema(out / "interactions.parquet").equals(INTERACTION_SCHEMA)
    test = pq.read_table(out / "splits" / "test.parquet")
    assert test.schema.equals(SPLIT_SCHEMA)
    assert max(len(h) for h in test.column("history").to_pylist()) == 20
    assert yaml.safe_load((out / "config.yaml").read_text())["source_options"]["name"] == "Scientific"
    assert stats["source_extra"]["published_index_path"].endswith(".index.json")
    assert stats["source_extra"]["order_only"] is True


def test_rerun_gives_byte_identical_files(tmp_path):
    config = {
        "source": "synthetic",
        "source_options": {"num_users": 60, "num_items": 50},
        "out_dir": str(tmp_path / "out"),
        "seed": 4,
        "split": "sliding",
        "kcore": 2,
    }
    run(tmp_path, config)
    first = digest(tmp_path / "out")
    run(tmp_path, config)
    assert digest(tmp_path / "out") == first
    assert set(first) == {
        ".onereason-output",  # the marker: this folder may be replaced by the next run
        "interactions.parquet",
        "items.parquet",
        "truth.parquet",  # synthetic ground truth, for build-tasks
        "interests.parquet",
        "stats.json",
        "config.yaml",
        "splits/train.parquet",
        "splits/valid.parquet",
        "splits/test.parquet",
    }
    interactions = pl.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert interactions.rows() == interactions.sort(["user_id", "timestamp"], maintain_order=True).rows()


def _messy_csv(tmp_path):
    lines = [
        "uid,iid,ts,rating",
        "u1,a,1,5",
        "u1,a,1,5",
        "u1,b,2,4",
        "u1,c,3,2",
        "u1,ghost,4,5",
        "u2,a,1,5",
        "u2,b,oops,4",
        "u2,c,3,5,9",
        "u2,d,4,5",
        "u3,a,9,5",
    ]
    data = "\n".join(lines).encode() + b"\nu3,\xff,10,5\n"
    (tmp_path / "log.csv").write_bytes(data)
    (tmp_path / "items.csv").write_text("id,name\na,Alpha\nb,Beta\nc,Gamma\nd,Delta\nz,Unused\n")
    return {
        "source": "tabular",
        "source_options": {
            "interactions": str(tmp_path / "log.csv"),
            "columns": {"user_id": "uid", "item_id": "iid", "timestamp": "ts", "weight": "rating"},
            "items": str(tmp_path / "items.csv"),
            "item_columns": {"item_id": "id", "title": "name"},
        },
        "out_dir": str(tmp_path / "out"),
        "min_rating": 3,
        "min_history": 2,
    }


def test_every_dropped_row_is_counted_in_stats(tmp_path):
    config = _messy_csv(tmp_path)
    assert run(tmp_path, config) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["dropped"] == {
        "malformed_row": 2,  # bad timestamp, extra field
        "non_utf8_row": 1,
        "duplicate": 1,
        "event_filter": 1,  # rating 2
        "unknown_item": 1,  # ghost
        "min_history": 1,  # u3 left with one interaction
    }
    data_rows = 11
    assert stats["interactions"] + sum(stats["dropped"].values()) == data_rows
    assert stats["dropped_items"] == {
        "item_without_interactions": 2
    }  # c (its only valid row had rating 2) and z
    assert stats["drop_examples"]["unknown_item"] and "ghost" in stats["drop_examples"]["unknown_item"][0]
    # users / items / interactions before and after each filter, chained: one step's after is the next's before
    steps = stats["filters"]
    assert [f["step"] for f in steps][:2] == ["loaded", "the event filter"]
    assert steps[0]["after"]["interactions"] == data_rows - 3  # the loader dropped 3 rows
    for prev, step in zip(steps[1:-1], steps[2:-1]):
        assert step["before"] == prev["after"]
    assert steps[-2]["after"] == {
        "users": stats["users"],
        "items": stats["items"],
        "interactions": stats["interactions"],
    }
    assert steps[-1]["after"] == {"catalogue_items": stats["items"]}
    kept = {f["step"]: f["before"]["interactions"] - f["after"]["interactions"] for f in steps[1:-1]}
    assert kept["the minimum history filter"] == stats["dropped"]["min_history"]


def test_strict_mode_fails_naming_the_row(tmp_path):
    config = _messy_csv(tmp_path)
    with pytest.raises(DataError, match=r"non utf8 row at .*log.csv:12: invalid start byte"):
        run(tmp_path, config, "--strict", "true")
    assert not (tmp_path / "out").exists()


def test_empty_result_and_missing_input_are_clear_errors(tmp_path):
    config = _messy_csv(tmp_path)
    with pytest.raises(DataError, match=r"no interactions left after the event filter"):
        run(tmp_path, config, "--min_rating", "6")
    config["source_options"]["interactions"] = str(tmp_path / "absent.csv")
    with pytest.raises(DataError, match=r"interactions file not found: .*absent.csv"):
        run(tmp_path, config)
    with pytest.raises(DataError, match="ships no split of its own"):
        run(tmp_path, _messy_csv(tmp_path), "--split", "given")


def test_minionerec_given_split_reproduces_the_published_rows(tmp_path):
    folder = shared_data("minionerec-industrial")
    out = tmp_path / "mini"
    config = {
        "source": "minionerec",
        "source_options": {"path": str(folder), "name": "Industrial_and_Scientific"},
        "out_dir": str(out),
        "split": "given",
        "dedup": "none",
        "max_history": 10,
    }
    assert run(tmp_path, config) == 0
    csv = pl.read_csv(next((folder / "test").glob("*.csv")), infer_schema=False)
    test = pl.read_parquet(out / "splits" / "test.parquet")
    assert test["user_id"].to_list() == csv["user_id"].to_list()
    assert test["target"].to_list() == csv["item_id"].to_list()
    assert test["history"].to_list()[:50] == [
        json.loads(h) and [str(i) for i in json.loads(h)] for h in csv["history_item_id"][:50]
    ]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["splits"]["test"]["examples"] == 4533 and stats["splits"]["valid"]["examples"] == 4532
    assert stats["splits"]["train"]["examples"] > 0


def test_command_line_json_options_and_early_config_errors(tmp_path, capsys):
    config = _messy_csv(tmp_path)
    options = json.dumps(config["source_options"])
    assert (
        main(
            [
                "--source",
                "tabular",
                "--source_options",
                options,
                "--out_dir",
                str(tmp_path / "cli"),
                "--no_progress",
            ]
        )
        == 0
    )
    stats = json.loads((tmp_path / "cli" / "stats.json").read_text())
    assert stats["dropped"]["malformed_row"] == 2
    assert any(
        "log.csv" in where for where in stats["drop_examples"]["malformed_row"]
    )  # loader examples kept
    assert "tabular" in (tmp_path / "cli" / "config.yaml").read_text()
    with pytest.raises(SystemExit, match="unknown method 'random'"):
        main(["--source", "tabular", "--source_options", options, "--split", "random"])
    with pytest.raises(SystemExit) as exit_info:
        main(["--source_options", "{not json"])
    assert exit_info.value.code == 2 and "source_options" in capsys.readouterr().err


def test_event_filter_keeps_chosen_behaviours(tmp_path):
    (tmp_path / "log.csv").write_text("u,i,t,b\nx,a,1,view\nx,b,2,buy\nx,c,3,buy\nx,d,4,buy\nx,e,5,cart\n")
    config = {
        "source": "tabular",
        "source_options": {
            "interactions": str(tmp_path / "log.csv"),
            "columns": {"user_id": "u", "item_id": "i", "timestamp": "t", "event": "b"},
        },
        "out_dir": str(tmp_path / "out"),
        "events": ["buy"],
    }
    run(tmp_path, config)
    test = pq.read_table(tmp_path / "out" / "splits" / "test.parquet").to_pylist()
    assert test == [
        {
            "user_id": "x",
            "history": ["b", "c"],
            "history_ts": [2, 3],
            "target": "d",
            "target_ts": 4,
            "target_event": "buy",
        }
    ]
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["dropped"] == {"event_filter": 2}
