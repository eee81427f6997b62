"""wandb logging, offline: a training stage and an evaluation each write a run holding their metrics.

The runs are read back from the `.wandb` file wandb writes (a LevelDB-style log of protobuf
records: header, run, history, summary, ...), with wandb's own record types.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from toy_world import toy_index, toy_model, write_toy_dataset

REPO = Path(__file__).resolve().parents[1]
BLOCK = 32 * 1024  # LevelDB log block; a record header is 7 bytes (crc32, length, type)


def read_records(path: Path) -> list:
    """Every record of a `.wandb` file, as `wandb.proto.wandb_internal_pb2.Record`."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk  # full / first, middle / last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _key(item) -> str:
    return item.key or ".".join(item.nested_key)


def offline_run(wandb_dir: Path) -> tuple[Path, list[dict], dict]:
    """(run folder, history rows, final summary) of the one offline run under `wandb_dir`."""
    runs = sorted((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline run under {wandb_dir}, found {runs}"
    (run_file,) = runs[0].glob("run-*.wandb")
    history, summary = [], {}
    for record in read_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
    return runs[0], history, summary


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_PROJECT", "onereason-tests")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    yield tmp_path / "wb"
    import wandb

    wandb.teardown()  # stop wandb's service process


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb-world")
    index = toy_index(8, (2, 2, 2))
    return {"model": toy_model(root / "model", index), "tasks": write_toy_dataset(root / "tasks", index)}


def test_sft_logs_its_loss_and_completions_to_wandb(toy, tmp_path, offline_wandb, monkeypatch):
    from onereason.train import main

    monkeypatch.chdir(REPO)
    out = tmp_path / "sft"
    main([
        "--config", "recipes/tiny/sft.yaml", "--model_name_or_path", str(toy["model"]),
        "--dataset_path", str(toy["tasks"]), "--output_dir", str(out), "--max_steps", "3",
        "--logging_steps", "1", "--save_steps", "3", "--report_to", "wandb",
        "--eval_strategy", "steps", "--eval_steps", "3", "--completions_table_prompts", "2",
        "--completions_max_new_tokens", "6",
    ])  # fmt: skip
    import wandb

    wandb.finish()  # what the end of the `onereason train` process does: the run's records are flushed
    logged = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in logged if "loss" in h]
    assert len(losses) == 3
    run_dir, history, summary = offline_run(offline_wandb)
    assert [h["train/loss"] for h in history if "train/loss" in h] == pytest.approx(losses)
    assert summary["train/loss"] == pytest.approx(losses[-1])
    assert "eval/loss" in summary
    # TRL's completions table of the validation prompts (add_completions_table)
    assert summary["completions._type"] == "table-file"
    table = json.loads((run_dir / "files" / summary["completions.path"]).read_text())
    assert len(table["data"]) == 2 and "completion" in table["columns"]


def test_eval_logs_every_run_and_mode_and_the_plot_to_wandb(toy, tmp_path, offline_wandb):
    from evaluation.run import main

    out = tmp_path / "eval"
    assert (
        main(
            [
                "--models",
                str(toy["model"]),
                "--names",
                "toy",
                "--data_path",
                str(toy["tasks"]),
                "--compare",
                "true",
                "--num_beams",
                "5",
                "--think_budget",
                "6",
                "--n_bootstrap",
                "20",
                "--out_dir",
                str(out),
                "--report_to",
                "wandb",
            ]
        )  # fmt: skip
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    run_dir, _, summary = offline_run(offline_wandb)
    names = [r["name"] for r in report["runs"]]
    assert names == ["toy/no_think", "toy/think"]
    for run in report["runs"]:
        for level in ("item", "sid"):
            for metric in ("hit@5", "ndcg@5", "mrr"):
                assert summary[f"{run['name']}/{level}/{metric}"] == pytest.approx(run[level][metric])
    table = json.loads((run_dir / "files" / summary["report.path"]).read_text())
    assert [row[:3] for row in table["data"]] == [
        [n, n.split("/")[1], lv] for n in names for lv in ("item", "sid")
    ]
    assert summary["comparison._type"] == "image-file"
    image = run_dir / "files" / summary["comparison.path"]
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
