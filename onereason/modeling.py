"""Models and tokenizers: build tiny Qwen3-style ones offline, load real ones by Hub id.

A tiny model here is a real `Qwen3ForCausalLM` with a real byte-level BPE tokenizer and
Qwen3's own chat template (the one TRL ships), so every code path that serves
`Qwen/Qwen3-1.7B` is the one the tests exercise — only the sizes differ.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Qwen2Tokenizer,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from trl.chat_template_utils import qwen3_chat_template

from onereason.item_index import SIDFormat

logger = logging.getLogger(__name__)

# Qwen2/Qwen3's pre-tokenizer split pattern: training the BPE with the same split keeps its
# merges valid inside `Qwen2Tokenizer`, which applies this pattern itself.
QWEN_SPLIT_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

EOS_TOKEN = "<|endoftext|>"
CHAT_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>"]
# Qwen3 keeps <think> tokens as normal added tokens (not "special"), so
# `decode(skip_special_tokens=True)` still shows them; itemic tokens follow the same rule.
THINK_TOKENS = ["<think>", "</think>"]
SID_BOUNDARY_TOKENS = SIDFormat.named("openonerec").boundary_tokens


@dataclass(frozen=True)
class SizePreset:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int  # BPE vocabulary before added tokens
    max_position_embeddings: int = 2048
    attention_dropout: float = 0.0  # Qwen3's only dropout; regularises the small from-scratch presets


SIZE_PRESETS: dict[str, SizePreset] = {
    # ~0.3M parameters: unit tests.
    "tiny": SizePreset(64, 2, 4, 2, 128, vocab_size=3000),
    # ~1M parameters: from-scratch recommenders on a CPU. The rule: the model only has to tell
    # the catalogue's items apart and relate them, so width grows with the catalogue (and its
    # long tail), not with the text; two layers and a small BPE vocabulary because sequence
    # rows are almost all itemic tokens. Measured: d=128 for the quickstart's 600 items and for
    # Amazon Scientific's 4,344 (d=384, by the `hidden_size` override, learns faster but ties on
    # test and overfits the longer schedule); `small` (d=256) up to ~100k; `base` beyond.
    "rec": SizePreset(128, 2, 4, 2, 512, vocab_size=2000, attention_dropout=0.1),
    # ~5M parameters: CPU demos and the quickstart.
    "small": SizePreset(256, 4, 4, 2, 768, vocab_size=6000),
    # ~40M parameters: from-scratch runs on one GPU (the Scientific recipe).
    "base": SizePreset(512, 8, 8, 4, 1536, vocab_size=8000, max_position_embeddings=4096),
}


def train_tokenizer(
    corpus: Iterable[str],
    vocab_size: int = 3000,
    extra_tokens: Sequence[str] = (),
) -> Qwen2Tokenizer:
    """Train a byte-level BPE on `corpus` and wrap it as a Qwen3-style tokenizer.

    `extra_tokens` (itemic tokens such as `<s_a_12>`) become single added tokens.
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    # `tokenizers` exposes the trained vocab and merges through the serialized model;
    # transformers 5 wants merges as tuples.
    trained = json.loads(bpe.to_str())["model"]
    vocab = trained["vocab"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": CHAT_SPECIAL_TOKENS})
    tokenizer.add_tokens(THINK_TOKENS + SID_BOUNDARY_TOKENS + list(extra_tokens))
    tokenizer.chat_template = qwen3_chat_template
    # Qwen3 chat models end a turn with <|im_end|>; generation stops there.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.model_max_length = 32768
    return tokenizer


def build_model(
    tokenizer: PreTrainedTokenizerBase,
    preset: str = "tiny",
    seed: int = 0,
    **overrides,
) -> Qwen3ForCausalLM:
    """A freshly initialised `Qwen3ForCausalLM` sized by `preset`, matched to `tokenizer`.

    `overrides` replace preset fields (`intermediate_size=1024`, `attention_dropout=0.2`, …);
    None leaves the preset's value."""
    if preset not in SIZE_PRESETS:
        raise ValueError(f"unknown size preset {preset!r}; choose one of {sorted(SIZE_PRESETS)}")
    p = dataclasses.replace(SIZE_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    config = Qwen3Config(
        vocab_size=_padded(len(tokenizer)),
        hidden_size=p.hidden_size,
        intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_hidden_layers,
        num_attention_heads=p.num_attention_heads,
        num_key_value_heads=p.num_key_value_heads,
        head_dim=p.hidden_size // p.num_attention_heads,
        max_position_embeddings=p.max_position_embeddings,
        attention_dropout=p.attention_dropout,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids(EOS_TOKEN),
    ]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def init_model(
    out_dir: str | Path,
    corpus: Iterable[str],
    preset: str = "tiny",
    itemic_tokens: Sequence[str] = (),
    seed: int = 0,
    vocab_size: int | None = None,
    **overrides,
) -> Path:
    """Train a tokenizer on `corpus`, build a model from `preset`, save both to `out_dir`.

    The folder loads with `AutoTokenizer` / `AutoModelForCausalLM.from_pretrained`; `overrides`
    replace preset fields (see `build_model`).
    """
    if preset not in SIZE_PRESETS:
        raise ValueError(f"unknown size preset {preset!r}; choose one of {sorted(SIZE_PRESETS)}")
    tokenizer = train_tokenizer(corpus, vocab_size or SIZE_PRESETS[preset].vocab_size, itemic_tokens)
    model = build_model(tokenizer, preset, seed, **overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    logger.info("saved %s model (%.2fM parameters, vocab %d) to %s", preset, n / 1e6, len(tokenizer), out)
    return out


def load_tokenizer(name_or_path: str | Path, revision: str | None = None) -> PreTrainedTokenizerBase:
    """Load a tokenizer by Hub id or local path; make sure it can pad."""
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(
    name_or_path: str | Path,
    dtype: str | torch.dtype = "auto",
    revision: str | None = None,
    attn_implementation: str | None = None,
    device: str | torch.device | None = None,
):
    """The one loader for a Hub id (`Qwen/Qwen3-1.7B`) or a local folder (a tiny model)."""
    tokenizer = load_tokenizer(name_or_path, revision)
    kwargs = {"dtype": dtype, "revision": revision}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    if device is not None:
        model.to(device)
    return model, tokenizer


def _padded(n: int, multiple: int = 64) -> int:
    return (n + multiple - 1) // multiple * multiple
