"""MovieLens: 100K (`u.data`, `u.item`), 1M (`ratings.dat`, `movies.dat`, `::`), latest (`ratings.csv`, `movies.csv`).

100K and 1M are Latin-1 text (titles like "Misérables"), so they are decoded as such by
default; the latest CSVs are UTF-8. Genres become `categories`, the rating the weight.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from data_builders.sources.common import (
    DataError,
    DropCounter,
    Loaded,
    drop_null_keys,
    interactions_table,
    items_table,
    iter_lines,
    require_file,
)
from data_builders.sources.tabular import read_csv

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def detect_variant(folder: Path) -> str:
    if (folder / "u.data").is_file():
        return "100k"
    if (folder / "ratings.dat").is_file():
        return "1m"
    if (folder / "ratings.csv").is_file():
        return "latest"
    raise DataError(f"{folder}: no MovieLens ratings file (u.data, ratings.dat or ratings.csv)")


def _ratings_from_lines(path: Path, sep: str, encoding: str, drops: DropCounter) -> pl.DataFrame:
    users, items, ratings, times = [], [], [], []
    for lineno, line in iter_lines(path, drops, encoding):
        parts = line.rstrip("\r\n").split(sep)
        try:
            user, item, rating, ts = parts
            rating_value, ts_value = float(rating), int(ts)
        except ValueError:
            drops.add(
                "malformed_row", where=f"{path}:{lineno}: expected user{sep}item{sep}rating{sep}timestamp"
            )
            continue
        users.append(user)
        items.append(item)
        ratings.append(rating_value)
        times.append(ts_value)
    return pl.DataFrame({"user_id": users, "item_id": items, "timestamp": times, "event": ["rating"] * len(users), "weight": ratings},
                        schema={"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64, "event": pl.String, "weight": pl.Float64})  # fmt: skip


def _movies_100k(path: Path, encoding: str, drops: DropCounter) -> list[dict]:
    records = []
    for lineno, line in iter_lines(path, drops, encoding):
        parts = line.rstrip("\r\n").split("|")
        if len(parts) < 5 + len(ML100K_GENRES):
            drops.add(
                "malformed_row",
                where=f"{path}:{lineno}: expected {5 + len(ML100K_GENRES)} |-separated fields",
            )
            continue
        flags = parts[5 : 5 + len(ML100K_GENRES)]
        genres = [g for g, f in zip(ML100K_GENRES, flags) if f == "1"]
        records.append(
            {"item_id": parts[0], "title": parts[1], "categories": genres, "release_date": parts[2]}
        )
    return records


def _movies_1m(path: Path, encoding: str, drops: DropCounter) -> list[dict]:
    records = []
    for lineno, line in iter_lines(path, drops, encoding):
        parts = line.rstrip("\r\n").split("::")
        if len(parts) != 3:
            drops.add("malformed_row", where=f"{path}:{lineno}: expected id::title::genres")
            continue
        records.append(
            {
                "item_id": parts[0],
                "title": parts[1],
                "categories": [g for g in parts[2].split("|") if g and g != "(no genres listed)"],
            }
        )
    return records


def load_movielens(
    path: str, variant: str | None = None, encoding: str | None = None, strict: bool = False
) -> Loaded:
    """MovieLens ratings and movies.

    Options:
        path: folder holding the MovieLens files
        variant: 100k | 1m | latest (default: detected from the files)
        encoding: text encoding (default: latin-1 for 100k and 1m, utf-8 for latest)
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"MovieLens folder not found: {folder}")
    variant = variant or detect_variant(folder)
    drops = DropCounter(strict)
    if variant == "100k":
        enc = encoding or "latin-1"
        df = _ratings_from_lines(require_file(folder / "u.data", "MovieLens 100K ratings"), "\t", enc, drops)
        records = _movies_100k(require_file(folder / "u.item", "MovieLens 100K items"), enc, drops)
    elif variant == "1m":
        enc = encoding or "latin-1"
        df = _ratings_from_lines(
            require_file(folder / "ratings.dat", "MovieLens 1M ratings"), "::", enc, drops
        )
        records = _movies_1m(require_file(folder / "movies.dat", "MovieLens 1M movies"), enc, drops)
    elif variant == "latest":
        enc = encoding or "utf-8"
        ratings = read_csv(
            require_file(folder / "ratings.csv", "MovieLens ratings"),
            drops,
            encoding=enc,
            string_columns=["userId", "movieId"],
        )
        missing = [c for c in ("userId", "movieId", "rating", "timestamp") if c not in ratings.columns]
        if missing:
            raise DataError(f"{folder / 'ratings.csv'}: missing column(s) {missing}")
        df = ratings.select(
            pl.col("userId").alias("user_id"),
            pl.col("movieId").alias("item_id"),
            pl.col("timestamp").cast(pl.Int64, strict=False),
            pl.lit("rating").alias("event"),
            pl.col("rating").cast(pl.Float64, strict=False).alias("weight"),
        )
        movies = read_csv(
            require_file(folder / "movies.csv", "MovieLens movies"),
            drops,
            encoding=enc,
            string_columns=["movieId"],
        )
        records = [
            {
                "item_id": r["movieId"],
                "title": r["title"],
                "categories": [g for g in (r["genres"] or "").split("|") if g and g != "(no genres listed)"],
            }
            for r in movies.iter_rows(named=True)
        ]
    else:
        raise DataError(f"MovieLens variant {variant!r}: choose 100k, 1m or latest")
    df = drop_null_keys(df, drops, str(folder))
    return Loaded(
        interactions_table(df),
        items_table(records),
        drops.counts,
        None,
        {"variant": variant, "drop_examples": drops.examples},
    )
