"""Term IDs (GRLM): each item named by exactly T normalised keywords, in slot order.

Slots: category, function, feature, audience, distinguishing point. A term is 1–3 lowercase
ASCII words in base form (singular), no stopwords; an item's terms are distinct. Similar
items should use the same words for the same idea, so every generator sees the item's
nearest neighbours (by embedding) and prefers vocabulary they share.

Two generators:
- `extractive`: offline and deterministic, from title, categories, brand and description;
  candidates per slot are scored from the item's own text, plus a vote from its neighbours'
  candidates (the consistency term).
- `llm`: any local causal LM (transformers, or vLLM when installed), batched, a GRLM-style
  prompt listing the neighbours and their terms; outputs are parsed leniently, malformed
  ones are retried with sampling, and what is still malformed falls back to `extractive`
  — every path counted in the report.

Collisions (two items with the same T terms) are resolved through the distinguishing slot:
the later item takes its next distinguishing candidate (brand, model number, rare title
word …) that makes its Term ID unique, finally `variant <n>`.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from onereason.terms import (  # noqa: F401  (the term rules live in onereason.terms)
    MAX_TERM_WORDS,
    SLOTS,
    STOPWORDS,
    base_form,
    content_words,
    is_legal_term,
    is_legal_term_id,
    normalize_term,
    parse_terms,
    words,
)

logger = logging.getLogger(__name__)

# Words that say who an item is for -> the audience term (checked in this order).
AUDIENCE_LEXICON: dict[str, tuple[str, ...]] = {
    "laboratory": ("lab", "laboratory", "scientific", "research", "chemistry", "microscope"),
    "medical": ("medical", "dental", "clinic", "clinical", "surgical", "hospital", "patient", "nurse"),
    "student": ("student", "school", "classroom", "education", "educational", "kid", "child", "teacher"),
    "industrial": ("industrial", "commercial", "factory", "heavy", "warehouse", "machine", "machinist"),
    "professional": ("professional", "pro", "contractor", "technician", "electrician", "plumber"),
    "household": ("home", "household", "residential", "kitchen", "garden", "diy", "family"),
    "hobbyist": ("hobbyist", "hobby", "beginner", "enthusiast", "maker"),
    "traveller": ("traveller", "traveler", "travel", "outdoor", "camping"),
}
DEFAULT_AUDIENCE = "general"
FALLBACKS = {
    "category": "product",
    "function": "general use",
    "feature": "standard",
    "audience": DEFAULT_AUDIENCE,
}


# ---------------------------------------------------------------- item fields


@dataclass
class ItemFields:
    item_id: str
    title: str
    description: str
    brand: str
    categories: list[str]


def item_fields(items: pa.Table) -> list[ItemFields]:
    """The fields Term IDs read, from the canonical items table (missing columns -> empty)."""
    n = items.num_rows

    def col(name):
        return items.column(name).to_pylist() if name in items.column_names else [None] * n

    cats = col("categories")
    out = []
    for item_id, title, desc, brand, cat in zip(
        col("item_id"), col("title"), col("description"), col("brand"), cats
    ):
        if isinstance(cat, str):  # tolerate "a,b,c" strings from raw sources
            cat = [c for c in cat.split(",")]
        out.append(
            ItemFields(
                str(item_id),
                title or "",
                desc or "",
                brand or "",
                [c for c in (cat or []) if c and c.strip()],
            )
        )
    return out


# ---------------------------------------------------------------- extractive candidates


def _without_codes(text: str) -> str:
    """Drop whitespace tokens holding a digit ('GA-886', '1/2-Inch'): model codes, sizes."""
    return " ".join(tok for tok in text.split() if not any(c.isdigit() for c in tok))


def _head_noun(title: str) -> str:
    """Last content word of the title's first clause ('… Leg Length Staples, Steel' -> 'staple')."""
    first = re.split(r"[,(\[;:|]| - | with | for ", title, maxsplit=1)[0]
    cw = [w for w in content_words(_without_codes(first)) if w.isalpha()]
    return cw[-1] if cw else ""


def _purpose(description: str) -> str:
    """Content words after 'for' / 'used to' / 'designed to' in the description."""
    m = re.search(
        r"\b(?:ideal for|designed for|used for|use for|used to|designed to|for)\s+([^.;,]+)",
        description.lower(),
    )
    if not m:
        return ""
    cw = [w for w in content_words(m.group(1)) if w not in {"use", "using", "used", "job"} and w.isalpha()]
    return " ".join(cw[:2])


