"""Atomic writes and owned output folders.

A crash never leaves a half-written file where a finished one is expected, and an output
folder is replaced only when onereason wrote it (it carries `MARKER`) or it is empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from onereason.errors import UsageError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------
# Output folders the tool owns
# ---------------------------------------------------------------------------------------------

# Written into every output folder the tool creates. A folder that carries it (or is empty)
# may be replaced by the next run; any other folder is the user's and is never replaced
# unless they pass --overwrite. The content is fixed so re-runs stay byte-identical.
MARKER = ".onereason-output"
MARKER_TEXT = "This folder was written by onereason; onereason may replace it as a whole.\n"

# Folders the user allowed us to replace (`--overwrite`), recorded by `check_output_dir`
# so `atomic_dir`, called later by the command, honours the same decision.
_PERMITTED: set[Path] = set()


class OutputDirError(UsageError):
    """An output folder the tool must not write (exit code 2: the command line asked for it)."""


def is_owned(path: str | Path) -> bool:
    """True when `path` is a folder written by onereason (it carries the marker)."""
    return (Path(path) / MARKER).is_file()


def mark_owned(path: str | Path) -> None:
    atomic_write_text(Path(path) / MARKER, MARKER_TEXT)


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _resolved(path: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path)))).resolve()


def _within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_dir(
    path: str | Path,
    inputs: Iterable[str | Path | None] = (),
    overwrite: bool = False,
    what: str = "out_dir",
    replaces: bool = True,
) -> Path:
    """Refuse an output folder that would eat a user's files; cheap, so commands call it first.

    - an existing file, a path under a file, or an unwritable parent is refused;
    - `path` equal to or inside an input is refused (always, even with `overwrite`); when
      the command replaces the folder as a whole (`replaces`), so is an input inside `path`,
      and so are the current folder and its parents;
    - an existing non-empty folder without the marker is refused unless `overwrite`.
    Raises `OutputDirError` (a one-line message naming the path and what to do).
    """
    target = _resolved(path)
    shown = str(path)
    for item in inputs:
        if not item:
            continue
        source = _resolved(item)
        if _within(target, source):
            where = "is" if target == source else "is inside"
            raise OutputDirError(
                f"{what} {shown} {where} the input {item}; writing there would destroy the input. "
                f"Choose another {what}"
            )
        if replaces and _within(source, target):
            raise OutputDirError(
                f"{what} {shown} holds the input {item}; replacing it would destroy the input. "
                f"Choose another {what}"
            )
    if replaces and _within(_resolved(os.getcwd()), target):
        raise OutputDirError(
            f"{what} {shown} is the current folder or holds it; choose a new folder such as {what}/run1"
        )
    if target.exists() and not target.is_dir():
        raise OutputDirError(
            f"{what} {shown} is an existing file, not a folder; choose another {what} (the file is left as is)"
        )
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputDirError(f"{what} {shown}: {ancestor} is a file, so no folder can be made under it")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputDirError(f"{what} {shown}: cannot write in {ancestor} (permission denied)")
    if target.is_dir() and not is_owned(target) and not _is_empty_dir(target):
        if not overwrite:
            raise OutputDirError(
                f"{what} {shown} already exists and was not written by onereason (no {MARKER} file); "
                f"choose a new folder, or pass --overwrite to {'replace' if replaces else 'write into'} it"
            )
        _PERMITTED.add(target)
    return Path(path)


def make_output_dir(path: str | Path, **check) -> Path:
    """`check_output_dir`, then create the folder (if needed) and mark it as ours."""
    check_output_dir(path, **check)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not is_owned(path):
        mark_owned(path)
    return path


def _replaceable(path: Path) -> bool:
    return not path.exists() or is_owned(path) or _is_empty_dir(path) or _resolved(path) in _PERMITTED


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path` in one rename.

    Used for outputs made of several files (a dataset saved with `save_to_disk`, a split
    folder) so readers never see a mix of old and new files. The new folder carries the
    marker; an existing `path` is replaced only when it carries the marker, is empty, or
    the user passed --overwrite for it (`check_output_dir`); a file is never moved aside.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{path} is an existing file, not a folder; choose another output folder")
    if not _replaceable(path):
        raise OutputDirError(
            f"{path} already exists and was not written by onereason (no {MARKER} file); "
            "choose a new folder, or pass --overwrite to replace it"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        mark_owned(tmp)
        if path.exists():
            if not _replaceable(path):  # something else wrote there while we worked
                raise OutputDirError(f"{path} changed while this command ran; its new content is left as is")
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
