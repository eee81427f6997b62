"""Deterministic three-level traces (Derivation -> Evolution -> Recommendation), no LLM needed.

The trace is built from what the history itself shows, so it can be trusted and checked:

- **Derivation**: the most recent items in words (category, attributes, SID prefix: this is
  how itemic tokens get grounded in language), which earlier item each one echoes and
  through which shared codes/attributes, and which items are noise.
- **Evolution**: history items grouped into interest points by `interest_fields` (e.g. the
  subcategory and the style), each with its evidence (#n citations) and time pattern:
  periodic (regular gaps), short-term (only in the recent half), fading (gone from the last
  40%), else long-term. Small variants of a bigger group (same leading fields, a third of
  its size or less) fold into it: tastes are not perfectly sharp.
- **Recommendation**: the interest the target serves (the one whose key and shared
  attributes the target matches most; ties go to the most recent) described by what its
  *history* items share: attributes, SID prefix, Term-ID words.

Two styles (`CotConfig.style`): **full** writes all of the above (~150-280 tokens), with
history citations (#n) and the codes of the recent items; **short** (~40-80 tokens) is the
three levels for a model that must learn them from a few thousand rows, and it states only
what the history decides: the latest items' words, the interest points as "label (pattern,
3 6 9 ago)" (how many items ago each of its items was, newest first: a history numbered by
`countdown` shows exactly those numbers), then the Recommendation. An interest whose items
came at one constant gap, the last of them that gap ago, is *due* ("interest X, due now",
then the SID of its latest item and the first SID token its items share); when none is due, the trace says so and leaves
the choice open. A full trace names the interest the target serves, a choice the history
alone often cannot settle (a recent and a long-term interest both go on), and a model that
learns to commit to one stakes its whole list on a guess; the short trace commits only
where the history settles it.

The target is never named: every value written passes `Forbidden.allows` for every target
(no SID, title or distinguishing term), and the interest points are returned as data
(`Trace.interests`) so interest recovery is measured without parsing text.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from data_builders.tasks.catalog import ItemCatalog
from data_builders.tasks.leakage import DISTINGUISHING_SLOT, TraceGuard, forbidden_for
from data_builders.tasks.phrasing import load_templates

PATTERNS = ("long_term", "short_term", "periodic", "fading")
SECTIONS = ("Derivation:", "Evolution:", "Recommendation:")
STYLES = ("full", "short")
# How the parts of a trace are joined (`evaluation.traces` reads traces back with these)
LIST_SEP = ", "  # values, citations, attributes, terms
ITEM_SEP = "; "  # the described items; an item's words and its codes
SHARED_PREFIX = "prefix "  # before the SID prefix two related items share
UNNAMED_INTEREST = "interest {j}"  # label of an interest point whose every value would name the target
NO_WORDS = "an item"  # an item with no word that is safe to write
CITATION = re.compile(r"#(\d+)")  # how a trace cites history item n (numbered from 1)
SECONDS_PER_DAY = 86400
# timestamps below this are ordinals, not seconds since the epoch: no "days" in the text
MIN_EPOCH_SECONDS = 100_000_000


@dataclass
class CotConfig:
    """Knobs of the deterministic builder."""

    interest_fields: tuple[str, ...] = ("categories[1]", "style")
    min_support: int = 2  # items an interest point needs
    max_interests: int = 5
    recent_items: int = 4  # items described in the Derivation
    share: float = 0.6  # an attribute is "shared" by a group when this share of it has it
    # a variant group at most this share of a bigger one folds into it; None: 1/3 for full
    # traces, 1 for short ones (an interest's every item counts, so its timing is exact)
    fold_ratio: float | None = None
    sid_prefix_levels: int = 2  # SID tokens used to ground an item (capped at levels - 1)
    style: str = "full"  # full | short (see the module doc)

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"trace style must be one of {STYLES}, got {self.style!r}")
        if self.fold_ratio is None:
            self.fold_ratio = 1.0 if self.style == "short" else 1 / 3


@dataclass
class InterestPoint:
    key: tuple[str, ...]
    label: str
    evidence: list[int]  # 0-based history positions, ascending
    pattern: str
    gap: int = 0  # periodic: interactions between occurrences
    shared: list[tuple[str, str]] = field(default_factory=list)
    sid_prefix: str = ""
    shared_terms: list[str] = field(default_factory=list)


@dataclass
class Trace:
    text: str
    interests: list[InterestPoint]
    # full: index into `interests` of the one the target serves; short: of the due one, or None
    chosen: int | None
    matched: bool  # False: the target is not on the chosen interest's leading field (category)
    noise: list[int]  # 0-based positions that fit no interest


class DeterministicCot:
    """Builds a `Trace` for (history, targets) over one `ItemCatalog`."""

    def __init__(self, catalog: ItemCatalog, config: CotConfig | None = None):
        self.catalog = catalog
        self.config = config or CotConfig()
        self.templates = load_templates("cot")
        self.fields = tuple(f for f in self.config.interest_fields if self._field_exists(f))
        n_levels = max((len(t) for t in catalog.sid_tokens), default=0)
        self.prefix_levels = max(0, min(self.config.sid_prefix_levels, n_levels - 1))
        self._keys: dict[int, tuple[str, ...]] = {}  # item -> its values of `fields`

    def _key(self, item: int) -> tuple[str, ...]:
        key = self._keys.get(item)
        if key is None:
            key = self._keys[item] = tuple(self.catalog.value(item, f) for f in self.fields)
        return key

    def _field_exists(self, name: str) -> bool:
        c = self.catalog
        return any(c.value(i, name) for i in range(min(len(c), 2000)))

    # ------------------------------------------------------------------ grouping

    def interest_points(
        self, history: list[int], timestamps: list[int] | None = None
    ) -> tuple[list[InterestPoint], list[int]]:
        """(interest points, noise positions) of a history of catalogue positions."""
        cfg = self.config
        groups: dict[tuple[str, ...], list[int]] = {}
        loose: list[int] = []
        for pos, item in enumerate(history):
            key = self._key(item)
            if not self.fields or not all(key):
                loose.append(pos)
            else:
                groups.setdefault(key, []).append(pos)
        # fold small variants into a bigger group sharing the leading fields
        if len(self.fields) > 1:
            by_size = sorted(groups, key=lambda k: (-len(groups[k]), groups[k][-1]))
            for key in reversed(by_size):
                for bigger in by_size:
                    if bigger == key or bigger not in groups or key not in groups:
                        continue
                    if bigger[:-1] == key[:-1] and len(groups[key]) <= cfg.fold_ratio * len(groups[bigger]):
                        groups[bigger] = sorted(groups[bigger] + groups.pop(key))
                        break
        ranked = sorted(
            (k for k in groups if len(groups[k]) >= cfg.min_support),
            key=lambda k: (-len(groups[k]), -groups[k][-1]),
        )[: cfg.max_interests]
        kept = set(ranked)
        noise = sorted(loose + [p for k, ps in groups.items() if k not in kept for p in ps])
        points = [self._describe(k, groups[k], history, len(history), timestamps) for k in ranked]
        points.sort(key=lambda p: p.evidence[0])
        return points, noise

    def _describe(self, key, evidence, history, n, timestamps) -> InterestPoint:
        pattern, gap = classify_pattern(evidence, n)
        items = [history[p] for p in evidence]
        point = InterestPoint(key=key, label="", evidence=evidence, pattern=pattern, gap=gap)
        point.shared = self._shared_attributes(items)
        point.sid_prefix = self._shared_prefix(items)
        point.shared_terms = self._shared_terms(items)
        return point

    def _shared_attributes(self, items: list[int]) -> list[tuple[str, str]]:
        c = self.catalog
        need = self.config.share * len(items)
        counts: Counter = Counter((name, v) for i in items for name, v in c.attributes[i].items())
        order = {name: k for k, name in enumerate(c.attribute_names)}
        shared = [(name, v) for (name, v), k in counts.items() if k >= need]
        return sorted(shared, key=lambda nv: order.get(nv[0], len(order)))

    def _shared_prefix(self, items: list[int], levels: int | None = None) -> str:
        c = self.catalog
        best = ""
        need = self.config.share * len(items)
        for length in range(1, min(levels or self.prefix_levels, self.prefix_levels) + 1):
            prefixes = Counter(c.sid_prefix(i, length) for i in items if c.sid_tokens[i])
            if not prefixes:
                break
            prefix, count = prefixes.most_common(1)[0]
            if count < need:
                break
            best = prefix
        return best

    def _shared_terms(self, items: list[int]) -> list[str]:
        c = self.catalog
        need = self.config.share * len(items)
        counts: Counter = Counter(
            t for i in items for t in dict.fromkeys((c.terms[i] or [])[:DISTINGUISHING_SLOT])
        )
        return [t for t, k in counts.items() if k >= need]

    # ------------------------------------------------------------------ the trace

    def build(self, history: list[int], timestamps: list[int] | None, targets: list[int]) -> Trace:
        """The trace for predicting `targets[0]` (all targets are kept out of the text). A short
        trace reads the history only: with no targets it is the trace of a user at inference."""
        if not history:
            raise ValueError("a trace needs at least one history item")
        forbidden = TraceGuard(forbidden_for(self.catalog, targets))
        points, noise = self.interest_points(history, timestamps)
        for j, p in enumerate(points):
            p.label = self._label(p, forbidden, j)
        if self.config.style == "short":
            chosen = self._due(points, len(history))
            matched = (
                chosen is not None and bool(targets) and points[chosen].key[:1] == self._key(targets[0])[:1]
            )
            parts = self._short(history, points, chosen, forbidden)
        else:
            chosen, matched = self._choose(points, targets[0]) if points else (None, False)
            parts = [
                self._derivation(history, noise, forbidden),
                self._evolution(points, timestamps, len(history)),
                self._recommendation(points, chosen, matched, forbidden, targets[0]),
            ]
        text = "\n".join(parts)
        return Trace(text=text, interests=points, chosen=chosen, matched=matched, noise=noise)

    def _label(self, point: InterestPoint, forbidden, j: int) -> str:
        parts = [v for v in point.key if forbidden.allows(v)]
        return LIST_SEP.join(parts) if parts else UNNAMED_INTEREST.format(j=j + 1)

    def _choose(self, points: list[InterestPoint], target: int) -> tuple[int, bool]:
        c = self.catalog
        target_attrs = set(c.attributes[target].items())
        target_key = self._key(target)

        def score(j: int):
            p = points[j]
            key_match = sum(a == b for a, b in zip(p.key, target_key))
            return (key_match * 2 + len(target_attrs & set(p.shared)), p.evidence[-1])

        best = max(range(len(points)), key=score)
        if points[best].key[:1] == target_key[:1]:  # same leading field (category): it serves this interest
            return best, True
        return max(range(len(points)), key=lambda j: points[j].evidence[-1]), False

    def _item_words(self, item: int, forbidden) -> str:
        c = self.catalog
        cats = c.categories[item]
        words = [v for v in ([cats[-1]] if cats else []) if forbidden.allows(v)]
        level_names = set(c.attribute_names[: len(cats)])
        extra = [
            v
            for name, v in c.attributes[item].items()
            if name not in level_names and name != "brand" and forbidden.allows(v)
        ][:2]
        return LIST_SEP.join(words + extra) or NO_WORDS

    def _derivation(self, history, noise, forbidden) -> str:
        t = self.templates["derivation"]
        c = self.catalog
        n = len(history)
        recent = list(range(n - 1, max(-1, n - 1 - self.config.recent_items), -1))
        described = []
        for p in recent:
            what = self._item_words(history[p], forbidden)
            prefix = c.sid_prefix(history[p], self.prefix_levels) if self.prefix_levels else ""
            if prefix and forbidden.allows(prefix):
                what += ITEM_SEP + t["item_codes"].format(prefix=prefix)
            described.append(t["item"].format(n=p + 1, what=f"({what})"))
        sentences = [t["opening"].format(items=ITEM_SEP.join(described))]
        for p in recent:
            relation = self._relation(history, p, forbidden)
            if relation:
                sentences.append(relation)
        if noise:
            sentences.append(t["noise"].format(items=LIST_SEP.join(f"#{p + 1}" for p in noise)))
        else:
            sentences.append(t["no_noise"])
        return " ".join(sentences)

    def _relation(self, history, p, forbidden) -> str:
        """The earlier item that shares most with history[p], and what they share."""
        t = self.templates["derivation"]
        c = self.catalog
        if p == 0:
            return ""
        mine = c.attributes[history[p]]
        root = c.attribute_names[0] if c.attribute_names else None
        best, best_count = -1, 0
        for q in range(p - 1, -1, -1):  # the latest of the earlier items sharing the most wins
            common = mine.items() & c.attributes[history[q]].items()
            if len(common) <= best_count:
                continue
            count = sum(1 for name, v in common if name != root and forbidden.allows(v))
            if count > best_count:
                best, best_count = q, count
        if best < 0:
            return t["no_relation"].format(a=p + 1)
        other = c.attributes[history[best]]
        best_shared = [
            v for name, v in mine.items() if name != root and other.get(name) == v and forbidden.allows(v)
        ]
        prefix_len = 0
        a, b = c.sid_tokens[history[p]], c.sid_tokens[history[best]]
        while prefix_len < min(len(a), len(b), self.prefix_levels) and a[prefix_len] == b[prefix_len]:
            prefix_len += 1
        words = list(best_shared)
        if prefix_len:
            words.append(SHARED_PREFIX + "".join(a[:prefix_len]))
        return t["relation"].format(a=p + 1, b=best + 1, shared=LIST_SEP.join(words))

    def _evolution(self, points, timestamps, n) -> str:
        t = self.templates["evolution"]
        if not points:
            return t["none"]
        sentences = [t["opening"].format(count=len(points))]
        for j, p in enumerate(points):
            first, last = p.evidence[0] + 1, p.evidence[-1] + 1
            days = ""
            if p.pattern == "periodic" and timestamps and timestamps[0] >= MIN_EPOCH_SECONDS:
                spans = [timestamps[b] - timestamps[a] for a, b in zip(p.evidence, p.evidence[1:])]
                days = t["days"].format(days=max(1, round(sorted(spans)[len(spans) // 2] / SECONDS_PER_DAY)))
            pattern = t["patterns"][p.pattern].format(first=first, last=last, gap=p.gap, days=days)
            evidence = LIST_SEP.join(f"#{q + 1}" for q in p.evidence)
            sentences.append(t["interest"].format(j=j + 1, label=p.label, evidence=evidence, pattern=pattern))
        return " ".join(sentences)

    def _recommendation(self, points, chosen, matched, forbidden, target: int) -> str:
        """The chosen interest, then only what its history items share *and the target has too*:
        a trace that promised attributes or a SID prefix the answer then contradicts would
        teach the model to ignore its own reasoning."""
        t = self.templates["recommendation"]
        c = self.catalog
        if chosen is None:
            return t["no_interest"]
        if not matched:
            return t["fallback"].format(j=chosen + 1, label=points[chosen].label)
        p = points[chosen]
        sentences = [t["chosen"].format(j=chosen + 1, label=p.label, why=t["why"][p.pattern])]
        mine = c.attributes[target]
        attrs = [
            f"{name.replace('_', ' ')} {v}"
            for name, v in p.shared
            if mine.get(name) == v and forbidden.allows(v)
        ]
        if attrs:
            sentences.append(t["expect"].format(attributes=LIST_SEP.join(attrs)))
        prefix = self._common_prefix(p.sid_prefix, target)
        if prefix and forbidden.allows(prefix):
            sentences.append(t["prefix"].format(prefix=prefix))
        own_terms = set((c.terms[target] or [])[:DISTINGUISHING_SLOT])
        terms = [w for w in p.shared_terms if w in own_terms and forbidden.allows(w)]
        if terms:
            sentences.append(t["terms"].format(terms=LIST_SEP.join(terms)))
        return " ".join(sentences)

    def decides(self, history: list[int], timestamps: list[int] | None = None) -> bool:
        """Whether the short trace of `history` names the interest that is due (reads only the
        history, so the same at training and inference)."""
        return self._due(self.interest_points(history, timestamps)[0], len(history)) is not None

    @staticmethod
    def _due(points: list[InterestPoint], n: int) -> int | None:
        """The interest that is due next (the latest one if several), from the history alone."""
        due = [j for j, p in enumerate(points) if is_due(p.evidence, n)]
        return max(due, key=lambda j: points[j].evidence[-1]) if due else None

    def _short(self, history, points, chosen, forbidden) -> list[str]:
        """The three levels in a few dozen tokens (module doc, "short")."""
        t = self.templates["short"]
        n = len(history)
        recent = [history[p] for p in range(n - 1, max(-1, n - 1 - self.config.recent_items), -1)]
        derivation = t["derivation"].format(
            items=ITEM_SEP.join(self._item_words(i, forbidden) for i in recent)
        )
        if not points:
            return [derivation, t["no_evolution"], t["no_interest"]]
        listed = [
            t["interest"].format(label=p.label, pattern=t["patterns"][p.pattern], ago=ago(p.evidence, n))
            for p in points
        ]
        evolution = t["evolution"].format(interests=ITEM_SEP.join(listed))
        if chosen is None:
            return [derivation, evolution, t["open"]]
        due = points[chosen]
        sentences = [t["due"].format(label=due.label)]
        shown = [self.catalog.sid_texts[history[q]] or "" for q in reversed(due.evidence)]
        sid = next((s for s in shown if forbidden.allows(s)), None)
        if sid:  # the SID the answer will be read next to: what the interest's items look like
            sentences.append(t["due_item"].format(sid=sid))
        prefix = self._shared_prefix([history[q] for q in due.evidence], levels=1)
        if prefix and forbidden.allows(prefix):
            sentences.append(self.templates["recommendation"]["prefix"].format(prefix=prefix))
        return [derivation, evolution, " ".join(sentences)]

    def _common_prefix(self, prefix: str, target: int, levels: int | None = None) -> str:
        """The longest leading part of `prefix` (whole itemic tokens, at most `levels`) that the
        target's SID starts with."""
        tokens = self.catalog.sid_tokens[target]
        for length in range(min(levels or self.prefix_levels, self.prefix_levels, len(tokens)), 0, -1):
            own = "".join(tokens[:length])
            if prefix.startswith(own):
                return own
        return ""


