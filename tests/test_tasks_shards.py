"""Sharded build-tasks: user shards merged, a process pool and Ray Data all give the one-process build."""

from __future__ import annotations

import hashlib
import json

import pytest
from datasets import load_from_disk
from test_tasks_build import synthetic_build  # noqa: F401  (a synthetic world and its one-process build)

from data_builders.tasks.build import main
from data_builders.tasks.shards import shard_of
from onereason.errors import InputError


def build_args(root, out) -> list[str]:
    """The synthetic_build fixture's build-tasks arguments, writing to `out`."""
    args = ["--data_dir", str(root / "data"), "--item_index", str(root / "item_index.json")]
    return args + ["--mixture", str(root / "mixture.yaml"), "--out_dir", str(out)]


def fingerprint(out) -> dict:
    """A hash of every row of every split, in order, plus stats.json and the card (its out_dir masked)."""
    rows = {
        split: [hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest() for row in dataset]
        for split, dataset in load_from_disk(str(out)).items()
    }
    card = (out / "README.md").read_text().replace(str(out), "<out_dir>")
    return {"rows": rows, "stats": json.loads((out / "stats.json").read_text()), "card": card}


@pytest.fixture(scope="module")
def one_process(synthetic_build):  # noqa: F811
    return fingerprint(synthetic_build / "out")


@pytest.fixture(scope="module")
def built_in_shards(synthetic_build):  # noqa: F811
    """num_shards -> (merged folder, shard folders): each shard built by its own command, then merged."""
    built = {}

    def build(num_shards: int):
        if num_shards not in built:
            root = synthetic_build
            shards = [root / f"shards-{num_shards}" / f"shard-{i}" for i in range(num_shards)]
            for i, folder in enumerate(shards):
                args = [*build_args(root, folder), "--num_shards", str(num_shards), "--shard_index", str(i)]
                assert main(args) == 0
            merged = root / f"merged-{num_shards}"
            assert main([*build_args(root, merged), "--merge_shards", *map(str, shards)]) == 0
            built[num_shards] = merged, shards
        return built[num_shards]

    return build


def test_a_user_shard_is_a_stable_hash_of_the_user_id():
    # blake2b, not Python's salted hash(): the same shard in every process and on every machine
    assert [shard_of(f"u{k}", 7) for k in range(8)] == [
        int.from_bytes(hashlib.blake2b(f"u{k}".encode(), digest_size=8).digest(), "big") % 7 for k in range(8)
    ]
    assert len({shard_of(f"u{k}", 3) for k in range(30)}) == 3


@pytest.mark.parametrize("num_shards", [2, 3])
def test_shards_built_apart_and_merged_equal_the_one_process_build(built_in_shards, one_process, num_shards):
    merged, shards = built_in_shards(num_shards)
    assert fingerprint(merged) == one_process
    # every shard holds only its own users, and together they hold every user's rows
    users = set()
    for i, folder in enumerate(shards):
        shard_users = {u for split in ("validation", "test") for u in one_shard_users(folder, split)}
        assert shard_users and all(shard_of(u, num_shards) == i for u in shard_users)
        users |= shard_users
    assert len(users) == 300


def one_shard_users(folder, split) -> list[str]:
    from datasets import Dataset

    return Dataset.from_file(str(folder / f"{split}.arrow"))["user_id"]


def test_a_merge_refuses_a_missing_shard(synthetic_build, built_in_shards, tmp_path):  # noqa: F811
    _, shards = built_in_shards(3)
    args = build_args(synthetic_build, tmp_path / "merged")
    with pytest.raises(
        InputError, match=r"shards \[0, 2\] of 3 given; a merge needs each of 0..2 exactly once"
    ):
        main([*args, "--merge_shards", str(shards[0]), str(shards[2])])


def test_a_process_pool_equals_one_process(synthetic_build, one_process, tmp_path):  # noqa: F811
    out = tmp_path / "pool"
    assert main([*build_args(synthetic_build, out), "--num_proc", "2"]) == 0
    assert fingerprint(out) == one_process


def test_a_shard_turning_its_rows_into_examples_a_few_users_at_a_time_equals_one_batch(
    synthetic_build,  # noqa: F811
    one_process,
    tmp_path,
    monkeypatch,
):
    # batches of whole users keep a big shard's memory flat; they must not change a byte
    import data_builders.tasks.shards as shards

    monkeypatch.setattr(shards, "BATCH_ROWS", 37)
    train = shards.read_shard_split(synthetic_build / "data" / "splits" / "train.parquet", 1, 0)
    batches = list(shards.user_batches(train, 37))
    assert len(batches) > 10 and all(b.height >= 37 for b in batches[:-1])
    assert sum(b.height for b in batches) == train.height
    # no user is cut in two
    assert sum(b["user_id"].n_unique() for b in batches) == train["user_id"].n_unique()
    out = tmp_path / "batched"
    assert main(build_args(synthetic_build, out)) == 0
    assert fingerprint(out) == one_process


def test_ray_data_on_a_local_ray_equals_one_process(synthetic_build, one_process, tmp_path):  # noqa: F811
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'onereason[scale]'")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        out = tmp_path / "ray"
        assert main([*build_args(synthetic_build, out), "--engine", "ray", "--num_shards", "2"]) == 0
    finally:
        ray.shutdown()
    assert fingerprint(out) == one_process
