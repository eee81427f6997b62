"""Cheap checks that run before anything expensive: paths, model folders, indexes, data vs index.

Commands call these first (configs, paths, published indexes, vocabulary vs index), so a
mismatch fails in a second with one line naming the file and what to do, not after
minutes of encoding, loading or training. The index/data rules:

- an item index used for training or evaluation must give every item its own SID
  (colliding SIDs make the answer ambiguous);
- at most `max_unknown_share` (default 1%) of the users or items a command reads may be
  unknown to the index; more means the index belongs to other data.

`allow_unknown` proceeds anyway; the counts are then printed (and logged).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from onereason.errors import InputError, UsageError

if TYPE_CHECKING:
    from onereason.item_index import ItemIndex

logger = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclass
class SafetyArguments:
    """Output-folder and index-consistency switches shared by the commands."""

    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Write into (or replace) an output folder onereason did not create. An output folder "
            "equal to or inside an input is refused even so."
        },
    )
    allow_unknown: bool = field(
        default=False,
        metadata={
            "help": "Proceed when more than max_unknown_share of users/items are unknown to the item index, "
            "or when SIDs collide in it; the counts are printed."
        },
    )
    max_unknown_share: float = field(
        default=0.01,
        metadata={"help": "Largest share of users or items unknown to the item index accepted silently."},
    )

    def __post_init__(self):
        if not 0 <= self.max_unknown_share <= 1:
            raise ValueError(f"max_unknown_share must be between 0 and 1, got {self.max_unknown_share}")


def note(message: str) -> None:
    """A notice the user must see even without logging configured (counts under allow_unknown)."""
    logger.warning(message)
    print(f"warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------


def require_path(path: str | Path | None, what: str, kind: str = "any", hint: str = "") -> Path:
    """`path` must exist (and be a file / folder when `kind` says so); InputError otherwise."""
    if not path:
        raise UsageError(f"{what} is not set{'; ' + hint if hint else ''}")
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{what} {path} does not exist{'; ' + hint if hint else ''}")
    if kind == "file" and not p.is_file():
        raise InputError(f"{what} {path} is a folder, expected a file{'; ' + hint if hint else ''}")
    if kind == "dir" and not p.is_dir():
        raise InputError(f"{what} {path} is a file, expected a folder{'; ' + hint if hint else ''}")
    return p


def is_local_model(name_or_path: str) -> bool:
    """True when `name_or_path` means a folder on disk rather than a Hub id."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        return True
    if name_or_path.startswith((".", "/", "~")) or os.sep + os.sep in name_or_path:
        return True
    if not HUB_ID.match(name_or_path):
        return True
    # `org/name` that is not on disk: a Hub id unless the Hub is off.
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def check_model_path(
    name_or_path: str | None, what: str = "model_name_or_path", tokenizer: bool = True
) -> None:
    """A local model folder must hold config.json and (when `tokenizer`) tokenizer files.

    Hub ids (`Qwen/Qwen3-1.7B`) pass; the Hub reports its own errors when they are fetched.
    """
    if not name_or_path:
        raise UsageError(f"{what} is not set (a Hub id such as Qwen/Qwen3-1.7B or a local model folder)")
    name_or_path = str(name_or_path)
    if not is_local_model(name_or_path):
        return
    p = Path(name_or_path).expanduser()
    if not p.exists():
        raise InputError(
            f"{what} {name_or_path} does not exist (neither a folder here nor a reachable Hub id); "
            "check the path, or train/build the model first"
        )
    if not p.is_dir():
        raise InputError(f"{what} {name_or_path} is a file; give the model folder")
    if not (p / "config.json").is_file():
        raise InputError(f"{what} {name_or_path} is not a model folder (no config.json)")
    if tokenizer and not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise InputError(
            f"{what} {name_or_path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer beside the model"
        )


def check_dataset_dict(
    path: str | Path | None, what: str = "dataset_path", splits: Iterable[str] = ()
) -> Path:
    """A `onereason build-tasks` output folder (DatasetDict saved with save_to_disk)."""
    hint = "build it with `onereason build-tasks`"
    p = require_path(path, what, "dir", hint)
    manifest = p / "dataset_dict.json"
    if not manifest.is_file():
        if (p / "splits").is_dir() or (p / "interactions.parquet").is_file():
            raise InputError(
                f"{what} {path} is a `onereason build-data` folder, not a task dataset; "
                "run `onereason build-tasks` on it and pass that output"
            )
        raise InputError(f"{what} {path} is not a task dataset (no dataset_dict.json); {hint}")
    import json

    try:
        names = json.loads(manifest.read_text(encoding="utf-8")).get("splits", [])
    except (ValueError, AttributeError) as err:
        raise InputError(f"{manifest}: not a valid dataset_dict.json ({err})") from None
    for split in splits:
        if split not in names:
            raise InputError(f"{what} {path} has no {split!r} split; it has {names}")
        if not (p / split / "dataset_info.json").is_file() and not (p / split / "state.json").is_file():
            raise InputError(f"{what} {path}: split folder {split}/ is missing or incomplete; rebuild it")
    return p


