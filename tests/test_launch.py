"""Each stage through `accelerate launch`, as a user runs it: one process, two (DDP, gloo), ZeRO-2, ZeRO-3.

Runs on CPU: two processes on two cores test correctness (two ranks, each trained on other
rows, end with the same weights: gradients are averaged; weights saved once; the alignment
mask holds under DDP and DeepSpeed), not speed. Every rank writes what it saw
(`tests/rank_probe.py`). Evaluation under `accelerate launch` splits the users across
processes and must write the report one process writes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import build_world

from onereason.stages.common import HISTORY_FILE

REPO = Path(__file__).resolve().parents[1]
EMBED = "model.embed_tokens.weight"

LAUNCHERS = {
    "single": [
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ],
    # `--cpu --num_processes 2` would silently run one process; --multi_gpu on CPU uses gloo.
    "ddp-2proc": [
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ],
    "zero2-2proc": ["--config_file", "recipes/accelerate_configs/zero2.yaml", "--num_processes", "2"],
    "zero3-2proc": ["--config_file", "recipes/accelerate_configs/zero3.yaml", "--num_processes", "2"],
}
# ZeRO-3 shards the weights themselves; SFT is the stage it is meant for (8B full fine-tuning).
TRAIN_LAUNCHERS = [name for name in LAUNCHERS if name != "zero3-2proc"]
PROBE = REPO / "tests" / "rank_probe.py"


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_tiny_model):
    return build_world(tmp_path_factory.mktemp("launch-world"), make_tiny_model)


def free_port() -> int:
    # Other test runs may share this machine: never take accelerate's default 29500.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    launcher: str, *command: str, probe: Path | None = None, timeout: int = 240
) -> subprocess.CompletedProcess:
    """Run `accelerate launch <launcher flags> <command>` from the repository root.

    `command` is `-m onereason.train --config ...` or `-m onereason.cli eval ...`; with `probe`
    the training entry point runs through `tests/rank_probe.py`, which writes one
    `rank-<i>.json` per process into `probe`.

    DeepSpeed's first multi-process run on a machine JIT-compiles a small CPU op (cached in
    ~/.cache/torch_extensions; ~20 s idle, minutes on a loaded machine): hence the timeout.
    """
    if probe is not None:
        assert command[:2] == ("-m", "onereason.train"), command
        command = (str(PROBE), *command[2:])
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", *LAUNCHERS[launcher],
        "--main_process_port", str(free_port()), *command,
    ]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if probe is not None:
        env["RANK_PROBE_DIR"] = str(probe)
    # Own process group: on a timeout the workers are ended with the launcher, never left behind.
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # The workers may run in sessions of their own: end every descendant, then the launcher.
        import psutil

        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, f"{' '.join(cmd)}\n--- stderr ---\n{stderr[-6000:]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def train(launcher: str, recipe: str, *overrides: str, probe: Path) -> None:
    launch(launcher, "-m", "onereason.train", "--config", recipe, *overrides, probe=probe)


def ranks_agree(probe: Path, launcher: str) -> list[dict]:
    """Every process ran in one world of the launcher's size, trained, and ended with the same weights;
    with two processes, the ranks trained on different rows (so equal weights mean averaged gradients)."""
    n = 1 if launcher == "single" else 2
    records = [json.loads(p.read_text()) for p in sorted(probe.glob("rank-*.json"))]
    assert [r["rank"] for r in records] == list(range(n)), f"{launcher}: ranks {[r['rank'] for r in records]}"
    assert {r["world_size"] for r in records} == {n}
    assert all(r["batches"] for r in records), "every rank ran forward passes with gradients"
    assert len({r["weights_after"] for r in records}) == 1, (
        f"{launcher}: the ranks ended with different weights"
    )
    assert all(r["weights_after"] != r["weights_before"] for r in records), "training changed the weights"
    if n == 2:
        first, second = (r["batches"] for r in records)
        assert first != second and not set(first) & set(second), "the two ranks must see different rows"
    return records


def common_overrides(world, out: Path) -> list[str]:
    return [
        "--dataset_path", str(world["tasks"]),
        "--item_index", str(world["index"]),
        "--output_dir", str(out),
        "--per_device_train_batch_size", "2",
        "--max_steps", "3",
        "--save_steps", "3",
        "--logging_steps", "1",
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_sft_recipe_launches(world, tmp_path, launcher):
    out = tmp_path / "sft"
    train(
        launcher,
        "recipes/tiny/sft.yaml",
        "--model_name_or_path",
        str(world["itemic"]),
        *common_overrides(world, out),
        probe=tmp_path / "ranks",
    )
    ranks_agree(tmp_path / "ranks", launcher)
    before, after = (
        load_file(str(world["itemic"] / "model.safetensors")),
        load_file(str(out / "model.safetensors")),
    )
    # DeepSpeed's gathered state dict also writes the tied lm_head; it must equal the embedding.
    assert torch.equal(after.pop("lm_head.weight", after[EMBED]), after[EMBED])
    assert set(after) == set(before)
    assert sum(not torch.equal(before[k], after[k]) for k in before) >= len(before) // 2
    assert json.loads((out / HISTORY_FILE).read_text())[-1]["global_step"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("launcher", TRAIN_LAUNCHERS)
def test_align_recipe_launches(world, tmp_path, launcher):
    out = tmp_path / "align"
    train(
        launcher, "recipes/tiny/align.yaml",
        "--model_name_or_path", str(world["base"]),
        "--items_path", str(world["items"]),
        "--embedding_max_steps", "3",
        *common_overrides(world, out),
        probe=tmp_path / "ranks",
    )  # fmt: skip
    ranks_agree(tmp_path / "ranks", launcher)  # the last phase (the whole model)
    base = load_file(str(world["base"] / "model.safetensors"))
    phase1 = load_file(str(out / "embeddings" / "model.safetensors"))
    final = load_file(str(out / "model.safetensors"))
    for weights in (phase1, final):  # DeepSpeed also writes the tied lm_head (equal to the embedding)
        assert torch.equal(weights.pop("lm_head.weight", weights[EMBED]), weights[EMBED])
    new_ids = json.loads((out / HISTORY_FILE).read_text())[-1]["new_token_ids"]
    rows = base[EMBED].shape[0]
    old = torch.ones(rows, dtype=torch.bool)
    old[[i for i in new_ids if i < rows]] = False
    assert torch.equal(phase1[EMBED][:rows][old], base[EMBED][old]), (
        "phase 1 must leave old rows bit-identical"
    )
    assert all(torch.equal(phase1[k], base[k]) for k in base if k != EMBED), (
        "phase 1 must leave the layers alone"
    )
    assert sum(not torch.equal(phase1[k], final[k]) for k in final) >= len(final) // 2, (
        "phase 2 trains the model"
    )


def rl_overrides(world, out: Path) -> list[str]:
    # generation_batch_size 8 = 2 per device x 2 processes x 2 steps' worth; divisible by num_generations.
    return [
        "--model_name_or_path", str(world["itemic"]),
        *common_overrides(world, out),
        "--generation_batch_size", "8",
        "--num_generations", "2",
        "--think_budget", "8",
        "--max_completion_length", "24",
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["grpo", "ppo"])
@pytest.mark.parametrize("launcher", TRAIN_LAUNCHERS)
def test_rl_recipe_launches(world, tmp_path, launcher, stage):
    out = tmp_path / stage
    train(launcher, f"recipes/tiny/{stage}.yaml", *rl_overrides(world, out), probe=tmp_path / "ranks")
    records = ranks_agree(tmp_path / "ranks", launcher)
    losses = records[0]["losses"]
    assert len(losses) == 3 and any(loss != 0.0 for loss in losses) and len(set(losses)) > 1, (
        f"the policy's loss must move: {losses}"
    )
    assert all(r["losses"] == losses for r in records), "every rank logs the same (gathered) loss"
    before = load_file(str(world["itemic"] / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    after.pop("lm_head.weight", None)
    assert set(after) == set(before), "the saved policy is a plain model folder (no value head)"
    assert sum(not torch.equal(before[k], after[k]) for k in before) >= 1, "the policy was updated"
    assert json.loads((out / HISTORY_FILE).read_text())[-1]["global_step"] == 3


# ---------------------------------------------------------------------------------- evaluation


def timing(key: str) -> bool:
    return key.endswith("_s") or "latency" in key or "per_s" in key or "seconds" in key


def without_timings(value):
    """A report or run record with its wall-clock figures (which differ run to run) left out."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not timing(k)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


