"""Vocabulary expansion: itemic tokens into a tokenizer, rows into the model, rows from item text.

A new itemic token such as `<s_b_3>` starts life knowing nothing. Initialising its
embedding at random makes the alignment stage learn it from scratch; initialising it as
the mean embedding of the *text of the items that carry that code at that level* starts
it near what those items are about, which is what the token should come to mean (the
same idea as OpenOneRec's and LC-Rec's text-initialised codes). Codes whose items have no
text fall back to the mean embedding plus a little noise, so they stay distinguishable.

Tokens are added as normal (non-special) added tokens, like Qwen3's `<think>`, so
`decode(skip_special_tokens=True)` still shows SIDs and the trie sees one id per token.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from tokenizers import AddedToken
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from onereason.item_index import ItemIndex

logger = logging.getLogger(__name__)

FALLBACK_NOISE = 0.01  # × the std of the existing rows: distinct, yet near the mean


def check_itemic_tokens(
    tokenizer,
    index: ItemIndex,
    source: str = "tokenizer",
    fix: str = "run the `align` stage first (it adds them), or start from a model that has them",
) -> None:
    """Fail early, naming tokens, when `tokenizer` cannot write the index's SIDs as single tokens.

    `source` names the tokenizer in the message and `fix` says what to do about it.
    """
    vocab = tokenizer.get_vocab()
    needed = index.itemic_tokens()
    missing = [t for t in needed if t not in vocab]
    if missing:
        raise ValueError(
            f"the item index does not match the {source}: {len(missing)} of its {len(needed)} itemic "
            f"tokens are not in the vocabulary (e.g. {missing[:5]}); {fix}"
        )
    first = index.item_ids[0]
    ids = tokenizer(index.sid_text(first), add_special_tokens=False)["input_ids"]
    if "".join(tokenizer.convert_ids_to_tokens(ids)) != index.sid_text(first):
        raise ValueError(f"the {source} splits SID {index.sid_text(first)!r} into unexpected pieces")


def add_itemic_tokens(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    index: ItemIndex,
    item_texts: Mapping[str, str] | None = None,
    pad_to_multiple_of: int = 64,
    max_text_tokens: int = 64,
    seed: int = 0,
) -> list[int]:
    """Add the index's missing itemic (and SID boundary) tokens; returns their new ids, sorted.

    The embedding matrix grows to `len(tokenizer)` rounded up to `pad_to_multiple_of`
    (never shrinks: a model with spare rows, like Qwen3's, keeps them). Each new row is the
    mean, over the items carrying that code at that level, of the mean input-embedding row
    of the item's text (the first `max_text_tokens` tokens); the boundary tokens are
    carried by every item. An untied `lm_head` gets the same treatment from its own rows.
    Tokens already in the tokenizer are left alone (and not returned).
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in index.itemic_tokens() if t not in vocab]
    if not missing:
        logger.info("all %d itemic tokens are already in the tokenizer", len(index.itemic_tokens()))
        return []
    known_rows = len(tokenizer)  # rows that belong to real tokens before the expansion
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in missing])
    new_ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in missing]

    input_embeddings = model.get_input_embeddings()
    if len(tokenizer) > input_embeddings.weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to_multiple_of)
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(output.weight)  # untied lm_head: initialise from its own rows

    carriers = _carriers(index, missing)
    texts = item_texts or {}
    with torch.no_grad():
        for weight in matrices:
            rows, n_text = _text_initialised_rows(
                weight, tokenizer, index, texts, carriers, known_rows, max_text_tokens, seed
            )
            for token, token_id in zip(missing, new_ids):
                weight[token_id] = rows[token].to(weight.dtype)
    logger.info(
        "added %d itemic tokens: %d initialised from item text, %d from the mean embedding (+noise); "
        "embedding rows %d (tied: %s)",
        len(missing),
        n_text,
        len(missing) - n_text,
        model.get_input_embeddings().weight.shape[0],
        len(matrices) == 1,
    )
    return sorted(new_ids)


def _carriers(index: ItemIndex, tokens: list[str]) -> dict[str, tuple[int, int] | None]:
    """For each token, the (level, code) it stands for (None: the boundary tokens, carried by every item)."""
    fmt = index.sid_format
    by_token = {
        fmt.token(level, code): (level, int(code))
        for level in range(index.n_levels)
        for code in np.unique(index.codes[:, level])
    }
    return {token: by_token.get(token) for token in tokens}


def _text_initialised_rows(
    weight: torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    index: ItemIndex,
    texts: Mapping[str, str],
    carriers: dict[str, tuple[int, int] | None],
    known_rows: int,
    max_text_tokens: int,
    seed: int,
    chunk: int = 4096,
) -> tuple[dict[str, torch.Tensor], int]:
    """({token: float32 row}, how many came from text) for the new tokens.

    Per-item mean text embeddings are folded chunk by chunk into per-(level, code) sums,
    so a million-item catalogue never holds an (items × hidden) matrix.
    """
    hidden = weight.shape[1]
    known = weight[:known_rows].float()
    codes = torch.from_numpy(index.codes)
    sums = [torch.zeros(int(codes[:, lv].max()) + 1, hidden) for lv in range(index.n_levels)]
    counts = [torch.zeros(len(s)) for s in sums]
    total, total_count = torch.zeros(hidden), 0
    rows_with_text = [r for r, item in enumerate(index.item_ids) if texts.get(item)]
    for start in range(0, len(rows_with_text), chunk):
        rows = rows_with_text[start : start + chunk]
        encoded = tokenizer(
            [texts[index.item_ids[r]] for r in rows],
            add_special_tokens=False,
            truncation=True,
            max_length=max_text_tokens,
        )["input_ids"]
        owner = torch.tensor(
            [j for j, ids in enumerate(encoded) for i in ids if i < known_rows], dtype=torch.long
        )
        flat = torch.tensor([i for ids in encoded for i in ids if i < known_rows], dtype=torch.long)
        n_tokens = torch.bincount(owner, minlength=len(rows)).float()
        item_sum = torch.zeros(len(rows), hidden).index_add_(0, owner, known[flat])
        present = n_tokens > 0
        item_vec = item_sum[present] / n_tokens[present].unsqueeze(1)
        item_codes = codes[torch.tensor(rows)[present]]
        for lv in range(index.n_levels):
            sums[lv].index_add_(0, item_codes[:, lv], item_vec)
            counts[lv].index_add_(0, item_codes[:, lv], torch.ones(len(item_vec)))
        total += item_vec.sum(0)
        total_count += len(item_vec)

    mean, std = known.mean(0), known.std()
    generator = torch.Generator().manual_seed(seed)
    out, from_text = {}, 0
    for token, where in carriers.items():
        s, n = (
            (total, total_count) if where is None else (sums[where[0]][where[1]], counts[where[0]][where[1]])
        )
        if n > 0:
            out[token] = s / n
            from_text += 1
        else:
            out[token] = mean + FALLBACK_NOISE * std * torch.randn(hidden, generator=generator)
    return out, from_text
