"""The per-user half of `onereason build-tasks`: one shard of users in, their rows and partial stats out.

A user's shard is a stable hash of its id (blake2b, never Python's salted `hash`), so a user
lands in the same shard on every machine and every run. Everything built here depends only
on a user's own rows and the catalogue: a row's key (split, user, position among the user's
rows) seeds its phrasings and its mixture copies, and its trace is a function of its history.
A user's examples are therefore the same bytes whatever the number of shards. What needs
every user (perception tasks, association pairs, the train shuffle, totals) happens once, in
the merge (`data_builders.tasks.build.merge_shards`).

A shard folder holds:

    train.arrow, validation.arrow, test.arrow   its examples, users in sorted order
    pairs.parquet     consecutive item pairs of its training histories, counted
    shard.json        which shard, the build settings, partial stats (all sums)
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Features, List, Value

from data_builders.tasks.catalog import ItemCatalog
from data_builders.tasks.cot import CotConfig, DeterministicCot
from data_builders.tasks.history import HistoryStyle
from data_builders.tasks.interests import InterestRecovery
from data_builders.tasks.leakage import LeakageMeter, find_leaks
from data_builders.tasks.mixture import MixtureEntry
from data_builders.tasks.perception import pair_counts
from data_builders.tasks.recommendation import RecommendationTasks, RecRow, sequence_window_ends
from onereason.sequence_loss import SEQUENCE_TASKS
from onereason.tables import SPLIT_COLUMNS
from onereason.tasks import RECOMMENDATION_TASKS, TRAIN_ONLY_TASKS

SPLIT_FILES = {"train": "train", "validation": "valid", "test": "test"}
MESSAGES = List({"role": Value("string"), "content": Value("string")})
FEATURES = Features(
    {
        "prompt": MESSAGES,
        "completion": MESSAGES,
        "task": Value("string"),
        "mode": Value("string"),
        "user_id": Value("string"),
        "history_items": List(Value("string")),
        "target_items": List(Value("string")),
        "target_sids": List(Value("string")),
        "target_terms": List(Value("string")),
        "domain": Value("string"),
    }
)
WRITE_BATCH = 2000
BATCH_ROWS = 100_000  # split rows turned into examples at a time (bounds the Python row objects)
SHARD_FILE = "shard.json"
PAIRS_FILE = "pairs.parquet"
# Config fields only the merge reads: shards built with other values still merge.
MERGE_ONLY_FIELDS = ("out_dir", "push_to_hub", "hub_private", "tokenizer", "token_stats_sample")


def shard_of(user_id: str, num_shards: int) -> int:
    """The shard of a user: a blake2b digest of its id, the same on every machine and run."""
    digest = hashlib.blake2b(str(user_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


def build_settings(config) -> dict:
    """The config fields that shape a shard's rows (two shards merge only when these agree)."""
    return {k: v for k, v in asdict(config).items() if k not in MERGE_ONLY_FIELDS}


def cot_config(config) -> CotConfig:
    return CotConfig(
        interest_fields=tuple(config.interest_fields),
        min_support=config.min_support,
        recent_items=config.recent_items,
        style=config.trace_style,
    )


def history_style(config) -> HistoryStyle:
    return HistoryStyle(
        item_text=config.history_text,
        max_items=config.max_history,
        title_max_chars=config.title_max_chars,
        numbered=config.history_numbered,
        countdown=config.history_countdown,
    )


# ---------------------------------------------------------------------- reading rows


