"""Time `onereason build-tasks` (every task, recipes/data/tasks_all.yaml) and print its quality figures.

    python benchmarks/bench_tasks.py scientific          # Scientific, leave-one-out, history <= 20 (target <= 2 min)
    python benchmarks/bench_tasks.py synthetic --interactions 1000000   # (target <= 10 min)

Scientific uses the published residual-k-means index (../shared/data); the synthetic world
gets an index derived from its attributes. Prints build seconds, examples, leakage rate and
(synthetic) interest-recovery F1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_builders.build import BuildDataConfig, build_data  # noqa: E402
from data_builders.tasks.build import BuildTasksConfig, build_tasks  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", choices=["scientific", "synthetic"])
    parser.add_argument("--interactions", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = scientific(work) if args.dataset == "scientific" else synthetic(work, args.interactions)
        config.mixture = str(ROOT / "recipes" / "data" / "tasks_all.yaml")
        start = time.perf_counter()
        _, stats = build_tasks(config)
        seconds = time.perf_counter() - start
    print(f"build-tasks ({args.dataset}): {seconds:.1f} s")
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
