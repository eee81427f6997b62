"""Term IDs at run time: normalise, check, parse and ground them (builders, rewards and evaluation share this).

A Term ID (GRLM) names an item by exactly T keywords in slot order (category, function,
feature, audience, distinguishing point). A term is 1–3 lowercase ASCII words in base form
(singular), no stopwords; an item's terms are distinct. `data_builders.identifiers.term_ids`
chooses the terms of each item; this module holds what every stage needs about them:

- `normalize_term`, `is_legal_term`, `is_legal_term_id`: the term rules;
- `parse_terms(output, T)`: lenient parse of a generated Term ID (`a | b | c`, commas, labels);
- `render_terms` / `parse_answer_terms`: the answer format of Term-ID tasks, `[a, b, c]`;
- `ElasticGrounder`: generated Term IDs -> ranked catalogue items.

Elastic grounding:

A model that writes Term IDs may write one no item has. Grounding maps it back, trying
rules from strict to loose and saying which one fired:

1. `exact`: an item whose Term ID is exactly the generated one (score 1.0);
2. `overlap`: position-weighted term overlap through an inverted index — a generated term
   found in the *same* slot of an item adds that slot's weight, found in another slot adds
   `off_slot` × the weight; the score is divided by the weights' sum (so it is in [0, 1]);
3. `embedding`: when no item reaches `min_overlap`, cosine similarity between the encoded
   terms and the item embeddings.

The first rule with a result answers (up to `k` items; overlap ties by catalogue order;
overlap scores below `min_overlap` count as no result). The index is flat numpy (a forward
item -> terms matrix and CSR postings), so a query costs the length of its selective postings.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

SLOTS = ("category", "function", "feature", "audience", "distinguishing")
MAX_TERM_WORDS = 3
_WORD = re.compile(r"[a-z0-9]+")
_LEGAL = re.compile(rf"^[a-z0-9]+( [a-z0-9]+){{0,{MAX_TERM_WORDS - 1}}}$")
STOPWORDS = frozenset(
    """a an the and or of for to in on with by from at as is are be this that these those it its
    into per your our you we they their them than then so such not no nor can will may
    all any each other more most very also only just about over under up down out off
    new inch inches count pack piece pcs pc set x lb oz mm cm ft in n a
    one two three four five six seven eight nine ten""".split()
)


# ---------------------------------------------------------------- normalisation


def base_form(word: str) -> str:
    """A deterministic English singular (idempotent: base_form(base_form(w)) == base_form(w))."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    if word.endswith(("ches", "shes", "xes", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def words(text: str) -> list[str]:
    """Lowercase ASCII words of `text`, in base form, stopwords kept."""
    ascii_text = unicodedata.normalize("NFKD", text or "").encode("ascii", "ignore").decode().lower()
    return [base_form(w) for w in _WORD.findall(ascii_text)]


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOPWORDS and not w.isdigit() and len(w) > 1]


def normalize_term(text: str, max_words: int = MAX_TERM_WORDS) -> str:
    """Free text -> a legal term (its first `max_words` content words), or '' if none."""
    return " ".join(content_words(text)[:max_words])


def is_legal_term(term: str) -> bool:
    if not isinstance(term, str) or not _LEGAL.match(term):
        return False
    return all(w == base_form(w) and w not in STOPWORDS for w in term.split())


def is_legal_term_id(terms: Sequence[str], num_terms: int = len(SLOTS)) -> bool:
    """Exactly `num_terms` legal, distinct terms."""
    return len(terms) == num_terms and len(set(terms)) == num_terms and all(is_legal_term(t) for t in terms)


def parse_terms(output: str, num_terms: int) -> list[str] | None:
    """Lenient parse of one generation -> normalised terms, or None when not a legal Term ID.

    Accepts `a | b | c | d | e`, commas or semicolons, `slot: term` labels, a leading
    'Term ID:', and ignores a `<think>…</think>` block; takes the first line that parses.
    """
    text = re.sub(r"<think>.*?(</think>|$)", " ", output or "", flags=re.S)
    for line in text.splitlines():
        line = re.sub(r"^\s*(term id|answer)\s*:", "", line.strip(), flags=re.I)
        parts = [p for p in re.split(r"[|;,]", line) if p.strip()]
        if len(parts) != num_terms:
            continue
        terms = [normalize_term(p.split(":", 1)[-1]) for p in parts]
        if is_legal_term_id(terms, num_terms):
            return terms
    return None


# ---------------------------------------------------------------- answer format

_ANSWER = re.compile(r"\[([^\[\]]+)\]")


def render_terms(terms: Sequence[str] | None) -> str:
    """A Term ID as text: its terms in slot order, comma-separated (terms never contain commas)."""
    return ", ".join(terms or [])


