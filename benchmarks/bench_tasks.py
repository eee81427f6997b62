"""Time `onereason build-tasks` (every task, recipes/data/tasks_all.yaml) and print its quality figures.

    python benchmarks/bench_tasks.py scientific          # Scientific, leave-one-out, history <= 20 (target <= 2 min)
    python benchmarks/bench_tasks.py synthetic --interactions 1000000   # (target <= 10 min)
    python benchmarks/bench_tasks.py synthetic --interactions 1000000 --num_proc 2   # shards in 2 processes
    python benchmarks/bench_tasks.py synthetic --interactions 100000 --engine ray    # shards on a local Ray

Scientific uses the published residual-k-means index (../shared/data); the synthetic world
gets an index derived from its attributes. Prints build seconds, examples, leakage rate and
(synthetic) interest-recovery F1. With --num_proc or --engine ray it also builds in one process
(not timed) and says whether every row is the same.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_builders.build import BuildDataConfig, build_data  # noqa: E402
from data_builders.tasks.build import BuildTasksConfig, ScaleArguments, build_tasks  # noqa: E402
from onereason.item_index import ItemIndex  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "amazon-scientific"


def scientific(work: Path) -> BuildTasksConfig:
    if not SHARED.exists():
        raise SystemExit(f"real data not available: {SHARED}")
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


def synthetic(work: Path, interactions: int) -> BuildTasksConfig:
    from data_builders.synthetic import SyntheticConfig, generate_world

    users = max(100, interactions // 16)  # sequences of 8..24 items, 16 on average
    options = {"num_users": users, "num_items": 5000, "seed": 0}
    build_data(BuildDataConfig(source="synthetic", source_options=options, out_dir=str(work / "data")))
    world = generate_world(SyntheticConfig(**options))
    pq.write_table(world.truth, work / "data" / "truth.parquet")
    pq.write_table(world.interests, work / "data" / "interests.parquet")
    rows = pq.read_table(work / "data" / "items.parquet").to_pylist()
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
    print(f"synthetic world: {world.interactions.num_rows} interactions, {users} users")
    return BuildTasksConfig(
        data_dir=str(work / "data"), item_index=str(work / "item_index.json"), out_dir=str(work / "out")
    )


def row_hashes(out: Path) -> dict[str, list[str]]:
    """A hash of every row of every split, in order."""
    import json

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
    parser.add_argument("--engine", choices=["local", "ray"], default="local")
    args = parser.parse_args()
    scale = ScaleArguments(num_proc=args.num_proc, engine=args.engine)
    sharded = args.num_proc > 1 or args.engine == "ray"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = scientific(work) if args.dataset == "scientific" else synthetic(work, args.interactions)
        config.mixture = str(ROOT / "recipes" / "data" / "tasks_all.yaml")
        start = time.perf_counter()
        out, stats = build_tasks(config, scale)
        seconds = time.perf_counter() - start
        if sharded:
            sharded_rows = row_hashes(out)
            config.out_dir = str(work / "one-process")
            one_start = time.perf_counter()
            one_out, _ = build_tasks(config)
            one_seconds = time.perf_counter() - one_start
            same = row_hashes(one_out) == sharded_rows
    how = f"engine {args.engine}, num_proc {args.num_proc}"
    print(f"build-tasks ({args.dataset}, {how}): {seconds:.1f} s")
    if sharded:
        print(
            f"one process: {one_seconds:.1f} s (speed-up {one_seconds / seconds:.2f}x); every row identical: {same}"
        )
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
