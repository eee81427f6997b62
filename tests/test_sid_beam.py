"""`constrained_beam_search`: valid, distinct, sorted beams that equal exhaustive search and HF beam search."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from transformers import GenerationConfig

from onereason.sid_beam import constrained_beam_search, left_padded
from onereason.trie import SIDTrie, sid_token_sequences

PROMPTS = [
    "What will the user interact with next?",
    "Derivation: the recent items share a category. Evolution: a long-term interest in lab glassware. "
    "The user's history, oldest first:",
    "Hand tools, measuring instruments, safety gloves.",
]
ALL_TOKENS = ["<|sid_begin|>", "<|sid_end|>"] + [f"<s_{lv}_{c}>" for lv in "abc" for c in range(4)]


def small_index(n: int, seed: int = 0):
    from onereason.item_index import ItemIndex, SIDFormat

    codes = np.random.default_rng(seed).choice(64, size=n, replace=False)
    codes = np.stack([codes // 16, (codes // 4) % 4, codes % 4], axis=1)
    return ItemIndex([f"i{i}" for i in range(n)], codes, sid_format=SIDFormat())


@pytest.fixture(scope="module")
def world(make_tiny_model):
    from onereason.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(
        make_tiny_model(itemic_tokens=ALL_TOKENS), dtype=torch.float32
    )
    model.eval()
    return model, tokenizer


def tokenized_left_padded(tokenizer, texts, pad: int):
    heads = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return (heads, *left_padded(heads, pad))


@torch.no_grad()
def teacher_forced(model, head: list[int], answers: list[list[int]]) -> list[float]:
    """Summed unconstrained log-probs of each answer after `head` (one unpadded prompt)."""
    out = []
    for answer in answers:
        ids = torch.tensor([head + answer])
        logits = model(ids).logits[0, len(head) - 1 : -1]
        out.append(torch.log_softmax(logits.float(), -1).gather(-1, ids[0, len(head) :, None]).sum().item())
    return out


def exhaustive(model, head, sids: np.ndarray, eos: int, num_sids: int, allow_fewer: bool):
    """Every answer the trie allows (`num_sids` SIDs, or 1..num_sids with allow_fewer) + EOS, best first."""
    counts = range(1, num_sids + 1) if allow_fewer else [num_sids]
    answers = [
        [t for sid in combo for t in sid] + [eos]
        for n in counts
        for combo in itertools.product(sids.tolist(), repeat=n)
    ]
    scored = sorted(zip(teacher_forced(model, head, answers), map(tuple, answers)), key=lambda p: -p[0])
    return scored


def beams_of(sequences, scores, b: int, pad: int):
    """(score, answer tokens through EOS) of prompt `b`'s finite beams, in returned order."""
    out = []
    for seq, score in zip(sequences[b].tolist(), scores[b].tolist()):
        if score == -math.inf:
            assert all(t == pad for t in seq)
            continue
        while seq and seq[-1] == pad:
            seq = seq[:-1]
        out.append((score, tuple(seq)))
    return out


def test_beams_are_valid_distinct_sorted_and_padded(world):
    model, tokenizer = world
    index = small_index(10)
    trie = SIDTrie.from_index(index, tokenizer)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    _, ids, mask = tokenized_left_padded(tokenizer, PROMPTS, pad)
    sequences, scores = constrained_beam_search(model, ids, mask, trie, num_beams=14, pad_token_id=pad)
    assert sequences.shape == (3, 14, trie.sid_length + 1) and scores.shape == (3, 14)
    valid = {tuple(s) + (eos,) for s in sid_token_sequences(index, tokenizer).tolist()}
    for b in range(3):
        assert scores[b].tolist() == sorted(scores[b].tolist(), reverse=True)
        beams = beams_of(sequences, scores, b, pad)
        assert len(beams) == 10 and torch.isinf(scores[b, 10:]).all()  # 10 SIDs, 4 padding beams
        assert {seq for _, seq in beams} == valid  # every beam a SID + EOS, all distinct
        assert all(s < 0 for s, _ in beams)


@pytest.mark.parametrize(
    ("n_items", "num_sids", "allow_fewer", "k"),
    [(12, 1, False, 5), (5, 2, False, 7), (4, 2, True, 9)],
)
def test_top_beams_equal_exhaustive_search_with_left_padding(world, n_items, num_sids, allow_fewer, k):
    """With as many beams as answers nothing is pruned, so beam search must be exact."""
    model, tokenizer = world
    index = small_index(n_items, seed=n_items)
    trie = SIDTrie.from_index(index, tokenizer)
    sids = sid_token_sequences(index, tokenizer)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    heads, ids, mask = tokenized_left_padded(tokenizer, PROMPTS, pad)
    assert len({len(h) for h in heads}) == 3  # three different prompt lengths in one batch
    n_answers = sum(n_items**n for n in (range(1, num_sids + 1) if allow_fewer else [num_sids]))
    sequences, scores = constrained_beam_search(
        model,
        ids,
        mask,
        trie,
        num_beams=n_answers,
        num_sids=num_sids,
        allow_fewer=allow_fewer,
        pad_token_id=pad,
    )
    for b, head in enumerate(heads):
        expected = exhaustive(model, head, sids, eos, num_sids, allow_fewer)
        got = beams_of(sequences, scores, b, pad)
        assert len(got) == n_answers
        assert [seq for _, seq in got[:k]] == [seq for _, seq in expected[:k]]
        np.testing.assert_allclose([s for s, _ in got], [s for s, _ in expected], atol=1e-4)


