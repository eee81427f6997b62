"""The quickstart's plan: every step a stage command, and `--seed` on the steps that start from random."""

from __future__ import annotations

from pathlib import Path

from onereason.cli import COMMANDS
from onereason.quickstart import RECIPES, SEEDED_STEPS, seeded, steps


def test_seed_reaches_the_model_and_training_steps_only(tmp_path: Path):
    plan = seeded(steps(tmp_path, RECIPES), 7)
    assert [name for name, _, _ in plan] == ["data", "ids", "model", "tasks", "align", "sft", "grpo", "eval"]
    for name, command, argv in plan:
        assert command in COMMANDS
        if name in SEEDED_STEPS:
            assert argv[-2:] == ["--seed", "7"], name
        else:
            assert "--seed" not in argv, name  # the synthetic world and its split stay the same
