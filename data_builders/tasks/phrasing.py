"""Phrasings as data: the YAML files in `templates/`, loaded once, picked deterministically.

Keeping wording out of the code lets a user add or translate phrasings without touching a
builder, and lets a test check every template renders. A pick is a hash of (seed, key), so
the same build config gives the same dataset bytes, and the thinking and non-thinking copies
of one example share their wording (their only difference is the switch).
"""

from __future__ import annotations

import functools
import zlib
from pathlib import Path

import yaml

TEMPLATE_DIR = Path(__file__).with_name("templates")


@functools.cache
def load_templates(name: str) -> dict:
    """The mapping in `templates/<name>.yaml`."""
    path = TEMPLATE_DIR / f"{name}.yaml"
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a template file must be a YAML mapping")
    return data


def stable_hash(*parts) -> int:
    return zlib.crc32("\x1f".join(map(str, parts)).encode("utf-8"))


def pick(options: list[str] | str, *key) -> str:
    """One of `options`, chosen by a stable hash of `key` (a plain string is its only option)."""
    if isinstance(options, str):
        return options
    if not options:
        raise ValueError("empty list of phrasings")
    return options[stable_hash(*key) % len(options)]
