"""`onereason build-tasks --config recipes/scientific/tasks.yaml`: splits -> task datasets.

Reads a build-data folder (items.parquet, splits/{train,valid,test}.parquet) and an
item_index.json, and writes the "task datasets" contract of docs/ARCHITECTURE.md:

    <out>/dataset_dict.json, train/, validation/, test/   DatasetDict.save_to_disk
    <out>/stats.json     counts per split/task/mode, drops per reason, token lengths,
                         leakage rate, interest recovery (synthetic world), teacher report
    <out>/README.md      dataset card
    <out>/config.yaml    the resolved config

A build has two halves. The per-user half (`data_builders.tasks.shards`) cuts the users
into shards by a stable hash of their id and writes each shard's recommendation rows; the
merge (`merge_shards`) puts every shard's rows in user order, adds what needs all users
(perception tasks, association pairs), shuffles the train split, sums the stats and writes
the folder. One process is one shard; `--num_proc P` runs the shards in a process pool,
`--engine ray` on Ray Data, `--num_shards N --shard_index i` one shard on its own (merge the
folders with `--merge_shards`): the output is the same bytes every way.

The folder is replaced in one rename (`onereason.io.atomic_dir`), so a failed build
leaves the previous output, never half of a new one. Bad rows (a target missing from the
index, a history that is empty once unknown items are removed) are dropped and counted.

Examples stream to an Arrow file per shard and split instead of living in memory, so a
1M-interaction log builds in a few GB.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from datasets import Dataset, DatasetDict, concatenate_datasets

from data_builders.tasks.card import dataset_card
from data_builders.tasks.catalog import ItemCatalog, build_catalog
from data_builders.tasks.cot import DeterministicCot
from data_builders.tasks.interests import TRUTH_FILES, read_truth, recovery_report
from data_builders.tasks.mixture import DEFAULT_MIXTURE, MixtureEntry, load_mixture, parse_mixture
from data_builders.tasks.perception import ITEM_TASKS, PerceptionTasks, association_pairs
from data_builders.tasks.recommendation import RecRow
from data_builders.tasks.shards import (
    PAIRS_FILE,
    SHARD_FILE,
    SPLIT_FILES,
    ShardBuilder,
    ShardStats,
    build_settings,
    build_shard,
    capped_eval_rows,
    cot_config,
    history_style,
    read_pairs,
    read_shard_split,
    rows_from_frame,
    scan_split,
    write_arrow,
)
from onereason.errors import InputError, UsageError
from onereason.io import atomic_dir, atomic_write_json, atomic_write_text
from onereason.tasks import RECOMMENDATION_TASKS

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")


@dataclass
class BuildTasksConfig:
    """Which tasks to build from a build-data folder, and how."""

    data_dir: str = field(
        default="data/built", metadata={"help": "build-data output folder (items.parquet, splits/)"}
    )
    item_index: str = field(
        default="data/ids/item_index.json", metadata={"help": "item_index.json (SIDs, Term IDs)"}
    )
    out_dir: str = field(default="data/tasks", metadata={"help": "output folder (replaced atomically)"})
    mixture: str | None = field(
        default=None,
        metadata={"help": "mixture YAML (tasks, modes, weights); default rec_sid think+no_think"},
    )
    max_history: int = field(default=20, metadata={"help": "history items shown (most recent)"})
    history_text: str = field(
        default="title", metadata={"help": "text after each history SID: none | title | terms"}
    )
    title_max_chars: int = field(default=80, metadata={"help": "titles are clipped to this many characters"})
    history_numbered: bool = field(
        default=True,
        metadata={
            "help": "number the history items (1., 2., …); false writes bare SIDs back to back, "
            "five tokens an item instead of nine"
        },
    )
    history_countdown: bool = field(
        default=False,
        metadata={
            "help": "number the history by how long ago each item was (1. = the latest) instead of from "
            "the oldest: the numbers a short trace's timing ('3 6 ago') copies; full traces cite items "
            "from the oldest, so this needs trace_style short"
        },
    )
    short_prompts: bool = field(
        default=False,
        metadata={
            "help": "one short fixed header and question for the recommendation tasks ('History:' ... "
            "'Next item?') instead of a pool of phrasings: a from-scratch model learns nothing from prompt "
            "words it reads in every row (~15 fewer tokens a row); keep the pool for pretrained LLMs"
        },
    )
    pair_window: int = field(
        default=1,
        metadata={
            "help": "rec_pair rows per transition: one from each of the last `pair_window` history items "
            "alone to the next item (the window co-occurrence counts); 1: the last item only"
        },
    )
    system_prompt: bool = field(default=True, metadata={"help": "start each prompt with a short system turn"})
    top_k: int = field(default=5, metadata={"help": "rec_multi: items per answer"})
    interest_fields: list[str] = field(
        default_factory=lambda: ["categories[1]", "style"],
        metadata={"help": "item attributes that define an interest point (absent ones are skipped)"},
    )
    min_support: int = field(default=2, metadata={"help": "history items an interest point needs"})
    recent_items: int = field(default=4, metadata={"help": "items described in the Derivation"})
    trace_style: str = field(
        default="full",
        metadata={
            "help": "deterministic traces: full (~150-280 tokens, history citations) | short (~30-60 tokens, "
            "the same three levels for a small model)"
        },
    )
    cot: str = field(default="deterministic", metadata={"help": "trace builder: deterministic | teacher"})
    teacher_model: str | None = field(
        default=None, metadata={"help": "teacher LM (path or hub id) for cot: teacher"}
    )
    teacher_backend: str = field(default="auto", metadata={"help": "auto | transformers | vllm"})
    teacher_max_new_tokens: int = field(default=384, metadata={"help": "teacher generation budget"})
    teacher_retries: int = field(default=2, metadata={"help": "sampled retries of a rejected teacher trace"})
    teacher_batch_size: int = field(default=8, metadata={"help": "teacher generation batch"})
    teacher_limit: int = field(
        default=0, metadata={"help": "teacher traces at most (0: all); the rest use the fallback"}
    )
    teacher_fallback: str = field(
        default="deterministic", metadata={"help": "rejected teacher trace: deterministic | drop"}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer for token-length stats (optional)"}
    )
    token_stats_sample: int = field(default=2000, metadata={"help": "examples per task tokenised for stats"})
    association_pairs: int = field(default=0, metadata={"help": "association pairs (0: as many as items)"})
    eval_max_rows: int = field(default=0, metadata={"help": "cap on rows per validation/test split (0: all)"})
    truth_dir: str | None = field(
        default=None,
        metadata={"help": "folder with truth.parquet + interests.parquet (synthetic); default data_dir"},
    )
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub dataset repo id to push to"})
    hub_private: bool = field(default=True, metadata={"help": "push as a private dataset"})
    seed: int = field(default=0, metadata={"help": "phrasing and mixture sampling seed"})

    def __post_init__(self):
        if self.cot not in ("deterministic", "teacher"):
            raise ValueError(f"cot must be deterministic or teacher, got {self.cot!r}")
        if self.cot == "teacher" and not self.teacher_model:
            raise ValueError("cot: teacher needs teacher_model")
        if self.teacher_fallback not in ("deterministic", "drop"):
            raise ValueError(f"teacher_fallback must be deterministic or drop, got {self.teacher_fallback!r}")
        if self.pair_window < 1:
            raise ValueError(f"pair_window must be >= 1, got {self.pair_window}")
        if self.history_countdown and self.trace_style != "short":
            raise ValueError(
                "history_countdown needs trace_style short (full traces cite items from the oldest)"
            )
        history_style(self)  # validates
        cot_config(self)  # validates


@dataclass
class ScaleArguments:
    """How the build runs (not what it builds: the output is the same bytes every way)."""

    num_proc: int = field(
        default=1,
        metadata={
            "help": "processes on this machine, each building shards of users (local engine); "
            "the merge writes the output with as many"
        },
    )
    num_shards: int = field(
        default=0,
        metadata={
            "help": "user shards (a stable hash of the user id); 0: one per process, or per Ray CPU "
            "with --engine ray"
        },
    )
    shard_index: int | None = field(
        default=None,
        metadata={
            "help": "build only this shard (0..num_shards-1) into out_dir, e.g. one per machine; "
            "then --merge_shards the folders"
        },
    )
    merge_shards: list[str] | None = field(
        default=None,
        metadata={"help": "shard folders (from --shard_index) to merge into out_dir, with the same config"},
    )
    engine: str = field(
        default="local",
        metadata={
            "help": "local (this machine) | ray (Ray Data: RAY_ADDRESS's cluster, else a local Ray; "
            "pip install 'onereason[scale]')"
        },
    )

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise UsageError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.num_proc < 1 or self.num_shards < 0:
            raise UsageError("num_proc must be >= 1 and num_shards >= 0")
        if self.shard_index is not None and not 0 <= self.shard_index < self.num_shards:
            raise UsageError(
                f"shard_index {self.shard_index} needs num_shards > shard_index (got num_shards {self.num_shards})"
            )
        if self.merge_shards is not None and self.shard_index is not None:
            raise UsageError("--merge_shards merges shard folders; it does not take --shard_index")


# ---------------------------------------------------------------------- inputs


@dataclass
class BuildInputs:
    """What every shard and the merge read besides the split rows: catalogue, mixture, seed."""

    catalog: ItemCatalog
    entries: list[MixtureEntry]
    seed: int
    index: object


def load_inputs(config: BuildTasksConfig) -> BuildInputs:
    from onereason.item_index import ItemIndex
    from onereason.tables import read_items

    index = ItemIndex.load(config.item_index)
    catalog = build_catalog(read_items(Path(config.data_dir)), index)
    if config.mixture:
        entries, mixture_seed = load_mixture(config.mixture)
    else:
        entries, mixture_seed = parse_mixture(DEFAULT_MIXTURE, "default mixture"), None
    seed = config.seed if mixture_seed is None else int(mixture_seed)
    decided = [f"{e.task}/{e.mode}" for e in entries if e.decided_weight is not None]
    if decided and (config.trace_style != "short" or config.cot != "deterministic"):
        raise UsageError(
            f"mixture entries {decided} weigh the rows whose trace decides: that needs trace_style short "
            "and cot deterministic (the trace that reads the history alone)"
        )
    return BuildInputs(catalog, entries, seed, index)


def read_rows(
    path: Path, split: str, catalog: ItemCatalog, max_history: int, top_k: int, drops: Counter
) -> list[RecRow]:
    """Every row of a split file as `RecRow`s (bad rows counted in `drops`)."""
    return rows_from_frame(scan_split(Path(path)).collect(), split, catalog, max_history, top_k, drops)


def load_truth(config: BuildTasksConfig) -> tuple[pa.Table, pa.Table] | None:
    folder = Path(config.truth_dir or config.data_dir)
    found = read_truth(folder)
    if found is None and config.truth_dir:
        raise FileNotFoundError(f"truth_dir {folder} must hold {' and '.join(TRUTH_FILES)}")
    return found


def check_shardable(config: BuildTasksConfig, entries: list[MixtureEntry], num_shards: int) -> None:
    """Refuse what needs every user's rows in one process: a teacher (its limit and batches span
    users) and an exact `count` of recommendation rows (its draw ranks every row)."""
    if num_shards <= 1:
        return
    if config.cot == "teacher":
        raise UsageError("cot: teacher builds in one process (num_proc 1, num_shards 1, engine local)")
    counted = [
        f"{e.task}/{e.mode}" for e in entries if e.task in RECOMMENDATION_TASKS and e.count is not None
    ]
    if counted:
        raise UsageError(
            f"mixture entries {counted} ask for an exact count of recommendation rows, which needs every "
            "user in one shard; give them a weight, or build with one shard"
        )


# ---------------------------------------------------------------------- the per-user half


def build_shard_from_files(
    config: BuildTasksConfig,
    num_shards: int,
    shard_index: int,
    out: Path,
    eval_rows: dict[str, set[str]] | None = None,
    inputs: BuildInputs | None = None,
) -> dict:
    """Shard `shard_index` of `num_shards`, its rows read from the build-data folder, into `out`."""
    inputs = inputs or load_inputs(config)
    frames = {
        split: read_shard_split(Path(config.data_dir) / "splits" / f"{file}.parquet", num_shards, shard_index)
        for split, file in SPLIT_FILES.items()
    }
    builder = ShardBuilder(config, inputs.catalog, inputs.entries, inputs.seed, inputs.index)
    out.mkdir(parents=True, exist_ok=True)
    return build_shard(builder, frames, out, (shard_index, num_shards), load_truth(config), eval_rows)


def build_shards_locally(
    config: BuildTasksConfig, num_shards: int, num_proc: int, scratch: Path, inputs: BuildInputs
) -> list[Path]:
    """Every shard on this machine: in this process, or in a pool of `num_proc` fresh processes
    (spawned, not forked: polars' and torch's thread pools do not survive a fork)."""
    eval_rows = capped_eval_rows(config, inputs.catalog)
    dirs = [scratch / f"shard-{i:05d}" for i in range(num_shards)]
    if num_proc == 1:
        for i, folder in enumerate(dirs):
            build_shard_from_files(config, num_shards, i, folder, eval_rows, inputs)
        return dirs
    with ProcessPoolExecutor(min(num_proc, num_shards), mp_context=get_context("spawn")) as pool:
        jobs = [
            pool.submit(build_shard_from_files, config, num_shards, i, folder, eval_rows)
            for i, folder in enumerate(dirs)
        ]
        for job in jobs:
            job.result()
    return dirs


# ---------------------------------------------------------------------- the merge


def perception_examples(
    config: BuildTasksConfig, inputs: BuildInputs, pairs: Counter, ineligible: Counter
) -> Iterator[dict]:
    """Item tasks over the whole catalogue and association over every user's pairs: built once."""
    c, seed = inputs.catalog, inputs.seed
    perception = PerceptionTasks(c, config.system_prompt, seed)
    items = np.arange(len(c))
    for entry in inputs.entries:
        if entry.task in ITEM_TASKS:
            reasons = [perception.ineligible(entry.task, int(i)) for i in items]
            for reason in reasons:
                if reason:
                    ineligible[f"train/{entry.task}:{reason}"] += 1
            mult = entry.multiplicities(np.array([r is None for r in reasons]), seed, c.item_ids)
            for i in np.flatnonzero(mult):
                for copy in range(int(mult[i])):
                    yield perception.build_item(entry.task, int(i), copy)
        elif entry.task == "association":
            chosen = association_pairs(c, pairs, config.association_pairs or len(c), seed)
            keys = [f"{c.item_ids[a]}|{c.item_ids[b]}" for a, b, _ in chosen]
            mult = entry.multiplicities(np.ones(len(chosen), dtype=bool), seed, keys)
            for j in np.flatnonzero(mult):
                a, b, count = chosen[j]
                for copy in range(int(mult[j])):
                    yield perception.build_pair(a, b, count, copy)


