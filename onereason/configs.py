"""Configuration: YAML recipes + `--key value` overrides, parsed by TRL's own parser.

Every command declares dataclasses; `parse_config` turns `--config FILE.yaml --key value`
into instances of them. TrlParser already rejects unknown YAML keys by name and applies
an `env:` block; we only add a check that runs before any model loads.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from trl import TrlParser


def parse_config(
    dataclass_types: Sequence[type], argv: Sequence[str] | None = None, prog: str | None = None
) -> tuple[Any, ...]:
    """Parse `argv` (default `sys.argv[1:]`) into one instance per dataclass type."""
    parser = TrlParser(list(dataclass_types), prog=prog)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return tuple(parser.parse_args_and_config(args=args))
    except ValueError as err:
        # TrlParser says "Unknown arguments from config file: [...]": keep the names, add the file.
        config = _config_path(args)
        raise SystemExit(f"error: {config or 'command line'}: {err}") from err


def _config_path(args: Sequence[str]) -> str | None:
    for i, a in enumerate(args):
        if a == "--config" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


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