@dataclass
class Candidates:
    """Scored candidate terms per slot for one item (best first)."""

    per_slot: dict[str, list[tuple[str, float]]] = field(default_factory=dict)


def _idf(docs: list[set[str]]) -> dict[str, float]:
    df = Counter(w for d in docs for w in d)
    n = len(docs)
    return {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()}


def extract_candidates(fields: list[ItemFields]) -> list[Candidates]:
    """Per item and slot, the candidate terms its own text supports, with scores in (0, 1]."""
    title_words = [content_words(_without_codes(f.title)) for f in fields]
    desc_words = [content_words(f.description) for f in fields]
    idf = _idf([set(t) | set(d) for t, d in zip(title_words, desc_words)])
    max_idf = max(idf.values(), default=1.0)
    out = []
    for f, tw, dw in zip(fields, title_words, desc_words):
        cats = [normalize_term(c) for c in f.categories]
        cats = [c for c in cats if c]
        brand = normalize_term(f.brand, max_words=2)
        head = _head_noun(f.title)
        cand: dict[str, list[tuple[str, float]]] = {}
        cand["category"] = [(cats[-1], 1.0)] if cats else []
        if head:
            cand["category"].append((head, 0.5))
        function = []
        if len(cats) >= 3:
            function.append((cats[-2], 1.0))
        purpose = _purpose(f.description)
        if purpose:
            function.append((purpose, 0.8))
        if head:
            function.append((head, 0.5))
        cand["function"] = function
        used = set(" ".join(cats).split()) | set(brand.split())
        scores: Counter = Counter()
        for w in tw:
            if w.isalpha() and w not in used:
                scores[w] += 2.0 * idf[w]
        for w in dw:
            if w.isalpha() and w not in used:
                scores[w] += idf[w]
        top = scores.most_common(8)
        best = top[0][1] if top else 1.0
        cand["feature"] = [(w, s / best) for w, s in top]
        text_words = Counter(tw + dw + " ".join(cats).split())
        audience = [
            (a, min(1.0, sum(text_words[k] for k in keys) / 3.0)) for a, keys in AUDIENCE_LEXICON.items()
        ]
        cand["audience"] = sorted([a for a in audience if a[1] > 0], key=lambda a: -a[1])
        distinct = []
        if brand:
            distinct.append((brand, 1.0))
        model_numbers = [
            re.sub(r"[^a-z0-9]", "", tok.lower())
            for tok in f.title.split()
            if re.search(r"\d", tok) and re.search(r"[A-Za-z]", tok)
        ]
        distinct += [(w, 0.9) for w in dict.fromkeys(m for m in model_numbers if len(m) >= 3)]
        rare = sorted(dict.fromkeys(w for w in tw + dw if w.isalpha()), key=lambda w: (-idf[w], w))
        distinct += [(w, 0.8 * idf[w] / max_idf) for w in rare[:12]]
        cand["distinguishing"] = distinct
        out.append(Candidates(cand))
    return out


def choose_terms(
    candidates: list[Candidates], neighbours: np.ndarray | None, consistency: float = 0.3
) -> list[list[str]]:
    """Pick one term per slot: own score + `consistency` × share of neighbours offering it.

    The distinguishing slot takes no neighbour vote (it is meant to differ). Terms already
    taken by an earlier slot are skipped, so an item's terms stay distinct.
    """
    result = []
    for i, cand in enumerate(candidates):
        nbrs = [] if neighbours is None else [j for j in neighbours[i].tolist() if j >= 0 and j != i]
        chosen: list[str] = []
        for slot in SLOTS:
            options = cand.per_slot.get(slot, [])
            votes: Counter = Counter()
            if slot != "distinguishing" and nbrs:
                for j in nbrs:
                    votes.update({t for t, _ in candidates[j].per_slot.get(slot, [])})
            scored = sorted(
                (
                    (s + consistency * votes[t] / max(1, len(nbrs)), t)
                    for t, s in options
                    if t and t not in chosen
                ),
                key=lambda x: (-x[0], x[1]),
            )
            term = scored[0][1] if scored else _fallback(slot, chosen)
            chosen.append(term)
        result.append(chosen)
    return result


def _fallback(slot: str, chosen: list[str]) -> str:
    term = FALLBACKS.get(slot, "unbranded")
    return term if term not in chosen else f"{term} {len(chosen)}"


# ---------------------------------------------------------------- collisions


