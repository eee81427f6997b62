"""Does thinking help? Thinking vs not thinking at the same beam budget, seeds x worlds.

    python benchmarks/bench_thinking.py quickstart --seeds 0 1 2    # the synthetic world, 500 test users
    python benchmarks/bench_thinking.py quickstart --seeds 0 1 2 --no_rl --inferences single builder-written \
        --mixture recipes/quickstart/mixture_thinking_decided.yaml --variant decided   # docs/RESULTS.md

One model per seed is trained in both modes (sequence rows without thinking plus windowed rows
with a short three-level trace, `recipes/quickstart/mixture_thinking.yaml`; the history numbered
by how long ago each item was, the numbers the trace's timing uses), then evaluated at 20 SID
beams per user in every inference (`--num_hidden_layers N`, `--mixture`: another model or
mixture, kept apart under `--variant NAME` in `quickstart-seed<k>-NAME`):

- **single**: one sampled trace, then 20 constrained SID beams;
- **multi-trace**: 4 sampled traces x 5 beams each, merged by mean probability;
- **beam-searched**: the 4 most probable traces (beam search over the think stage) x 5 beams
  each, a SID scored by sum over traces of p(trace) p(SID | trace), p(trace) renormalised
  over the 4 (`think_search: beam`);
- **race**: half the beams after a trace, half without, merged by rank (`race_merge: rank`);
- **adaptive** (a mode of single and builder-written): all 20 beams after the trace when it
  decides (names the interest that is due), all 20 without it when it leaves the choice open;
- **builder-written**: the task builder's trace of the history instead of a sampled one
  (`trace_source: history`): what a right trace is worth to the model (the ceiling of
  teaching it to write them).

Then GRPO in thinking mode (`recipes/quickstart/grpo_thinking.yaml`: hit, partial and
trace-consistency rewards, KL to the SFT model) starts from that model, and its thinking run
is compared with its SFT start's on the same users.

Each inference is compared with no_think on the same users (paired bootstrap, 95%), and the
table gives trace accuracy (right on every stated criterion against the planted truth or the
target), the hallucination rate against the history, think tokens and users/s. Results
accumulate in `runs/bench_thinking/<world>.json`; the table (and `<world>.md`) holds every
seed run so far, with the mean difference and the number of seeds whose interval is above 0,
and Hit@10 by the time pattern of the planted interest behind each test target (long-term,
short-term, periodic, noise): where thinking gains and where it loses.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "bench_thinking"
BEAMS = 20
INFERENCES = {  # name -> (modes, think_samples, eval options); the eval folder is the name's first word
    "single": (["no_think", "think", "race", "adaptive"], 1, ["--think_temperature", "0.6"]),
    "multi-trace 4x5": (["no_think", "think", "race"], 4, ["--think_temperature", "0.6"]),
    "beam-searched 4x5": (["no_think", "think", "race"], 4, ["--think_search", "beam"]),
    "builder-written": (["no_think", "think", "race", "adaptive"], 1, ["--trace_source", "history"]),
}
QUICKSTART_TEST_USERS = 500
MIXTURE = "recipes/quickstart/mixture_thinking.yaml"


def onereason(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "onereason.cli", *argv], cwd=ROOT, check=True)


def quickstart_model(seed: int, variant: str = "", layers: int | None = None, mixture: str = MIXTURE):
    """Train the quickstart world's model with short traces; (model, eval data arguments)."""
    sys.path.insert(0, str(ROOT))
    from onereason.quickstart import seeded, steps

    out = OUT / f"quickstart-seed{seed}{variant}"
    model_overrides = ["--num_hidden_layers", str(layers)] if layers else []
    tasks_overrides = [
        "--trace_style", "short", "--eval_max_rows", str(QUICKSTART_TEST_USERS), "--mixture", mixture,
        "--history_numbered", "true", "--history_countdown", "true",
    ]  # fmt: skip
    for name, command, argv in seeded(steps(out, ROOT / "recipes" / "quickstart"), seed):
        if name in ("grpo", "eval"):
            continue
        done = out / f".bench-{name}"
        if done.exists():
            continue
        overrides = {"tasks": tasks_overrides, "model": model_overrides}.get(name, [])
        onereason(command, *argv, *overrides)
        done.touch()
    data = [
        "--config", "recipes/quickstart/eval.yaml", "--data_path", str(out / "tasks"),
        "--train_split", str(out / "data" / "splits" / "train.parquet"),
    ]  # fmt: skip
    return out / "models" / "sft", data


