"""The SID trie: constrained generate (beams and sampling) and constrained log-probs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from onereason.item_index import ItemIndex, SIDFormat
from onereason.trie import SIDTrie


def random_index(fmt: SIDFormat | None = None, n: int = 60, codebook: int = 6, seed: int = 0) -> ItemIndex:
    codes = np.random.default_rng(seed).integers(0, codebook, size=(n, 3))
    return ItemIndex([f"item{i}" for i in range(n)], codes, sid_format=fmt)  # keeps any collisions


@pytest.fixture(scope="module")
def index():
    return random_index()


@pytest.fixture(scope="module")
def model_and_tokenizer(make_tiny_model, index):
    path = make_tiny_model(
        itemic_tokens=index.itemic_tokens() + random_index(SIDFormat.minionerec(3)).itemic_tokens()
    )
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def trie(index, model_and_tokenizer):
    return SIDTrie.from_index(index, model_and_tokenizer[1])


def dict_trie(index: ItemIndex, tokenizer) -> dict:
    """The obvious nested-dict trie, built from tokenised SID texts: the reference."""
    root: dict = {}
    for item in index.item_ids:
        node = root
        for token in tokenizer(index.sid_text(item), add_special_tokens=False)["input_ids"]:
            node = node.setdefault(token, {})
    return root


def reference_allowed(
    root: dict, prefix: list[int], eos: int, num_sids: int, allow_fewer: bool = False
) -> set[int]:
    """Allowed next tokens after `prefix` by walking the dict trie SID by SID."""
    node, done = root, 0
    for token in prefix:
        if token not in node:
            return set()
        node = node[token]
        if not node:
            node, done = root, done + 1
    if node is root:
        if done >= num_sids:
            return {eos}
        return set(root) | ({eos} if allow_fewer and done >= 1 else set())
    return set(node)


def left_padded(tokenizer, prompts: list[str]):
    return tokenizer(prompts, return_tensors="pt", padding=True)


PROMPTS = ["What will the user interact with next?", "beaker", "Hand tools, measuring instruments and gloves"]


def test_trie_matches_a_dict_trie(index, trie, model_and_tokenizer):
    tokenizer = model_and_tokenizer[1]
    root = dict_trie(index, tokenizer)
    assert trie.n_sids == len(set(map(tuple, index.codes.tolist())))
    eos = tokenizer.eos_token_id
    for item in index.item_ids[:15]:
        ids = tokenizer(index.sid_text(item), add_special_tokens=False)["input_ids"]
        for cut in range(len(ids) + 1):
            assert set(trie.valid_next(ids[:cut])) == reference_allowed(root, ids[:cut], eos, 1)
        two = ids + tokenizer(index.sid_text(index.item_ids[-1]), add_special_tokens=False)["input_ids"]
        assert trie.valid_next(two, num_sids=2) == [eos]
        assert set(trie.valid_next(ids, num_sids=2, allow_fewer=True)) == set(root) | {eos}
    assert trie.valid_next([tokenizer.convert_tokens_to_ids("<s_a_1>")]) == []  # must start with begin
    assert trie.memory_bytes() > 0 and "SIDTrie" in repr(trie)


def test_index_and_tokenizer_mismatch_is_a_clear_error(model_and_tokenizer):
    tokenizer = model_and_tokenizer[1]
    other = ItemIndex(["x"], [[1, 2, 999]])
    with pytest.raises(ValueError, match=r"<s_c_999>.*do not match"):
        SIDTrie.from_index(other, tokenizer)
    with pytest.raises(ValueError, match="non-empty"):
        SIDTrie(np.zeros((0, 3), dtype=np.int64), eos_token_id=1)


@pytest.mark.parametrize("fmt", [None, SIDFormat.minionerec(3)], ids=["openonerec", "minionerec"])
def test_beam_search_returns_only_valid_sids(fmt, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    index = random_index(fmt)
    trie = SIDTrie.from_index(index, tokenizer)
    enc = left_padded(tokenizer, PROMPTS)
    width = enc["input_ids"].shape[1]
    beams = 12
    out = model.generate(
        **enc,
        max_new_tokens=trie.sid_length + 1,
        num_beams=beams,
        num_return_sequences=beams,
        do_sample=False,
        logits_processor=[trie.logits_processor(width)],
        pad_token_id=tokenizer.pad_token_id,
    )
    texts = tokenizer.batch_decode(out[:, width:])
    assert len(texts) == len(PROMPTS) * beams
    for p in range(len(PROMPTS)):
        group = texts[p * beams : (p + 1) * beams]
        sids = [index.parse(t) for t in group]
        assert all(len(s) == 1 for s in sids), group  # 100% parse to exactly one valid SID
        assert len({s[0] for s in sids}) == beams  # beams are distinct SIDs
        assert all(t.endswith(tokenizer.eos_token) for t in group)


def test_sampling_with_several_sids_stays_in_the_catalogue(index, trie, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    enc = left_padded(tokenizer, PROMPTS)
    width = enc["input_ids"].shape[1]
    torch.manual_seed(0)
    out = model.generate(
        **enc,
        max_new_tokens=2 * trie.sid_length + 1,
        do_sample=True,
        temperature=5.0,  # a hot, near-uniform policy: only the constraint keeps it valid
        top_k=50,
        num_return_sequences=8,
        logits_processor=[trie.logits_processor(width, num_sids=2)],
        pad_token_id=tokenizer.pad_token_id,
    )
    for text in tokenizer.batch_decode(out[:, width:]):
        assert len(index.parse(text)) == 2 and text.endswith(tokenizer.eos_token), text


def test_allow_fewer_lets_eos_follow_any_complete_sid(index, trie, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    enc = left_padded(tokenizer, PROMPTS)
    width = enc["input_ids"].shape[1]
    eos = tokenizer.eos_token_id
    # Push EOS up so that, when allowed, it wins: the output must stop after exactly one SID.
    bias = torch.zeros(model.config.vocab_size)
    bias[eos] = 50.0

    def favour_eos(input_ids, scores):
        return scores + bias

    out = model.generate(
        **enc,
        max_new_tokens=3 * trie.sid_length + 1,
        do_sample=False,
        logits_processor=[favour_eos, trie.logits_processor(width, num_sids=3, allow_fewer=True)],
        pad_token_id=tokenizer.pad_token_id,
    )
    for text in tokenizer.batch_decode(out[:, width:], skip_special_tokens=False):
        assert len(index.parse(text)) == 1 and tokenizer.eos_token in text


def constrained_batch(index, tokenizer, seed: int = 0):
    """Completions with a free text part, then SIDs, EOS and padding; plus one off-trie row."""
    rng = np.random.default_rng(seed)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    text = tokenizer("Derivation: shared category.", add_special_tokens=False)["input_ids"]
    rows, starts = [], []
    for r in range(5):
        think = text[: int(rng.integers(0, len(text)))]
        sids = [
            tokenizer(index.sid_text(index.item_ids[int(i)]), add_special_tokens=False)["input_ids"]
            for i in rng.integers(0, len(index), size=2)
        ]
        answer = sids[0] + sids[1] + [eos]
        if r == 3:  # leaves the trie at the third token
            answer = answer[:2] + [text[0]] + answer[3:]
        rows.append(think + answer)
        starts.append(len(think))
    length = max(map(len, rows)) + 2
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
    return ids, torch.tensor(starts)


def test_constrained_log_probs_match_a_direct_computation(index, trie, model_and_tokenizer):
    tokenizer = model_and_tokenizer[1]
    root = dict_trie(index, tokenizer)
    eos = tokenizer.eos_token_id
    ids, starts = constrained_batch(index, tokenizer)
    vocab = 1000 + max(tokenizer.get_vocab().values())
    torch.manual_seed(0)
    logits = torch.randn(ids.shape[0], ids.shape[1], vocab, dtype=torch.float64, requires_grad=True)
    constrained = trie.constrain_logits(logits, ids, starts, num_sids=2)
    logp = torch.log_softmax(constrained, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    checked = 0
    for b in range(ids.shape[0]):
        stopped = False
        for t in range(ids.shape[1]):
            raw = torch.log_softmax(logits[b, t], -1)[ids[b, t]]
            if t < starts[b] or stopped:
                assert torch.equal(constrained[b, t], logits[b, t])  # untouched
                assert torch.allclose(logp[b, t], raw)
                continue
            allowed = reference_allowed(root, ids[b, starts[b] : t].tolist(), eos, num_sids=2)
            token = int(ids[b, t])
            if token in allowed:
                keep = torch.tensor(sorted(allowed))
                expected = logits[b, t, token] - torch.logsumexp(logits[b, t, keep], 0)
                assert abs(float(logp[b, t] - expected)) < 1e-6
                checked += 1
            else:
                assert logp[b, t] == float("-inf")
            assert set(torch.nonzero(torch.isfinite(constrained[b, t])).squeeze(1).tolist()) == allowed
            stopped = token == eos or token not in allowed
    assert checked >= 4 * (2 * trie.sid_length + 1)
    finite = logp[torch.isfinite(logp)].sum()
    finite.backward()  # gradients flow through the constrained logits
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_processor_and_constrain_logits_are_the_same_rule(index, trie, model_and_tokenizer):
    tokenizer = model_and_tokenizer[1]
    ids, starts = constrained_batch(index, tokenizer, seed=1)
    keep = starts == starts.min()
    ids, start = ids[keep], int(starts.min())
    vocab = len(tokenizer) + 7
    processor = trie.logits_processor(start, num_sids=2)
    constrained = trie.constrain_logits(
        torch.zeros(len(ids), ids.shape[1], vocab), ids, torch.full((len(ids),), start), num_sids=2
    )
    for t in range(start, start + 2 * trie.sid_length + 1):
        step = processor(ids[:, :t], torch.zeros(len(ids), vocab))
        for b in range(len(ids)):
            if torch.isfinite(constrained[b, t]).all():  # constrain_logits stopped on this row
                continue
            assert torch.equal(torch.isfinite(step[b]), torch.isfinite(constrained[b, t]))


def test_processor_rejects_a_prompt_length_past_the_input(trie):
    processor = trie.logits_processor(10)
    with pytest.raises(ValueError, match="prompt_length=10"):
        processor(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 50))


def test_constrain_logits_at_the_right_edge_needs_no_padding():
    """A SID part that ends in the last column, or starts past it, is handled by the trie itself:
    the result equals the one computed on the same batch padded on the right."""
    trie = SIDTrie(np.array([[5, 6, 7], [5, 8, 9], [4, 6, 9]]), eos_token_id=2)
    generator = torch.Generator().manual_seed(0)
    ids = torch.tensor([[1, 5, 6, 7], [1, 1, 5, 8], [5, 6, 7, 2], [1, 1, 1, 1]])
    starts = torch.tensor([1, 2, 0, 4])  # ends at the last column / mid-SID / EOS last / starts past the end
    logits = torch.randn(4, 4, 12, generator=generator)
    for num_sids in (1, 2):
        plain = trie.constrain_logits(logits, ids, starts, num_sids=num_sids)
        spare = trie.sid_length
        padded = trie.constrain_logits(
            torch.nn.functional.pad(logits, (0, 0, 0, spare)),
            torch.nn.functional.pad(ids, (0, spare)),
            starts,
            num_sids=num_sids,
        )[:, :4]
        assert torch.equal(plain, padded)
    assert torch.isinf(plain[0, 1]).sum() == 12 - 2  # only the two SID starts (4, 5) allowed at the root
