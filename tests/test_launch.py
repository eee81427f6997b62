"""Each stage through `accelerate launch`, as a user runs it: one process, two (DDP, gloo), ZeRO-2.

Runs on CPU: two processes on two cores test correctness (gradients averaged, weights saved
once, the alignment mask holding under DDP and DeepSpeed), not speed.
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
}


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_tiny_model):
    return build_world(tmp_path_factory.mktemp("launch-world"), make_tiny_model)


def free_port() -> int:
    # Other test runs may share this machine: never take accelerate's default 29500.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(launcher: str, recipe: str, *overrides: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run `accelerate launch ... -m onereason.train --config recipe` from the repository root.

    DeepSpeed's first multi-process run on a machine JIT-compiles a small CPU op (cached in
    ~/.cache/torch_extensions; ~20 s idle, minutes on a loaded machine): hence the timeout.
    """
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", *LAUNCHERS[launcher],
        "--main_process_port", str(free_port()),
        "-m", "onereason.train", "--config", recipe, *overrides,
    ]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }
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
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, f"{' '.join(cmd)}\n--- stderr ---\n{stderr[-6000:]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


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
    launch(
        launcher,
        "recipes/tiny/sft.yaml",
        "--model_name_or_path",
        str(world["itemic"]),
        *common_overrides(world, out),
    )
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
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_align_recipe_launches(world, tmp_path, launcher):
    out = tmp_path / "align"
    launch(
        launcher, "recipes/tiny/align.yaml",
        "--model_name_or_path", str(world["base"]),
        "--items_path", str(world["items"]),
        "--embedding_max_steps", "3",
        *common_overrides(world, out),
    )  # fmt: skip
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
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_rl_recipe_launches(world, tmp_path, launcher, stage):
    out = tmp_path / stage
    launch(launcher, f"recipes/tiny/{stage}.yaml", *rl_overrides(world, out))
    before = load_file(str(world["itemic"] / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    after.pop("lm_head.weight", None)
    assert set(after) == set(before), "the saved policy is a plain model folder (no value head)"
    assert sum(not torch.equal(before[k], after[k]) for k in before) >= 1, "the policy was updated"
    assert json.loads((out / HISTORY_FILE).read_text())[-1]["global_step"] == 3
