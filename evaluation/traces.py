"""Is a generated trace right? Scored against the target, the history and, where known, the truth.

A thinking model learns the trace format of `data_builders.tasks.cot`: a Derivation that
describes the recent items (`#n (words; codes P)`) and how they relate, an Evolution that
lists interest points with their evidence (`(j) label: #a, #b; pattern`), and a
Recommendation that names the interest the next item serves and what to expect of it
(attributes, SID prefix, Term-ID words); or its short style (`latest words; …`, interests as
`label (pattern, 3 6 ago)`, then `interest label, due now` with its latest item's SID and the
first SID token, or "none is due"). `read_trace` reads those
statements back with the phrasings of `templates/cot.yaml` and the joins of cot.py, so the
reader follows the writer.
Nothing here raises on model output: what does not parse is not stated, and a trace without
its three sections in order is malformed and wrong on every criterion.

**Against the target** (the first target item, the one a trace is built for), each
criterion is right, wrong or not stated:

- `sid_prefix`: the prefix of "Its SID likely starts with P" is where the target's SID starts;
- `category`: the category values stated for the next item (those in the chosen interest's
  label, and category-level attributes of "Expect an item with …") are all on the target's
  category path;
- `attributes`: the other expected attributes (name and value) are all the target's;
- `terms`: the expected Term-ID words are all among the target's Term IDs;
- `interest` (synthetic world only: `truth.parquet` records the planted interest behind every
  interaction): the chosen interest's label names the interest behind the target (its
  subcategory and style). A trace that chooses no interest is wrong; noise targets are not scored.
  A short trace that says none is due chooses nothing: `interest` is not stated, `due` is;
- `due` (synthetic world, short traces): the trace's Recommendation says an interest is due
  exactly when the target came from a periodic interest, and then names that one.

Category and attributes need the items table, terms need Term IDs in the index, interest
needs the ground truth: a criterion without its data is left out, not guessed. A trace is
*right* when it is well formed, states at least one criterion, and every stated one is right.

**Against the history**, a *citation* is each thing a trace says the history holds, and it
is hallucinated when the history does not hold it:

- every `#n`: history item n exists (items are numbered from 1 as the prompt shows them);
- a described item `#n (words; codes P)`: item n has each word as a value, its SID starts with P;
- a relation `#a relates to #b (shared: …)`: both items have each shared value and prefix;
- an interest point's label: each value belongs to one of its evidence items;
- a due interest's item (`It comes back like <SID>`): some history item has that SID;
- a short interest's timing (`3 6 ago`): each item that many ago exists and has the label's
  first value (its category: a short interest folds in the category's other styles);
- the chosen (or fallback) interest's label values, expected attributes, SID prefix and
  Term-ID words: some history item has them.

Values are checked only when the items table is known; `#n` and SID prefixes always. The
hallucination rate of a run is hallucinated citations / citations over all its traces.
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from data_builders.tasks.catalog import ItemCatalog, build_catalog
from data_builders.tasks.cot import (
    CITATION,
    ITEM_SEP,
    LIST_SEP,
    NO_WORDS,
    SHARED_PREFIX,
    UNNAMED_INTEREST,
    DeterministicCot,
    section_texts,
)
from data_builders.tasks.interests import PlantedInterests, read_truth
from data_builders.tasks.phrasing import load_templates
from evaluation.metrics import compute_metrics

CRITERIA = ("sid_prefix", "category", "attributes", "terms", "interest", "due")


# ---------------------------------------------------------------------- reading a trace


@dataclass
class StatedTrace:
    """What a trace states, as written (values are split later, against the catalogue)."""

    well_formed: bool
    citations: list[int] = field(default_factory=list)  # every #n
    recent: list[tuple[int, str, str]] = field(default_factory=list)  # (#n, words, codes)
    latest: list[str] = field(default_factory=list)  # short style: words of the latest items, newest first
    relations: list[tuple[int, int, str]] = field(default_factory=list)  # (#a, #b, shared)
    interests: list[tuple[str, list[int] | None]] = field(
        default_factory=list
    )  # (label, evidence #n; None: short)
    ago: list[list[int]] = field(default_factory=list)  # short style: each interest's "3 6 ago"
    chosen_label: str | None = None  # the interest the next item serves
    due: bool | None = None  # short style: True "interest X, due now", False "none is due"
    due_item: str | None = None  # short style: the SID of "It comes back like <SID>"
    fallback_label: str | None = None  # "no interest clearly continues; the most recent is …"
    attributes: str = ""  # "Expect an item with …"
    prefix: str | None = None  # "Its SID likely starts with …"
    terms: list[str] = field(default_factory=list)  # "Likely Term-ID words: …"


def _sentence(template: str, end: bool = True, **fields: str) -> re.Pattern:
    """A template as a regex: its text literal, each `{field}` a named group (pattern from
    `fields`, else lazy text). With `end`, the match stops only where a sentence can end (before
    a space or the end), so a full stop inside a value ("3.5 mm") does not cut it short."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name:
            parts.append(f"(?P<{name}>{fields.get(name, '.*?')})")
    return re.compile("".join(parts) + (r"(?=\s|$)" if end else ""))


