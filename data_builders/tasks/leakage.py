"""Does a reasoning trace name the item it is supposed to predict?

A trace that writes the target's SID, its title or its distinguishing Term ID teaches the
model to copy, not to reason; DESIGN.md calls such a builder a defect. The same checker
serves three places: the deterministic builder (to refuse unsafe phrases), the LLM-teacher
builder (to reject outputs) and `stats.json` (the leakage rate).

What counts as naming the target (case-insensitive):
- `sid`: its full SID text, or its itemic-token sequence without begin/end markers;
- `title`: its title, as whole words;
- `term`: its distinguishing term (Term-ID slot 5), as whole words.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_builders.tasks.catalog import ItemCatalog

DISTINGUISHING_SLOT = 4
# A title shorter than this is a common word ("Tent"), not a name: checking it would
# flag innocent category words, so it is skipped (the SID and term checks still run).
MIN_TITLE_CHARS = 8


@dataclass(frozen=True)
class Forbidden:
    """The strings a trace about one target may not contain (lower-case)."""

    sid_strings: tuple[str, ...]
    title: str
    term: str

    def phrase_leaks(self, text: str) -> list[str]:
        low = text.lower()
        kinds = []
        if any(s and s in low for s in self.sid_strings):
            kinds.append("sid")
        if self.title and _contains_words(low, self.title):
            kinds.append("title")
        if self.term and _contains_words(low, self.term):
            kinds.append("term")
        return kinds

    def allows(self, text: str) -> bool:
        """True when `text` (a phrase about to be written) names none of the target's forbidden strings.

        Also false when the phrase is *inside* the distinguishing term: writing "glass" when the
        term is "glass beaker" gives nothing away, but writing "beaker" next to "glass" might.
        """
        if self.phrase_leaks(text):
            return False
        low = text.lower().strip()
        return not (self.term and low and _contains_words(self.term, low))


_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def _contains_words(haystack: str, needle: str) -> bool:
    """`needle` occurs in `haystack` with no letter or digit glued to either side.

    Plain `str.find` with boundary checks: a regex per call was 60% of a million-row build.
    """
    if not needle:
        return False
    size, start = len(needle), haystack.find(needle)
    while start >= 0:
        end = start + size
        if (start == 0 or haystack[start - 1] not in _WORD_CHARS) and (
            end == len(haystack) or haystack[end] not in _WORD_CHARS
        ):
            return True
        start = haystack.find(needle, start + 1)
    return False


@dataclass
class TraceGuard:
    """Every target's `Forbidden` for one trace, answering `allows` once per distinct phrase.

    A trace asks about the same few attribute values many times (each history item, each
    relation, each interest point); memoising keeps the check off the build's profile.
    """

    forbidden: list[Forbidden]
    _seen: dict[str, bool] = field(default_factory=dict)

    def allows(self, value: str) -> bool:
        """Non-empty and naming no target."""
        known = self._seen.get(value)
        if known is None:
            known = self._seen[value] = bool(value) and all(f.allows(value) for f in self.forbidden)
        return known


def forbidden_for(catalog: ItemCatalog, targets: list[int]) -> list[Forbidden]:
    out = []
    for t in targets:
        sid = catalog.sid_texts[t] or ""
        tokens = "".join(catalog.sid_tokens[t])
        title = catalog.titles[t].lower().strip()
        terms = catalog.terms[t] or []
        term = terms[DISTINGUISHING_SLOT].lower().strip() if len(terms) > DISTINGUISHING_SLOT else ""
        out.append(
            Forbidden(
                sid_strings=tuple(s.lower() for s in {sid, tokens} if s),
                title=title if len(title) >= MIN_TITLE_CHARS else "",
                term=term,
            )
        )
    return out


def find_leaks(trace: str, catalog: ItemCatalog, targets: list[int]) -> list[str]:
    """Kinds of leak (`sid`, `title`, `term`) of any target found in `trace`; [] when clean."""
    kinds: set[str] = set()
    for f in forbidden_for(catalog, targets):
        kinds.update(f.phrase_leaks(trace))
    return sorted(kinds)


class LeakageMeter:
    """Counts checked traces and leaks per kind; `rate` is the share of traces with any leak."""

    def __init__(self):
        self.checked = 0
        self.leaked = 0
        self.by_kind: dict[str, int] = {}

    def add(self, kinds: list[str]) -> None:
        self.checked += 1
        if kinds:
            self.leaked += 1
            for k in kinds:
                self.by_kind[k] = self.by_kind.get(k, 0) + 1

    def add_report(self, report: dict) -> None:
        """Fold in another meter's `report()` (a shard's): counts add up."""
        self.checked += report["checked"]
        self.leaked += report["leaked"]
        for k, n in report["by_kind"].items():
            self.by_kind[k] = self.by_kind.get(k, 0) + n

    @property
    def rate(self) -> float:
        return self.leaked / self.checked if self.checked else 0.0

    def report(self) -> dict:
        return {
            "checked": self.checked,
            "leaked": self.leaked,
            "rate": self.rate,
            "by_kind": dict(sorted(self.by_kind.items())),
        }