def resolve_term_collisions(
    terms: list[list[str]], candidates: list[Candidates]
) -> tuple[list[list[str]], int]:
    """Make every Term ID unique by changing only the distinguishing (last) slot.

    Items keep their Term ID in row order while it is free; a later duplicate takes its
    next distinguishing candidate that is free, else `variant <n>`. Returns (terms, items changed).
    """
    taken: set[tuple[str, ...]] = set()
    out, changed = [], 0
    for i, t in enumerate(terms):
        t = list(t)
        if tuple(t) in taken:
            changed += 1
            options = (
                [c for c, _ in candidates[i].per_slot.get("distinguishing", [])]
                if i < len(candidates)
                else []
            )
            for option in options + [f"variant {n}" for n in range(2, len(terms) + 3)]:
                trial = t[:-1] + [option]
                if option not in t[:-1] and tuple(trial) not in taken:
                    t = trial
                    break
        taken.add(tuple(t))
        out.append(t)
    return out, changed


def term_report(terms: list[list[str]], num_terms: int) -> dict:
    """Legality rate, vocabulary sizes and collision rate of a list of Term IDs."""
    n = len(terms)
    legal = sum(is_legal_term_id(t, num_terms) for t in terms)
    unique = len({tuple(t) for t in terms})
    per_slot = {slot: len({t[k] for t in terms if len(t) > k}) for k, slot in enumerate(SLOTS[:num_terms])}
    return {
        "items": n,
        "legal_rate": legal / n if n else 0.0,
        "vocabulary_size": len({w for t in terms for w in t}),
        "vocabulary_per_slot": per_slot,
        "collision_rate": 1.0 - unique / n if n else 0.0,
    }


# ---------------------------------------------------------------- neighbours


def nearest_neighbours(embeddings: np.ndarray, k: int = 10) -> np.ndarray:
    """Indices (n, k) of each item's k most cosine-similar other items (faiss, exact)."""
    import faiss

    from data_builders.identifiers.embed import l2_normalize

    emb = l2_normalize(embeddings)
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    k = min(k, len(emb) - 1)
    if k <= 0:
        return np.full((len(emb), 0), -1, dtype=np.int64)
    _, ids = index.search(emb, k + 1)
    # drop self (usually first; exact duplicates may put it elsewhere)
    out = np.empty((len(emb), k), dtype=np.int64)
    for i, row in enumerate(ids):
        others = row[row != i]
        out[i] = others[:k]
    return out


# ---------------------------------------------------------------- generators


@dataclass
class TermIDResult:
    terms: list[list[str]]
    report: dict


def extractive_term_ids(
    items: pa.Table,
    embeddings: np.ndarray | None = None,
    num_terms: int = 5,
    neighbours_k: int = 10,
    consistency: float = 0.3,
) -> TermIDResult:
    """The offline generator: candidates from the item's fields, neighbour-voted, de-collided."""
    _check_num_terms(num_terms)
    fields = item_fields(items)
    candidates = extract_candidates(fields)
    nbrs = (
        nearest_neighbours(embeddings, neighbours_k) if embeddings is not None and len(fields) > 1 else None
    )
    terms = [
        t[: num_terms - 1] + [t[-1]] if num_terms < len(SLOTS) else t
        for t in choose_terms(candidates, nbrs, consistency)
    ]
    return _finish(terms, candidates, num_terms, {"generator": "extractive"})


def _check_num_terms(num_terms: int) -> None:
    if not 2 <= num_terms <= len(SLOTS):
        raise ValueError(f"num_terms must be between 2 and {len(SLOTS)} (slots {SLOTS}), got {num_terms}")


def _finish(terms, candidates, num_terms, info) -> TermIDResult:
    before = term_report(terms, num_terms)
    resolved, changed = resolve_term_collisions(terms, candidates)
    after = term_report(resolved, num_terms)
    report = {
        **info,
        "num_terms": num_terms,
        "slots": [*SLOTS[: num_terms - 1], SLOTS[-1]],
        "before": before,
        "after": after,
        "items_changed_by_resolution": changed,
    }
    return TermIDResult(resolved, report)


PROMPT = """You assign Term IDs to catalogue items: exactly {n} short keywords, lowercase, singular, one per slot, in this order: {slots}.
Reuse the words that similar items use when they fit; the last slot says what sets this item apart.

Similar items:
{neighbours}

Item: {text}
Answer with one line: {slot_line}
Term ID:"""


def build_prompt(text: str, neighbour_lines: list[str], num_terms: int) -> str:
    slots = [*SLOTS[: num_terms - 1], "distinguishing point"]
    return PROMPT.format(
        n=num_terms,
        slots=", ".join(slots),
        neighbours="\n".join(neighbour_lines) or "- (none)",
        text=text,
        slot_line=" | ".join(slots),
    )