@functools.cache
def _patterns() -> dict[str, re.Pattern]:
    """The reader's regexes, built once from the builder's phrasings (templates/cot.yaml)."""
    t = load_templates("cot")
    d, e, r, short = t["derivation"], t["evolution"], t["recommendation"], t["short"]
    number = r"\d+"
    why = "(?:" + "|".join(re.escape(w) for w in r["why"].values()) + ")"
    pattern = "(?:" + "|".join(re.escape(w) for w in short["patterns"].values()) + ")"
    return {
        "short_derivation": _sentence(short["derivation"]),
        "short_evolution": _sentence(short["evolution"]),
        "short_interest": _sentence(short["interest"], end=False, pattern=pattern, ago=r"\d+(?: \d+)*"),
        "short_due": _sentence(short["due"]),
        "short_due_item": _sentence(short["due_item"]),
        "short_open": _sentence(short["open"]),
        "opening": _sentence(d["opening"]),
        "item": re.compile(
            _sentence(d["item"], end=False, n=number, what=r"\((?P<words>.*?)\)").pattern
            + f"(?={re.escape(ITEM_SEP)}|$)"
        ),
        "relation": _sentence(d["relation"], a=number, b=number),
        "interest": _sentence(e["interest"], j=number, evidence=rf"#\d+(?:{re.escape(LIST_SEP)}#\d+)*"),
        "chosen": _sentence(r["chosen"], j=number, why=why),
        "fallback": _sentence(r["fallback"], j=number),
        "expect": _sentence(r["expect"]),
        "prefix": _sentence(r["prefix"]),
        "terms": _sentence(r["terms"]),
        "unnamed": _sentence(UNNAMED_INTEREST, end=False, j=number),
    }


def _codes_marker() -> str:
    """What comes before a described item's SID prefix ("; codes ")."""
    return ITEM_SEP + load_templates("cot")["derivation"]["item_codes"].split("{prefix}")[0]


def _numbers(text: str) -> list[int]:
    return [int(n) for n in CITATION.findall(text)]


def read_trace(text: object) -> StatedTrace:
    """The statements of a trace in the deterministic format; never raises."""
    if not isinstance(text, str):
        return StatedTrace(well_formed=False)
    sections = section_texts(text)
    derivation, evolution, recommendation = sections or (text, text, text)
    p = _patterns()
    out = StatedTrace(well_formed=sections is not None, citations=_numbers(text))
    opening = p["opening"].search(derivation)
    for m in p["item"].finditer(opening.group("items") if opening else ""):
        words, _, codes = m.group("words").partition(_codes_marker())
        out.recent.append((int(m.group("n")), "" if words == NO_WORDS else words, codes))
    out.relations = [
        (int(m.group("a")), int(m.group("b")), m.group("shared")) for m in p["relation"].finditer(derivation)
    ]
    out.interests = [
        (m.group("label"), _numbers(m.group("evidence"))) for m in p["interest"].finditer(evolution)
    ]
    _read_short(out, derivation, evolution, p)
    names = ("chosen", "fallback", "expect", "prefix", "terms", "short_due", "short_due_item", "short_open")
    found = {name: p[name].search(recommendation) for name in names}
    chosen = found["chosen"] or found["short_due"]
    fallback = found["fallback"]
    if found["short_due"] or found["short_open"]:
        out.due = bool(found["short_due"])
    out.due_item = found["short_due_item"].group("sid") if found["short_due_item"] else None
    out.chosen_label = chosen.group("label") if chosen else None
    out.fallback_label = fallback.group("label") if fallback else None
    out.attributes = found["expect"].group("attributes") if found["expect"] else ""
    out.prefix = found["prefix"].group("prefix") if found["prefix"] else None
    out.terms = found["terms"].group("terms").split(LIST_SEP) if found["terms"] else []
    return out