def evaluate(model: Path, data: list[str], out: Path, seed: int, inferences: list[str]) -> list[dict]:
    rows = []
    patterns = target_patterns(out / "data")
    for n, inference in enumerate(inferences):
        modes, samples, options = INFERENCES[inference]
        folder = out / "eval" / inference.split()[0]
        report = run_eval(data, [model], modes, samples, folder, seed, *options)
        for row in rows_from_report(report, inference, seed, plain=n == 0):
            records = folder / "runs" / f"{row['name'].replace('/', '-')}.jsonl"
            if records.exists():
                row["by_pattern"] = hits_by_pattern(records, patterns)
            rows.append(row)
    return rows


def target_patterns(data_dir: Path) -> dict[str, str]:
    """user -> the time pattern of the planted interest behind their last (test) interaction."""
    import polars as pl

    truth = pl.read_parquet(data_dir / "truth.parquet").sort(["user_id", "timestamp"])
    last = truth.group_by("user_id", maintain_order=True).agg(pl.col("interest_id").last())
    interests = pl.read_parquet(data_dir / "interests.parquet").select("interest_id", "pattern")
    last = last.join(interests, on="interest_id", how="left")
    return dict(zip(last["user_id"], last["pattern"].fill_null("noise")))


def hits_by_pattern(records: Path, patterns: dict[str, str]) -> dict[str, list]:
    """pattern -> [users, Hit@10] of one run's per-user records: where thinking gains or loses."""
    hits: dict[str, list[bool]] = {}
    for line in records.read_text().splitlines():
        r = json.loads(line)
        hits.setdefault(patterns[r["user_id"]], []).append(r["targets"][0] in r["ranked_items"][:10])
    return {p: [len(h), sum(h) / len(h)] for p, h in sorted(hits.items())}


def run_eval(
    data: list[str], models: list[Path], modes: list[str], samples: int, out: Path, seed: int, *extra: str
) -> dict:
    """One `onereason eval`, reused when its report holds every mode already (else it is rerun, and
    the runs whose shards are there are read back, not decoded again)."""
    report = out / "report.json"
    done = {run["mode"] for run in json.loads(report.read_text())["runs"]} if report.exists() else set()
    if not set(modes) <= done:
        onereason(
            "eval", *data, "--models", *map(str, models), "--names", *(m.name for m in models),
            "--modes", *modes, "--num_beams", str(BEAMS), "--think_samples", str(samples),
            "--baselines", "cooccurrence", "--race_merge", "rank", "--seed", str(seed),
            "--out_dir", str(out), "--overwrite", "true", *extra,
        )  # fmt: skip
    return json.loads((out / "report.json").read_text())


def rl(sft: Path, data: list[str], out: Path, seed: int) -> list[dict]:
    """GRPO in thinking mode from the SFT model, then both evaluated thinking (one trace, 20 beams)."""
    grpo = sft.with_name("grpo-think")
    if not (grpo / "onereason_history.json").exists():
        tasks = data[data.index("--data_path") + 1]
        onereason(
            "train", "--config", "recipes/quickstart/grpo_thinking.yaml", "--model_name_or_path", str(sft),
            "--dataset_path", tasks, "--output_dir", str(grpo), "--seed", str(seed),
        )  # fmt: skip
    report = run_eval(data, [sft, grpo], ["no_think", "think"], 1, out / "eval" / "rl", seed)
    rows = []
    for c in report["comparisons"]:
        if c["level"] == "item" and c["a"] == f"{grpo.name}/think" and c["b"] == f"{sft.name}/think":
            run = next(r for r in report["runs"] if r["name"] == c["a"])
            rows.append({**rows_from_report({"runs": [run], "comparisons": []}, "single", seed)[0],
                         "mode": "think (GRPO vs its SFT start)", **{k: c["metrics"]["hit@10"][k] for k in ("diff", "low", "high")}})  # fmt: skip
    return rows


