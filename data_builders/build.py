"""`onereason build-data --config recipes/data/scientific.yaml`: load, clean, split, write.

The output folder (docs/ARCHITECTURE.md, "splits on disk") is written atomically and holds
the resolved `config.yaml`, so a folder always says how it was made. Re-running the same
config gives byte-identical files: every step is deterministic (stable sorts, no sampling),
and `stats.json` holds counts only, no times.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from tqdm.auto import tqdm

from data_builders.cleaning import DEDUP_MODES, CleaningOptions, clean
from data_builders.sources import SOURCES, load_source, sources_help
from data_builders.sources.common import (
    INTERACTION_COLUMNS,
    INTERACTION_SCHEMA,
    DataError,
    DropCounter,
    Loaded,
)
from data_builders.splits import METHODS, SPLIT_SCHEMA, assign_roles, write_splits
from onereason.io import atomic_dir, atomic_write_json, atomic_write_text, check_output_dir

logger = logging.getLogger(__name__)


class JSONDict(dict):
    """A mapping option: a YAML mapping in the config file, or a JSON object on the command line.

    (transformers' HfArgumentParser would call `dict("{...}")` on a plain `dict` field.)
    """

    def __init__(self, value=None):
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as err:
                raise ValueError(f"not a JSON object: {value!r} ({err.msg})") from err
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {type(value).__name__}")
        super().__init__(value or {})


@dataclass
class BuildDataConfig:
    """How to turn one source into canonical tables and splits."""

    source: str = field(
        default="synthetic",
        metadata={"help": f"loader name: {', '.join(SOURCES)} (their options are listed below)"},
    )
    source_options: JSONDict = field(
        default_factory=dict,
        metadata={
            "help": "keyword options of the loader (path, name, column mapping...; listed below), a YAML mapping"
        },
    )
    out_dir: str = field(
        default="data/built",
        metadata={
            "help": "output folder, replaced atomically; an existing folder must be empty or a previous "
            "onereason output (see --overwrite)"
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "replace out_dir even when it is a folder onereason did not write (never an input folder)"
        },
    )
    dedup: str = field(default="exact", metadata={"help": "none | exact | user_item | consecutive"})
    kcore: int = field(
        default=0, metadata={"help": "keep users and items with >= k interactions, iterated (0: off)"}
    )
    kcore_items: int | None = field(
        default=None, metadata={"help": "item threshold when it differs from kcore"}
    )
    min_history: int = field(default=0, metadata={"help": "drop users with fewer interactions than this"})
    max_history: int = field(default=20, metadata={"help": "history items kept per example (most recent)"})
    split: str = field(default="leave_one_out", metadata={"help": "leave_one_out | sliding | given"})
    valid_ratio: float = field(
        default=0.1, metadata={"help": "sliding split: share of windows for validation"}
    )
    test_ratio: float = field(default=0.1, metadata={"help": "sliding split: share of windows for test"})
    min_rating: float | None = field(
        default=None, metadata={"help": "keep interactions with weight (rating) >= this"}
    )
    events: list[str] | None = field(
        default=None, metadata={"help": "keep only these event types (multi-behavior logs)"}
    )
    drop_unknown_items: bool = field(
        default=True, metadata={"help": "drop interactions whose item is not in the catalogue"}
    )
    keep_unused_items: bool = field(
        default=False, metadata={"help": "keep catalogue items left without interactions"}
    )
    strict: bool = field(
        default=False,
        metadata={"help": "fail on bad input (malformed rows, unknown items...) instead of counting drops"},
    )
    seed: int = field(
        default=0,
        metadata={"help": "seed for sources that sample (synthetic), unless source_options sets one"},
    )
    chunk_rows: int = field(
        default=1_000_000, metadata={"help": "interactions per chunk when writing splits (memory bound)"}
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self):
        try:
            self.source_options = dict(JSONDict(self.source_options))
        except ValueError as err:
            raise DataError(f"source_options: {err}") from err
        if isinstance(self.events, str):
            self.events = [e.strip() for e in self.events.split(",") if e.strip()]
        # Fail on a typo before minutes of loading, not after.
        if self.split not in METHODS:
            raise DataError(f"split: unknown method {self.split!r}; choose from {METHODS}")
        if self.dedup not in DEDUP_MODES:
            raise DataError(f"dedup: unknown mode {self.dedup!r}; choose from {DEDUP_MODES}")
        if self.source not in SOURCES:
            raise DataError(f"source: unknown source {self.source!r}; choose from {sorted(SOURCES)}")

    def cleaning(self) -> CleaningOptions:
        return CleaningOptions(
            dedup=self.dedup,
            kcore=self.kcore,
            kcore_items=self.kcore_items,
            min_history=self.min_history,
            min_rating=self.min_rating,
            events=self.events,
            drop_unknown_items=self.drop_unknown_items,
            keep_unused_items=self.keep_unused_items,
        )


def _given_targets(given: dict[str, pa.Table]) -> pl.DataFrame:
    """Each user's earliest given target time: interactions before it may become train targets."""
    frames = [pl.from_arrow(t.select(["user_id", "target_ts"])) for t in given.values() if t.num_rows]
    if not frames:
        return pl.DataFrame(
            {"user_id": [], "first_ts": []}, schema={"user_id": pl.String, "first_ts": pl.Int64}
        )
    return pl.concat(frames).group_by("user_id").agg(pl.col("target_ts").min().alias("first_ts"))


def _sequence_stats(df: pl.DataFrame) -> dict:
    lengths = df.group_by("user_id").len()["len"]
    if lengths.is_empty():
        return {}
    q = {f"p{int(p * 100)}": int(lengths.quantile(p, "nearest")) for p in (0.5, 0.9, 0.99)}
    counts = lengths.value_counts(sort=False).sort("len")
    return {
        "min": int(lengths.min()),
        "mean": round(float(lengths.mean()), 4),
        **q,
        "max": int(lengths.max()),
        "histogram": {str(k): int(v) for k, v in zip(counts["len"], counts["count"])},
    }


def _plain_extra(extra: dict) -> dict:
    """The loader's JSON-friendly notes (published_index_path, order_only, variant) for stats.json."""
    out = {}
    for key, value in extra.items():
        if key in ("drop_examples", "tables"):
            continue
        try:
            json.dumps(value)
        except TypeError:
            continue  # e.g. the synthetic World object
        out[key] = value
    return out


def input_paths(options: dict) -> list[str]:
    """The files and folders a loader reads: every string option naming an existing path."""
    found = []
    for value in options.values():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, str) and v and Path(v).expanduser().exists():
                found.append(v)
    return found