def _read_short(out: StatedTrace, derivation: str, evolution: str, p: dict[str, re.Pattern]) -> None:
    """The short style's statements: latest items' words, interests without citations."""
    latest = p["short_derivation"].match(derivation)
    if latest:
        out.latest = [w for w in latest.group("items").split(ITEM_SEP) if w != NO_WORDS]
    listed = p["short_evolution"].match(evolution)
    if listed:
        for piece in listed.group("interests").split(ITEM_SEP):
            m = p["short_interest"].fullmatch(piece)
            if m:
                out.interests.append((m.group("label"), None))
                out.ago.append([int(k) for k in m.group("ago").split()])


# ---------------------------------------------------------------------- scoring one trace


@dataclass
class TraceScore:
    """One trace's verdicts: per criterion True (right), False (wrong), None (not stated);
    criteria without their data are absent."""

    well_formed: bool
    criteria: dict[str, bool | None]
    cited: int
    hallucinated: int

    @property
    def right(self) -> bool:
        stated = [v for v in self.criteria.values() if v is not None]
        return self.well_formed and bool(stated) and all(stated)


class TraceScorer:
    """Scores traces against one item index, its items table (optional) and the ground truth (optional)."""

    def __init__(
        self,
        index,
        catalog: ItemCatalog | None = None,
        planted: PlantedInterests | None = None,
        source: str = "the item index only",
    ):
        self.index = index
        self.catalog = catalog
        self.planted = planted
        self.source = source  # what the traces are scored against, for the report
        self.has_values = catalog is not None and any(catalog.attributes)
        self.has_terms = index.term_ids is not None
        self.known: set[str] = set()
        self.category_values: set[str] = set()
        self.levels: set[str] = set()
        self.names: dict[str, str] = {}  # as a trace writes the name ("price band") -> name
        if self.has_values:
            self.known = {v for attrs in catalog.attributes for v in attrs.values()}
            self.category_values = {v for cats in catalog.categories for v in cats}
            depth = max(len(c) for c in catalog.categories)
            self.levels = set(catalog.attribute_names[:depth])
            self.names = {n.replace("_", " "): n for n in catalog.attribute_names}

    @classmethod
    def from_folder(cls, index, folder: str | Path | None) -> TraceScorer:
        """A scorer with what a build-data folder holds: items.parquet, and truth.parquet on the synthetic world."""
        from onereason.tables import ITEMS_FILE, read_items

        if folder is None or not (Path(folder) / ITEMS_FILE).is_file():
            return cls(index)
        truth = read_truth(folder)
        catalog = build_catalog(read_items(folder), index)
        planted = PlantedInterests(*truth) if truth else None
        return cls(index, catalog, planted, f"the item index and {folder}")

    @property
    def criteria(self) -> list[str]:
        """The criteria this scorer has the data for."""
        have = {
            "sid_prefix": True,
            "category": self.has_values,
            "attributes": self.has_values,
            "terms": self.has_terms,
            "interest": self.planted is not None,
            "due": self.planted is not None,
        }
        return [c for c in CRITERIA if have[c]]

    def score(self, text: object, history: Sequence[str], target: str, user_id: str = "") -> TraceScore:
        """The verdicts on one trace written for `history` (item ids, oldest first) and `target`."""
        history = [h for h in history if h in self.index]  # numbered as the prompt shows them
        stated = read_trace(text)
        criteria = self._against_target(stated, history, target, user_id)
        if not stated.well_formed:
            criteria = dict.fromkeys(criteria, False)
        checks = self._against_history(stated, history)
        return TraceScore(stated.well_formed, criteria, len(checks), checks.count(False))

    # -- values ----------------------------------------------------------------------

    def _split(self, text: str | None) -> list[str]:
        """Values joined by LIST_SEP, longest known value first (values may hold commas)."""
        pieces = text.split(LIST_SEP) if text else []
        out, i = [], 0
        while i < len(pieces):
            j = next(
                (j for j in range(len(pieces), i, -1) if LIST_SEP.join(pieces[i:j]) in self.known), i + 1
            )
            out.append(LIST_SEP.join(pieces[i:j]))
            i = j
        return out

    def _label_values(self, label: str | None) -> list[str]:
        if not label or _patterns()["unnamed"].fullmatch(label):
            return []
        return self._split(label)

    def _attributes(self, text: str) -> list[tuple[str | None, str]]:
        """(name, value) pairs of "name value, name value"; a piece without a known name
        continues the previous value (a value with a comma), or has no name."""
        out: list[tuple[str | None, str]] = []
        for piece in text.split(LIST_SEP) if text else []:
            shown = max((n for n in self.names if piece.startswith(n + " ")), key=len, default=None)
            if shown is not None:
                out.append((self.names[shown], piece[len(shown) + 1 :]))
            elif out:
                out[-1] = (out[-1][0], out[-1][1] + LIST_SEP + piece)
            else:
                out.append((None, piece))
        return out

    def _values(self, item: str | None) -> dict[str, str]:
        pos = self.catalog.position.get(item) if self.catalog is not None and item else None
        return self.catalog.attributes[pos] if pos is not None else {}

    def _starts(self, prefix: str | None, item: str | None) -> bool:
        codes = self.index.sid_format.prefix_codes(prefix)
        return codes is not None and item in self.index and self.index.sid(item)[: len(codes)] == codes

    # -- against the target ----------------------------------------------------------

    def _against_target(
        self, stated: StatedTrace, history: list[str], target: str, user_id: str
    ) -> dict[str, bool | None]:
        out: dict[str, bool | None] = {}
        out["sid_prefix"] = None if stated.prefix is None else self._starts(stated.prefix, target)
        if self.has_values:
            attrs = self._attributes(stated.attributes)
            label = [v for v in self._label_values(stated.chosen_label) if v in self.category_values]
            categories = label + [v for name, v in attrs if name in self.levels]
            others = [(name, v) for name, v in attrs if name not in self.levels]
            mine = self._values(target)
            on_path = set(self.catalog.categories[self.catalog.position[target]]) if mine else set()
            out["category"] = all(v in on_path for v in categories) if categories else None
            out["attributes"] = all(mine.get(n) == v for n, v in others) if others else None
        if self.has_terms:
            own = set(self.index.terms(target)) if target in self.index else set()
            out["terms"] = set(stated.terms) <= own if stated.terms else None
        planted = self.planted.behind(user_id, history, target) if self.planted is not None else None
        if planted is not None:
            named = set(self._split(stated.chosen_label))
            out["interest"] = (
                None if stated.due is False else {planted["subcategory"], planted["style"]} <= named
            )
        if self.planted is not None:
            periodic = planted is not None and planted["pattern"] == "periodic"
            out["due"] = (
                None if stated.due is None else stated.due == periodic and (not periodic or out["interest"])
            )
        return out

    # -- against the history ---------------------------------------------------------

    def _against_history(self, stated: StatedTrace, history: list[str]) -> list[bool]:
        """One verdict per citation: True when the history holds it."""

        def item(n: int) -> str | None:
            return history[n - 1] if 1 <= n <= len(history) else None

        checks = [item(n) is not None for n in stated.citations]
        for n, words, codes in stated.recent:
            if self.has_values:
                checks += [w in self._values(item(n)).values() for w in self._split(words)]
            if codes:
                checks.append(self._starts(codes, item(n)))
        if self.has_values:  # short style: the k-th latest item has each of its words
            for k, words in enumerate(stated.latest):
                item_k = history[-1 - k] if k < len(history) else None
                checks += [w in self._values(item_k).values() for w in self._split(words)]
        for a, b, shared in stated.relations:
            values, prefix = self._shared(shared)
            if self.has_values:
                both = self._values(item(a)).values(), self._values(item(b)).values()
                checks += [v in both[0] and v in both[1] for v in values]
            if prefix is not None:
                checks.append(self._starts(prefix, item(a)) and self._starts(prefix, item(b)))
        if self.has_values:
            anywhere = {v for h in history for v in self._values(h).values()}
            for label, evidence in stated.interests:
                held = (
                    anywhere
                    if evidence is None
                    else {v for n in evidence for v in self._values(item(n)).values()}
                )
                checks += [v in held for v in self._label_values(label)]
            label = stated.chosen_label or stated.fallback_label
            checks += [v in anywhere for v in self._label_values(label)]
            checks += [
                any(self._values(h).get(n) == v for h in history)
                for n, v in self._attributes(stated.attributes)
            ]
        for (label, _), lags in zip([i for i in stated.interests if i[1] is None], stated.ago):
            leading = self._label_values(label)[:1] if self.has_values else []
            for k in lags:  # the item k ago exists and is on the label's leading value (its category)
                lagged = history[-k] if 1 <= k <= len(history) else None
                checks.append(lagged is not None and all(v in self._values(lagged).values() for v in leading))
        if stated.prefix is not None:
            checks.append(any(self._starts(stated.prefix, h) for h in history))
        if stated.due_item is not None:
            checks.append(any(self.index.sid_text(h) == stated.due_item for h in history))
        if self.has_terms:
            terms = {t for h in history for t in self.index.terms(h)}
            checks += [t in terms for t in stated.terms]
        return checks

    def _shared(self, text: str) -> tuple[list[str], str | None]:
        """A relation's shared values and its shared SID prefix (None when it states none)."""
        head, marker, prefix = text.rpartition(SHARED_PREFIX)
        if marker and (not head or head.endswith(LIST_SEP)):
            return self._split(head[: -len(LIST_SEP)] if head else ""), prefix
        return self._split(text), None