def read_shard_summaries(config: BuildTasksConfig, dirs: list[Path]) -> list[dict]:
    """Each folder's shard.json, checked: one shard of each index, all built with this config."""
    summaries = []
    for folder in dirs:
        path = folder / SHARD_FILE
        if not path.is_file():
            raise InputError(f"{folder} is not a shard folder (no {SHARD_FILE}); build it with --shard_index")
        summaries.append(json.loads(path.read_text()))
    sizes = {s["num_shards"] for s in summaries}
    if len(sizes) != 1:
        raise InputError(f"the shard folders were cut into different numbers of shards: {sorted(sizes)}")
    indices, num_shards = sorted(s["shard_index"] for s in summaries), sizes.pop()
    if indices != list(range(num_shards)):
        raise InputError(
            f"shards {indices} of {num_shards} given; a merge needs each of 0..{num_shards - 1} exactly once"
        )
    settings = build_settings(config)
    for folder, summary in zip(dirs, summaries):
        differ = sorted(k for k in settings if summary["settings"].get(k) != settings[k])
        if differ:
            raise InputError(f"{folder} was built with other settings than this config: {differ}")
    return summaries


def in_user_order(dataset: Dataset, tail: int) -> Dataset:
    """The shards' rows sorted by user (each user's rows keep their order), then `tail` rows as they are.

    A user's rows all sit in one shard, so this is the order of a one-shard build whatever
    the shards were.
    """
    n = len(dataset) - tail
    if n == 0:
        return dataset
    users = dataset.data.column("user_id").slice(0, n)
    keys = pa.table({"user": users, "position": pa.array(np.arange(n))})
    order = pc.sort_indices(keys, sort_keys=[("user", "ascending"), ("position", "ascending")])
    order = order.to_numpy().astype(np.int64)
    return dataset.select(np.concatenate([order, np.arange(n, len(dataset))]))


