"""`onereason quickstart --out DIR`: the whole pipeline on the synthetic world, on CPU.

It is nothing but the stage commands, run in order with the recipes in
`recipes/quickstart/` — so every step it takes is one a user can run by hand:

    build-data → build-ids → init-model → build-tasks → train align → train sft
    → train grpo → eval (thinking vs non-thinking, SFT vs GRPO, with baselines)

A finished step leaves a marker file; running the quickstart again skips it, so a killed
run resumes where it stopped.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from onereason.cli import COMMANDS
from onereason.configs import parse_config
from onereason.io import atomic_write_json, make_output_dir

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "quickstart"
DONE = ".onereason-step-done"
logger = logging.getLogger(__name__)


@dataclass
class QuickstartConfig:
    out: str = field(
        default="runs/quickstart", metadata={"help": "Folder for every artefact and the final report."}
    )
    recipes: str = field(
        default=str(RECIPES), metadata={"help": "Folder with the quickstart's stage recipes."}
    )
    stages: list[str] | None = field(
        default=None, metadata={"help": "Run only these steps (names as printed); default: all."}
    )
    fresh: bool = field(default=False, metadata={"help": "Ignore finished steps and run everything again."})
    seed: int = field(
        default=0,
        metadata={"help": "Seed of the model and every training stage (the synthetic world stays the same)."},
    )


def steps(out: Path, recipes: Path) -> list[tuple[str, str, list[str]]]:
    """(step name, command, argv) in pipeline order; paths all live under `out`."""
    r = recipes
    return [
        ("data", "build-data", ["--config", f"{r}/data.yaml", "--out_dir", f"{out}/data"]),
        (
            "ids",
            "build-ids",
            ["--config", f"{r}/ids.yaml", "--items_path", f"{out}/data", "--out_dir", f"{out}/ids"],
        ),
        (
            "model",
            "init-model",
            [
                "--config",
                f"{r}/model.yaml",
                "--items_path",
                f"{out}/data/items.parquet",
                "--output_dir",
                f"{out}/models/base",
            ],
        ),
        (
            "tasks",
            "build-tasks",
            [
                "--config",
                f"{r}/tasks.yaml",
                "--data_dir",
                f"{out}/data",
                "--item_index",
                f"{out}/ids/item_index.json",
                "--out_dir",
                f"{out}/tasks",
                "--truth_dir",
                f"{out}/data",
                "--tokenizer",
                f"{out}/models/base",
                "--mixture",
                f"{r}/mixture.yaml",
            ],
        ),
        (
            "align",
            "train",
            [
                "--config",
                f"{r}/align.yaml",
                "--model_name_or_path",
                f"{out}/models/base",
                "--dataset_path",
                f"{out}/tasks",
                "--item_index",
                f"{out}/ids/item_index.json",
                "--items_path",
                f"{out}/data/items.parquet",
                "--output_dir",
                f"{out}/models/align",
            ],
        ),
        (
            "sft",
            "train",
            [
                "--config",
                f"{r}/sft.yaml",
                "--model_name_or_path",
                f"{out}/models/align",
                "--dataset_path",
                f"{out}/tasks",
                "--output_dir",
                f"{out}/models/sft",
            ],
        ),
        (
            "grpo",
            "train",
            [
                "--config",
                f"{r}/grpo.yaml",
                "--model_name_or_path",
                f"{out}/models/sft",
                "--dataset_path",
                f"{out}/tasks",
                "--output_dir",
                f"{out}/models/grpo",
            ],
        ),
        (
            "eval",
            "eval",
            [
                "--config",
                f"{r}/eval.yaml",
                "--models",
                f"{out}/models/sft",
                f"{out}/models/grpo",
                "--data_path",
                f"{out}/tasks",
                "--train_split",
                f"{out}/data/splits/train.parquet",
                "--out_dir",
                str(out),
            ],  # fmt: skip
        ),
    ]


SEEDED_STEPS = ("model", "align", "sft", "grpo")


def seeded(plan: list[tuple[str, str, list[str]]], seed: int) -> list[tuple[str, str, list[str]]]:
    """The plan with `--seed` on the steps that start from random weights or sample batches."""
    return [
        (name, cmd, argv + ["--seed", str(seed)] if name in SEEDED_STEPS else argv)
        for name, cmd, argv in plan
    ]


def step_output(argv: list[str]) -> Path | None:
    for flag in ("--output_dir", "--out_dir"):
        if flag in argv:
            return Path(argv[argv.index(flag) + 1])
    return None


def run_step(command: str, argv: list[str]) -> None:
    module_name, func_name = COMMANDS[command][0].split(":")
    result = getattr(importlib.import_module(module_name), func_name)(argv)
    if result:
        raise SystemExit(f"step `onereason {command}` failed with exit code {result}")


def main(argv: list[str] | None = None) -> int:
    (config,) = parse_config([QuickstartConfig], argv)
    out = Path(config.out)
    # The folder must be ours (or new, or empty); one from before markers is recognised by its step files.
    legacy = out.is_dir() and any(out.glob(DONE.replace("step", "*")))
    make_output_dir(out, overwrite=legacy, what="--out", replaces=False)
    plan = seeded(steps(out, Path(config.recipes)), config.seed)
    unknown = set(config.stages or ()) - {name for name, _, _ in plan}
    if unknown:
        raise SystemExit(
            f"error: unknown quickstart step(s) {sorted(unknown)}; steps: {[n for n, _, _ in plan]}"
        )
    timings: dict[str, float] = {}
    start = time.perf_counter()
    for i, (name, command, step_argv) in enumerate(plan, 1):
        marker = out / DONE.replace("step", name)
        if config.stages and name not in config.stages:
            continue
        if marker.exists() and not config.fresh:
            print(f"[{i}/{len(plan)}] {name}: done already, skipped ({marker.name})", flush=True)
            continue
        output = step_output(step_argv)
        if config.fresh and output is not None and output.is_dir() and output.resolve() != out.resolve():
            shutil.rmtree(output)  # a stage resumes from its own checkpoints; fresh means from zero
        if config.fresh and name == "eval":
            shutil.rmtree(out / "runs", ignore_errors=True)  # the eval's own records of the last models
        print(f"\n[{i}/{len(plan)}] {name}: onereason {command} {' '.join(step_argv)}", flush=True)
        t0 = time.perf_counter()
        run_step(command, step_argv)
        timings[name] = round(time.perf_counter() - t0, 1)
        marker.write_text(json.dumps({"seconds": timings[name]}))
        print(f"[{i}/{len(plan)}] {name}: finished in {timings[name]:.1f} s", flush=True)
    total = round(time.perf_counter() - start, 1)
    atomic_write_json(out / "quickstart_timings.json", {"steps": timings, "total_seconds": total})
    report = out / "report.md"
    if report.exists():
        print("\n" + report.read_text(encoding="utf-8"))
    print(
        f"quickstart finished in {total:.0f} s; report: {report}, {out / 'report.json'}, {out / 'comparison.png'}"
    )
    return 0