# ---------------------------------------------------------------------------------------------
# Index, vocabulary and data
# ---------------------------------------------------------------------------------------------


def load_index(path: str | Path | None, what: str = "item_index") -> ItemIndex:
    """Load an item index (onereason JSON, or a published LC-Rec/MiniOneRec `.index.json`)."""
    from onereason.item_index import ItemIndex

    p = require_path(path, what, "file", "build it with `onereason build-ids`")
    try:
        if p.name.endswith(".index.json"):
            return ItemIndex.from_published_json(p)
        return ItemIndex.load(p)
    except (AttributeError, TypeError, KeyError) as err:  # valid JSON of another shape
        raise InputError(
            f"{what} {path} is not an onereason item index ({type(err).__name__}: {err})"
        ) from None


def check_collisions(index: ItemIndex, where: str, allow: bool = False) -> None:
    """Refuse an index in which items share SIDs (unless `allow`: then print the count)."""
    shared = index.collisions()
    if not shared:
        return
    items = sum(len(v) for v in shared.values())
    sid, example = next(iter(shared.items()))
    message = (
        f"{where}: {items} of {len(index)} items share {len(shared)} SID(s) (e.g. {example[:3]} all have "
        f"{index.render(sid)}), so a generated SID cannot name one item; rebuild the index with "
        "collision_strategy: min_cost"
    )
    if not allow:
        raise InputError(message + ", or pass --allow_unknown to proceed")
    note(message.split(", so")[0] + " (proceeding: --allow_unknown)")


def check_unknown(
    what: str, unknown: int, total: int, where: str, examples: Iterable[str] = (), allow: bool = False,
    max_share: float = 0.01,
) -> None:  # fmt: skip
    """Refuse when more than `max_share` of `total` `what` are unknown to the index."""
    if total <= 0 or unknown <= 0:
        return
    share = unknown / total
    examples = list(examples)[:3]
    message = f"{where}: {unknown} of {total} {what} ({share:.1%}) are unknown to the item index" + (
        f", e.g. {examples}" if examples else ""
    )
    if share > max_share and not allow:
        raise InputError(
            message + f"; the index belongs to other data? Use the index built from this data, or pass "
            f"--allow_unknown to drop them (limit: {max_share:.0%})"
        )
    note(message + ("; proceeding without them (--allow_unknown)" if share > max_share else "; dropped"))


def check_vocabulary(tokenizer_path: str | Path, index: ItemIndex, where: str, hint: str) -> None:
    """The tokenizer at `tokenizer_path` must hold every itemic token of `index` (single tokens)."""
    from onereason.modeling import load_tokenizer

    vocab = load_tokenizer(tokenizer_path).get_vocab()
    missing = [t for t in index.itemic_tokens() if t not in vocab]
    if missing:
        raise InputError(
            f"{where}: the tokenizer of {tokenizer_path} lacks {len(missing)} of {len(index.itemic_tokens())} "
            f"itemic tokens of the item index (e.g. {missing[:3]}); {hint}"
        )


def check_model_and_index(
    models: Iterable[str], item_index: str | Path | None, allow_unknown: bool, what: str, fix: str | None
) -> dict[str, ItemIndex]:
    """Load and check the item index each of `models` is used with; {path: index}, each loaded once.

    The index is `item_index` when given, else the item_index.json in a local model folder (a
    Hub model's comes with it: skipped). Every index must be free of colliding SIDs (unless
    `allow_unknown`); when `fix` is given, a local model's tokenizer must hold its itemic
    tokens (`fix` says what to do otherwise). `what` names the models in messages. The model
    folders themselves are checked first, by `check_model_path`.
    """
    from onereason.item_index import ITEM_INDEX_FILE

    indexes: dict[str, ItemIndex] = {}
    for model in models:
        local = bool(model) and is_local_model(model)
        path = str(item_index or "")
        if not path:
            if not local:
                continue
            path = str(Path(model) / ITEM_INDEX_FILE)
            if not Path(path).is_file():
                raise InputError(f"{what} {model} has no {ITEM_INDEX_FILE}; pass --item_index <path to it>")
        if path not in indexes:
            indexes[path] = load_index(path)
            check_collisions(indexes[path], f"item_index {path}", allow_unknown)
        if fix and local:
            check_vocabulary(model, indexes[path], what, fix)
    return indexes
