"""The errors a command expects, and how each becomes one line and an exit code.

Every `onereason` command ends an expected failure the same way (`onereason.cli`): one
line on stderr, `error: <command>: <what, naming the file/row/key> <what to do>`, exit
code 2 when the command line or config asked for something impossible and 1 when a
file, row or model is bad. `--debug` shows the traceback instead.

Raise `UsageError` / `InputError` (or any exception with an `exit_code` attribute) where
the message is written; plain `ValueError`, `KeyError`, `OSError`, YAML, JSON, Arrow and
Polars errors raised by the libraries are expected too (exit code 1).
"""

from __future__ import annotations

import json
import re

USAGE = 2
INPUT = 1


class UsageError(ValueError):
    """The command line or config asks for something impossible (exit code 2)."""

    exit_code = USAGE


class InputError(ValueError):
    """A file, row, index or model folder is bad or does not match the others (exit code 1)."""

    exit_code = INPUT


def _expected_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ValueError, KeyError, OSError, UnicodeError, json.JSONDecodeError]
    try:
        import yaml

        types.append(yaml.YAMLError)
    except ImportError:  # pragma: no cover
        pass
    try:
        import pyarrow as pa

        types.append(pa.ArrowException)
    except ImportError:  # pragma: no cover
        pass
    try:
        import polars as pl

        types.append(pl.exceptions.PolarsError)
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    return tuple(types)


def one_line(text: str, limit: int = 600) -> str:
    """Collapse a (possibly multi-line) message to one line of at most `limit` characters."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    line = re.sub(r"\s+", " ", "; ".join(parts))
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    if isinstance(err, KeyError) and len(err.args) == 1:
        return str(err.args[0])
    text = str(err)
    try:
        import yaml

        if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
            mark = err.problem_mark
            return f"{mark.name}: YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {err.problem}"
    except ImportError:  # pragma: no cover
        pass
    return text or type(err).__name__


def describe(err: BaseException, command: str) -> tuple[int, str, bool]:
    """(exit code, one line for stderr, expected?) for an exception that ended `command`."""
    prefix = f"error: {command}: " if command else "error: "
    message = one_line(_message(err))
    for lead in ("error: ", f"{command}: "):
        if command and message.startswith(lead):
            message = message[len(lead) :]
    code = getattr(err, "exit_code", None)
    if isinstance(code, int):
        return code, prefix + message, True
    if isinstance(err, _expected_types()):
        return INPUT, prefix + message, True
    return (
        INPUT,
        f"{prefix}unexpected {type(err).__name__}: {message} "
        "(rerun with --debug for the traceback, and please report it)",
        False,
    )
