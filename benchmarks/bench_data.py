"""Data pipeline at scale: 5M interactions (500k users, 200k items) from CSV through cleaning and both splits.

    python benchmarks/bench_data.py                     # 5M rows, figures printed
    python benchmarks/bench_data.py --interactions 500000 --users 50000 --items 20000

The CSV is generated first (seeded, half Zipf, half uniform item popularity, 1% exact duplicates, random times) in a separate
process; the measured run is a fresh child process so its peak RSS is the pipeline's alone:
load (pyarrow CSV) -> clean (order, dedup, 5-core) -> leave-one-out splits -> sliding splits,
all written to Parquet as `onereason build-data` does. Target: <= 3 min, <= 4 GB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv


def generate_csv(path: Path, n_interactions: int, n_users: int, n_items: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n_interactions)
    users[:n_users] = np.arange(n_users)  # every user appears
    ranks = rng.zipf(1.2, n_interactions) - 1
    # Half the rows follow a Zipf popularity, half are uniform: a long tail over all n_items.
    uniform = rng.random(n_interactions) < 0.5
    items = np.where((ranks < n_items) & ~uniform, ranks, rng.integers(0, n_items, n_interactions))
    times = rng.integers(1_500_000_000, 1_600_000_000, n_interactions)
    ratings = rng.integers(1, 6, n_interactions)
    # 1% of rows repeat an earlier row exactly (a logging duplicate) so dedup has work to do.
    dup = rng.choice(n_interactions, n_interactions // 100, replace=False)
    src = rng.integers(0, n_interactions, len(dup))
    users[dup], items[dup], times[dup] = users[src], items[src], times[src]
    table = pa.table(
        {
            "uid": pa.array(np.char.add("u", users.astype(str))),
            "iid": pa.array(np.char.add("i", items.astype(str))),
            "ts": times,
            "rating": ratings,
        }
    )
    pacsv.write_csv(table, path)


def measure(csv_path: Path, out_dir: Path) -> dict:
    """The pipeline itself; returns per-step seconds (run in a fresh process)."""
    from tqdm.auto import tqdm

    from data_builders.cleaning import CleaningOptions, clean
    from data_builders.sources import load_source
    from data_builders.sources.common import DropCounter
    from data_builders.splits import assign_roles, write_splits

    steps = {}
    t0 = time.perf_counter()
    loaded = load_source(
        "tabular",
        interactions=str(csv_path),
        columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts", "weight": "rating"},
    )
    steps["load_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    drops = DropCounter()
    df, items, _ = clean(loaded.interactions, loaded.items, CleaningOptions(dedup="exact", kcore=5), drops)
    del loaded
    steps["clean_s"] = time.perf_counter() - t
    result = {
        "raw": 5,
        "clean_interactions": df.height,
        "users": df["user_id"].n_unique(),
        "items": items.num_rows,
        "dropped": drops.counts,
    }
    for method in ("leave_one_out", "sliding"):
        t = time.perf_counter()
        roles = assign_roles(df, method)
        stats = write_splits(roles, out_dir / method, max_history=20, progress=tqdm)
        del roles
        steps[f"{method}_s"] = time.perf_counter() - t
        result[method] = {s: v["examples"] for s, v in stats.items()}
    steps["total_s"] = time.perf_counter() - t0
    result["steps"] = {k: round(v, 2) for k, v in steps.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--interactions", type=int, default=5_000_000)
    parser.add_argument("--users", type=int, default=500_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument(
        "--workdir", default=None, help="keep the CSV and outputs here (default: a temp folder)"
    )
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._child:
        result = measure(Path(args._child[0]), Path(args._child[1]))
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print("RESULT " + json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        csv_path = work / f"bench_{args.interactions}.csv"
        if not csv_path.exists():
            t = time.perf_counter()
            generate_csv(csv_path, args.interactions, args.users, args.items)
            print(
                f"generated {csv_path} ({csv_path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f}s"
            )
        wall = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--_child", str(csv_path), str(work / "out")],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - wall
        if proc.returncode:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            raise SystemExit(proc.returncode)
        result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    result["raw"] = args.interactions
    print(
        f"interactions: {args.interactions:,} raw -> {result['clean_interactions']:,} after dedup + 5-core "
        f"({result['users']:,} users, {result['items']:,} items); dropped {result['dropped']}"
    )
    print(f"leave-one-out examples: {result['leave_one_out']}")
    print(f"sliding 8:1:1 examples: {result['sliding']}")
    print("seconds per step: " + ", ".join(f"{k[:-2]} {v}" for k, v in result["steps"].items()))
    print(f"wall (child process incl. imports): {wall:.1f} s   [target <= 180 s]")
    print(f"peak RSS: {result['peak_rss_mb']:.0f} MB   [target <= 4096 MB]")


if __name__ == "__main__":
    main()