@pytest.mark.slow
def test_eval_on_two_processes_writes_the_report_of_one(world, tmp_path):
    """Users are split across the processes in shards; sampled thinking traces are seeded per shard,
    so two processes must rank every user as one process does, and write the same report."""
    from evaluation.run import main as eval_main

    args = [
        "--models", str(world["itemic"]), "--names", "tiny", "--item_index", str(world["index"]),
        "--data_path", str(world["tasks"]), "--compare", "true", "--num_beams", "5",
        "--think_budget", "6", "--shard_size", "2", "--n_bootstrap", "50", "--baselines", "popularity",
    ]  # fmt: skip
    assert eval_main([*args, "--out_dir", str(tmp_path / "one")]) == 0
    launch("ddp-2proc", "-m", "onereason.cli", "eval", *args, "--out_dir", str(tmp_path / "two"))
    one, two = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert [r["name"] for r in one["runs"]] == ["tiny/no_think", "tiny/think"]
    assert one["n_examples"] >= 4, "more users than one shard, so both processes rank some"
    for a, b in zip(one["runs"], two["runs"]):
        assert without_timings(a) == without_timings(b), a["name"]
    assert without_timings(one["comparisons"]) == without_timings(two["comparisons"])
    for mode in ("no_think", "think"):
        one_run, two_run = (
            [
                json.loads(line)
                for line in (tmp_path / d / "runs" / f"tiny-{mode}.jsonl").read_text().splitlines()
            ]
            for d in ("one", "two")
        )
        assert [r["key"] for r in one_run] == [r["key"] for r in two_run]
        for a, b in zip(one_run, two_run):
            # Same traces, same ranked SIDs; beam scores equal up to float32 summation order (threads).
            assert a.pop("scores") == pytest.approx(b.pop("scores"), abs=1e-4)
            assert without_timings(a) == without_timings(b), a["key"]
    assert (tmp_path / "two" / "report.md").is_file() and (tmp_path / "two" / "comparison.png").is_file()
