"""Source loaders: each turns one public log format into the canonical tables.

Every loader is registered by name (the `source:` key of a data YAML) and returns a
`Loaded`: `interactions` and `items` as `pyarrow.Table`s in the canonical schema
(docs/ARCHITECTURE.md, "canonical logs"), the rows it dropped per reason, and, for
sources that ship their own evaluation split (MiniOneRec), the given split rows.

    from data_builders.sources import load_source
    loaded = load_source("lcrec", path="../shared/data/amazon-scientific")

Loaders only read and convert; de-duplication, k-core and the like live in
`data_builders.cleaning` so every source is cleaned the same way.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from data_builders.sources.common import DataError, DropCounter, Loaded
from onereason.errors import UsageError

# name -> "module:function"; modules are imported on first use so a missing optional
# dependency of one loader never breaks another.
_LOADERS: dict[str, str] = {
    "lcrec": "data_builders.sources.lcrec:load_lcrec",
    "minionerec": "data_builders.sources.minionerec:load_minionerec",
    "amazon2018": "data_builders.sources.amazon:load_amazon2018",
    "amazon2023": "data_builders.sources.amazon:load_amazon2023",
    "movielens": "data_builders.sources.movielens:load_movielens",
    "recbole": "data_builders.sources.recbole:load_recbole",
    "tabular": "data_builders.sources.tabular:load_tabular",
    "synthetic": "data_builders.sources.synthetic:load_synthetic",
}


def _resolve(target: str) -> Callable[..., Loaded]:
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


class _LazyRegistry(dict):
    """`SOURCES[name]` -> the loader function, imported when first looked up."""

    def __getitem__(self, name: str) -> Callable[..., Loaded]:
        value = super().__getitem__(name)
        return _resolve(value) if isinstance(value, str) else value

    def get(self, name, default=None):
        return self[name] if name in self else default

    def items(self):
        return [(k, self[k]) for k in self]

    def values(self):
        return [self[k] for k in self]


SOURCES: dict[str, Callable[..., Loaded]] = _LazyRegistry(_LOADERS)


def register_source(name: str) -> Callable[[Callable[..., Loaded]], Callable[..., Loaded]]:
    """Decorator: make a custom loader selectable as `source: <name>` in a data YAML."""

    def register(func: Callable[..., Loaded]) -> Callable[..., Loaded]:
        SOURCES[name] = func
        return func

    return register


def load_source(name: str, /, strict: bool = False, **options) -> Loaded:
    """Load source `name` with its `source_options`; `strict` turns every bad-input drop into an error.

    `name` is positional-only so a loader can take a `name=` option of its own (a file stem).
    """
    if name not in SOURCES:
        raise DataError(f"unknown source {name!r}; known sources: {', '.join(sorted(SOURCES))}")
    loader = SOURCES[name]
    try:
        return loader(strict=strict, **options)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise UsageError(
                f"source_options: {err} (the options of source {name!r} are its loader's arguments)"
            ) from None
        raise


def source_options(name: str) -> list[tuple[str, str, str]]:
    """`(option, default as Python writes it or "required", help)` of every `source_options` key source `name` accepts.

    Read from the code, so `build-data --help` cannot drift from it: the names and defaults
    are the loader's keyword arguments (or the fields of its `options_from` class, for a
    loader that passes `**options` on), the help their lines in its docstring's `Options:`.
    """
    loader = SOURCES[name]
    target = getattr(loader, "options_from", loader)
    doc = inspect.getdoc(target) or ""
    helps = {}
    for line in doc.partition("Options:")[2].splitlines()[1:]:
        if not line.strip():
            break
        option, _, text = line.strip().partition(":")
        helps[option.strip()] = text.strip()
    rows = []
    for p in inspect.signature(target).parameters.values():
        if p.name == "strict" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        rows.append((p.name, "required" if p.default is p.empty else repr(p.default), helps.get(p.name, "")))
    return rows


def sources_help() -> str:
    """Every source with its one-line summary and its `source_options` (`build-data --help`)."""
    lines = [
        "sources (`source: NAME`) and their `source_options` (a YAML mapping, or JSON on the command line):"
    ]
    for name in SOURCES:
        try:
            summary = (inspect.getdoc(SOURCES[name]) or "").split("\n")[0]
            options = source_options(name)
        except ImportError as err:  # one loader's missing dependency leaves the others listed
            lines += ["", f"  {name}: cannot be imported ({err})"]
            continue
        lines += ["", f"  {name}: {summary}"]
        w1, w2 = (max((len(row[i]) for row in options), default=0) for i in (0, 1))
        lines += [f"    {o:<{w1}}  {default:<{w2}}  {help}" for o, default, help in options]
    return "\n".join(lines)


__all__ = [
    "SOURCES",
    "DataError",
    "DropCounter",
    "Loaded",
    "load_source",
    "register_source",
    "source_options",
    "sources_help",
]