@pytest.mark.parametrize("num_beams", [12, 4])
def test_equals_transformers_beam_search_with_the_trie_processor(world, num_beams):
    model, tokenizer = world
    index = small_index(12, seed=3)
    trie = SIDTrie.from_index(index, tokenizer)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    _, ids, mask = tokenized_left_padded(tokenizer, PROMPTS, pad)
    sequences, scores = constrained_beam_search(model, ids, mask, trie, num_beams=num_beams, pad_token_id=pad)
    config = GenerationConfig(
        do_sample=False,
        num_beams=num_beams,
        num_return_sequences=num_beams,
        length_penalty=0.0,
        early_stopping=True,
        max_new_tokens=trie.sid_length + 1,
        eos_token_id=eos,
        pad_token_id=pad,
        return_dict_in_generate=True,
        output_scores=True,
    )
    with torch.no_grad():
        hf = model.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_config=config,
            logits_processor=[trie.logits_processor(ids.shape[1])],
        )
    hf_sequences = hf.sequences[:, ids.shape[1] :].reshape(3, num_beams, -1)
    hf_scores = hf.sequences_scores.reshape(3, num_beams)
    for b in range(3):
        ours = beams_of(sequences, scores, b, pad)
        theirs = beams_of(hf_sequences, hf_scores, b, pad)
        assert [seq for _, seq in ours] == [seq for _, seq in theirs]
        np.testing.assert_allclose([s for s, _ in ours], [s for s, _ in theirs], atol=1e-4)


def test_the_buffered_beam_cache_equals_the_cache_s_own_reorder(world, monkeypatch):
    """`_BeamLayer` (in-place writes, answer-only reorder) must not change any result."""
    import onereason.sid_beam as sid_beam

    model, tokenizer = world
    trie = SIDTrie.from_index(small_index(12, seed=5), tokenizer)
    pad = tokenizer.pad_token_id
    _, ids, mask = tokenized_left_padded(tokenizer, PROMPTS, pad)
    fast = constrained_beam_search(model, ids, mask, trie, num_beams=5, num_sids=2, pad_token_id=pad)
    monkeypatch.setattr(sid_beam, "_expand_cache", lambda cache, rows, *_: cache.reorder_cache(rows))
    plain = constrained_beam_search(model, ids, mask, trie, num_beams=5, num_sids=2, pad_token_id=pad)
    assert torch.equal(fast[0], plain[0])
    torch.testing.assert_close(fast[1], plain[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("fast_cache", [True, False])
def test_views_search_the_weighted_sum_of_their_log_probs(world, monkeypatch, fast_cache):
    """Two views of each user (stacked view by view): the beams are exactly the best SIDs by
    w0 log p(SID | view 0) + w1 log p(SID | view 1), with either cache path."""
    import onereason.sid_beam as sid_beam

    model, tokenizer = world
    if not fast_cache:
        monkeypatch.setattr(sid_beam, "_expand_cache", lambda cache, rows, *_: cache.reorder_cache(rows))
    index = small_index(12, seed=11)
    trie = SIDTrie.from_index(index, tokenizer)
    sids = sid_token_sequences(index, tokenizer)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    views = [PROMPTS, [PROMPTS[2], PROMPTS[0], PROMPTS[1][:40]]]  # view 1 of user u: another prompt
    heads, ids, mask = tokenized_left_padded(tokenizer, views[0] + views[1], pad)
    weights = (1.0, 0.5)
    sequences, scores = constrained_beam_search(
        model, ids, mask, trie, num_beams=12, pad_token_id=pad, view_weights=weights
    )
    assert sequences.shape == (3, 12, trie.sid_length + 1)
    for b in range(3):
        by_view = [
            dict((seq, s) for s, seq in exhaustive(model, heads[v * 3 + b], sids, eos, 1, False))
            for v in (0, 1)
        ]
        expected = sorted(
            ((weights[0] * by_view[0][a] + weights[1] * by_view[1][a], a) for a in by_view[0]), reverse=True
        )
        got = beams_of(sequences, scores, b, pad)
        assert [seq for _, seq in got] == [seq for _, seq in expected]
        np.testing.assert_allclose([s for s, _ in got], [s for s, _ in expected], atol=1e-4)
    one = constrained_beam_search(model, ids[:3], mask[:3], trie, num_beams=5, pad_token_id=pad)
    same = constrained_beam_search(
        model, ids[:3], mask[:3], trie, num_beams=5, pad_token_id=pad, view_weights=[1.0]
    )
    assert torch.equal(one[0], same[0]) and torch.equal(one[1], same[1])
    with pytest.raises(ValueError, match="views"):
        constrained_beam_search(model, ids[:3], mask[:3], trie, num_beams=5, view_weights=weights)


def test_beam_ranker_skips_padding_beams_of_a_small_catalogue(world):
    from evaluation.generate import BeamRanker, DecodingConfig
    from evaluation.protocols import examples_from_rows

    model, tokenizer = world
    index = small_index(10, seed=7)
    rows = [{"user_id": f"u{u}", "history": [f"i{u}", f"i{u + 1}"], "target": f"i{u + 2}"} for u in range(3)]
    ranker = BeamRanker(model, tokenizer, index, DecodingConfig(num_beams=14, batch_size=3))
    for record in ranker.rank(examples_from_rows(rows, index), "no_think"):
        assert record["n_beams"] == record["n_valid"] == 10  # 10 SIDs: the 4 padding beams are dropped
        assert len(record["ranked_sids"]) == 10 and all(math.isfinite(s) for s in record["scores"])


def test_bad_shapes_are_refused(world):
    model, tokenizer = world
    trie = SIDTrie.from_index(small_index(3), tokenizer)
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="same"):
        constrained_beam_search(model, ids, torch.ones(2, 3, dtype=torch.long), trie, num_beams=2)
    with pytest.raises(ValueError, match="num_beams"):
        constrained_beam_search(model, ids, torch.ones_like(ids), trie, num_beams=0)
