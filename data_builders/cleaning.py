"""Cleaning steps over canonical interactions: each step returns the kept rows and how many it dropped.

Steps work on a `polars.DataFrame` (fast on millions of rows, no Python loop per user) and
are pure functions, so `clean()` is just their composition and each can be tested alone.
Order matters and is fixed:

1. `order_events`     sort by (user, timestamp, original row order): ties keep file order.
2. `filter_events`    keep chosen event types / ratings (e.g. purchases, rating >= 4).
3. `drop_unknown_items` interactions whose item is not in the catalogue.
4. `deduplicate`      exact repeats, repeated (user, item) pairs, or consecutive repeats.
5. `kcore_filter`     users and items with fewer than k interactions, iterated to a fixed point.
6. `min_history_filter` users with too short a sequence to make an example.
7. `prune_items`      catalogue items nobody interacts with any more.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from data_builders.sources.common import DataError, DropCounter

ORDER = "_order"  # original row position, the stable tie-breaker for equal timestamps
DEDUP_MODES = ("none", "exact", "user_item", "consecutive")


@dataclass
class CleaningOptions:
    dedup: str = "exact"
    kcore: int = 0
    kcore_items: int | None = None  # None: same as kcore
    min_history: int = 0
    min_rating: float | None = None
    events: list[str] | None = None
    drop_unknown_items: bool = True
    keep_unused_items: bool = False


def to_frame(interactions: pa.Table | pl.DataFrame) -> pl.DataFrame:
    df = interactions if isinstance(interactions, pl.DataFrame) else pl.from_arrow(interactions)
    if ORDER not in df.columns:
        df = df.with_row_index(ORDER)
    return df


def order_events(df: pl.DataFrame) -> pl.DataFrame:
    """Sort by (user_id, timestamp, original order): equal timestamps keep their input order."""
    return to_frame(df).sort(["user_id", "timestamp", ORDER], maintain_order=True)


def filter_events(
    df: pl.DataFrame, events: Iterable[str] | None = None, min_rating: float | None = None
) -> tuple[pl.DataFrame, int]:
    """Keep rows whose `event` is in `events` and whose `weight` (the rating) is >= `min_rating`."""
    keep = pl.lit(True)
    if events:
        keep = keep & pl.col("event").is_in(list(events))
    if min_rating is not None:
        keep = keep & (pl.col("weight") >= min_rating)
    kept = df.filter(keep)
    return kept, df.height - kept.height


def drop_unknown_items(
    df: pl.DataFrame, item_ids: pa.Array | pa.ChunkedArray | Iterable[str]
) -> tuple[pl.DataFrame, int, list[str]]:
    """Drop interactions whose item is not in the catalogue; also return a few of the unknown ids."""
    known = pl.Series(
        "item_id",
        item_ids if not isinstance(item_ids, (pa.Array, pa.ChunkedArray)) else item_ids.to_pylist(),
        dtype=pl.String,
    )
    mask = pl.col("item_id").is_in(known.implode())
    kept = df.filter(mask)
    examples = (
        df.filter(~mask)["item_id"].unique(maintain_order=True).head(5).to_list()
        if kept.height < df.height
        else []
    )
    return kept, df.height - kept.height, examples


def deduplicate(df: pl.DataFrame, mode: str = "exact") -> tuple[pl.DataFrame, int]:
    """Remove repeats; the first occurrence (in time order) is kept.

    - `exact`: same user, item, timestamp and event (a logging duplicate).
    - `user_item`: any later interaction with an item the user already had (sets, not sequences).
    - `consecutive`: an item repeated immediately after itself in the user's sequence.
    Expects `order_events` first.
    """
    if mode not in DEDUP_MODES:
        raise DataError(f"dedup: unknown mode {mode!r}; choose from {DEDUP_MODES}")
    if mode == "none":
        return df, 0
    if mode == "exact":
        kept = df.unique(
            subset=["user_id", "item_id", "timestamp", "event"], keep="first", maintain_order=True
        )
    elif mode == "user_item":
        kept = df.unique(subset=["user_id", "item_id"], keep="first", maintain_order=True)
    else:
        repeat = (pl.col("user_id") == pl.col("user_id").shift(1)) & (
            pl.col("item_id") == pl.col("item_id").shift(1)
        )
        kept = df.filter(~repeat.fill_null(False))
    return kept, df.height - kept.height


def kcore_filter(df: pl.DataFrame, user_k: int, item_k: int | None = None) -> tuple[pl.DataFrame, int, int]:
    """Keep users with >= user_k and items with >= item_k interactions, repeated until nothing changes.

    Removing a user can push an item under its threshold and vice versa, hence the loop; it
    ends because every pass either removes rows or stops. Returns (rows, dropped, passes).
    """
    item_k = user_k if item_k is None else item_k
    if user_k <= 1 and item_k <= 1:
        return df, 0, 0
    start, passes = df.height, 0
    while True:
        passes += 1
        kept = df.filter((pl.len().over("user_id") >= user_k) & (pl.len().over("item_id") >= item_k))
        if kept.height == df.height:
            return kept, start - kept.height, passes
        df = kept


def min_history_filter(df: pl.DataFrame, min_len: int) -> tuple[pl.DataFrame, int]:
    """Drop users with fewer than `min_len` interactions (they cannot make the examples asked for)."""
    if min_len <= 1:
        return df, 0
    kept = df.filter(pl.len().over("user_id") >= min_len)
    return kept, df.height - kept.height


def prune_items(items: pa.Table, df: pl.DataFrame) -> tuple[pa.Table, int]:
    """Keep catalogue items that still have at least one interaction."""
    used = df["item_id"].unique().to_arrow()
    mask = pc.is_in(items.column("item_id"), value_set=used)
    kept = items.filter(mask)
    return kept, items.num_rows - kept.num_rows


def counts(df: pl.DataFrame) -> dict[str, int]:
    """Users, items and interactions of a frame (for the before/after record of each filter)."""
    return {
        "users": int(df["user_id"].n_unique()) if df.height else 0,
        "items": int(df["item_id"].n_unique()) if df.height else 0,
        "interactions": int(df.height),
    }


def clean(
    interactions: pa.Table | pl.DataFrame,
    items: pa.Table,
    options: CleaningOptions,
    drops: DropCounter,
    trace: list[dict] | None = None,
) -> tuple[pl.DataFrame, pa.Table, dict[str, int]]:
    """All steps in order; drops are added to `drops` (interaction rows) and returned for items.

    Raises `DataError` naming the step when nothing is left, since an empty split folder
    would only fail later and further from the cause. `trace`, when given, receives one
    record per step: `{"step", "setting", "before": counts, "after": counts}` (users,
    items and interactions), the first being the loaded source itself.
    """
    df = order_events(interactions)
    if df.height == 0:
        raise DataError("the source produced no interactions")
    last = counts(df)
    if trace is not None:
        trace.append({"step": "loaded", "setting": "", "before": last, "after": last})

    def check(step: str, setting: str) -> None:
        nonlocal last
        if trace is not None:
            now = counts(df)
            trace.append({"step": step, "setting": setting, "before": last, "after": now})
            last = now
        if df.height == 0:
            raise DataError(f"no interactions left after {step} ({setting}); loosen it in the data config")

    df, n = filter_events(df, options.events, options.min_rating)
    drops.add("event_filter", n)
    check("the event filter", f"events={options.events}, min_rating={options.min_rating}")

    if options.drop_unknown_items:
        df, n, examples = drop_unknown_items(df, items.column("item_id"))
        drops.add(
            "unknown_item",
            n,
            where=f"interactions name {n} item(s) absent from the catalogue, e.g. {examples}",
        )
        check("dropping unknown items", "drop_unknown_items=true")

    df, n = deduplicate(df, options.dedup)
    drops.add("duplicate", n)
    check("de-duplication", f"dedup={options.dedup}")

    df, n, _ = kcore_filter(df, options.kcore, options.kcore_items)
    drops.add("kcore", n)
    check("k-core filtering", f"kcore={options.kcore}, kcore_items={options.kcore_items}")

    df, n = min_history_filter(df, options.min_history)
    drops.add("min_history", n)
    check("the minimum history filter", f"min_history={options.min_history}")

    item_drops: dict[str, int] = {}
    if not options.keep_unused_items:
        before = items.num_rows
        items, n = prune_items(items, df)
        if n:
            item_drops["item_without_interactions"] = n
        if trace is not None:
            trace.append(
                {
                    "step": "pruning unused catalogue items",
                    "setting": "keep_unused_items=false",
                    "before": {"catalogue_items": before},
                    "after": {"catalogue_items": items.num_rows},
                }
            )
    return df, items, item_drops
