"""The item index: item ↔ semantic ID ↔ Term IDs, in one file that travels with the model.

A model that speaks itemic tokens is useless without the map from its tokens back to
items, so the index is saved as `item_index.json` beside every checkpoint. It renders a
SID as text in a configurable format and parses SIDs back out of arbitrary model output
(garbage in → no item, never an exception).
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onereason.io import atomic_write_text

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
ITEM_INDEX_FILE = "item_index.json"  # beside every model folder
# The SID token formats `SIDFormat.named` knows (build-ids `sid_format:` takes these names).
SID_FORMATS = ("openonerec", "minionerec")


@dataclass(frozen=True)
class SIDFormat:
    """How a SID is written: `{begin}<{prefix_0}_{c0}><{prefix_1}_{c1}>…{end}`.

    The default is OpenOneRec's `<|sid_begin|><s_a_12><s_b_3><s_c_7><|sid_end|>`;
    `SIDFormat.minionerec()` gives MiniOneRec / LC-Rec's `<a_12><b_3><c_7>`.
    `SIDFormat.named(name, levels)` builds any registered format (`SID_FORMATS`) by name:
    to change the token format, change it here.
    """

    prefixes: tuple[str, ...] = ("s_a", "s_b", "s_c")
    begin: str | None = "<|sid_begin|>"
    end: str | None = "<|sid_end|>"

    @classmethod
    def openonerec(cls, levels: int = 3) -> SIDFormat:
        return cls(prefixes=tuple(f"s_{chr(ord('a') + i)}" for i in range(levels)))

    @classmethod
    def minionerec(cls, levels: int = 3) -> SIDFormat:
        return cls(prefixes=tuple(chr(ord("a") + i) for i in range(levels)), begin=None, end=None)

    @classmethod
    def named(cls, name: str, levels: int = 3) -> SIDFormat:
        """The registered format `name` (one of `SID_FORMATS`) with `levels` levels."""
        if name not in SID_FORMATS:
            raise ValueError(f"unknown SID format {name!r}; choose one of {list(SID_FORMATS)}")
        if levels < 1:
            raise ValueError(f"a SID format needs at least one level, got {levels}")
        return getattr(cls, name)(levels)

    @property
    def boundary_tokens(self) -> list[str]:
        """The tokens around every SID (`<|sid_begin|>`, `<|sid_end|>`; none for MiniOneRec)."""
        return [t for t in (self.begin, self.end) if t]

    def token(self, level: int, code: int) -> str:
        return f"<{self.prefixes[level]}_{int(code)}>"

    def level_tokens(self, codes: Sequence[int]) -> tuple[str, ...]:
        """The itemic tokens of one SID, one per level, without the boundary tokens."""
        return tuple(self.token(level, c) for level, c in enumerate(codes))

    def render(self, codes: Sequence[int]) -> str:
        if len(codes) != len(self.prefixes):
            raise ValueError(f"SID has {len(codes)} codes, the format has {len(self.prefixes)} levels")
        body = "".join(self.token(level, c) for level, c in enumerate(codes))
        return f"{self.begin or ''}{body}{self.end or ''}"

    def pattern(self) -> re.Pattern:
        """Regex matching one complete SID; groups are the codes."""
        body = "".join(rf"<{re.escape(p)}_(\d{{1,9}})>" for p in self.prefixes)
        return re.compile(f"{re.escape(self.begin or '')}{body}{re.escape(self.end or '')}")

    def prefix_codes(self, text: object) -> tuple[int, ...] | None:
        """The codes of a SID prefix written as its itemic tokens, level by level from the first
        (`<s_a_3><s_b_1>`; boundary tokens and spaces between tokens allowed), or None when
        `text` is anything else. Traces speak of SID prefixes; this reads them back. Never raises."""
        if not isinstance(text, str):
            return None
        rest = text.strip()
        for marker in self.boundary_tokens:
            rest = rest.replace(marker, " ")
        codes = []
        for prefix in self.prefixes:
            match = re.match(rf"\s*<{re.escape(prefix)}_(\d{{1,9}})>", rest)
            if not match:
                break
            codes.append(int(match.group(1)))
            rest = rest[match.end() :]
        return tuple(codes) if codes and not rest.strip() else None

    def to_dict(self) -> dict:
        return {"prefixes": list(self.prefixes), "begin": self.begin, "end": self.end}

    @classmethod
    def from_dict(cls, d: dict) -> SIDFormat:
        return cls(prefixes=tuple(d["prefixes"]), begin=d.get("begin"), end=d.get("end"))


class ItemIndex:
    """Items, their SID codes (n_items × n_levels) and optional Term IDs.

    Several items may share a SID (published indexes keep collisions): `items_for_sid`
    returns all of them, and `collisions()` reports them.
    """

    def __init__(
        self,
        item_ids: Iterable[str],
        codes,
        terms: Sequence[Sequence[str]] | None = None,
        sid_format: SIDFormat | None = None,
        meta: dict | None = None,
    ):
        self.item_ids = [str(i) for i in item_ids]
        self.codes = np.asarray(codes, dtype=np.int64)
        if self.codes.ndim != 2 or len(self.codes) != len(self.item_ids):
            raise ValueError(
                f"codes must have shape (n_items={len(self.item_ids)}, n_levels), got {self.codes.shape}"
            )
        if (self.codes < 0).any():
            row = int(np.argwhere(self.codes < 0)[0][0])
            raise ValueError(f"negative SID code for item {self.item_ids[row]!r}")
        self.sid_format = sid_format or SIDFormat.openonerec(self.codes.shape[1])
        if len(self.sid_format.prefixes) != self.codes.shape[1]:
            raise ValueError(
                f"sid_format has {len(self.sid_format.prefixes)} levels, codes have {self.codes.shape[1]}"
            )
        self.term_ids = [list(map(str, t)) for t in terms] if terms is not None else None
        if self.term_ids is not None and len(self.term_ids) != len(self.item_ids):
            raise ValueError(f"terms has {len(self.term_ids)} rows for {len(self.item_ids)} items")
        self.meta = dict(meta or {})
        self._row: dict[str, int] = {}
        for row, item in enumerate(self.item_ids):
            if item in self._row:
                raise ValueError(
                    f"duplicate item id {item!r} in the item index (rows {self._row[item]} and {row})"
                )
            self._row[item] = row
        self._by_sid: dict[tuple[int, ...], list[str]] = defaultdict(list)
        for item, sid in zip(self.item_ids, map(tuple, self.codes.tolist())):
            self._by_sid[sid].append(item)
        self._pattern = self.sid_format.pattern()

    # --- looking things up -------------------------------------------------------------
    def __repr__(self) -> str:
        return (
            f"ItemIndex({len(self)} items, {self.n_levels} levels, codebooks {self.codebook_sizes}, "
            f"{len(self.collisions())} shared SIDs, terms={self.term_ids is not None})"
        )

    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ItemIndex)
            and self.item_ids == other.item_ids
            and np.array_equal(self.codes, other.codes)
            and self.term_ids == other.term_ids
            and self.sid_format == other.sid_format
            and self.meta == other.meta
        )

    @property
    def n_levels(self) -> int:
        return int(self.codes.shape[1])

    @property
    def codebook_sizes(self) -> list[int]:
        return [int(c) + 1 for c in self.codes.max(axis=0)] if len(self) else [0] * self.n_levels

    def _row_of(self, item_id: str) -> int:
        try:
            return self._row[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} is not in the item index ({len(self)} items)") from None

    def sid(self, item_id: str) -> tuple[int, ...]:
        return tuple(int(c) for c in self.codes[self._row_of(item_id)])

    def sid_text(self, item_id: str) -> str:
        return self.sid_format.render(self.codes[self._row_of(item_id)])

    def render(self, codes: Sequence[int]) -> str:
        return self.sid_format.render(codes)

    def items_for_sid(self, codes: Sequence[int]) -> list[str]:
        return list(self._by_sid.get(tuple(int(c) for c in codes), ()))

    def sids(self) -> list[tuple[int, ...]]:
        """Every distinct SID, in first-seen order."""
        return list(self._by_sid)

    def terms(self, item_id: str) -> list[str]:
        if self.term_ids is None:
            return []
        return list(self.term_ids[self._row_of(item_id)])

    def collisions(self) -> dict[tuple[int, ...], list[str]]:
        """SIDs carried by more than one item."""
        return {sid: list(items) for sid, items in self._by_sid.items() if len(items) > 1}

    def n_collisions(self) -> int:
        """Items that share their SID with an earlier item (items − distinct SIDs).

        This is the figure published indexes quote ("16 collisions"): a SID shared by
        k items counts k − 1.
        """
        return len(self.item_ids) - len(self._by_sid)

    # --- reading model output ----------------------------------------------------------
    def parse(self, text: object) -> list[tuple[int, ...]]:
        """Every complete SID of the index found in `text`, in order. Never raises."""
        if not isinstance(text, str):
            return []
        out = []
        for match in self._pattern.finditer(text):
            sid = tuple(int(g) for g in match.groups())
            if sid in self._by_sid:
                out.append(sid)
        return out

    def parse_items(self, text: object) -> list[str]:
        """Items named by `text` (a SID shared by several items names all of them)."""
        return [item for sid in self.parse(text) for item in self._by_sid[sid]]

    def itemic_tokens(self) -> list[str]:
        """The tokens this index actually uses: begin/end, then level by level, code order."""
        tokens = [t for t in (self.sid_format.begin, self.sid_format.end) if t]
        for level in range(self.n_levels):
            tokens += [self.sid_format.token(level, c) for c in np.unique(self.codes[:, level])]
        return tokens

    # --- files ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "sid_format": self.sid_format.to_dict(),
            "item_ids": self.item_ids,
            "codes": self.codes.tolist(),
            "terms": self.term_ids,
            "meta": self.meta,
        }

    def save(self, path: str | Path) -> Path:
        # One item per line keeps the file diffable and still a single JSON document.
        d = self.to_dict()
        lines = ["{"]
        for key in ("format_version", "sid_format", "meta"):
            lines.append(f"  {json.dumps(key)}: {json.dumps(d[key], ensure_ascii=False, sort_keys=True)},")
        lines.append('  "items": [')
        terms = self.term_ids or [None] * len(self)
        rows = [
            "    " + json.dumps([item, codes, t], ensure_ascii=False)
            for item, codes, t in zip(self.item_ids, d["codes"], terms)
        ]
        lines.append(",\n".join(rows))
        lines.append("  ],")
        lines.append(f'  "has_terms": {json.dumps(self.term_ids is not None)}')
        lines.append("}")
        return atomic_write_text(path, "\n".join(lines) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ItemIndex:
        path = Path(path)
        d = _read_json(path, "item index", "not a valid item index JSON file")
        if d.get("format_version") != FORMAT_VERSION or "items" not in d:
            raise ValueError(
                f"{path}: not an onereason item index (format_version {d.get('format_version')!r})"
            )
        rows = d["items"]
        for n, row in enumerate(rows):
            if not (isinstance(row, list) and len(row) == 3 and isinstance(row[1], list)):
                raise ValueError(f"{path}: item row {n} is malformed: {row!r:.120}")
        sid_format = SIDFormat.from_dict(d["sid_format"])
        levels = {len(r[1]) for r in rows}
        if levels - {len(sid_format.prefixes)}:
            bad = next(n for n, r in enumerate(rows) if len(r[1]) != len(sid_format.prefixes))
            raise ValueError(
                f"{path}: item row {bad} has {len(rows[bad][1])} codes, the format has "
                f"{len(sid_format.prefixes)} levels"
            )
        codes = np.array([r[1] for r in rows], dtype=np.int64).reshape(len(rows), len(sid_format.prefixes))
        terms = [r[2] for r in rows] if d.get("has_terms") else None
        return cls([r[0] for r in rows], codes, terms, sid_format, d.get("meta") or {})

    @classmethod
    def resolve(cls, model_name_or_path: str | Path | None, explicit: str | Path | None = None) -> ItemIndex:
        """The item index a model is used with: `explicit` if given, else `item_index.json` beside
        the model (a folder, or a Hub repo pushed by `onereason push`).

        `explicit` may be an onereason `item_index.json` or a published LC-Rec / MiniOneRec
        `*.index.json`. Every failure is a `FileNotFoundError` that says what to pass instead.
        """
        if explicit:
            path = Path(explicit)
            if not path.is_file():
                raise FileNotFoundError(
                    f"item_index {str(path)!r} does not exist (build it with `onereason build-ids`, "
                    "or pass a published LC-Rec/MiniOneRec .index.json)"
                )
            return cls.from_published_json(path) if path.name.endswith(".index.json") else cls.load(path)
        fix = f"pass --item_index PATH (`item_index:` in a recipe) to the {ITEM_INDEX_FILE} the model was trained with"
        if not model_name_or_path:
            raise FileNotFoundError(f"no model and no item index; {fix}")
        local = Path(model_name_or_path) / ITEM_INDEX_FILE
        if local.is_file():
            return cls.load(local)
        if Path(model_name_or_path).exists():
            raise FileNotFoundError(f"{model_name_or_path} has no {ITEM_INDEX_FILE}; {fix}")
        from huggingface_hub import hf_hub_download  # a Hub id: `onereason push` puts the index there

        try:
            return cls.load(hf_hub_download(str(model_name_or_path), ITEM_INDEX_FILE))
        except Exception as err:  # offline, missing file, private repo: one message that says what to do
            raise FileNotFoundError(
                f"could not get {ITEM_INDEX_FILE} for {str(model_name_or_path)!r} "
                f"({type(err).__name__}: {err}); {fix}"
            ) from err

    @classmethod
    def from_published_json(cls, path: str | Path, items: Iterable[str] | None = None) -> ItemIndex:
        """Load a published LC-Rec / MiniOneRec index: `{"<item>": ["<a_1>", "<b_2>", ...]}`.

        The token prefixes (a, b, c, d…) give the format; `items`, when given, restricts
        the index to those ids (and fails naming any that the file lacks).
        """
        path = Path(path)
        data = _read_json(path, "published item index", "not valid JSON")
        if not isinstance(data, dict):
            raise ValueError(
                f'{path}: expected {{"<item>": ["<a_1>", "<b_2>", ...]}}, got a {type(data).__name__}'
            )
        token = re.compile(r"^<([A-Za-z_]+?)_(\d+)>$")
        prefixes: list[str] | None = None
        ids, codes = [], []
        for item, tokens in data.items():
            parsed = [token.match(t) for t in tokens] if isinstance(tokens, list) else [None]
            if not all(parsed):
                raise ValueError(f"{path}: item {item!r} has a malformed SID {tokens!r}")
            these = [m.group(1) for m in parsed]
            if prefixes is None:
                prefixes = these
            elif these != prefixes:
                raise ValueError(f"{path}: item {item!r} has levels {these}, expected {prefixes}")
            ids.append(str(item))
            codes.append([int(m.group(2)) for m in parsed])
        if prefixes is None:
            raise ValueError(f"{path}: the index is empty")
        index = cls(
            ids,
            np.array(codes),
            sid_format=SIDFormat(tuple(prefixes), None, None),
            meta={"source": str(path.name)},
        )
        if index.n_collisions():
            logger.info(
                "%s: %d items share their SID with another item (%d shared SIDs)",
                path,
                index.n_collisions(),
                len(index.collisions()),
            )
        if items is not None:
            wanted = [str(i) for i in items]
            missing = [i for i in wanted if i not in index]
            if missing:
                raise ValueError(f"{path}: {len(missing)} item(s) have no SID, e.g. {missing[:5]}")
            rows = [index._row[i] for i in wanted]
            index = cls(wanted, index.codes[rows], sid_format=index.sid_format, meta=index.meta)
        return index


def _read_json(path: Path, what: str, invalid: str):
    """The JSON document at `path`; a missing file or bad JSON is one clear error naming `what`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: {invalid} ({err})") from None