# ---------------------------------------------------------------------- a run's trace quality


def trace_quality(
    run: Sequence[Mapping], scorer: TraceScorer, histories: Mapping[str, Sequence[str]], k: int = 10
) -> dict:
    """The trace-quality block of a thinking run's report (see the module doc).

    Every sampled trace is scored; a user's trace is right when all its traces are (one per
    user unless `think_samples` > 1). `hit@k` is then taken, with `compute_metrics`, over the
    users with a right trace and over the others.
    """
    counts = {c: Counter() for c in scorer.criteria}
    traces = right = well_formed = cited = hallucinated = 0
    right_users, wrong_users = [], []
    for record in run:
        history = histories.get(str(record.get("key")), ())
        target = (record.get("targets") or [""])[0]
        scores = [
            scorer.score(text, history, target, str(record.get("user_id", "")))
            for text in record.get("think") or [""]
        ]
        for s in scores:
            traces += 1
            right += s.right
            well_formed += s.well_formed
            cited += s.cited
            hallucinated += s.hallucinated
            for c, verdict in s.criteria.items():
                counts[c][{True: "right", False: "wrong", None: "not_stated"}[verdict]] += 1
        (right_users if all(s.right for s in scores) else wrong_users).append(record)
    metric = f"hit@{k}"
    return {
        "scored_against": scorer.source,
        "traces": traces,
        "well_formed": well_formed / traces if traces else None,
        "right": right / traces if traces else None,
        "criteria": {c: _criterion(counts[c]) for c in scorer.criteria},
        "not_scored": {c: NOT_SCORED[c] for c in CRITERIA if c not in scorer.criteria},
        "hallucination": {
            "citations": cited,
            "hallucinated": hallucinated,
            "rate": hallucinated / cited if cited else None,
        },
        "hit_by_trace": {
            "metric": metric,
            "right": _hit(right_users, k),
            "wrong": _hit(wrong_users, k),
        },
    }