def _neighbour_lines(i, nbrs, fields, hint_terms, limit=5):
    if nbrs is None:
        return []
    return [
        f"- {fields[j].title[:80]} -> {' | '.join(hint_terms[j])}" for j in nbrs[i][:limit].tolist() if j >= 0
    ]


def llm_term_ids(
    items: pa.Table,
    model: str,
    embeddings: np.ndarray | None = None,
    num_terms: int = 5,
    neighbours_k: int = 10,
    batch_size: int = 16,
    max_new_tokens: int = 48,
    max_retries: int = 2,
    seed: int = 0,
    backend: str = "auto",
    item_text: Sequence[str] | None = None,
) -> TermIDResult:
    """GRLM-style generation with any local causal LM; see the module doc for the fallback path.

    `backend`: 'transformers', 'vllm', or 'auto' (vLLM when importable). The neighbours'
    extractive Term IDs are shown as vocabulary hints, so the model can reuse them.
    """
    _check_num_terms(num_terms)
    fields = item_fields(items)
    candidates = extract_candidates(fields)
    nbrs = (
        nearest_neighbours(embeddings, neighbours_k) if embeddings is not None and len(fields) > 1 else None
    )
    hints = choose_terms(candidates, nbrs)
    hints = [t[: num_terms - 1] + [t[-1]] for t in hints]
    texts = (
        list(item_text)
        if item_text is not None
        else [f"{f.title}. Brand: {f.brand}. Categories: {' > '.join(f.categories)}" for f in fields]
    )
    prompts = [
        build_prompt(texts[i][:400], _neighbour_lines(i, nbrs, fields, hints), num_terms)
        for i in range(len(fields))
    ]
    generate = _make_generator(model, backend, batch_size, max_new_tokens, seed)
    results: list[list[str] | None] = [None] * len(prompts)
    pending = list(range(len(prompts)))
    counts = {"ok_first_try": 0, "ok_after_retry": 0, "fallback_extractive": 0, "generations": 0}
    for attempt in range(max_retries + 1):
        if not pending:
            break
        outputs = generate([prompts[i] for i in pending], attempt)
        counts["generations"] += len(pending)
        still = []
        for i, out in zip(pending, outputs):
            parsed = parse_terms(out, num_terms)
            if parsed is None:
                still.append(i)
            else:
                results[i] = parsed
                counts["ok_first_try" if attempt == 0 else "ok_after_retry"] += 1
        logger.info(
            "term ids (llm) attempt %d: %d/%d parsed", attempt, len(pending) - len(still), len(pending)
        )
        pending = still
    for i in pending:
        results[i] = hints[i]
        counts["fallback_extractive"] += 1
    info = {
        "generator": "llm",
        "model": model,
        "backend": generate.backend,
        "max_retries": max_retries,
        **counts,
    }
    return _finish([list(r) for r in results], candidates, num_terms, info)


def _make_generator(model: str, backend: str, batch_size: int, max_new_tokens: int, seed: int):
    """A callable (prompts, attempt) -> texts; attempt 0 is greedy, retries sample."""
    if backend not in {"auto", "transformers", "vllm"}:
        raise ValueError(f"term_backend must be auto, transformers or vllm, got {backend!r}")
    use_vllm = backend == "vllm"
    if backend == "auto":
        import importlib.util

        use_vllm = importlib.util.find_spec("vllm") is not None
    if use_vllm:
        from vllm import LLM, SamplingParams

        llm = LLM(model=model, seed=seed)

        def gen_vllm(prompts, attempt):
            params = SamplingParams(
                temperature=0.0 if attempt == 0 else 0.8, max_tokens=max_new_tokens, seed=seed + attempt
            )
            return [o.outputs[0].text for o in llm.generate(prompts, params)]

        gen_vllm.backend = "vllm"
        return gen_vllm

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = AutoModelForCausalLM.from_pretrained(model)
    lm.eval()

    def gen_hf(prompts, attempt):
        texts = []
        for start in range(0, len(prompts), batch_size):
            batch = [_as_chat(tokenizer, p) for p in prompts[start : start + batch_size]]
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            torch.manual_seed(seed + attempt)
            with torch.no_grad():
                out = lm.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=attempt > 0,
                    temperature=0.8 if attempt > 0 else None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=tokenizer.pad_token_id,
                )
            texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return texts

    gen_hf.backend = "transformers"
    return gen_hf


def _as_chat(tokenizer, prompt: str) -> str:
    """Wrap in the model's chat template (non-thinking) when it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
    return prompt
