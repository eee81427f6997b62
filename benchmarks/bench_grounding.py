"""Elastic grounding at scale: 100k generated Term IDs against a 1M-item catalogue.

    OMP_NUM_THREADS=1 python benchmarks/bench_grounding.py [--items 1000000] [--queries 100000]

The catalogue's Term IDs are drawn from per-slot vocabularies shaped like a real one
(few audiences, thousands of categories, a distinguishing term per item). Queries mix
exact copies (60%), copies with two slots replaced (39%) and unknown terms (1%, which go to
the embedding rule). The embedding rule needs an encoder; here it is a seeded bag-of-terms
projection, so the figure times the index and the search, not a sentence encoder.
Prints build time, query time, queries/s and which rule fired how often.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np

from onereason.terms import ElasticGrounder

SLOT_VOCAB = {"category": 3000, "function": 800, "feature": 6000, "audience": 8}


def catalogue(n: int, rng: np.random.Generator) -> list[list[str]]:
    cols = [rng.integers(0, v, n) for v in SLOT_VOCAB.values()]
    return [
        [f"cat{a}", f"fn{b}", f"feat{c}", f"aud{d}", f"brand{i}"] for i, (a, b, c, d) in enumerate(zip(*cols))
    ]


def bag_of_terms_encoder(dim: int = 64, seed: int = 0):
    """Sum of a seeded random vector per word: a stand-in encoder with no model to load."""

    def encode(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.split():
                h = np.random.default_rng(abs(hash((seed, word))) % (2**32))
                out[i] += h.standard_normal(dim).astype(np.float32)
        return out

    return encode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    terms = catalogue(args.items, rng)
    item_ids = [f"item{i}" for i in range(args.items)]
    item_emb = rng.standard_normal((args.items, 64)).astype(np.float32)

    t0 = time.perf_counter()
    grounder = ElasticGrounder(item_ids, terms, item_embeddings=item_emb, encode=bag_of_terms_encoder())
    build_s = time.perf_counter() - t0

    queries = []
    kinds = rng.random(args.queries)
    picks = rng.integers(0, args.items, args.queries)
    for kind, i in zip(kinds, picks):
        q = list(terms[i])
        if kind >= 0.99:
            q = [f"unknown{rng.integers(1e9)}" for _ in q]
        elif kind >= 0.6:
            for slot in rng.choice(5, 2, replace=False):
                q[slot] = terms[rng.integers(args.items)][slot]
        queries.append(q)

    t0, c0 = time.perf_counter(), time.process_time()
    results = grounder.ground_many(queries, k=args.k)
    query_s, query_cpu = time.perf_counter() - t0, time.process_time() - c0
    rules = Counter(r[0].rule if r else "none" for r in results)
    exact_ok = sum(
        1 for q, r, kind in zip(picks, results, kinds) if kind < 0.6 and r and r[0].item_id == item_ids[q]
    )
    print(f"catalogue: {args.items:,} items x 5 terms; index built in {build_s:.1f} s")
    print(
        f"{args.queries:,} queries (k={args.k}): wall {query_s:.1f} s, CPU {query_cpu:.1f} s "
        f"= {args.queries / query_s:,.0f} queries/s"
    )
    print(
        f"top-1 rule: {dict(rules)}; exact-copy queries grounded to their item: {exact_ok:,}/{int((kinds < 0.6).sum()):,}"
    )


if __name__ == "__main__":
    main()