def rows_from_report(report: dict, inference: str, seed: int, plain: bool = True) -> list[dict]:
    """Table rows of one report; `plain`: with its no_think and baseline rows (the same runs in
    every inference of a seed, so kept once)."""
    intervals = {
        c["a"]: c["metrics"]["hit@10"] for c in report["comparisons"] if c["b"].endswith("/no_think")
    }
    rows = []
    for run in report["runs"]:
        if run["mode"] in ("no_think", "baseline") and not plain:
            continue
        traces = run.get("traces") or {}
        interval = intervals.get(run["name"])
        rows.append(
            {
                "seed": seed,
                "mode": run["mode"],
                "inference": "–" if run["mode"] in ("no_think", "baseline") else inference,
                "name": run["name"],
                "hit@10": run["item"]["hit@10"],
                "ndcg@10": run["item"]["ndcg@10"],
                "diff": interval and interval["diff"],
                "low": interval and interval["low"],
                "high": interval and interval["high"],
                "trace_right": traces.get("right"),
                "hallucination": (traces.get("hallucination") or {}).get("rate"),
                "think_tokens": (run.get("stats") or {}).get("think_tokens_mean"),
                "users_per_s": (run.get("stats") or {}).get("users_per_s"),
                "n_users": (run.get("stats") or {}).get("n_users"),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    cols = ["seed", "name", "mode", "inference", "hit@10", "ndcg@10", "diff", "low", "high",
            "trace_right", "hallucination", "think_tokens", "users_per_s", "n_users"]  # fmt: skip
    head = ["seed", "run", "mode", "inference", "Hit@10", "NDCG@10", "think - no_think Hit@10", "95% low",
            "95% high", "trace right", "hallucination", "think tokens", "users/s", "users"]  # fmt: skip
    fmt = lambda v: "–" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in cols) + " |" for row in rows]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if row["diff"] is not None:
            groups.setdefault((row["mode"], row["inference"]), []).append(row)
    lines += [
        "",
        "| mode | inference | seeds | mean Hit@10 diff | seeds with 95% interval > 0 |",
        "|---" * 5 + "|",
    ]
    for (mode, inference), group in groups.items():
        above = sum(r["low"] > 0 for r in group)
        lines.append(
            f"| {mode} | {inference} | {len(group)} | {statistics.mean(r['diff'] for r in group):+.4f} | {above} |"
        )
    split = [row for row in rows if row.get("by_pattern")]
    names = sorted({p for row in split for p in row["by_pattern"]})
    lines += [
        "",
        "Hit@10 by the planted pattern of the interest behind the test target (users):",
        "",
        "| seed | run | inference | " + " | ".join(names) + " |",
        "|---" * (3 + len(names)) + "|",
    ]
    for row in split:
        cells = [
            f"{row['by_pattern'][p][1]:.3f} ({row['by_pattern'][p][0]})" if p in row["by_pattern"] else "–"
            for p in names
        ]
        lines.append(f"| {row['seed']} | {row['name']} | {row['inference']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("world", choices=["quickstart"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--no_rl", action="store_true", help="skip GRPO (its ~10 minutes a seed)")
    parser.add_argument(
        "--inferences", nargs="+", choices=list(INFERENCES), default=list(INFERENCES),
        help="which thinking inferences to run (a finished one is read back, not rerun)",
    )  # fmt: skip
    parser.add_argument(
        "--num_hidden_layers", type=int, default=None,
        help="layers of the from-scratch model (default: the quickstart preset's 2)",
    )  # fmt: skip
    parser.add_argument("--mixture", default=MIXTURE, help="the task mixture the model is trained on")
    parser.add_argument(
        "--variant", default="",
        help="a name for runs that change the model or mixture: their folders and tables are kept apart",
    )  # fmt: skip
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    variant = f"-{args.variant}" if args.variant else ""
    store = OUT / f"{args.world}{variant}.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    for seed in args.seeds:
        model, data = quickstart_model(seed, variant, args.num_hidden_layers, args.mixture)
        out = model.parents[1]
        results[str(seed)] = evaluate(model, data, out, seed, args.inferences) + (
            [] if args.no_rl else rl(model, data, out, seed)
        )
        store.write_text(json.dumps(results, indent=1))
    rows = [row for seed in sorted(results, key=int) for row in results[seed]]
    text = table(rows)
    (OUT / f"{args.world}{variant}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
