"""Item text normalisation: what Amazon / MovieLens / LC-Rec text fields look like, made plain.

Catalogue text arrives as HTML-escaped strings (`&amp;`, `&#39;`), with stray tags and
runs of whitespace, or as the *string* of a Python list (`"['first line', 'second']"`)
because an upstream script wrote `str(list)` into a CSV/JSON. Prompts and text embeddings
want plain text, so every text field goes through `normalize_text`, and list-valued fields
(categories) through `normalize_list_field`.
"""

from __future__ import annotations

import ast
import html
import re
from typing import Any

_SPACE = re.compile(r"\s+")
# Tags we strip are HTML ones; SID tokens like <a_12> are kept.
_HTML_TAG = re.compile(r"</?(?:[a-zA-Z][a-zA-Z0-9]*)(?:\s[^<>]*)?/?>")
_SID_LIKE = re.compile(r"^<\|?[a-z]+_\d+\|?>$|^<\|[a-z_]+\|>$")


def parse_literal_list(text: str) -> list | None:
    """`"['a', 'b']"` -> `['a', 'b']`; anything that is not a literal list/tuple -> None."""
    stripped = text.strip()
    if len(stripped) < 2 or stripped[0] not in "[(" or stripped[-1] not in "])":
        return None
    try:
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None
    return list(value) if isinstance(value, (list, tuple)) else None


def _flatten(values: Any) -> list[str]:
    out: list[str] = []
    for v in values:
        if isinstance(v, (list, tuple)):
            out.extend(_flatten(v))
        elif v is not None:
            out.append(str(v))
    return out


def _strip_tags(text: str) -> str:
    return _HTML_TAG.sub(lambda m: m.group(0) if _SID_LIKE.match(m.group(0)) else " ", text)


def normalize_text(value: Any) -> str:
    """Plain one-line text: lists joined by spaces, HTML entities decoded, tags removed, whitespace collapsed.

    `None` becomes `""` so the column type stays `string` without nulls.
    """
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(_flatten(value))
    text = str(value)
    literal = parse_literal_list(text)
    if literal is not None:
        text = " ".join(_flatten(literal))
    # Until stable: Amazon text is sometimes escaped twice or more (`&amp;amp;`).
    for _ in range(8):
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    text = _strip_tags(text)
    return _SPACE.sub(" ", text).strip()


def normalize_list_field(value: Any, separator: str | None = ",") -> list[str]:
    """A list-valued field (categories) as `list[str]`, general -> specific, blanks and repeats removed.

    Accepts real lists (nested ones are flattened, as Amazon 2018's `[[...]]`), Python-literal
    list strings, and `separator`-joined strings (LC-Rec's `"A,B,C"`).
    """
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        parts = _flatten(value)
    else:
        text = str(value)
        literal = parse_literal_list(text)
        if literal is not None:
            parts = _flatten(literal)
        elif separator:
            parts = text.split(separator)
        else:
            parts = [text]
    out: list[str] = []
    for part in parts:
        clean = normalize_text(part)
        if clean and clean not in out:
            out.append(clean)
    return out