def _empty_source_message(name: str, drops: DropCounter) -> str:
    """Why a source gave no interactions: the drop counts and the first example, if any."""
    if not drops.counts:
        return f"source {name!r} produced no interactions (is the file empty?)"
    reason, n = max(drops.counts.items(), key=lambda kv: kv[1])
    example = (drops.examples.get(reason) or [""])[0]
    return (
        f"source {name!r} produced no interactions: all {n} row(s) dropped as {reason}"
        + (f", e.g. {example}" if example else "")
        + " (check the column mapping and timestamp_unit in source_options)"
    )


def build_data(config: BuildDataConfig) -> tuple[Path, dict]:
    """Run the whole build; returns the output folder and the stats written to `stats.json`."""
    progress = tqdm if config.progress else None
    options = dict(config.source_options)
    # Cheap checks first: the output folder must not eat an input or a user's folder.
    check_output_dir(config.out_dir, inputs=input_paths(options), overwrite=config.overwrite)
    if config.source == "synthetic":
        options.setdefault("seed", config.seed)
    logger.info("loading source %s", config.source)
    loaded: Loaded = load_source(config.source, strict=config.strict, **options)
    if config.split == "sliding" and loaded.extra.get("order_only"):
        logger.warning(
            "source %s has only per-user order (ordinal timestamps): a global sliding split by time is not meaningful",
            config.source,
        )
    if config.split == "given" and not loaded.given_splits:
        raise DataError(f"split: given, but source {config.source!r} ships no split of its own")

    drops = DropCounter(config.strict)
    drops.merge(loaded.drops, loaded.extra.get("drop_examples", {}))
    raw_rows = loaded.interactions.num_rows
    if raw_rows == 0:
        raise DataError(_empty_source_message(config.source, drops))
    logger.info("cleaning %d interactions", raw_rows)
    filters: list[dict] = []
    df, items, item_drops = clean(loaded.interactions, loaded.items, config.cleaning(), drops, filters)

    given = None
    given_targets = None
    if config.split == "given":
        given = {k: v.cast(SPLIT_SCHEMA) for k, v in loaded.given_splits.items()}
        given_targets = _given_targets(given)
    df = assign_roles(df, config.split, config.valid_ratio, config.test_ratio, given_targets)
    if given and "train" in given:  # the source ships its train rows too: derive none
        df = df.with_columns(pl.lit(-1, dtype=pl.Int8).alias("_role"))

    out = Path(config.out_dir)
    with atomic_dir(out) as tmp:
        logger.info("writing %d interactions, %d items to %s", df.height, items.num_rows, out)
        pq.write_table(
            df.select(INTERACTION_COLUMNS).to_arrow().cast(INTERACTION_SCHEMA), tmp / "interactions.parquet"
        )
        pq.write_table(items, tmp / "items.parquet")
        for name, table in loaded.extra.get("tables", {}).items():  # e.g. the synthetic ground truth
            pq.write_table(table, tmp / f"{name}.parquet")
        split_stats = write_splits(df, tmp / "splits", config.max_history, given, config.chunk_rows, progress)
        stats = {
            "source": config.source,
            "split": config.split,
            "raw_interactions": raw_rows,
            "interactions": df.height,
            "users": df["user_id"].n_unique(),
            "items": items.num_rows,
            "dropped": dict(sorted(drops.counts.items())),
            "dropped_items": item_drops,
            "filters": filters,
            "drop_examples": drops.examples,
            "sequence_length": _sequence_stats(df),
            "splits": split_stats,
            "source_extra": _plain_extra(loaded.extra),
        }
        atomic_write_json(tmp / "stats.json", stats)
        atomic_write_text(tmp / "config.yaml", yaml.safe_dump(asdict(config), sort_keys=False))
    return out, stats


def main(argv: Sequence[str] | None = None) -> int:
    from onereason.configs import parse_config

    (config,) = parse_config([BuildDataConfig], argv, prog="onereason build-data", epilog=sources_help())
    out, stats = build_data(config)
    splits = ", ".join(f"{s} {v['examples']:,}" for s, v in stats["splits"].items())
    print(
        f"{out}: {stats['users']:,} users, {stats['items']:,} items, {stats['interactions']:,} interactions; {splits}"
    )
    if stats["dropped"]:
        print("dropped: " + ", ".join(f"{k} {v:,}" for k, v in stats["dropped"].items()))
    return 0


if __name__ == "__main__":
    from onereason.cli import run_command

    raise SystemExit(run_command("build-data", main, sys.argv[1:]))