def classify_pattern(evidence: list[int], n: int) -> tuple[str, int]:
    """(pattern, gap) of evidence positions in a history of length n.

    periodic: three or more occurrences at one constant gap of two or more; short-term: first
    seen in the recent half; fading: absent from the last 40%; long-term otherwise.
    """
    gaps = {b - a for a, b in zip(evidence, evidence[1:])}
    if len(evidence) >= 3 and len(gaps) == 1 and min(gaps) >= 2:
        return "periodic", gaps.pop()
    if evidence[0] >= 0.5 * n:
        return "short_term", 0
    if evidence[-1] < 0.6 * n:
        return "fading", 0
    return "long_term", 0


def is_due(evidence: list[int], n: int) -> bool:
    """Whether an interest seen at `evidence` (positions in a history of length n) recurs next:
    two or more occurrences at one constant gap of two or more, the last of them that gap ago."""
    gaps = {b - a for a, b in zip(evidence, evidence[1:])}
    return len(gaps) == 1 and min(gaps) >= 2 and n - evidence[-1] == min(gaps)


def ago(evidence: list[int], n: int) -> str:
    """How many items ago each evidence position of a history of length n was, newest first."""
    return " ".join(str(n - q) for q in reversed(evidence))


def section_texts(text: str) -> list[str] | None:
    """The Derivation, Evolution and Recommendation parts of a trace (each from its heading),
    or None when a heading is missing or out of order: the one test of a trace's shape."""
    positions = [text.find(s) for s in SECTIONS]
    if min(positions) < 0 or positions != sorted(positions):
        return None
    ends = positions[1:] + [len(text)]
    return [text[start:end].strip() for start, end in zip(positions, ends)]