def token_samples(train: Dataset, per_task: int) -> dict[str, list[dict]]:
    """The first `per_task` train rows of each task (user order, before the shuffle)."""
    taken: dict[str, list[int]] = {}
    for k, task in enumerate(train["task"]):
        chosen = taken.setdefault(task, [])
        if len(chosen) < per_task:
            chosen.append(k)
    return {
        task: [{"prompt": ex["prompt"], "completion": ex["completion"]} for ex in train.select(ks)]
        for task, ks in taken.items()
    }


def merge_shards(
    config: BuildTasksConfig, dirs: list[Path], inputs: BuildInputs | None = None, num_proc: int = 1
) -> tuple[Path, dict]:
    """Shard folders -> the output folder: rows in user order, perception tasks, shuffle, stats, card.

    Writing the shuffled rows is most of a merge's time; `num_proc` processes write contiguous
    slices of each split (datasets' `save_to_disk`), so the merge does not undo the shards' speed-up.
    """
    dirs = [Path(d) for d in dirs]
    inputs = inputs or load_inputs(config)
    totals = ShardStats()
    for summary in read_shard_summaries(config, dirs):
        totals.add(summary["stats"])
    catalog = inputs.catalog
    totals.drops["items_not_in_index"] = sum(not catalog.indexed(i) for i in range(len(catalog)))
    out = Path(config.out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.arrow.") as scratch:
        splits, train_in_order = {}, None
        for split in SPLIT_FILES:
            parts = [Dataset.from_file(str(d / f"{split}.arrow")) for d in dirs]
            tail = 0
            if split == "train":
                pairs = read_pairs([d / PAIRS_FILE for d in dirs], catalog)
                path = Path(scratch) / "perception.arrow"
                extra = perception_examples(config, inputs, pairs, totals.ineligible)
                tail = write_arrow(counted(totals.counts["train"], extra), path)
                parts.append(Dataset.from_file(str(path)))
            dataset = in_user_order(concatenate_datasets(parts), tail)
            if split == "train":
                train_in_order = dataset
                if len(dataset):
                    dataset = dataset.shuffle(seed=inputs.seed)
            splits[split] = dataset
            logger.info("%s: %d examples", split, len(dataset))
        dataset_dict = DatasetDict(splits)
        stats = merged_stats(config, inputs, totals)
        if config.tokenizer:
            samples = token_samples(train_in_order, config.token_stats_sample)
            stats["token_lengths"] = token_lengths(samples, config.tokenizer)
        with atomic_dir(out) as tmp:
            dataset_dict.save_to_disk(str(tmp), num_proc=num_proc if num_proc > 1 else None)
            atomic_write_json(tmp / "stats.json", stats)
            atomic_write_text(tmp / "config.yaml", yaml.safe_dump(asdict(config), sort_keys=False))
            atomic_write_text(tmp / "README.md", dataset_card(config, stats, dataset_dict))
        del dataset_dict, splits, train_in_order
    if config.push_to_hub:
        push(out, config.push_to_hub, config.hub_private)
    return out, stats


def counted(counts: Counter, examples: Iterator[dict]) -> Iterator[dict]:
    for ex in examples:
        counts[f"{ex['task']}/{ex['mode']}"] += 1
        yield ex


def merged_stats(config: BuildTasksConfig, inputs: BuildInputs, totals: ShardStats) -> dict:
    """stats.json from the summed shard stats: counts and leakage add up, interest recovery pools."""
    counts = {s: totals.counts[s] for s in SPLIT_FILES if sum(totals.counts.get(s, {}).values())}
    stats = {
        "examples": {s: sum(c.values()) for s, c in counts.items()},
        "examples_per_task_mode": {s: dict(sorted(c.items())) for s, c in counts.items()},
        "drops": dict(sorted((k, v) for k, v in totals.drops.items() if v)),
        "ineligible": dict(sorted(totals.ineligible.items())),
        "leakage": {s: totals.leakage[s].report() for s in SPLIT_FILES if s in totals.leakage},
        "trace_sources": dict(sorted(totals.trace_sources.items())),
        "interest_fields_used": list(DeterministicCot(inputs.catalog, cot_config(config)).fields),
    }
    if totals.recovery is not None:
        stats["interest_recovery"] = recovery_report(totals.recovery)
    if totals.teacher is not None:
        stats["teacher"] = totals.teacher
    return stats


# ---------------------------------------------------------------------- one command


def build_tasks(config: BuildTasksConfig, scale: ScaleArguments | None = None) -> tuple[Path, dict]:
    """Run the build as `scale` says (default: one process); returns (output folder, stats).

    With `shard_index`, the output folder is that shard's folder and the stats are its partial sums.
    """
    scale = scale or ScaleArguments()
    if scale.merge_shards is not None:
        return merge_shards(config, [Path(d) for d in scale.merge_shards], num_proc=scale.num_proc)
    inputs = load_inputs(config)
    out = Path(config.out_dir)
    if scale.shard_index is not None:
        check_shardable(config, inputs.entries, scale.num_shards)
        with atomic_dir(out) as tmp:
            summary = build_shard_from_files(
                config,
                scale.num_shards,
                scale.shard_index,
                tmp,
                capped_eval_rows(config, inputs.catalog),
                inputs,
            )
        return out, summary["stats"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.shards.") as scratch:
        if scale.engine == "ray":
            from data_builders.tasks.ray_engine import build_shards_on_ray, cluster_cpus

            num_shards = scale.num_shards or cluster_cpus()
            check_shardable(config, inputs.entries, num_shards)
            dirs = build_shards_on_ray(config, num_shards, Path(scratch), inputs)
        else:
            num_shards = scale.num_shards or scale.num_proc
            check_shardable(config, inputs.entries, num_shards)
            dirs = build_shards_locally(config, num_shards, scale.num_proc, Path(scratch), inputs)
        return merge_shards(config, dirs, inputs, scale.num_proc)


def token_lengths(samples: dict[str, list[dict]], tokenizer_path: str) -> dict:
    """Token-length percentiles per task of prompt + completion, with the model's chat template when it has one."""
    from onereason.modeling import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    out = {}
    for task, exs in sorted(samples.items()):
        lengths = []
        for ex in exs:
            chat = ex["prompt"] + ex["completion"]
            if tok.chat_template:
                ids = tok.apply_chat_template(chat, tokenize=True)
                ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            else:
                ids = tok("\n".join(m["content"] for m in chat))["input_ids"]
            lengths.append(len(ids))
        arr = np.array(lengths)
        out[task] = {
            "sampled": len(arr),
            "p50": float(np.percentile(arr, 50)),
            "p90": float(np.percentile(arr, 90)),
            "p99": float(np.percentile(arr, 99)),
            "max": int(arr.max()),
        }
    return out


def push(out: Path, repo_id: str, private: bool = True) -> None:
    """Push the saved DatasetDict, then our card and stats (push_to_hub writes its own README first)."""
    from datasets import load_from_disk
    from huggingface_hub import HfApi

    load_from_disk(str(out)).push_to_hub(repo_id, private=private)
    api = HfApi()
    for name in ("README.md", "stats.json", "config.yaml"):
        api.upload_file(
            path_or_fileobj=str(out / name), path_in_repo=name, repo_id=repo_id, repo_type="dataset"
        )


def main(argv: Sequence[str] | None = None) -> int:
    from data_builders.preflight import SafetyArguments, check_task_inputs
    from onereason.configs import parse_config

    config, scale, safety = parse_config(
        [BuildTasksConfig, ScaleArguments, SafetyArguments], argv, prog="onereason build-tasks"
    )
    check_task_inputs(config, safety)  # paths, output folder, index vs data: before any work
    out, stats = build_tasks(config, scale)
    if scale.shard_index is not None:
        print(
            f"wrote shard {scale.shard_index} of {scale.num_shards} to {out}; merge the shard folders with --merge_shards"
        )
        return 0
    print(f"wrote {out}: " + ", ".join(f"{s} {n}" for s, n in stats["examples"].items()))
    for split, leak in stats["leakage"].items():
        print(f"leakage rate ({split}): {leak['rate']:.4f} of {leak['checked']} traces")
    if "interest_recovery" in stats:
        print(f"interest recovery F1: {stats['interest_recovery']['f1']:.3f}")
    return 0