def scan_split(path: Path) -> pl.LazyFrame:
    """A split file, lazily (only a shard's users are ever materialised), with its columns checked."""
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path} (run `onereason build-data` first)")
    frame = pl.scan_parquet(path)
    try:
        columns = frame.collect_schema().names()
    except (OSError, pl.exceptions.PolarsError) as err:
        raise ValueError(f"{path}: cannot read it as a Parquet table ({err})") from None
    missing = [c for c in SPLIT_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {missing} (columns: {columns})")
    return frame


def users_of_shard(frame: pl.LazyFrame, num_shards: int, shard_index: int) -> list[str]:
    users = frame.select(pl.col("user_id").unique()).collect()["user_id"].to_list()
    return [u for u in users if shard_of(u, num_shards) == shard_index]


def read_shard_split(path: Path, num_shards: int, shard_index: int) -> pl.DataFrame:
    """The rows of one split whose users fall in shard `shard_index` of `num_shards`."""
    frame = scan_split(path)
    if num_shards > 1:
        frame = frame.filter(pl.col("user_id").is_in(users_of_shard(frame, num_shards, shard_index)))
    return frame.collect()


def rows_from_frame(
    df: pl.DataFrame, split: str, catalog: ItemCatalog, max_history: int, top_k: int, drops: Counter
) -> list[RecRow]:
    """Split rows as `RecRow`s, users in sorted order, each user's rows oldest first.

    A row's key is (split, user, its position among the user's rows), not its line in the
    file, so it is the same whichever engine read the file and however it was cut. Rows whose
    target is unknown or whose history ends up empty are counted drops.
    """
    if "history_ts" not in df.columns:
        df = df.with_columns(
            pl.col("history").list.eval(pl.int_range(pl.len(), dtype=pl.Int64)).alias("history_ts")
        )
    if "target_ts" not in df.columns:
        df = df.with_columns(pl.lit(0, dtype=pl.Int64).alias("target_ts"))
    if "target_event" not in df.columns:
        df = df.with_columns(pl.lit("", dtype=pl.String).alias("target_event"))
    df = df.with_columns(pl.col("user_id").cast(pl.String), pl.col("history").list.len().alias("_length"))
    df = df.sort(["user_id", "target_ts", "_length", "target", "target_event"], maintain_order=True)
    df = df.with_columns(pl.int_range(pl.len()).over("user_id").alias("_position"))
    following = [pl.col("target").shift(-j).over("user_id").alias(f"_next{j}") for j in range(1, top_k)]
    df = df.with_columns(following)
    pos = catalog.position
    rows = []
    next_cols = [f"_next{j}" for j in range(1, top_k)]
    for chunk in df.iter_slices(50_000):
        cols = chunk.select(
            ["_position", "user_id", "history", "history_ts", "target", "target_event", *next_cols]
        ).to_dict(as_series=False)
        for k in range(len(cols["_position"])):
            target = pos.get(cols["target"][k])
            if target is None or not catalog.indexed(target):
                drops["target_not_in_index"] += 1
                continue
            items, stamps = [], []
            for item, ts in zip(cols["history"][k] or [], cols["history_ts"][k] or []):
                p = pos.get(item)
                if p is None or not catalog.indexed(p):
                    drops["history_item_not_in_index"] += 1
                    continue
                items.append(p)
                stamps.append(int(ts))
            if not items:
                drops["empty_history"] += 1
                continue
            targets = [target]
            for col in next_cols:
                nxt = pos.get(cols[col][k]) if cols[col][k] is not None else None
                if nxt is None or not catalog.indexed(nxt):
                    break
                targets.append(nxt)
            user = cols["user_id"][k]
            rows.append(
                RecRow(
                    key=f"{split}:{user}:{cols['_position'][k]}",
                    user_id=user,
                    history=items[-max_history:],
                    timestamps=stamps[-max_history:],
                    targets=targets,
                    event=str(cols["target_event"][k] or ""),
                )
            )
    return rows


def capped_eval_rows(config, catalog: ItemCatalog) -> dict[str, set[str]] | None:
    """The keys of the first `eval_max_rows` usable rows of validation and test (users in sorted
    order), or None without a cap: a cap needs every user's position, so it is decided once,
    before the shards, by reading only as many users as it takes."""
    if not config.eval_max_rows:
        return None
    wanted = config.eval_max_rows
    keep = {}
    for split, file in SPLIT_FILES.items():
        if split == "train":
            continue
        frame = scan_split(Path(config.data_dir) / "splits" / f"{file}.parquet")
        users = frame.select(pl.col("user_id").cast(pl.String).unique().sort()).collect()["user_id"]
        keys: list[str] = []
        step = max(wanted, 1024)
        for start in range(0, len(users), step):
            batch = users[start : start + step].to_list()
            chunk = frame.filter(pl.col("user_id").cast(pl.String).is_in(batch)).collect()
            rows = rows_from_frame(chunk, split, catalog, config.max_history, config.top_k, Counter())
            keys += [r.key for r in rows]
            if len(keys) >= wanted:
                break
        keep[split] = set(keys[:wanted])
    return keep


# ---------------------------------------------------------------------- one shard


class ShardStats:
    """The sums one shard contributes to stats.json; `add` folds another shard's in."""

    def __init__(self):
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.drops: Counter = Counter()  # bad input: rows and traces removed
        self.ineligible: Counter = Counter()  # a task that cannot use a row (single target, no Term ID...)
        self.leakage: dict[str, LeakageMeter] = defaultdict(LeakageMeter)
        self.trace_sources: Counter = Counter()
        self.recovery: Counter | None = None  # InterestRecovery totals (synthetic world)
        self.teacher: dict | None = None

    def to_json(self) -> dict:
        return {
            "counts": {s: dict(c) for s, c in self.counts.items()},
            "drops": dict(self.drops),
            "ineligible": dict(self.ineligible),
            "leakage": {s: m.report() for s, m in self.leakage.items()},
            "trace_sources": dict(self.trace_sources),
            "recovery": None if self.recovery is None else dict(self.recovery),
            "teacher": self.teacher,
        }

    def add_recovery(self, totals: dict[str, int]) -> None:
        self.recovery = self.recovery or Counter()
        self.recovery.update(totals)  # (`+` would drop the zero counts the report needs)

    def add(self, data: dict) -> None:
        for split, counts in data["counts"].items():
            self.counts[split].update(counts)
        self.drops.update(data["drops"])
        self.ineligible.update(data["ineligible"])
        for split, report in data["leakage"].items():
            self.leakage[split].add_report(report)
        self.trace_sources.update(data["trace_sources"])
        if data["recovery"] is not None:
            self.add_recovery(data["recovery"])
        if data["teacher"] is not None:
            self.teacher = data["teacher"]  # one shard only (a teacher build does not shard)


class ShardBuilder:
    """The recommendation examples of one shard's rows, with the running stats they feed."""

    def __init__(self, config, catalog: ItemCatalog, entries: list[MixtureEntry], seed: int, index=None):
        self.config = config
        self.catalog = catalog
        self.entries = entries
        self.seed = seed
        style = history_style(config)
        self.rec = RecommendationTasks(
            catalog, style, config.system_prompt, seed, config.top_k, config.short_prompts, config.pair_window
        )
        self.cot = DeterministicCot(catalog, cot_config(config))
        self.teacher = None
        if config.cot == "teacher":
            from data_builders.tasks.cot_teacher import TeacherCot

            self.teacher = TeacherCot(
                catalog,
                config.teacher_model,
                config.teacher_backend,
                config.teacher_max_new_tokens,
                config.teacher_retries,
                config.teacher_batch_size,
                seed=seed,
                index=index,
                history_style=style,
            )
        self.stats = ShardStats()

    def needs_every_row(self) -> bool:
        """An exact `count` of recommendation rows ranks every row; a teacher's limit and batches span rows."""
        counted = any(e.task in RECOMMENDATION_TASKS and e.count is not None for e in self.entries)
        return counted or self.teacher is not None

    def rec_plan(self, split: str, rows: list[RecRow]) -> list[tuple[MixtureEntry, np.ndarray]]:
        plan = []
        window_ends = None
        keys = [r.key for r in rows]
        for entry in self.entries:
            if entry.task not in RECOMMENDATION_TASKS or (
                entry.task in TRAIN_ONLY_TASKS and split != "train"
            ):
                continue  # sequence and pair rows train; evaluation reads the per-target rows
            if entry.task in SEQUENCE_TASKS and window_ends is None:
                window_ends = sequence_window_ends(rows)
            reasons = [
                "inside_a_longer_window" if entry.task in SEQUENCE_TASKS and not window_ends[k] else None
                for k in range(len(rows))
            ]
            reasons = [why or self.rec.ineligible(entry.task, r) for why, r in zip(reasons, rows)]
            for reason in reasons:
                if reason:
                    self.stats.ineligible[f"{split}/{entry.task}:{reason}"] += 1
            eligible = np.array([r is None for r in reasons], dtype=bool)
            if split == "train":
                decided = None
                if entry.decided_weight is not None:
                    decided = np.array([self.cot.decides(r.history, r.timestamps) for r in rows], dtype=bool)
                plan.append((entry, entry.multiplicities(eligible, self.seed, keys, decided)))
            else:
                plan.append((entry, eligible.astype(np.int64)))
        return plan

    def teacher_traces(self, rows: list[RecRow], plan) -> dict[int, str | None]:
        from data_builders.tasks.cot_teacher import TeacherRequest

        wanted = sorted({k for entry, mult in plan if entry.mode == "think" for k in np.flatnonzero(mult)})
        if self.config.teacher_limit:
            wanted = wanted[: self.config.teacher_limit]
        texts = self.teacher.traces([TeacherRequest(rows[k].history, rows[k].targets) for k in wanted])
        return dict(zip(wanted, texts))

    def trace_for(
        self, k: int, row: RecRow, targets: list[int], teacher: dict[int, str | None], split: str
    ) -> str | None:
        if self.teacher is not None and k in teacher and teacher[k] is not None:
            text, source = teacher[k], "teacher"
        elif self.teacher is not None and self.config.teacher_fallback == "drop":
            self.stats.drops["teacher_rejected"] += 1
            return None
        else:
            text, source = self.cot.build(row.history, row.timestamps, targets).text, "deterministic"
        leaks = find_leaks(text, self.catalog, targets)
        self.stats.leakage[split].add(leaks)
        if leaks:
            self.stats.drops["trace_leak"] += 1
            return None
        self.stats.trace_sources[source] += 1
        return text

    def rec_examples(
        self, split: str, rows: list[RecRow], recovery: InterestRecovery | None
    ) -> Iterator[dict]:
        plan = self.rec_plan(split, rows)
        teacher = self.teacher_traces(rows, plan) if self.teacher is not None else {}
        think_targets = {"rec_multi": lambda r: r.targets[: self.config.top_k]}
        for k, row in enumerate(rows):
            if recovery is not None:
                points, _ = self.cot.interest_points(row.history, row.timestamps)
                recovery.add(
                    row.user_id, [self.catalog.item_ids[i] for i in row.history], row.timestamps, points
                )
            traces: dict[str, str | None] = {}
            for entry, mult in plan:
                copies = int(mult[k])
                if not copies:
                    continue
                trace = None
                if entry.mode == "think":
                    targets = think_targets.get(entry.task, lambda r: r.targets[:1])(row)
                    cache_key = "multi" if entry.task == "rec_multi" else "one"
                    if cache_key not in traces:
                        traces[cache_key] = self.trace_for(k, row, targets, teacher, split)
                    trace = traces[cache_key]
                    if trace is None:
                        continue
                for offset in self.rec.offsets(entry.task, row):
                    for copy in range(copies):
                        yield self.rec.build(entry.task, entry.mode, row, trace, copy, offset)

    def counted(self, split: str, examples: Iterator[dict]) -> Iterator[dict]:
        for ex in examples:
            self.stats.counts[split][f"{ex['task']}/{ex['mode']}"] += 1
            yield ex


def write_arrow(examples: Iterator[dict], path: Path) -> int:
    """Stream examples to an Arrow stream file (the format `Dataset.from_file` maps); returns the count."""
    schema = FEATURES.arrow_schema
    n = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        batch: list[dict] = []
        for ex in examples:
            batch.append(ex)
            if len(batch) >= WRITE_BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                n += len(batch)
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            n += len(batch)
    return n


def truth_of_users(truth: tuple[pa.Table, pa.Table] | None, users: list[str]):
    """The synthetic world's truth rows of these users only (a shard never holds everyone's)."""
    if truth is None:
        return None
    labels, interests = truth
    mask = pc.is_in(labels.column("user_id"), value_set=pa.array(users, pa.string()))
    return labels.filter(mask), interests


def user_batches(frame: pl.DataFrame, rows: int | None) -> Iterator[pl.DataFrame]:
    """`frame` in slices of whole users, about `rows` split rows each (None: one slice).

    Users are cut in the order `rows_from_frame` sorts them, so the slices' rows, one after
    another, are the rows of the whole frame in the same order.
    """
    if rows is None or frame.height <= rows:
        yield frame
        return
    frame = frame.with_columns(pl.col("user_id").cast(pl.String)).sort("user_id", maintain_order=True)
    ends = np.cumsum(frame.group_by("user_id", maintain_order=True).len()["len"].to_numpy())
    start = 0
    while start < frame.height:
        end = int(ends[min(np.searchsorted(ends, start + rows), len(ends) - 1)])
        yield frame.slice(start, end - start)
        start = end


def build_shard(
    builder: ShardBuilder,
    frames: dict[str, pl.DataFrame],
    out: Path,
    shard: tuple[int, int],
    truth: tuple[pa.Table, pa.Table] | None = None,
    eval_rows: dict[str, set[str]] | None = None,
) -> dict:
    """Write one shard's folder from its users' split rows (`frames`); returns its shard.json.

    The pure per-user function every engine maps: the local process pool and Ray Data call it
    with the same rows and get the same bytes. Rows become examples `BATCH_ROWS` at a time, so
    the Python row objects stay bounded however big the shard (unless an exact `count` or a
    teacher needs every row at once); the shard's split frame itself is held throughout
    (~0.9 GiB per million interactions, docs/SCALING.md): more shards, less memory each.
    """
    config, catalog = builder.config, builder.catalog
    pairs: Counter = Counter()
    batch_rows = None if builder.needs_every_row() else BATCH_ROWS

    def examples(split: str) -> Iterator[dict]:
        for batch in user_batches(frames[split], batch_rows):
            rows = rows_from_frame(
                batch, split, catalog, config.max_history, config.top_k, builder.stats.drops
            )
            if eval_rows is not None and split != "train":
                rows = [r for r in rows if r.key in eval_rows[split]]
            recovery = None
            if truth is not None and split == "test":
                labels, interests = truth_of_users(truth, sorted({r.user_id for r in rows}))
                recovery = InterestRecovery(labels, interests, config.min_support)
            yield from builder.rec_examples(split, rows, recovery)
            if recovery is not None:
                builder.stats.add_recovery(recovery.totals())
            if split == "train":
                pairs.update(pair_counts(catalog, (r.history + r.targets[:1] for r in rows)))

    for split in SPLIT_FILES:
        write_arrow(builder.counted(split, examples(split)), out / f"{split}.arrow")
    write_pairs(pairs, catalog, out / PAIRS_FILE)
    if builder.teacher is not None:
        builder.stats.teacher = builder.teacher.report()
    summary = {
        "shard_index": shard[0],
        "num_shards": shard[1],
        "settings": build_settings(config),
        "stats": builder.stats.to_json(),
    }
    (out / SHARD_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


def write_pairs(pairs: Counter, catalog: ItemCatalog, path: Path) -> None:
    ids = catalog.item_ids
    keys = sorted(pairs)
    table = pa.table(
        {
            "item_a": pa.array([ids[a] for a, _ in keys], pa.string()),
            "item_b": pa.array([ids[b] for _, b in keys], pa.string()),
            "count": pa.array([pairs[k] for k in keys], pa.int64()),
        }
    )
    pq.write_table(table, path)


def read_pairs(paths: list[Path], catalog: ItemCatalog) -> Counter:
    """Item-pair counts summed over shards, keyed by catalogue positions."""
    frames = [pl.read_parquet(p) for p in paths]
    total = pl.concat(frames).group_by(["item_a", "item_b"]).agg(pl.col("count").sum())
    pos = catalog.position
    return Counter(
        {
            (pos[a], pos[b]): int(n)
            for a, b, n in zip(total["item_a"].to_list(), total["item_b"].to_list(), total["count"].to_list())
        }
    )
