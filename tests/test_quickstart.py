"""`onereason quickstart` end to end, shrunk: every step of the pipeline, then the three report files.

The quickstart's own recipes, with the world, the model and every stage made tiny (a tiny model,
a few steps each, few users), run through the real command; a second run finds every step done.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from onereason.quickstart import RECIPES

SHRINK = {
    "data.yaml": {"source_options": {"num_users": 80, "num_items": 48, "seed": 0}},
    "ids.yaml": {"codebook_size": 8},
    "model.yaml": {"preset": "tiny"},
    "tasks.yaml": {"eval_max_rows": 12},
    "align.yaml": {"embedding_max_steps": 2, "max_steps": 3, "save_steps": 3, "per_device_train_batch_size": 8},
    "sft.yaml": {
        "num_train_epochs": 1, "max_steps": 4, "save_strategy": "steps", "save_steps": 4, "eval_strategy": "no",
        "load_best_model_at_end": False, "per_device_train_batch_size": 8, "logging_steps": 1,
    },
    "grpo.yaml": {
        "max_steps": 1, "per_device_train_batch_size": 4, "num_generations": 2, "generation_batch_size": 4,
        "think_budget": 8, "max_completion_length": 24, "logging_steps": 1,
    },
    "eval.yaml": {
        "num_beams": 5, "think_budget": 8, "n_bootstrap": 50, "baselines": ["popularity", "cooccurrence"],
    },
}  # fmt: skip


def tiny_recipes(folder: Path) -> Path:
    folder.mkdir()
    for path in sorted(RECIPES.glob("*.yaml")):
        recipe = yaml.safe_load(path.read_text())
        recipe.update(SHRINK.get(path.name, {}))
        (folder / path.name).write_text(yaml.safe_dump(recipe, sort_keys=False))
    return folder


def test_quickstart_runs_every_step_and_writes_the_report(tmp_path, capsys):
    from onereason.cli import main

    out, recipes = tmp_path / "qs", tiny_recipes(tmp_path / "recipes")
    assert main(["quickstart", "--out", str(out), "--recipes", str(recipes)]) == 0
    timings = json.loads((out / "quickstart_timings.json").read_text())
    steps = ["data", "ids", "model", "tasks", "align", "sft", "grpo", "eval"]
    assert list(timings["steps"]) == steps
    report = json.loads((out / "report.json").read_text())
    runs = {r["name"]: r for r in report["runs"]}
    models = [f"{m}/{mode}" for m in ("sft", "grpo") for mode in ("no_think", "think")]
    assert set(runs) == {*models, "baseline/popularity", "baseline/cooccurrence"}
    assert all(runs[name]["item"]["n_users"] == report["n_examples"] > 0 for name in runs)
    assert all(0.0 <= runs[name]["item"]["hit@5"] <= 1.0 for name in runs)
    assert {(c["a"], c["b"]) for c in report["comparisons"]} >= {("sft/think", "sft/no_think")}
    table = (out / "report.md").read_text()
    assert all(f"| {name} " in table or f"| {name}|" in table for name in runs), table[:2000]
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for step in ("sft", "grpo"):
        assert (out / "models" / step / "model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert str(out / "report.json") in printed.splitlines()[-1]

    # Run again: every step is found done and skipped; the report stays.
    assert main(["quickstart", "--out", str(out), "--recipes", str(recipes)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done already, skipped") == len(steps)
    assert json.loads((out / "report.json").read_text()) == report
