"""Configuration: YAML recipes + `--key value` overrides, parsed by TRL's own parser.

Every command declares dataclasses; `parse_config` turns `--config FILE.yaml --key value`
into instances of them. TrlParser already rejects unknown YAML keys by name and applies
an `env:` block; we only add a check that runs before any model loads.

Precedence: a value on the command line beats the recipe's, which beats the field's
default. When two settings interact (`compare: true` asks for both thinking modes,
`modes: [no_think]` for one), `prefer` keeps the one stated more explicitly, and two
equally explicit settings that contradict each other are an error naming both
(`ConflictingSettings`), never a silent choice. `stated(config, name)` says how a field
was set, during parsing (for `__post_init__`) and after it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

from trl import TrlParser

from onereason.errors import UsageError

DEFAULT, RECIPE, COMMAND_LINE = 0, 1, 2
_WHERE = {DEFAULT: "by default", RECIPE: "in the recipe", COMMAND_LINE: "on the command line"}
_PARSING: ContextVar[dict[str, int] | None] = ContextVar("onereason_stated", default=None)
_STATED_ATTR = "_onereason_stated"


class ConflictingSettings(UsageError):
    """Two equally explicit settings that contradict each other (the message names both; exit code 2)."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Field defaults in `--help`, and an epilog printed as written (tables of options)."""


def parse_config(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    prog: str | None = None,
    epilog: str | None = None,
) -> tuple[Any, ...]:
    """Parse `argv` (default `sys.argv[1:]`) into one instance per dataclass type.

    `epilog` ends `--help`: what the fields' own help cannot hold (e.g. each source's options).
    """
    parser = TrlParser(list(dataclass_types), prog=prog, epilog=epilog, formatter_class=_HelpFormatter)
    args = list(sys.argv[1:] if argv is None else argv)
    config = flag_value(args, "config")
    levels = _stated_levels(args, config, dataclass_types)
    token = _PARSING.set(levels)
    try:
        parsed = tuple(parser.parse_args_and_config(args=args))
    except ConflictingSettings:
        raise  # already one line naming both settings; the command prints it (exit code 2)
    except ValueError as err:
        # TrlParser says "Unknown arguments from config file: [...]": keep the names, add the file.
        raise SystemExit(f"error: {config or 'command line'}: {err}") from err
    finally:
        _PARSING.reset(token)
    for obj in parsed:
        if dataclasses.is_dataclass(obj):
            names = {f.name for f in dataclasses.fields(obj)}
            object.__setattr__(obj, _STATED_ATTR, {k: v for k, v in levels.items() if k in names})
    return parsed


def stated(config: Any, name: str) -> int:
    """How `config.name` was set: `COMMAND_LINE`, `RECIPE` or `DEFAULT`.

    Outside `parse_config` (a config built in Python) a value that differs from the field's
    default counts as stated in the recipe.
    """
    recorded = getattr(config, _STATED_ATTR, None)
    if recorded is None:
        recorded = _PARSING.get()
    if recorded is not None:
        return recorded.get(name, DEFAULT)
    field = {f.name: f for f in dataclasses.fields(config)}[name]
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        return RECIPE
    return RECIPE if getattr(config, name) != default else DEFAULT


def prefer(first: tuple[Any, str], second: tuple[Any, str], clash: str) -> str:
    """The name of whichever of two contradicting settings was stated more explicitly.

    `first` and `second` are `(config, field name)`; `clash` shows both as a user would
    write them (`--compare true --modes no_think`). Equally explicit: `ConflictingSettings`.
    """
    (a_cfg, a), (b_cfg, b) = first, second
    la, lb = stated(a_cfg, a), stated(b_cfg, b)
    if la == lb:
        raise ConflictingSettings(
            f"contradictory settings {clash} (both {_WHERE[la]}): state only one of them"
        )
    return a if la > lb else b


def _stated_levels(
    args: Sequence[str], config: str | None, dataclass_types: Sequence[type]
) -> dict[str, int]:
    """Field name → RECIPE for the recipe's keys, COMMAND_LINE for the flags in `args`."""
    names: set[str] = set()
    bools: set[str] = set()
    for dtype in dataclass_types:
        for f in dataclasses.fields(dtype):
            names.add(f.name)
            if f.type in (bool, "bool") or f.type in ("bool | None", "Optional[bool]"):
                bools.add(f.name)
    levels: dict[str, int] = {}
    if config is not None:
        try:
            levels.update((str(k), RECIPE) for k in read_yaml(config) if k != "env")
        except SystemExit:
            pass  # TrlParser reports the unreadable file itself
    for arg in args:
        if not arg.startswith("--") or arg.startswith("--config"):
            continue
        name = arg[2:].split("=", 1)[0].replace("-", "_")
        if name not in names and name.startswith("no_") and name[3:] in bools:
            name = name[3:]  # `--no_key` sets a boolean field to False
        levels[name] = COMMAND_LINE
    return levels


def flag_value(args: Sequence[str], name: str) -> str | None:
    """The value of `--name X` or `--name=X` in a command line (the last one given), else None."""
    value = None
    for i, a in enumerate(args):
        if a == f"--{name}" and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
    return value


def read_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError as err:
        raise SystemExit(f"error: config file not found: {path}") from err
    if not isinstance(data, dict):
        raise SystemExit(f"error: {path}: a config must be a YAML mapping, got {type(data).__name__}")
    return data
