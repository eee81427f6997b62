"""`onereason train`: the recipe's `stage:` picks the stage; bad configs fail before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from onereason.train import STAGES, parse_stage_config

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(
    p for p in (REPO / "recipes").glob("*/*.yaml") if p.parent.name not in {"accelerate_configs", "data"}
)
STAGE_RECIPES = [p for p in RECIPES if p.stem in {"align", "sft"}]
# A path that does not exist: if parsing ever reached model loading, the error would name it.
NO_MODEL = "/nonexistent/model-that-must-not-load"


def write_recipe(tmp_path: Path, **fields) -> str:
    base = {
        "stage": "sft",
        "model_name_or_path": NO_MODEL,
        "dataset_path": "/nonexistent/tasks",
        "use_cpu": True,
        "bf16": False,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**base, **fields}))
    return str(path)


def cpu_overrides(recipe: dict) -> list[str]:
    # GPU recipes ask for bf16, which TrainingArguments refuses on a machine without one.
    return (
        []
        if torch.cuda.is_available() or not recipe.get("bf16")
        else ["--bf16", "false", "--use_cpu", "true"]
    )


@pytest.mark.parametrize("recipe", STAGE_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_parses_into_its_stage(recipe):
    raw = yaml.safe_load(recipe.read_text())
    module, configs = parse_stage_config(["--config", str(recipe), *cpu_overrides(raw)])
    assert module.__name__ == f"onereason.stages.{raw['stage']}"
    assert [type(c) for c in configs] == list(module.CONFIG_CLASSES)
    model_args, data_args, *_, training_args = configs
    assert model_args.model_name_or_path == raw["model_name_or_path"]
    assert data_args.dataset_path == raw["dataset_path"]
    assert training_args.output_dir == raw["output_dir"]
    header = recipe.read_text().split("\nstage:")[0]
    assert (
        "-m onereason.train --config" in header.replace("\\\n#", "") or "onereason train --config" in header
    )
    assert "Sized for:" in header


@pytest.mark.parametrize(
    "folder", sorted(p for p in (REPO / "recipes").glob("qwen3-*") if p.is_dir()), ids=lambda p: p.name
)
def test_each_qwen3_folder_has_every_stage_and_each_recipe_parses_into_its_stage(folder, monkeypatch):
    assert sorted(p.stem for p in folder.glob("*.yaml")) == sorted(STAGES)
    monkeypatch.chdir(REPO)  # unify's specialist_recipe is a path from the repository root
    for recipe in sorted(folder.glob("*.yaml")):
        raw = yaml.safe_load(recipe.read_text())
        argv = ["--config", str(recipe.relative_to(REPO)), *cpu_overrides(raw)]
        module, configs = parse_stage_config(argv)
        assert raw["stage"] == recipe.stem and module.__name__ == f"onereason.stages.{recipe.stem}"
        assert [type(c) for c in configs] == list(module.CONFIG_CLASSES)
        assert configs[-1].output_dir == f"runs/{folder.name}/{recipe.stem}"
        if recipe.stem == "unify":
            assert configs[2].specialist_recipe == f"recipes/{folder.name}/grpo.yaml"


def test_key_value_overrides_win_over_the_yaml(tmp_path):
    config = write_recipe(tmp_path, learning_rate=1.0e-3, tasks=["caption"])
    _, (model_args, data_args, _, training_args) = parse_stage_config(
        [
            "--config",
            config,
            "--learning_rate",
            "0.5",
            "--tasks",
            "rec_sid",
            "text2sid",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert training_args.learning_rate == 0.5
    assert data_args.tasks == ["rec_sid", "text2sid"]
    assert model_args.model_name_or_path == NO_MODEL


def test_unknown_key_fails_naming_it(tmp_path):
    config = write_recipe(tmp_path, learning_rat=1.0e-3, output_dir=str(tmp_path))
    with pytest.raises(SystemExit, match="learning_rat"):
        parse_stage_config(["--config", config])


def test_bad_value_fails_naming_the_key(tmp_path, capsys):
    config = write_recipe(tmp_path, learning_rate="fast", output_dir=str(tmp_path))
    with pytest.raises(SystemExit):
        parse_stage_config(["--config", config])
    assert "learning_rate" in capsys.readouterr().err


def test_unknown_task_fails_naming_the_field(tmp_path):
    config = write_recipe(tmp_path, tasks=["rec_sid", "captions"], output_dir=str(tmp_path))
    with pytest.raises(SystemExit, match=r"tasks: unknown value\(s\) \['captions'\]"):
        parse_stage_config(["--config", config])


@pytest.mark.parametrize(
    "fields, message",
    [({"stage": "pretrain"}, "unknown stage 'pretrain'"), ({"stage": None}, "missing `stage:`")],
)
def test_bad_stage_fails(tmp_path, fields, message):
    config = write_recipe(tmp_path, output_dir=str(tmp_path), **fields)
    if fields["stage"] is None:
        Path(config).write_text(Path(config).read_text().replace("stage: null\n", ""))
    with pytest.raises(SystemExit, match=message):
        parse_stage_config(["--config", config])


def test_align_phases_are_checked_at_parse_time(tmp_path):
    config = write_recipe(tmp_path, stage="align", phases=["embedding"], output_dir=str(tmp_path))
    with pytest.raises(SystemExit, match="phases"):
        parse_stage_config(["--config", config])


def test_cli_train_names_the_missing_model_then_the_missing_dataset(tmp_path, make_tiny_model, capsys):
    from onereason.cli import main

    config = write_recipe(tmp_path, output_dir=str(tmp_path / "out"), max_steps=1)
    # Parsing passes; the preflight reports the missing model in one line, before loading anything.
    assert main(["train", "--config", config]) == 1
    err = capsys.readouterr().err
    assert f"model_name_or_path {NO_MODEL} does not exist" in err and "Traceback" not in err
    model = make_tiny_model()
    assert main(["train", "--config", config, "--model_name_or_path", str(model)]) == 1
    err = capsys.readouterr().err
    assert "dataset_path /nonexistent/tasks does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