def parse_answer_terms(text: str) -> list[str] | None:
    """The Term ID of a Term-ID answer (`[term, term, …]`), or None."""
    match = _ANSWER.search(text)
    if not match:
        return None
    terms = [t.strip() for t in match.group(1).split(",") if t.strip()]
    return terms or None


# ---------------------------------------------------------------- grounding


@dataclass(frozen=True)
class Grounded:
    item_id: str
    score: float
    rule: str  # "exact" | "overlap" | "embedding"


def default_slot_weights(num_terms: int) -> list[float]:
    """Earlier slots (category, function) are broader; weight decays gently, the last slot
    (distinguishing point) gets a bonus because matching it is the strongest evidence."""
    w = [1.0 - 0.1 * i for i in range(num_terms)]
    w[-1] = 1.0
    return w


class ElasticGrounder:
    """Build once from the catalogue's Term IDs; `ground(terms)` or `ground_many(list)`."""

    def __init__(
        self,
        item_ids: Sequence[str],
        terms: Sequence[Sequence[str]],
        slot_weights: Sequence[float] | None = None,
        off_slot: float = 0.5,
        min_overlap: float = 0.2,
        item_embeddings: np.ndarray | None = None,
        encode: Callable[[list[str]], np.ndarray] | None = None,
        max_postings: int = 5000,
    ):
        if len(item_ids) != len(terms):
            raise ValueError(f"grounding: {len(item_ids)} item ids but {len(terms)} Term IDs")
        self.item_ids = list(item_ids)
        self.num_terms = max((len(t) for t in terms), default=0)
        self.slot_weights = np.asarray(slot_weights or default_slot_weights(self.num_terms), dtype=np.float32)
        if len(self.slot_weights) != self.num_terms:
            raise ValueError(f"grounding: {len(self.slot_weights)} slot weights for {self.num_terms} slots")
        self.off_slot = off_slot
        self.min_overlap = min_overlap
        self.encode = encode
        self.item_embeddings = None
        if item_embeddings is not None:
            emb = np.asarray(item_embeddings, dtype=np.float32)
            self.item_embeddings = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        # Forward index (item -> term ids per slot, -1 = empty) and inverted index in CSR
        # form (term id -> items holding it), sorted by term id then item.
        self.vocab: dict[str, int] = {}
        self._item_terms = np.full((len(terms), self.num_terms), -1, dtype=np.int64)
        for i, t in enumerate(terms):
            for s, term in enumerate(t):
                self._item_terms[i, s] = self.vocab.setdefault(term, len(self.vocab))
        flat = self._item_terms.ravel()
        present = flat >= 0
        order = np.argsort(flat[present], kind="stable")
        positions = np.flatnonzero(present)
        self._post_items = (positions // self.num_terms)[order]
        self._post_slots = (positions % self.num_terms).astype(np.int8)[order]
        self._acc = np.zeros(len(terms), dtype=np.float32)
        self._offsets = np.concatenate(
            [[0], np.cumsum(np.bincount(flat[present], minlength=len(self.vocab)))]
        )
        self._weight_total = float(self.slot_weights.sum())
        self.max_postings = max_postings
        self._hash_mult = np.random.default_rng(0).integers(
            1, 2**63, self.num_terms, dtype=np.uint64
        ) | np.uint64(1)
        keys = self._row_keys(self._item_terms)
        self._key_order = np.argsort(keys, kind="stable")
        self._sorted_keys = keys[self._key_order]

    def __len__(self) -> int:
        return len(self.item_ids)

    def _normalize(self, terms: Sequence[str]) -> tuple[str, ...]:
        return tuple(t if t in self.vocab else normalize_term(t) for t in terms)

    def overlap_scores(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(item indices, scores in [0, 1]) of the candidate items, each item once.

        `q`: the query's term ids per slot (`vocab` ids, negative = unknown). Candidates are
        the items holding a *selective* query term (postings no longer than `max_postings`);
        a very common term (an audience like 'general') only adds to their scores, so one
        query never scans a large share of the catalogue. With no selective term, the
        shortest posting list is the candidate set. Scores accumulate in a reused dense
        array (so a grounder is not thread-safe).
        """
        known = [(pos, int(t)) for pos, t in enumerate(q[: self.num_terms]) if t >= 0]
        if not known:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        lengths = [self._offsets[t + 1] - self._offsets[t] for _, t in known]
        selective = [kt for kt, n in zip(known, lengths) if n <= self.max_postings] or [
            known[int(np.argmin(lengths))]
        ]
        common = [kt for kt in known if kt not in selective]
        acc, w, off = self._acc, self.slot_weights, self.off_slot
        touched = []
        for pos, t in selective:
            lo, hi = self._offsets[t], self._offsets[t + 1]
            items = self._post_items[lo:hi]
            acc[items] += np.where(self._post_slots[lo:hi] == pos, w[pos], off * w[pos])
            touched.append(items)
        cands = np.concatenate(touched) if len(touched) > 1 else touched[0]
        scores = acc[cands]
        # one occurrence per item: whichever write lands, exactly one position reads it back
        acc[cands] = np.arange(len(cands), dtype=np.float32)
        first = acc[cands] == np.arange(len(cands), dtype=np.float32)
        acc[cands] = 0.0
        cands, scores = cands[first], scores[first]
        if common:
            held = self._item_terms[cands]
            for pos, t in common:
                scores += np.where(
                    held[:, pos] == t, w[pos], np.where((held == t).any(axis=1), off * w[pos], 0.0)
                )
        return cands, (scores / self._weight_total).astype(np.float32)

    def ground(self, terms: Sequence[str], k: int = 10) -> list[Grounded]:
        """Ranked items for one generated Term ID (see the module doc for the rules)."""
        return self.ground_many([terms], k)[0]

    def ground_many(self, queries: Sequence[Sequence[str]], k: int = 10) -> list[list[Grounded]]:
        """Ground many Term IDs: exact matches are looked up for all queries at once, the
        overlap rule runs per remaining query, the embedding rule encodes its queries in one batch."""
        normalized = [self._normalize(q) for q in queries]
        qids = np.full((len(queries), self.num_terms), -2, dtype=np.int64)  # -2: unknown term
        for row, terms in enumerate(normalized):
            ids = [self.vocab.get(t, -2) for t in terms[: self.num_terms]]
            qids[row, : len(ids)] = ids
        exact = self._exact_matches(qids, np.array([len(t) == self.num_terms for t in normalized]))
        results: list[list[Grounded]] = []
        fallback = []
        for row, hits in enumerate(exact):
            if hits:
                results.append([Grounded(self.item_ids[i], 1.0, "exact") for i in hits[:k]])
                continue
            idx, scores = self.overlap_scores(qids[row])
            keep = scores >= self.min_overlap
            idx, scores = idx[keep], scores[keep]
            results.append(
                [Grounded(self.item_ids[int(idx[j])], float(scores[j]), "overlap") for j in _top_k(scores, k)]
            )
            if not results[-1] and self.encode is not None and self.item_embeddings is not None:
                fallback.append(row)
        if fallback:
            texts = [" ".join(normalized[q]) for q in fallback]
            sims_idx, sims = self._search(self.encode(texts), k)
            for q, ids, sc in zip(fallback, sims_idx, sims):
                results[q] = [Grounded(self.item_ids[int(i)], float(s), "embedding") for i, s in zip(ids, sc)]
        return results

    def _row_keys(self, ids: np.ndarray) -> np.ndarray:
        """A 64-bit hash per row of term ids (wrapping multiply-add); equal rows, equal keys."""
        return ((ids + 2).astype(np.uint64) * self._hash_mult[None, :]).sum(axis=1, dtype=np.uint64)

    def _exact_matches(self, qids: np.ndarray, complete: np.ndarray) -> list[list[int]]:
        """Per query, the items whose Term ID equals it (hash lookup, then a row check)."""
        keys = self._row_keys(qids)
        lo = np.searchsorted(self._sorted_keys, keys, side="left")
        hi = np.searchsorted(self._sorted_keys, keys, side="right")
        single = complete & (hi - lo == 1)
        first_item = self._key_order[np.minimum(lo, len(self._key_order) - 1)]
        single_ok = single & (self._item_terms[first_item] == qids).all(axis=1)
        out: list[list[int]] = []
        for row in range(len(qids)):
            if single_ok[row]:
                out.append([int(first_item[row])])
            elif complete[row] and hi[row] - lo[row] > 1:  # several items share the key
                rows = self._key_order[lo[row] : hi[row]]
                out.append([int(i) for i in rows[(self._item_terms[rows] == qids[row]).all(axis=1)]])
            else:
                out.append([])
        return out

    def _embedding(self, terms: Sequence[str], k: int) -> list[Grounded]:
        ids, scores = self._search(self.encode([" ".join(terms)]), k)
        return [Grounded(self.item_ids[int(i)], float(s), "embedding") for i, s in zip(ids[0], scores[0])]

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        q = np.asarray(queries, dtype=np.float32)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        index = faiss.IndexFlatIP(self.item_embeddings.shape[1])
        index.add(self.item_embeddings)
        scores, ids = index.search(q, min(k, len(self.item_ids)))
        return ids, scores


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, descending; ties keep the lower index first."""
    if k >= len(scores):
        return np.lexsort((np.arange(len(scores)), -scores))
    part = np.argpartition(-scores, k - 1)[:k]
    threshold = scores[part].min()
    cand = np.flatnonzero(scores >= threshold)  # include all ties at the cut for a stable order
    ranked = cand[np.lexsort((cand, -scores[cand]))]
    return ranked[:k]
