"""One compact, read-only view of every item that the task builders need.

Every builder (history rendering, perception tasks, chain-of-thought traces) asks the same
questions of an item: its title, its category path, its named attributes, its SID text and
its Term IDs. `ItemCatalog` answers them from arrays indexed by an integer item position,
so the per-example loops never touch Arrow or pandas.

Attributes are (name, value) pairs in a fixed order, general -> specific:
category levels (named after the item table's own columns when one repeats a level, e.g.
`department`, `subcategory`), then `brand`, then free low-cardinality string columns
(`style`, `price_band`, ...). A numeric `price` without a `price_band` column becomes a
catalogue-tertile band (budget / mid-range / premium) so traces can speak about price.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

DEFAULT_LEVEL_NAMES = ("department", "category", "subcategory", "type")
STANDARD_COLUMNS = {"item_id", "title", "description", "brand", "categories", "price"}
# A free string column counts as an attribute when it has at most this many distinct values
# relative to the catalogue (ids, model numbers and long texts are not attributes).
MAX_ATTRIBUTE_DISTINCT_SHARE = 0.2
_FIELD_SPEC = re.compile(r"^categories\[(-?\d+)\]$")


@dataclass
class ItemCatalog:
    """Per-item text, attributes and identifiers, addressed by position (0..n-1)."""

    item_ids: list[str]
    titles: list[str]
    descriptions: list[str]
    categories: list[list[str]]
    attributes: list[dict[str, str]]  # name -> value, in `attribute_names` order
    attribute_names: list[str]
    sid_texts: list[str | None]  # None: item missing from the item index
    sid_tokens: list[tuple[str, ...]]  # the itemic tokens of the SID, no begin/end markers
    terms: list[list[str] | None]
    position: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if not self.position:
            self.position = {item: i for i, item in enumerate(self.item_ids)}

    def __len__(self) -> int:
        return len(self.item_ids)

    def indexed(self, i: int) -> bool:
        return self.sid_texts[i] is not None

    def value(self, i: int, name: str) -> str:
        """Attribute `name` of item i ('' when absent). `categories[k]` addresses a level directly."""
        m = _FIELD_SPEC.match(name)
        if m:
            cats = self.categories[i]
            k = int(m.group(1))
            return cats[k] if -len(cats) <= k < len(cats) else ""
        return self.attributes[i].get(name, "")

    def category_path(self, i: int, skip_root: bool = True) -> str:
        cats = self.categories[i]
        if skip_root and len(cats) > 1:
            cats = cats[1:]
        return " > ".join(cats)

    def sid_prefix(self, i: int, length: int) -> str:
        return "".join(self.sid_tokens[i][:length])


def _string_column(table: pa.Table, name: str) -> list[str]:
    if name not in table.column_names:
        return [""] * table.num_rows
    return ["" if v is None else str(v).strip() for v in table.column(name).to_pylist()]


def _price_bands(prices: list) -> list[str]:
    values = np.array([np.nan if p is None else float(p) for p in prices], dtype=float)
    known = values[np.isfinite(values) & (values > 0)]
    if len(known) < 3:
        return [""] * len(values)
    lo, hi = np.quantile(known, [1 / 3, 2 / 3])
    out = []
    for v in values:
        if not np.isfinite(v) or v <= 0:
            out.append("")
        else:
            out.append("budget" if v <= lo else "mid-range" if v <= hi else "premium")
    return out


def _level_names(table: pa.Table, categories: list[list[str]]) -> list[str]:
    """Name each category level after an item column that holds the same values, else a default."""
    depth = max((len(c) for c in categories), default=0)
    names = [
        DEFAULT_LEVEL_NAMES[min(k, len(DEFAULT_LEVEL_NAMES) - 1)] + ("" if k < 4 else f" {k - 3}")
        for k in range(depth)
    ]
    for col in table.column_names:
        if col in STANDARD_COLUMNS or not pa.types.is_string(table.schema.field(col).type):
            continue
        values = _string_column(table, col)
        for k in range(depth):
            if all((c[k] if len(c) > k else "") == v for c, v in zip(categories, values)):
                names[k] = col
    return names


def build_catalog(items: pa.Table, index=None) -> ItemCatalog:
    """Catalogue from canonical `items` (ARCHITECTURE.md) and an optional `ItemIndex`."""
    if "item_id" not in items.column_names:
        raise ValueError("items table has no item_id column")
    item_ids = _string_column(items, "item_id")
    titles = _string_column(items, "title")
    descriptions = _string_column(items, "description")
    if "categories" in items.column_names:
        categories = [
            [str(c).strip() for c in (v or []) if c and str(c).strip()]
            for v in items.column("categories").to_pylist()
        ]
    else:
        categories = [[] for _ in item_ids]
    level_names = _level_names(items, categories)
    columns: dict[str, list[str]] = {}
    brands = _string_column(items, "brand")
    if any(brands):
        columns["brand"] = brands
    n = len(item_ids)
    for col in items.column_names:
        if (
            col in STANDARD_COLUMNS
            or col in level_names
            or not pa.types.is_string(items.schema.field(col).type)
        ):
            continue
        values = _string_column(items, col)
        distinct = len(set(values) - {""})
        if 1 < distinct <= max(2, MAX_ATTRIBUTE_DISTINCT_SHARE * n):
            columns[col] = values
    if "price_band" not in columns and "price" in items.column_names:
        bands = _price_bands(items.column("price").to_pylist())
        if any(bands):
            columns["price_band"] = bands
    names = list(level_names) + list(columns)
    attributes = []
    for i in range(n):
        attrs = {level_names[k]: c for k, c in enumerate(categories[i])}
        attrs.update({name: values[i] for name, values in columns.items() if values[i]})
        attributes.append(attrs)
    sid_texts: list[str | None] = [None] * n
    sid_tokens: list[tuple[str, ...]] = [()] * n
    terms: list[list[str] | None] = [None] * n
    if index is not None:
        for i, item in enumerate(item_ids):
            if item in index:
                text = index.sid_text(item)
                sid_texts[i] = text
                sid_tokens[i] = index.sid_format.level_tokens(index.sid(item))
                t = index.terms(item)
                terms[i] = list(t) if t else None
    return ItemCatalog(
        item_ids, titles, descriptions, categories, attributes, names, sid_texts, sid_tokens, terms
    )
