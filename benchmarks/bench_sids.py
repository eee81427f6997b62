"""Semantic IDs and Term IDs: build time, collisions, coherence and Term-ID quality.

    OMP_NUM_THREADS=2 python benchmarks/bench_sids.py scientific [--max-length 64] [--threads 2]
    OMP_NUM_THREADS=2 python benchmarks/bench_sids.py million      # 1M random 384-d vectors
    OMP_NUM_THREADS=2 python benchmarks/bench_sids.py lengths      # what 64 vs 128 encoder tokens cost

The machine these figures come from is shared, so wall time and CPU time
(time.process_time, summed over threads) are printed side by side.

`scientific`: MiniLM embeddings (no cache) + 3 x 256 residual k-means + min-cost collision
resolution, wall time; collision rate before/after, per-level utilisation and entropy,
semantic coherence; the same figures for the published `rkmeans_zcr` and `rqvae_native`
indexes (coherence measured with our embeddings); extractive Term IDs (legality, vocabulary,
collisions before/after).
`lengths`: SIDs from 64- and 128-token embeddings, both scored for coherence on the 128-token
ones (so the yardstick is the same), with encode times: what the default cut costs.
`million`: 1,000,000 random unit vectors -> 3 x 256 SIDs with resolution; wall time and
peak RSS of the process.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from data_builders.identifiers import quality, term_ids
from data_builders.identifiers.build import BuildIdsConfig, build_semantic_ids
from data_builders.identifiers.embed import encode_texts, item_texts

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon-scientific"


def scientific_items() -> pa.Table:
    """Scientific.item.json (LC-Rec layout) -> the canonical items table."""
    raw = json.loads((DATA / "Scientific.item.json").read_text())
    return pa.Table.from_pylist(
        [
            {
                "item_id": key,
                "title": v.get("title") or "",
                "description": v.get("description") or "",
                "brand": v.get("brand") or "",
                "categories": [c.strip() for c in (v.get("categories") or "").split(",") if c.strip()],
            }
            for key, v in raw.items()
        ]
    )


def published(path: Path, item_ids: list[str]) -> np.ndarray:
    """Codes of a published index ({"id": ["<a_1>", "<b_2>", ...]}) in `item_ids` order."""
    raw = json.loads(path.read_text())
    return np.array(
        [[int(re.fullmatch(r"<[a-z]_(\d+)>", t).group(1)) for t in raw[i]] for i in item_ids], dtype=np.int64
    )


def row(name: str, report: dict) -> str:
    c = report["collisions"]
    util = " ".join(f"{lv['utilization']:.2f}" for lv in report["levels"])
    ent = " ".join(f"{lv['normalized_entropy']:.2f}" for lv in report["levels"])
    coh = report["coherence"]
    return (
        f"{name:<26} {len(report['levels'])}  {c['collision_rate']:>8.4f}  {c['max_items_per_sid']:>4}  "
        f"{util:<24} {ent:<24} {coh['same_first_code_cosine']:.3f} / {coh['random_pair_cosine']:.3f}"
    )


def scientific(max_length: int, threads: int, batch_size: int, extras: bool) -> None:
    if not DATA.exists():
        sys.exit(f"real data not available: {DATA}")
    items = scientific_items()
    t0, c0 = time.perf_counter(), time.process_time()
    texts = item_texts(items)
    with tempfile.TemporaryDirectory() as cache:  # no cache hit: time the encoder
        emb = encode_texts(
            texts.texts,
            cache_dir=cache,
            show_progress=False,
            max_length=max_length,
            num_threads=threads,
            batch_size=batch_size,
        )
    t_embed, c_embed = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    sids = build_semantic_ids(
        emb, BuildIdsConfig(levels=3, codebook_size=256, collision_strategy="min_cost"), texts.item_ids
    )
    t_sids, c_sids = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"Scientific: {items.num_rows:,} items; MiniLM max_length={max_length}, torch threads={threads}, "
        f"batch {batch_size}, default template, no cache"
    )
    print(f"{'step':<34} {'wall s':>7} {'CPU s':>7}")
    print(f"{'embeddings':<34} {t_embed:>7.1f} {c_embed:>7.1f}")
    print(f"{'3x256 SIDs + min-cost resolution':<34} {t_sids:>7.1f} {c_sids:>7.1f}")
    print(f"{'total':<34} {t_embed + t_sids:>7.1f} {c_embed + c_sids:>7.1f}")
    print(
        f"resolution: {sids.report['resolution']['prefix_groups_reassigned']} prefix groups, {sids.report['resolution']['items_moved']} items moved"
    )
    print(
        f"{'index':<26} L  coll.rate  max  utilisation/level        norm.entropy/level       coherence same/random"
    )
    print(row("ours rq_kmeans (before)", sids.report["before"]))
    print(row("ours rq_kmeans (after)", sids.report["after"]))
    for name in ("rkmeans_zcr", "rqvae_native"):
        codes = published(DATA / f"Scientific.{name}.index.json", texts.item_ids)
        print(row(f"published {name}", quality.sid_report(codes, emb, [256] * codes.shape[1])))
    if extras:
        rqvae_and_extra_level(emb, texts.item_ids)
    term_ids_report(items, emb)


def rqvae_and_extra_level(emb: np.ndarray, item_ids: list[str]) -> None:
    """Our other two schemes on the same embeddings: extra-level resolution and RQ-VAE."""
    for strategy in ("extra_level",):
        other = build_semantic_ids(
            emb, BuildIdsConfig(levels=3, codebook_size=256, collision_strategy=strategy), item_ids
        )
        print(row(f"ours rq_kmeans {strategy}", other.report["after"]))
    t0 = time.perf_counter()
    vae = build_semantic_ids(emb, BuildIdsConfig(quantizer="rqvae", levels=3, codebook_size=256), item_ids)
    t_vae = time.perf_counter() - t0
    print(row("ours rqvae (before)", vae.report["before"]))
    print(row("ours rqvae (after)", vae.report["after"]) + f"   [{t_vae:.1f} s]")


def term_ids_report(items: pa.Table, emb: np.ndarray) -> None:
    t0 = time.perf_counter()
    result = term_ids.extractive_term_ids(items, emb, num_terms=5)
    rep = result.report
    print(
        f"Term IDs (extractive, {time.perf_counter() - t0:.1f} s): legal {rep['after']['legal_rate']:.1%}, "
        f"vocabulary {rep['after']['vocabulary_size']:,} {rep['after']['vocabulary_per_slot']}, "
        f"collision rate {rep['before']['collision_rate']:.4f} -> {rep['after']['collision_rate']:.4f} "
        f"({rep['items_changed_by_resolution']} items re-distinguished)"
    )
    for i in (0, 1, 2, 100):
        print(f"  {items.column('title')[i].as_py()[:60]!r:<64} -> {result.terms[i]}")


def lengths(threads: int, batch_size: int) -> None:
    if not DATA.exists():
        sys.exit(f"real data not available: {DATA}")
    texts = item_texts(scientific_items())
    emb, seconds = {}, {}
    for max_length in (64, 128):
        t0 = time.perf_counter()
        emb[max_length] = encode_texts(
            texts.texts,
            max_length=max_length,
            batch_size=batch_size,
            num_threads=threads,
            show_progress=False,
        )
        seconds[max_length] = time.perf_counter() - t0
    reference = emb[128]
    for max_length, e in emb.items():
        sids = build_semantic_ids(
            e, BuildIdsConfig(levels=3, codebook_size=256, collision_strategy="min_cost"), texts.item_ids
        )
        coh = quality.sid_report(sids.codes, reference, [256] * sids.codes.shape[1])["coherence"]
        print(
            f"{max_length:>3} tokens: encode {seconds[max_length]:.1f} s, cosine to 128-token vectors "
            f"{float((e * reference).sum(1).mean()):.3f}, coherence on 128-token vectors "
            f"{coh['same_first_code_cosine']:.3f} / random {coh['random_pair_cosine']:.3f}"
        )


def million(n: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 384), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t0, c0 = time.perf_counter(), time.process_time()
    sids = build_semantic_ids(x, BuildIdsConfig(levels=3, codebook_size=256, collision_strategy="min_cost"))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    b, a = sids.report["before"]["collisions"], sids.report["after"]["collisions"]
    print(
        f"{n:,} x 384 -> 3x256 SIDs with min-cost resolution: wall {elapsed:.1f} s, CPU {cpu:.1f} s "
        f"({faiss.omp_get_max_threads()} faiss threads), peak RSS {peak_gb:.2f} GB"
    )
    print(
        f"collision rate {b['collision_rate']:.4f} -> {a['collision_rate']:.4f}; moved {sids.report['resolution']['items_moved']:,} items"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["scientific", "million", "lengths"])
    parser.add_argument("--n", type=int, default=1_000_000, help="million: number of vectors")
    parser.add_argument("--max-length", type=int, default=64, help="scientific: encoder tokens per item")
    parser.add_argument("--threads", type=int, default=2, help="scientific: torch threads while encoding")
    parser.add_argument("--batch-size", type=int, default=16, help="scientific: encoder batch size")
    parser.add_argument("--no-extras", action="store_true", help="scientific: skip RQ-VAE and extra_level")
    args = parser.parse_args()
    if args.what == "scientific":
        scientific(args.max_length, args.threads, args.batch_size, not args.no_extras)
    elif args.what == "lengths":
        lengths(args.threads, args.batch_size)
    else:
        million(args.n)
