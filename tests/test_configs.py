"""Every command's config: a value on the command line beats the recipe's; contradictions fail in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from onereason.configs import COMMAND_LINE, DEFAULT, RECIPE, ConflictingSettings, parse_config, stated


def write_recipe(tmp_path: Path, values: dict) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return str(path)


def command_classes(command: str) -> list[type]:
    """The dataclasses each command parses (as in its `main`)."""
    if command == "build-data":
        from data_builders.build import BuildDataConfig

        return [BuildDataConfig]
    if command == "build-ids":
        from data_builders.identifiers.build import BuildIdsConfig

        return [BuildIdsConfig]
    if command == "build-tasks":
        from data_builders.tasks.build import BuildTasksConfig

        return [BuildTasksConfig]
    if command == "init-model":
        from onereason.init_model import InitModelConfig

        return [InitModelConfig]
    if command == "eval":
        from evaluation.run import DecodingArgs, EvalConfig

        return [EvalConfig, DecodingArgs]
    if command == "push":
        from onereason.push import PushArguments

        return [PushArguments]
    if command == "quickstart":
        from onereason.quickstart import QuickstartConfig

        return [QuickstartConfig]
    raise AssertionError(command)


# command, recipe values, the key both set, recipe value, command-line value
COMMANDS = [
    ("build-data", {}, "max_history", 20, 7),
    ("build-ids", {}, "codebook_size", 64, 32),
    ("build-tasks", {}, "max_history", 12, 5),
    ("init-model", {"output_dir": "m"}, "vocab_size", 3000, 2000),
    ("eval", {}, "num_beams", 20, 4),
    ("push", {"model_path": "m", "dry_run": True}, "output_dir", "a", "b"),
    ("quickstart", {}, "out", "runs/a", "runs/b"),
]


@pytest.mark.parametrize(
    ("command", "base", "key", "in_recipe", "on_line"), COMMANDS, ids=[c[0] for c in COMMANDS]
)
def test_command_line_value_beats_the_recipe(tmp_path, command, base, key, in_recipe, on_line):
    recipe = write_recipe(tmp_path, {**base, key: in_recipe})
    parsed = parse_config(command_classes(command), ["--config", recipe, f"--{key}", str(on_line)])
    (config,) = [c for c in parsed if hasattr(c, key)]
    assert getattr(config, key) == on_line
    assert stated(config, key) == COMMAND_LINE
    only_recipe = parse_config(command_classes(command), ["--config", recipe])
    (config,) = [c for c in only_recipe if hasattr(c, key)]
    assert getattr(config, key) == in_recipe and stated(config, key) == RECIPE


STAGE_RECIPES = {
    "align": {"embedding_max_steps": 3},
    "sft": {},
    "grpo": {"rewards": [{"name": "hit", "weight": 1.0}]},
    "ppo": {"rewards": [{"name": "hit", "weight": 1.0}]},
    "unify": {},
}


@pytest.mark.parametrize("stage", list(STAGE_RECIPES))
def test_train_command_line_value_beats_the_recipe(tmp_path, stage):
    from onereason.train import parse_stage_config

    extra = dict(STAGE_RECIPES[stage])
    if stage == "unify":
        extra["specialist_recipe"] = write_recipe(tmp_path / "..", {"stage": "grpo"})
    recipe = write_recipe(
        tmp_path,
        {
            "stage": stage,
            "model_name_or_path": "m",
            "dataset_path": "d",
            "learning_rate": 0.1,
            "use_cpu": True,
            **extra,
        },
    )
    _, configs = parse_stage_config(["--config", recipe, "--learning_rate", "0.02", "--output_dir", "o"])
    (training,) = [c for c in configs if hasattr(c, "learning_rate")]
    assert training.learning_rate == 0.02
    assert stated(training, "learning_rate") == COMMAND_LINE
    assert stated(training, "seed") == DEFAULT


# --------------------------------------------------------------------------- interacting settings


def parse_eval(tmp_path, recipe: dict, argv: list[str]):
    from evaluation.run import DecodingArgs, EvalConfig

    path = write_recipe(tmp_path, recipe)
    cfg, _ = parse_config([EvalConfig, DecodingArgs], ["--config", path, *argv])
    return cfg


def test_eval_modes_on_the_command_line_beat_compare_in_the_recipe(tmp_path):
    cfg = parse_eval(tmp_path, {"compare": True}, ["--modes", "no_think"])
    assert cfg.modes == ["no_think"] and cfg.compare is False


def test_eval_compare_on_the_command_line_beats_modes_in_the_recipe(tmp_path):
    cfg = parse_eval(tmp_path, {"modes": ["no_think"]}, ["--compare", "true"])
    assert cfg.modes == ["no_think", "think"] and cfg.compare is True


def test_eval_recipe_compare_beats_the_default_modes(tmp_path):
    cfg = parse_eval(tmp_path, {"compare": True}, [])
    assert cfg.modes == ["no_think", "think"] and cfg.compare is True


@pytest.mark.parametrize(
    ("recipe", "argv", "where"),
    [
        ({}, ["--compare", "true", "--modes", "no_think"], "on the command line"),
        ({"compare": True, "modes": ["think"]}, [], "in the recipe"),
    ],
)
def test_eval_contradictory_compare_and_modes_fail_in_one_line(tmp_path, recipe, argv, where):
    with pytest.raises(ConflictingSettings) as err:
        parse_eval(tmp_path, recipe, argv)
    message = str(err.value)
    assert "\n" not in message
    assert "--compare true" in message and "--modes" in message and where in message


def test_eval_config_built_in_python_follows_the_same_rule():
    from evaluation.run import EvalConfig

    assert EvalConfig(compare=True).modes == ["no_think", "think"]
    with pytest.raises(ConflictingSettings, match="--compare true --modes think"):
        EvalConfig(compare=True, modes=["think"])


@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_rl_reward_weights_explicit_wins_and_contradiction_fails(tmp_path, stage):
    from onereason.rl.arguments import reward_weights
    from onereason.train import parse_stage_config

    base = {
        "stage": stage,
        "model_name_or_path": "m",
        "dataset_path": "d",
        "output_dir": "o",
        "use_cpu": True,
    }
    rewards = [{"name": "hit", "weight": 1.0}, {"name": "format", "weight": 0.2}]

    def weights(recipe: dict, argv: list[str]) -> list[float]:
        path = write_recipe(tmp_path, {**base, **recipe})
        _, configs = parse_stage_config(["--config", path, *argv])
        rl_args = next(c for c in configs if hasattr(c, "rewards"))
        training = next(c for c in configs if hasattr(c, "reward_weights"))
        return reward_weights(rl_args, training)

    assert weights({"rewards": rewards}, []) == [1.0, 0.2]
    assert weights({"rewards": rewards}, ["--reward_weights", "0.5", "0.5"]) == [0.5, 0.5]
    assert weights(
        {"rewards": rewards, "reward_weights": [3.0, 3.0]}, ["--rewards", "hit:2", "format:1"]
    ) == [
        2.0,
        1.0,
    ]
    with pytest.raises(ConflictingSettings) as err:
        weights({"rewards": rewards, "reward_weights": [0.5, 0.5]}, [])
    message = str(err.value)
    assert (
        "\n" not in message
        and "--reward_weights 0.5 0.5" in message
        and "--rewards hit:1 format:0.2" in message
    )


def test_onereason_eval_prints_the_contradiction_in_one_line(tmp_path, capsys):
    from onereason.cli import main

    recipe = write_recipe(tmp_path, {"data_path": "nowhere"})
    code = main(["eval", "--config", recipe, "--compare", "true", "--modes", "no_think"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "--compare true --modes no_think" in err and "command line" in err
