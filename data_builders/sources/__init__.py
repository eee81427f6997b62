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


__all__ = ["SOURCES", "DataError", "DropCounter", "Loaded", "load_source", "register_source"]
