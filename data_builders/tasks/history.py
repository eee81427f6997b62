"""Render a user's history as the list a prompt shows.

One renderer for every recommendation task and both modes, so a thinking and a non-thinking
prompt for the same example carry byte-identical history text, and a trace's `#n` citations
point at the n-th item shown here.

    1. <|sid_begin|><s_a_3><s_b_1><s_c_7><|sid_end|> Aurix Minimalist Beaker AU-123, Black
    2. ...

`numbered: false` drops the numbers; a history of bare SIDs (`item_text: none`) is then
written back to back, five tokens an item instead of nine, the way a sequence model reads it:

    <|sid_begin|><s_a_3><s_b_1><s_c_7><|sid_end|><|sid_begin|><s_a_9><s_b_0><s_c_2><|sid_end|>…

`countdown: true` numbers the items by how long ago they were (1 = the latest), so the number
next to an item is its distance from the next one: a short trace states when an interest was
last seen and how often it recurs in those numbers, by copying them, not by counting.

`identifier` is the SID (or the Term ID for Term-ID tasks); `item_text` adds the title
(`title`), the Term ID (`terms`) or nothing (`none`). Items with an empty title fall back
to their description, then their most specific category, so no line is blank.
"""

from __future__ import annotations

from dataclasses import dataclass

from data_builders.tasks.catalog import ItemCatalog

ITEM_TEXTS = ("none", "title", "terms")
IDENTIFIERS = ("sid", "term")


@dataclass(frozen=True)
class HistoryStyle:
    identifier: str = "sid"
    item_text: str = "title"
    max_items: int = 20
    title_max_chars: int = 80
    numbered: bool = True
    countdown: bool = False

    def __post_init__(self):
        if self.identifier not in IDENTIFIERS:
            raise ValueError(f"history identifier must be one of {IDENTIFIERS}, got {self.identifier!r}")
        if self.item_text not in ITEM_TEXTS:
            raise ValueError(f"history item_text must be one of {ITEM_TEXTS}, got {self.item_text!r}")
        if self.max_items < 1:
            raise ValueError(f"history max_items must be >= 1, got {self.max_items}")
        if self.countdown and not self.numbered:
            raise ValueError("history countdown numbering needs a numbered history")


def render_terms(terms: list[str] | None) -> str:
    """A Term ID as text: its terms in slot order, comma-separated (terms never contain commas)."""
    return ", ".join(terms or [])


def clip(text: str, limit: int) -> str:
    if limit <= 0 or len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return (cut or text[:limit]).rstrip(" ,;:-") + "…"


def item_text(catalog: ItemCatalog, i: int, limit: int = 80) -> str:
    """The best short text of item i: title, else description, else its category, else ''."""
    for text in (catalog.titles[i], catalog.descriptions[i], (catalog.categories[i] or [""])[-1]):
        if text:
            return clip(text, limit)
    return ""


def item_line(catalog: ItemCatalog, i: int, style: HistoryStyle) -> str:
    if style.identifier == "sid":
        ident = catalog.sid_texts[i] or ""
    else:
        ident = f"[{render_terms(catalog.terms[i])}]"
    if style.item_text == "title":
        extra = item_text(catalog, i, style.title_max_chars)
    elif style.item_text == "terms" and style.identifier != "term":
        extra = f"[{render_terms(catalog.terms[i])}]" if catalog.terms[i] else ""
    else:
        extra = ""
    return f"{ident} {extra}".strip()


class HistoryRenderer:
    """`render_history` for one catalogue and style, each item's line made once.

    A million-row build shows the same few thousand items in millions of histories.
    """

    def __init__(self, catalog: ItemCatalog, style: HistoryStyle):
        self.catalog = catalog
        self.style = style
        self._lines: dict[int, str] = {}

    def line(self, i: int) -> str:
        text = self._lines.get(i)
        if text is None:
            text = self._lines[i] = item_line(self.catalog, i, self.style)
        return text

    def __call__(self, items: list[int]) -> str:
        if self.style.numbered:
            numbers = range(len(items), 0, -1) if self.style.countdown else range(1, len(items) + 1)
            return "\n".join(f"{n}. {self.line(i)}" for n, i in zip(numbers, items))
        bare_sids = self.style.identifier == "sid" and self.style.item_text == "none"
        return ("" if bare_sids else "\n").join(self.line(i) for i in items)


def render_history(catalog: ItemCatalog, items: list[int], style: HistoryStyle) -> str:
    """The history, oldest first; `items` must already be capped to `style.max_items`."""
    return HistoryRenderer(catalog, style)(items)
