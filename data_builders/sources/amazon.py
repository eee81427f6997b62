"""Amazon Reviews 2018 (McAuley lab) and 2023 (Hou et al.): reviews + meta, json lines, gzipped or not.

2018: review `{reviewerID, asin, overall, unixReviewTime}`, meta `{asin, title, description: [..],
brand, category: [..], price: "$12.99", main_cat}`; some meta dumps are Python dict literals.
2023: review `{user_id, parent_asin, asin, rating, timestamp (ms)}`, meta `{parent_asin, title,
description: [..], store, categories: [..], main_category, price, features: [..]}`; items are
keyed by `parent_asin` by default (the product, not its colour/size variant).

Reviews become `event: "rating"` with the star rating as weight; `min_rating` in the data
config keeps the positive ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from data_builders.sources.common import (
    DropCounter,
    Loaded,
    drop_null_keys,
    interactions_table,
    items_from_ids,
    items_table,
    iter_json_lines,
    require_file,
)


def _read_reviews(
    path: Path, drops: DropCounter, fields: tuple[str, str, str, str], ts_divisor: int
) -> pl.DataFrame:
    user_key, item_key, rating_key, ts_key = fields
    users, items, times, ratings = [], [], [], []
    for lineno, record in iter_json_lines(path, drops):
        user, item, ts = record.get(user_key), record.get(item_key), record.get(ts_key)
        if user is None or item is None or not isinstance(ts, (int, float)) or isinstance(ts, bool):
            drops.add(
                "malformed_row", where=f"{path}:{lineno}: needs {user_key}, {item_key} and a numeric {ts_key}"
            )
            continue
        rating = record.get(rating_key)
        users.append(str(user))
        items.append(str(item))
        times.append(int(ts) // ts_divisor)
        ratings.append(float(rating) if isinstance(rating, (int, float)) else None)
    return pl.DataFrame(
        {
            "user_id": users,
            "item_id": items,
            "timestamp": times,
            "event": ["rating"] * len(users),
            "weight": ratings,
        },
        schema={
            "user_id": pl.String,
            "item_id": pl.String,
            "timestamp": pl.Int64,
            "event": pl.String,
            "weight": pl.Float64,
        },
    )


def _read_meta(path: Path, drops: DropCounter, item_key: str, convert: Callable[[dict], dict]) -> list[dict]:
    """Catalogue records; a repeated id (2018 meta has some) keeps the first and is counted."""
    seen: set[str] = set()
    records = []
    for lineno, record in iter_json_lines(path, drops):
        item = record.get(item_key)
        if item is None:
            drops.add("malformed_row", where=f"{path}:{lineno}: no {item_key}")
            continue
        if str(item) in seen:
            drops.add("duplicate_item", where=f"{path}:{lineno}: {item}")
            continue
        seen.add(str(item))
        records.append({"item_id": str(item), **convert(record)})
    return records


def _meta_2018(record: dict) -> dict:
    return {
        "title": record.get("title"),
        "description": record.get("description"),
        "brand": record.get("brand"),
        "categories": record.get("category") or record.get("categories"),
        "price": record.get("price"),
        "main_category": record.get("main_cat"),
    }


def _meta_2023(record: dict) -> dict:
    return {
        "title": record.get("title"),
        "description": record.get("description"),
        "brand": record.get("store") or (record.get("details") or {}).get("Brand"),
        "categories": record.get("categories"),
        "price": record.get("price"),
        "main_category": record.get("main_category"),
        "features": record.get("features"),
    }


def _finish(df: pl.DataFrame, records: list[dict] | None, drops: DropCounter, where: str) -> Loaded:
    df = drop_null_keys(df, drops, where)
    table = interactions_table(df)
    catalogue = items_table(records) if records is not None else items_from_ids(table.column("item_id"))
    return Loaded(table, catalogue, drops.counts, None, {"drop_examples": drops.examples})


def load_amazon2018(reviews: str, meta: str | None = None, strict: bool = False) -> Loaded:
    """Amazon Reviews 2018: reviews and meta as json lines.

    Options:
        reviews: reviews file, e.g. `Industrial_and_Scientific.json.gz`
        meta: meta file, e.g. `meta_Industrial_and_Scientific.json.gz` (default: items with their ids only)
    """
    drops = DropCounter(strict)
    path = require_file(reviews, "Amazon 2018 reviews")
    df = _read_reviews(path, drops, ("reviewerID", "asin", "overall", "unixReviewTime"), 1)
    records = _read_meta(require_file(meta, "Amazon 2018 meta"), drops, "asin", _meta_2018) if meta else None
    return _finish(df, records, drops, str(path))


def load_amazon2023(
    reviews: str, meta: str | None = None, item_key: str = "parent_asin", strict: bool = False
) -> Loaded:
    """Amazon Reviews 2023: reviews and meta as json lines; timestamps in milliseconds become seconds.

    Options:
        reviews: reviews file, e.g. `Industrial_and_Scientific.jsonl.gz`
        meta: meta file, e.g. `meta_Industrial_and_Scientific.jsonl.gz` (default: items with their ids only)
        item_key: review field naming the item: `parent_asin` (the product) or `asin` (its variant)
    """
    drops = DropCounter(strict)
    path = require_file(reviews, "Amazon 2023 reviews")
    df = _read_reviews(path, drops, ("user_id", item_key, "rating", "timestamp"), 1000)
    records = (
        _read_meta(require_file(meta, "Amazon 2023 meta"), drops, "parent_asin", _meta_2023) if meta else None
    )
    return _finish(df, records, drops, str(path))
