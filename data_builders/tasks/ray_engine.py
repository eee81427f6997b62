"""`onereason build-tasks --engine ray`: the same shards, built by Ray Data, then the same merge.

Ray Data reads the three split files, tags each row with its split and its user's shard
(`shards.shard_of`), groups the rows by shard and maps `shards.build_shard`, the function
every engine runs, over each group. Each group writes its shard folder beside the output
folder, so on a cluster that folder must be on storage every node sees (NFS, a mounted
bucket), and onereason must be installed on every node. The driver then merges the folders
exactly as a local build does.

`ray.init()` joins the cluster that RAY_ADDRESS names, else starts a Ray on this machine; a
caller that already ran `ray.init(...)` (a test: `ray.init(num_cpus=2)`) keeps its own.
Needs the `scale` extra: `pip install 'onereason[scale]'`.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from data_builders.tasks.shards import SPLIT_FILES, ShardBuilder, build_shard, capped_eval_rows, shard_of

SPLIT, SHARD = "_split", "_shard"
_INPUTS: dict = {}  # per worker process: the catalogue is read once, not once per group


def import_ray():
    try:
        import ray
    except ImportError as err:
        raise ImportError("--engine ray needs Ray Data: pip install 'onereason[scale]'") from err
    return ray


def tag_rows(batch: pa.Table, split: str, num_shards: int) -> pa.Table:
    """A batch of one split's rows with its split name and each row's shard."""
    shards = [shard_of(u, num_shards) for u in batch.column("user_id").to_pylist()]
    batch = batch.append_column(SPLIT, pa.array([split] * batch.num_rows, pa.string()))
    return batch.append_column(SHARD, pa.array(shards, pa.int64()))


def build_group(group: pa.Table, config, num_shards: int, scratch: str, eval_rows) -> pa.Table:
    """One shard's rows (every split) -> its shard folder; returns the shard's index."""
    from data_builders.tasks.build import load_inputs, load_truth

    key = (config.data_dir, config.item_index, config.mixture, config.seed)
    if key not in _INPUTS:
        _INPUTS.clear()
        _INPUTS[key] = load_inputs(config)
    inputs = _INPUTS[key]
    shard = group.column(SHARD)[0].as_py()
    frames = {
        split: pl.from_arrow(group.filter(pc.equal(group.column(SPLIT), split)).drop_columns([SPLIT, SHARD]))
        for split in SPLIT_FILES
    }
    out = Path(scratch) / f"shard-{shard:05d}"
    out.mkdir(parents=True, exist_ok=True)
    builder = ShardBuilder(config, inputs.catalog, inputs.entries, inputs.seed, inputs.index)
    build_shard(builder, frames, out, (shard, num_shards), load_truth(config), eval_rows)
    return pa.table({"shard": pa.array([shard], pa.int64())})


def cluster_cpus() -> int:
    """CPUs of the Ray cluster this process is connected to (connecting first if it is not)."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init()
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def build_shards_on_ray(config, num_shards: int, scratch: Path, inputs) -> list[Path]:
    """Every shard built by Ray Data into `scratch`; returns the shard folders in index order."""
    from data_builders.tasks.build import build_shard_from_files

    ray = import_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    eval_rows = capped_eval_rows(config, inputs.catalog)
    # One read per file: Ray 2.60 resolves several paths of one read in threads that race to
    # import fsspec's HTTP filesystem, which fails when aiohttp is not installed.
    parts = [
        ray.data.read_parquet(str(Path(config.data_dir) / "splits" / f"{file}.parquet")).map_batches(
            tag_rows, batch_format="pyarrow", fn_kwargs={"split": split, "num_shards": num_shards}
        )
        for split, file in SPLIT_FILES.items()
    ]
    built = (
        parts[0]
        .union(*parts[1:])
        .groupby(SHARD, num_partitions=num_shards)
        .map_groups(
            build_group,
            batch_format="pyarrow",
            fn_kwargs={
                "config": config,
                "num_shards": num_shards,
                "scratch": str(scratch),
                "eval_rows": eval_rows,
            },
        )
    )
    done = {row["shard"] for row in built.take_all()}
    dirs = [scratch / f"shard-{i:05d}" for i in range(num_shards)]
    for i in sorted(set(range(num_shards)) - done):  # a shard no user hashed to: an empty folder
        build_shard_from_files(config, num_shards, i, dirs[i], eval_rows, inputs)
    return dirs
