"""Vocabulary expansion: new itemic tokens, padded resize, rows initialised from item text."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, Qwen3ForCausalLM

from onereason.init_model import InitModelConfig
from onereason.item_index import ItemIndex, SIDFormat
from onereason.modeling import build_model
from onereason.trie import SIDTrie
from onereason.vocab import add_itemic_tokens

TEXTS = {
    "i0": "lab glassware beaker",
    "i1": "safety gloves for the lab",
    "i2": "measuring instruments and hand tools",
    "i3": "microscope slides",
    # i4 has no text: codes carried only by i4 fall back to the mean embedding
}


def make_index(fmt: SIDFormat | None = None) -> ItemIndex:
    codes = np.array([[0, 1, 2], [0, 1, 3], [1, 2, 2], [1, 0, 0], [2, 5, 4]])
    return ItemIndex([f"i{k}" for k in range(5)], codes, sid_format=fmt)


def base_model(make_tiny_model, tied: bool):
    """A tiny Qwen3 without itemic tokens; the untied one is built here with its own lm_head."""
    path = make_tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = build_model(tokenizer, "tiny", seed=0)
    if not tied:
        config = model.config
        config.tie_word_embeddings = False
        torch.manual_seed(1)
        model = Qwen3ForCausalLM(config)
        assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    return model, tokenizer


def expected_row(weight: torch.Tensor, tokenizer, index: ItemIndex, items: list[str]) -> torch.Tensor:
    """Mean over the items (with text) of the mean embedding row of each item's text."""
    per_item = [
        weight[tokenizer(TEXTS[i], add_special_tokens=False)["input_ids"]].float().mean(0)
        for i in items
        if i in TEXTS
    ]
    return torch.stack(per_item).mean(0)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_new_rows_are_the_mean_text_embeddings_of_their_items(make_tiny_model, tied):
    model, tokenizer = base_model(make_tiny_model, tied)
    index = make_index(SIDFormat.minionerec(3))
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    old_len = len(tokenizer)

    new_ids = add_itemic_tokens(model, tokenizer, index, TEXTS)

    tokens = index.itemic_tokens()
    assert sorted(new_ids) == new_ids and len(new_ids) == len(tokens)
    assert new_ids == sorted(tokenizer.convert_tokens_to_ids(tokens)) and min(new_ids) == old_len
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows % 64 == 0 and rows >= len(tokenizer) and model.config.vocab_size == rows
    assert model.get_output_embeddings().weight.shape[0] == rows
    # existing rows untouched
    assert torch.equal(model.get_input_embeddings().weight[:old_len], before_in[:old_len])
    assert torch.equal(model.get_output_embeddings().weight[:old_len], before_out[:old_len])

    matrices = [(model.get_input_embeddings().weight, before_in)]
    if not tied:
        matrices.append((model.get_output_embeddings().weight, before_out))
    else:
        assert (
            model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
        )
    fmt = index.sid_format
    for weight, old in matrices:
        for level in range(3):
            for code in np.unique(index.codes[:, level]):
                token_id = tokenizer.convert_tokens_to_ids(fmt.token(level, code))
                items = [index.item_ids[r] for r in np.flatnonzero(index.codes[:, level] == code)]
                row = weight[token_id].detach()
                if any(i in TEXTS for i in items):
                    assert torch.allclose(row, expected_row(old, tokenizer, index, items), atol=1e-6)
                else:  # only i4 carries it: mean embedding + small noise, not a random row
                    mean = old[:old_len].mean(0)
                    assert (
                        0
                        < (row - mean).norm()
                        < 0.1 * mean.norm() + 0.1 * old[:old_len].std() * len(mean) ** 0.5
                    )
    if not tied:  # the lm_head rows come from the lm_head, not the input embeddings
        token_id = tokenizer.convert_tokens_to_ids("<a_0>")
        assert not torch.allclose(model.lm_head.weight[token_id], model.model.embed_tokens.weight[token_id])

    # the expanded tokenizer + model now serve the trie and a forward pass
    assert SIDTrie.from_index(index, tokenizer).n_sids == len(index)
    ids = tokenizer(index.sid_text("i0"), return_tensors="pt")["input_ids"]
    assert ids.shape[1] == 3 and model(ids).logits.shape[-1] == rows


def test_boundary_tokens_and_noop_when_present(make_tiny_model):
    model, tokenizer = base_model(make_tiny_model, tied=True)
    index = (
        make_index()
    )  # default format: <|sid_begin|> / <|sid_end|> already exist in onereason's tokenizers
    new_ids = add_itemic_tokens(model, tokenizer, index, item_texts=None)
    assert len(new_ids) == len(index.itemic_tokens()) - 2
    weight = model.get_input_embeddings().weight.detach()
    rows = weight[new_ids]
    assert torch.unique(rows, dim=0).shape[0] == len(new_ids)  # no text: distinct noisy rows
    assert add_itemic_tokens(model, tokenizer, index, TEXTS) == []  # nothing missing any more
    assert tokenizer.decode(
        tokenizer(index.sid_text("i2"))["input_ids"], skip_special_tokens=True
    ) == index.sid_text("i2")  # normal added tokens: still visible after skip_special_tokens


def test_a_preset_field_can_be_overridden_and_none_keeps_the_presets(make_tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(make_tiny_model())
    wide = build_model(tokenizer, "tiny", seed=0, intermediate_size=200, attention_dropout=0.3)
    assert (wide.config.intermediate_size, wide.config.attention_dropout) == (200, 0.3)
    assert wide.model.layers[0].mlp.up_proj.out_features == 200
    plain = build_model(tokenizer, "tiny", seed=0, intermediate_size=None)
    assert plain.config.intermediate_size == 128


def test_the_width_and_heads_can_be_overridden_and_must_divide(make_tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(make_tiny_model())
    wide = build_model(
        tokenizer, "tiny", seed=0, hidden_size=96, num_attention_heads=6, num_key_value_heads=3
    )
    assert (wide.config.hidden_size, wide.config.head_dim) == (96, 16)
    assert wide.get_input_embeddings().weight.shape[1] == 96
    assert wide.model.layers[0].self_attn.k_proj.out_features == 3 * 16
    with pytest.raises(ValueError, match="heads must divide the width"):
        InitModelConfig(output_dir="unused", preset="tiny", hidden_size=96, num_attention_heads=5)
    with pytest.raises(ValueError, match="even head size"):
        InitModelConfig(output_dir="unused", preset="tiny", hidden_size=100, num_attention_heads=4)
