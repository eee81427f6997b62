"""Does the model the toolkit trains beat what users would pick instead? Seeds x worlds.

    python benchmarks/bench_quality.py quickstart --seeds 0 1 2    # `onereason quickstart` per seed
    python benchmarks/bench_quality.py scientific --seeds 0        # Amazon Scientific, CPU recipe

`quickstart` runs the whole quickstart once per seed (the synthetic world stays the same; the
model, alignment, SFT and GRPO seeds change) and reads its report. `scientific` builds the data
and SIDs once (`recipes/scientific/`), then per seed: a fresh `rec`-preset model, SFT on the
sequence and pair rows (timed: the bar is <= 45 minutes on 2 cores), and a non-thinking evaluation of
*all* test users against popularity, co-occurrence and SASRec (20 beams, each SID scored with the history and with
the last item alone, `view_weight` in `recipes/scientific/eval.yaml`; every row ranked to the
same depth). Seeds may run one at a time, on different days: results accumulate in
`runs/bench_quality/<world>.json`, and the table printed (and written to `<world>.md`) holds
every seed run so far, with the mean and the worst seed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "bench_quality"
METRICS = ["hit@5", "hit@10", "hit@20", "ndcg@5", "ndcg@10", "ndcg@20"]
SCI = "recipes/scientific"


def onereason(*argv: str) -> float:
    """Run one `onereason` command in a child process; its wall seconds."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "onereason.cli", *argv], cwd=ROOT, check=True)
    return time.perf_counter() - began


def sft_record(model_dir: Path) -> dict:
    history = json.loads((model_dir / "onereason_history.json").read_text())
    return next(r for r in reversed(history) if r.get("stage") == "sft")


def rows_from_report(report: dict, seed: int, train_s: float | None, sft: dict | None) -> list[dict]:
    rows = []
    for run in report["runs"]:
        if run["mode"] == "think":
            continue  # quality is the non-thinking model's; thinking has its own benchmark
        owner, _, rest = run["name"].partition("/")
        row = {"model": rest if run["mode"] == "baseline" else owner, "mode": run["mode"], "seed": seed}
        row.update({m: run["item"].get(m) for m in METRICS})
        if run["mode"] != "baseline":
            row["train_s"] = round(train_s, 1) if train_s is not None else None
            row["tokens_per_epoch"] = (sft or {}).get("tokens_per_epoch")
            row["best_checkpoint"] = (sft or {}).get("best_checkpoint")
        rows.append(row)
    return rows


def quickstart(seed: int, reuse: bool = False) -> list[dict]:
    out = OUT / f"quickstart-seed{seed}"
    if not (reuse and (out / "report.json").exists()):
        onereason("quickstart", "--out", str(out), "--seed", str(seed), "--fresh", "true")
    timings = json.loads((out / "quickstart_timings.json").read_text())["steps"]
    report = json.loads((out / "report.json").read_text())
    rows = rows_from_report(report, seed, timings.get("sft"), sft_record(out / "models" / "sft"))
    for row in rows:
        row["total_s"] = sum(timings.values())
    return rows


def scientific(seed: int, reuse: bool = False) -> list[dict]:
    runs = ROOT / "runs" / "scientific"
    if not (runs / "data" / "splits" / "test.parquet").exists():
        onereason("build-data", "--config", f"{SCI}/data.yaml")
    if not (runs / "ids" / "item_index.json").exists():
        onereason("build-ids", "--config", f"{SCI}/ids.yaml")
    base = OUT / f"scientific-seed{seed}"
    if reuse and (base / "eval" / "report.json").exists():
        report = json.loads((base / "eval" / "report.json").read_text())
        return rows_from_report(report, seed, None, sft_record(base / "sft"))
    shutil.rmtree(base, ignore_errors=True)  # this benchmark's own folder: a new run, never a resumed one
    model, sft_dir, tasks = base / "base", base / "sft", runs / "tasks-quality"
    if not has_tasks(tasks, yaml.safe_load((ROOT / SCI / "sft_cpu.yaml").read_text())["tasks"]):
        shutil.rmtree(tasks, ignore_errors=True)  # this benchmark's own task build, from an older mixture
        onereason("build-tasks", "--config", f"{SCI}/tasks.yaml", "--out_dir", str(tasks))
    onereason(
        "init-model", "--config", f"{SCI}/model_cpu.yaml", "--output_dir", str(model), "--seed", str(seed)
    )
    train_s = onereason(
        "train", "--config", f"{SCI}/sft_cpu.yaml", "--model_name_or_path", str(model),
        "--dataset_path", str(tasks), "--output_dir", str(sft_dir), "--seed", str(seed),
    )  # fmt: skip
    eval_dir = base / "eval"
    onereason(
        "eval", "--config", f"{SCI}/eval.yaml", "--models", str(sft_dir), "--names", "sft",
        "--data_path", str(tasks), "--compare", "false", "--modes", "no_think",
        "--baselines", "popularity", "cooccurrence", "sasrec", "--out_dir", str(eval_dir),
    )  # fmt: skip
    report = json.loads((eval_dir / "report.json").read_text())
    return rows_from_report(report, seed, train_s, sft_record(sft_dir))


def has_tasks(folder: Path, tasks: list[str]) -> bool:
    """Whether a task build is of today's `tasks.yaml` and its train split holds every task trained on."""
    stats, built_config = folder / "stats.json", folder / "config.yaml"
    if not (stats.exists() and built_config.exists()):
        return False
    recipe = yaml.safe_load((ROOT / SCI / "tasks.yaml").read_text())
    built_with = yaml.safe_load(built_config.read_text())
    if any(built_with.get(key) != value for key, value in recipe.items() if key != "out_dir"):
        return False  # built from an older recipe (another pair_window, say)
    built = json.loads(stats.read_text())["examples_per_task_mode"]["train"]
    return all(any(key.startswith(f"{task}/") for key in built) for task in tasks)


def table(rows: list[dict]) -> str:
    cols = ["model", "mode", "seed", *METRICS, "train_s", "tokens_per_epoch"]
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) and v < 1 else ("–" if v is None else str(v))  # noqa: E731
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in cols) + " |")
    by_model: dict[str, list[dict]] = {}
    for row in rows:
        by_model.setdefault(f"{row['model']}/{row['mode']}", []).append(row)
    lines += [
        "",
        "| run | seeds | Hit@10 mean | Hit@10 worst | NDCG@10 mean | NDCG@10 worst |",
        "|---" * 6 + "|",
    ]
    for name, group in by_model.items():
        hits, ndcgs = [r["hit@10"] for r in group], [r["ndcg@10"] for r in group]
        lines.append(
            f"| {name} | {len(group)} | {statistics.mean(hits):.4f} | {min(hits):.4f} | "
            f"{statistics.mean(ndcgs):.4f} | {min(ndcgs):.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("world", choices=["quickstart", "scientific"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--reuse", action="store_true", help="read a finished quickstart run instead of rerunning it"
    )
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    store = OUT / f"{args.world}.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    for seed in args.seeds:
        results[str(seed)] = (quickstart if args.world == "quickstart" else scientific)(seed, args.reuse)
        store.write_text(json.dumps(results, indent=1))
    rows = [row for seed in sorted(results, key=int) for row in results[seed]]
    text = table(rows)
    (OUT / f"{args.world}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
