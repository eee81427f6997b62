"""`onereason build-tasks --config recipes/scientific/tasks.yaml`: splits -> task datasets.

Reads a build-data folder (items.parquet, splits/{train,valid,test}.parquet) and an
item_index.json, and writes the "task datasets" contract of docs/ARCHITECTURE.md:

    <out>/dataset_dict.json, train/, validation/, test/   DatasetDict.save_to_disk
    <out>/stats.json     counts per split/task/mode, drops per reason, token lengths,
                         leakage rate, interest recovery (synthetic world), teacher report
    <out>/README.md      dataset card
    <out>/config.yaml    the resolved config

The folder is replaced in one rename (`onereason.io.atomic_dir`), so a failed build
leaves the previous output, never half of a new one. Bad rows (a target missing from the
index, a history that is empty once unknown items are removed) are dropped and counted.

Examples stream to an Arrow file per split instead of living in memory, so a 1M-interaction
log builds in a few GB.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import yaml
from datasets import Dataset, DatasetDict, Features, List, Value

from data_builders.tasks.card import dataset_card
from data_builders.tasks.catalog import ItemCatalog, build_catalog
from data_builders.tasks.cot import CotConfig, DeterministicCot
from data_builders.tasks.history import HistoryStyle
from data_builders.tasks.interests import TRUTH_FILES, InterestRecovery, read_truth
from data_builders.tasks.leakage import LeakageMeter, find_leaks
from data_builders.tasks.mixture import DEFAULT_MIXTURE, MixtureEntry, load_mixture, parse_mixture
from data_builders.tasks.perception import ITEM_TASKS, PerceptionTasks, association_pairs
from data_builders.tasks.recommendation import REC_TASKS, RecommendationTasks, RecRow, sequence_window_ends
from onereason.io import atomic_dir, atomic_write_json, atomic_write_text
from onereason.sequence_loss import SEQUENCE_TASKS
from onereason.tables import read_items, read_split

logger = logging.getLogger(__name__)

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
    short_prompts: bool = field(
        default=False,
        metadata={
            "help": "one short fixed header and question for the recommendation tasks ('History:' ... "
            "'Next item?') instead of a pool of phrasings: a from-scratch model learns nothing from prompt "
            "words it reads in every row (~15 fewer tokens a row); keep the pool for pretrained LLMs"
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
        HistoryStyle(item_text=self.history_text, max_items=self.max_history)  # validates
        CotConfig(style=self.trace_style)  # validates


# ---------------------------------------------------------------------- reading splits


def read_rows(
    path: Path, split: str, catalog: ItemCatalog, max_history: int, top_k: int, drops: Counter
) -> list[RecRow]:
    """Split rows as `RecRow`s; rows whose target is unknown or whose history ends up empty are counted drops."""
    df = pl.from_arrow(read_split(path))
    if "history_ts" not in df.columns:
        df = df.with_columns(
            pl.col("history").list.eval(pl.int_range(pl.len(), dtype=pl.Int64)).alias("history_ts")
        )
    if "target_ts" not in df.columns:
        df = df.with_columns(pl.lit(0, dtype=pl.Int64).alias("target_ts"))
    if "target_event" not in df.columns:
        df = df.with_columns(pl.lit("", dtype=pl.String).alias("target_event"))
    df = df.with_row_index("_row").sort(["user_id", "target_ts", "_row"], maintain_order=True)
    following = [pl.col("target").shift(-j).over("user_id").alias(f"_next{j}") for j in range(1, top_k)]
    df = df.with_columns(following)
    pos = catalog.position
    rows = []
    next_cols = [f"_next{j}" for j in range(1, top_k)]
    for chunk in df.iter_slices(50_000):
        cols = chunk.select(
            ["_row", "user_id", "history", "history_ts", "target", "target_event", *next_cols]
        ).to_dict(as_series=False)
        for k in range(len(cols["_row"])):
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
            rows.append(
                RecRow(
                    key=f"{split}:{cols['_row'][k]}",
                    user_id=str(cols["user_id"][k]),
                    history=items[-max_history:],
                    timestamps=stamps[-max_history:],
                    targets=targets,
                    event=str(cols["target_event"][k] or ""),
                )
            )
    return rows


def load_truth(config: BuildTasksConfig) -> tuple[pa.Table, pa.Table] | None:
    folder = Path(config.truth_dir or config.data_dir)
    found = read_truth(folder)
    if found is None and config.truth_dir:
        raise FileNotFoundError(f"truth_dir {folder} must hold {' and '.join(TRUTH_FILES)}")
    return found


# ---------------------------------------------------------------------- the build


class TaskBuilder:
    """Holds the catalogue, the task makers and the running statistics of one build."""

    def __init__(
        self,
        config: BuildTasksConfig,
        catalog: ItemCatalog,
        entries: list[MixtureEntry],
        seed: int,
        index=None,
    ):
        self.config = config
        self.catalog = catalog
        self.entries = entries
        self.seed = seed
        style = HistoryStyle(
            item_text=config.history_text,
            max_items=config.max_history,
            title_max_chars=config.title_max_chars,
            numbered=config.history_numbered,
        )
        self.rec = RecommendationTasks(
            catalog, style, config.system_prompt, seed, config.top_k, config.short_prompts
        )
        self.perception = PerceptionTasks(catalog, config.system_prompt, seed)
        self.cot = DeterministicCot(
            catalog,
            CotConfig(
                interest_fields=tuple(config.interest_fields),
                min_support=config.min_support,
                recent_items=config.recent_items,
                style=config.trace_style,
            ),
        )
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
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.drops: Counter = Counter()  # bad input: rows and traces removed
        self.ineligible: Counter = Counter()  # a task that cannot use a row (single target, no Term ID...)
        self.leakage: dict[str, LeakageMeter] = defaultdict(LeakageMeter)
        self.trace_sources: Counter = Counter()
        self.samples: dict[str, list[dict]] = defaultdict(list)

    # -- multiplicities -------------------------------------------------------------

    def rec_plan(self, split: str, rows: list[RecRow]) -> list[tuple[MixtureEntry, np.ndarray]]:
        plan = []
        window_ends = None
        for entry in self.entries:
            if entry.task not in REC_TASKS or (entry.task in SEQUENCE_TASKS and split != "train"):
                continue  # sequence rows train; evaluation reads the per-target rows
            if entry.task in SEQUENCE_TASKS and window_ends is None:
                window_ends = sequence_window_ends(rows)
            reasons = [
                "inside_a_longer_window" if entry.task in SEQUENCE_TASKS and not window_ends[k] else None
                for k in range(len(rows))
            ]
            reasons = [why or self.rec.ineligible(entry.task, r) for why, r in zip(reasons, rows)]
            for reason in reasons:
                if reason:
                    self.ineligible[f"{split}/{entry.task}:{reason}"] += 1
            eligible = np.array([r is None for r in reasons], dtype=bool)
            if split == "train":
                plan.append((entry, entry.multiplicities(eligible, self.seed)))
            else:
                plan.append((entry, eligible.astype(np.int64)))
        return plan

    # -- traces ---------------------------------------------------------------------

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
        if self.teacher is not None:
            if k in teacher and teacher[k] is not None:
                text, source = teacher[k], "teacher"
            elif self.config.teacher_fallback == "drop":
                self.drops["teacher_rejected"] += 1
                return None
            else:
                text, source = self.cot.build(row.history, row.timestamps, targets).text, "deterministic"
        else:
            text, source = self.cot.build(row.history, row.timestamps, targets).text, "deterministic"
        leaks = find_leaks(text, self.catalog, targets)
        self.leakage[split].add(leaks)
        if leaks:
            self.drops["trace_leak"] += 1
            return None
        self.trace_sources[source] += 1
        return text

    # -- examples -------------------------------------------------------------------

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
                for copy in range(copies):
                    yield self.rec.build(entry.task, entry.mode, row, trace, copy)

    def perception_examples(self, train_rows: list[RecRow]) -> Iterator[dict]:
        c = self.catalog
        items = np.arange(len(c))
        for entry in self.entries:
            if entry.task in ITEM_TASKS:
                reasons = [self.perception.ineligible(entry.task, int(i)) for i in items]
                for reason in reasons:
                    if reason:
                        self.ineligible[f"train/{entry.task}:{reason}"] += 1
                mult = entry.multiplicities(np.array([r is None for r in reasons]), self.seed)
                for i in np.flatnonzero(mult):
                    for copy in range(int(mult[i])):
                        yield self.perception.build_item(entry.task, int(i), copy)
            elif entry.task == "association":
                pairs = association_pairs(
                    c,
                    (r.history + r.targets[:1] for r in train_rows),
                    self.config.association_pairs or len(c),
                    self.seed,
                )
                mult = entry.multiplicities(np.ones(len(pairs), dtype=bool), self.seed)
                for j in np.flatnonzero(mult):
                    a, b, count = pairs[j]
                    for copy in range(int(mult[j])):
                        yield self.perception.build_pair(a, b, count, copy)

    def record(self, split: str, examples: Iterator[dict]) -> Iterator[dict]:
        for ex in examples:
            self.counts[split][f"{ex['task']}/{ex['mode']}"] += 1
            if split == "train" and len(self.samples[ex["task"]]) < self.config.token_stats_sample:
                self.samples[ex["task"]].append({"prompt": ex["prompt"], "completion": ex["completion"]})
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


def build_tasks(config: BuildTasksConfig) -> tuple[Path, dict]:
    """Run the whole build; returns (output folder, stats)."""
    from onereason.item_index import ItemIndex

    data_dir = Path(config.data_dir)
    items = read_items(data_dir)
    index = ItemIndex.load(config.item_index)
    catalog = build_catalog(items, index)
    if config.mixture:
        entries, mixture_seed = load_mixture(config.mixture)
    else:
        entries, mixture_seed = parse_mixture(DEFAULT_MIXTURE, "default mixture"), None
    seed = config.seed if mixture_seed is None else int(mixture_seed)
    builder = TaskBuilder(config, catalog, entries, seed, index)
    builder.drops["items_not_in_index"] = sum(not catalog.indexed(i) for i in range(len(catalog)))
    truth = load_truth(config)

    out = Path(config.out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    stats: dict = {}
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.arrow.") as scratch:
        splits = {}
        train_rows: list[RecRow] = []
        for split, file in SPLIT_FILES.items():
            rows = read_rows(
                data_dir / "splits" / f"{file}.parquet",
                split,
                catalog,
                config.max_history,
                config.top_k,
                builder.drops,
            )
            if split != "train" and config.eval_max_rows:
                rows = rows[: config.eval_max_rows]
            recovery = (
                InterestRecovery(*truth, config.min_support)
                if truth is not None and split == "test"
                else None
            )
            examples = builder.rec_examples(split, rows, recovery)
            if split == "train":
                train_rows = rows
                examples = _chain(examples, builder.perception_examples(train_rows))
            path = Path(scratch) / f"{split}.arrow"
            n = write_arrow(builder.record(split, examples), path)
            dataset = Dataset.from_file(str(path))
            if split == "train" and n:
                dataset = dataset.shuffle(seed=seed)
            splits[split] = dataset
            logger.info("%s: %d examples from %d rows", split, n, len(rows))
            if recovery is not None:
                stats["interest_recovery"] = recovery.report()
        dataset_dict = DatasetDict(splits)
        stats = {
            "examples": {s: sum(c.values()) for s, c in builder.counts.items()},
            "examples_per_task_mode": {s: dict(sorted(c.items())) for s, c in builder.counts.items()},
            "drops": dict(sorted((k, v) for k, v in builder.drops.items() if v)),
            "ineligible": dict(sorted(builder.ineligible.items())),
            "leakage": {s: m.report() for s, m in builder.leakage.items()},
            "trace_sources": dict(builder.trace_sources),
            "interest_fields_used": list(builder.cot.fields),
            **stats,
        }
        if builder.teacher is not None:
            stats["teacher"] = builder.teacher.report()
        if config.tokenizer:
            stats["token_lengths"] = token_lengths(builder.samples, config.tokenizer)
        with atomic_dir(out) as tmp:
            dataset_dict.save_to_disk(str(tmp))
            atomic_write_json(tmp / "stats.json", stats)
            atomic_write_text(tmp / "config.yaml", yaml.safe_dump(asdict(config), sort_keys=False))
            atomic_write_text(tmp / "README.md", dataset_card(config, stats, dataset_dict))
        del dataset_dict, splits
    if config.push_to_hub:
        push(out, config.push_to_hub, config.hub_private)
    return out, stats


def _chain(*iterables):
    for it in iterables:
        yield from it


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

    config, safety = parse_config([BuildTasksConfig, SafetyArguments], argv, prog="onereason build-tasks")
    check_task_inputs(config, safety)  # paths, output folder, index vs data: before any work
    out, stats = build_tasks(config)
    print(f"wrote {out}: " + ", ".join(f"{s} {n}" for s, n in stats["examples"].items()))
    for split, leak in stats["leakage"].items():
        print(f"leakage rate ({split}): {leak['rate']:.4f} of {leak['checked']} traces")
    if "interest_recovery" in stats:
        print(f"interest recovery F1: {stats['interest_recovery']['f1']:.3f}")
    return 0