NOT_SCORED = {
    "category": "no items table (items.parquet) beside the data",
    "attributes": "no items table (items.parquet) beside the data",
    "terms": "the item index has no Term IDs",
    "interest": "no ground truth: only the synthetic world records the interest behind each interaction",
    "due": "no ground truth: only the synthetic world records which interests are periodic",
}


def _criterion(c: Counter) -> dict:
    judged = c["right"] + c["wrong"]
    return {
        "right": c["right"],
        "wrong": c["wrong"],
        "not_stated": c["not_stated"],
        "accuracy": c["right"] / judged if judged else None,
    }


def _hit(records: list[Mapping], k: int) -> dict:
    value = compute_metrics(records, (k,), "item").means[f"hit@{k}"] if records else None
    return {"users": len(records), "value": value}


# ---------------------------------------------------------------------- the builder's trace at inference


def history_tracer(
    index, data_folder: str | Path, tasks_config: str | Path
) -> Callable[[Sequence[str]], str]:
    """history (item ids, oldest first) -> the short trace the task build writes for it.

    A short trace reads only the history (the Recommendation says which interest is due, or
    that none is), so the builder can write it at inference, with no target to guard: this is
    the trace a model that learnt the builder without a slip would write (`onereason eval
    --trace_source history`). `tasks_config` is the task build's `config.yaml`.
    """
    import yaml

    from data_builders.tasks.build import BuildTasksConfig
    from data_builders.tasks.shards import cot_config
    from onereason.tables import read_items

    settings = yaml.safe_load(Path(tasks_config).read_text()) or {}
    known = BuildTasksConfig.__dataclass_fields__
    config = BuildTasksConfig(**{k: v for k, v in settings.items() if k in known})
    if config.trace_style != "short":
        raise ValueError(
            f"{tasks_config}: trace_source history needs a task build with trace_style short "
            f"(this one is {config.trace_style!r}: a full trace names the interest the target serves)"
        )
    catalog = build_catalog(read_items(data_folder), index)
    cot = DeterministicCot(catalog, cot_config(config))

    def trace(history: Sequence[str]) -> str:
        shown = [catalog.position[h] for h in history if h in catalog.position][-config.max_history :]
        return cot.build(shown, None, []).text if shown else ""

    return trace
