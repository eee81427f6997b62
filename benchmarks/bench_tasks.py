"""Time `onereason build-data` and `build-tasks` (every task, recipes/data/tasks_all.yaml) stage by stage.

    python benchmarks/bench_tasks.py scientific          # Scientific, leave-one-out, history <= 20 (target <= 2 min)
    python benchmarks/bench_tasks.py synthetic --interactions 1000000   # (target <= 10 min)
    python benchmarks/bench_tasks.py synthetic --interactions 1000000 --num_proc 2   # shards in 2 processes
    python benchmarks/bench_tasks.py synthetic --interactions 10000000 --num_proc 2 --num_shards 8 --no_compare
    python benchmarks/bench_tasks.py synthetic --interactions 100000 --engine ray    # shards on a local Ray

Stages, each with its wall seconds, seconds per million interactions and peak memory (this
process and its children, sampled every 0.1 s): build-data (read the log, clean, split; the
synthetic world is generated and written as a Parquet log first, not counted), the shards
(every user's examples) and the merge (perception tasks, user order, shuffle, write). With
--num_proc or --engine ray it then builds the same tasks in one process and says whether
every row is the same (--no_compare skips that). Also prints examples, leakage rate and
(synthetic) interest-recovery F1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import datasets
import numpy as np
import psutil
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_builders.build import BuildDataConfig, build_data  # noqa: E402
from data_builders.tasks.build import (  # noqa: E402
    BuildTasksConfig,
    build_shards_locally,
    load_inputs,
    merge_shards,
)
from onereason.item_index import ItemIndex  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "amazon-scientific"


class Stages:
    """Wall seconds and peak memory of each named stage, sampled every 0.1 s over this process
    and its children: RSS, and the private part of it (RSS less file-backed pages, which for
    memory-mapped Arrow files is page cache the kernel can drop, not memory the stage needs)."""

    def __init__(self, interactions: int):
        self.interactions = interactions
        self.rows: list[tuple[str, float, float, float]] = []

    @staticmethod
    def memory() -> tuple[int, int]:
        me = psutil.Process()
        rss = private = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                info = proc.memory_info()
            except psutil.Error:
                continue
            rss += info.rss
            private += info.rss - info.shared
        return rss, private

    @contextmanager
    def stage(self, name: str):
        peak = list(self.memory())
        done = threading.Event()

        def sample():
            while not done.wait(0.1):
                peak[:] = map(max, peak, self.memory())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            done.set()
            sampler.join()
            rss, private = (max(a, b) / 2**30 for a, b in zip(peak, self.memory()))
            self.rows.append((name, seconds, rss, private))
            print(
                f"  {name}: {seconds:.1f} s, peak RSS {rss:.2f} GiB (private {private:.2f} GiB)", flush=True
            )

    def seconds(self, prefix: str) -> float:
        return sum(row[1] for row in self.rows if row[0].startswith(prefix))

    def table(self) -> str:
        per = 1e6 / self.interactions
        lines = [
            "| stage | seconds | s per 1M interactions | peak RSS (GiB) | peak private (GiB) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {n} | {s:.1f} | {s * per:.1f} | {rss:.2f} | {priv:.2f} |" for n, s, rss, priv in self.rows
        ]
        return "\n".join(lines)


def scientific(work: Path, stages: Stages) -> BuildTasksConfig:
    if not SHARED.exists():
        raise SystemExit(f"real data not available: {SHARED}")
    with stages.stage("build-data"):
        build_data(
            BuildDataConfig(
                source="lcrec",
                source_options={"path": str(SHARED), "name": "Scientific"},
                out_dir=str(work / "data"),
            )
        )
    index = ItemIndex.from_published_json(SHARED / "Scientific.rkmeans_zcr.index.json")
    index.save(work / "item_index.json")
    return BuildTasksConfig(
        data_dir=str(work / "data"), item_index=str(work / "item_index.json"), out_dir=str(work / "out")
    )


def synthetic(work: Path, interactions: int, stages: Stages) -> BuildTasksConfig:
    """The synthetic world written as a Parquet log and catalogue, then read back by build-data
    like any user's log (the `tabular` source), so build-data's time is reading, cleaning and
    splitting only."""
    from data_builders.synthetic import SyntheticConfig, generate_world

    users = max(100, interactions // 16)  # sequences of 8..24 items, 16 on average
    start = time.perf_counter()
    world = generate_world(SyntheticConfig(num_users=users, num_items=5000, seed=0))
    log = work / "log"
    log.mkdir()
    pq.write_table(world.interactions, log / "interactions.parquet")
    pq.write_table(world.items, log / "items.parquet")
    stages.interactions = world.interactions.num_rows
    print(
        f"synthetic world: {world.interactions.num_rows:,} interactions, {users:,} users "
        f"(generated and written in {time.perf_counter() - start:.1f} s, not counted)",
        flush=True,
    )
    columns = {
        c: c for c in ("user_id", "item_id", "timestamp", "event") if c in world.interactions.column_names
    }
    item_columns = {c: c for c in world.items.column_names}
    options = {
        "interactions": str(log / "interactions.parquet"),
        "columns": columns,
        "items": str(log / "items.parquet"),
        "item_columns": item_columns,
    }
    truth = work / "truth"  # the ground truth build-tasks scores interest recovery against
    truth.mkdir()
    pq.write_table(world.truth, truth / "truth.parquet")
    pq.write_table(world.interests, truth / "interests.parquet")
    rows = world.items.to_pylist()
    del world  # build-data's memory is its own
    with stages.stage("build-data"):
        build_data(BuildDataConfig(source="tabular", source_options=options, out_dir=str(work / "data")))
    groups = {g: k for k, g in enumerate(sorted({(r["subcategory"], r["style"]) for r in rows}))}
    depts = {d: k for k, d in enumerate(sorted({r["department"] for r in rows}))}
    serial: dict = {}
    codes, terms = [], []
    for r in rows:
        a, b = depts[r["department"]], groups[(r["subcategory"], r["style"])]
        serial[(a, b)] = serial.get((a, b), -1) + 1
        codes.append([a, b, serial[(a, b)]])
        terms.append(
            [
                r["product_type"].lower(),
                r["subcategory"].lower(),
                r["style"],
                r["price_band"],
                r["title"].split(",")[0].split()[-1].lower(),
            ]
        )
    ItemIndex([r["item_id"] for r in rows], np.array(codes), terms).save(work / "item_index.json")
    return BuildTasksConfig(
        data_dir=str(work / "data"),
        item_index=str(work / "item_index.json"),
        out_dir=str(work / "out"),
        truth_dir=str(truth),
    )


def build_in_stages(
    config: BuildTasksConfig, stages: Stages, label: str, num_proc: int, num_shards: int, engine: str
):
    """What `build_tasks` does, with the shards and the merge timed apart."""
    inputs = load_inputs(config)
    with tempfile.TemporaryDirectory(dir=Path(config.out_dir).parent) as scratch:
        with stages.stage(f"{label}shards"):
            if engine == "ray":
                from data_builders.tasks.ray_engine import build_shards_on_ray, cluster_cpus

                dirs = build_shards_on_ray(config, num_shards or cluster_cpus(), Path(scratch), inputs)
            else:
                dirs = build_shards_locally(config, num_shards or num_proc, num_proc, Path(scratch), inputs)
        with stages.stage(f"{label}merge"):
            return merge_shards(config, dirs, inputs, num_proc)


def row_hashes(out: Path) -> dict[str, list[str]]:
    """A hash of every row of every split, in order."""
    from datasets import load_from_disk

    return {
        split: [hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest() for row in dataset]
        for split, dataset in load_from_disk(str(out)).items()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", choices=["scientific", "synthetic"])
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--num_proc", type=int, default=1, help="processes building user shards")
    parser.add_argument("--num_shards", type=int, default=0, help="user shards (default: one per process)")
    parser.add_argument("--engine", choices=["local", "ray"], default="local")
    parser.add_argument("--no_compare", action="store_true", help="skip the one-process build and row check")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    sharded = args.num_proc > 1 or args.engine == "ray" or args.num_shards > 1
    stages = Stages(args.interactions)
    how = f"engine {args.engine}, num_proc {args.num_proc}, num_shards {args.num_shards or args.num_proc}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.dataset == "scientific":
            config = scientific(work, stages)
        else:
            config = synthetic(work, args.interactions, stages)
        config.mixture = str(ROOT / "recipes" / "data" / "tasks_all.yaml")
        print(f"build-tasks ({args.dataset}, {how}):", flush=True)
        out, stats = build_in_stages(
            config, stages, "build-tasks ", args.num_proc, args.num_shards, args.engine
        )
        seconds = stages.seconds("build-tasks ")
        size_gib = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file()) / 2**30
        if sharded and not args.no_compare:
            sharded_rows = row_hashes(out)
            config.out_dir = str(work / "one-process")
            print("the same build in one process:", flush=True)
            one_out, _ = build_in_stages(config, stages, "one process: build-tasks ", 1, 1, "local")
            one_seconds = stages.seconds("one process: ")
            same = row_hashes(one_out) == sharded_rows
    print()
    print(stages.table())
    print()
    print(f"build-tasks ({args.dataset}, {how}): {seconds:.1f} s")
    if sharded and not args.no_compare:
        print(
            f"one process: {one_seconds:.1f} s (speed-up {one_seconds / seconds:.2f}x); every row identical: {same}"
        )
    print(f"output: {size_gib:.2f} GiB on disk")
    print("examples:", stats["examples"])
    for split, leak in stats["leakage"].items():
        print(f"leakage rate {split}: {leak['rate']:.4f} ({leak['leaked']}/{leak['checked']})")
    if "interest_recovery" in stats:
        r = stats["interest_recovery"]
        print(
            f"interest recovery: P {r['precision']:.3f} R {r['recall']:.3f} F1 {r['f1']:.3f} patterns {r['pattern_accuracy']:.3f}"
        )
    print("drops:", stats["drops"])


if __name__ == "__main__":
    main()
