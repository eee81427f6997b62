"""Two-stage constrained rollouts: every SID valid in both modes, forced tokens masked, beams grouped."""

from __future__ import annotations

import pytest
import torch
from toy_world import toy_index, toy_model, toy_rows

from onereason.rl.rollout import TwoStageGenerator, prompt_mode, sid_starts
from onereason.rl.verify import prompt_token_ids
from onereason.thinking import EMPTY_THINK, split_answer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from onereason.modeling import load_model_and_tokenizer
    from onereason.trie import SIDTrie

    index = toy_index(8, (2, 2, 2))
    path = toy_model(tmp_path_factory.mktemp("rollout-model"), index)
    model, tokenizer = load_model_and_tokenizer(path, dtype="float32")
    torch.manual_seed(0)
    return index, model, tokenizer, SIDTrie.from_index(index, tokenizer)


def generate(world, rows, samples=1, **kwargs):
    index, model, tokenizer, trie = world
    generator = TwoStageGenerator(trie, tokenizer, **kwargs)
    ids = prompt_token_ids(tokenizer, [r["prompt"] for r in rows for _ in range(samples)])
    modes = [r["mode"] for r in rows for _ in range(samples)]
    return generator, generator.generate(model, ids, modes, group_size=samples)


@pytest.mark.parametrize("decoding", ["sample", "beam"])
def test_every_rollout_names_valid_sids_in_both_modes(world, decoding):
    index, _, tokenizer, _ = world
    rows = toy_rows(index, 12, think_share=0.5, seed=3)
    assert {r["mode"] for r in rows} == {"think", "no_think"}
    _, out = generate(world, rows, samples=4, think_budget=12, decoding=decoding)
    texts = tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)
    for text, mode in zip(texts, out.modes):
        trace, answer = split_answer(text)
        sids = index.parse(answer)
        assert len(sids) == 1 and index.items_for_sid(sids[0]), text
        assert answer == index.render(sids[0])  # nothing but the SID after the think block
        if mode == "no_think":
            assert text.startswith(EMPTY_THINK)
        else:
            assert text.startswith("<think>\n") and trace is not None
    assert all(ids[-1] == tokenizer.eos_token_id for ids in out.completion_ids)


def test_forced_tokens_are_masked_and_sid_start_is_recoverable(world):
    index, _, tokenizer, _ = world
    rows = toy_rows(index, 8, think_share=0.5, seed=4)
    generator, out = generate(world, rows, think_budget=6)
    empty = tokenizer(EMPTY_THINK, add_special_tokens=False)["input_ids"]
    for ids, mask, start, mode in zip(out.completion_ids, out.env_mask, out.sid_start, out.modes):
        assert len(mask) == len(ids)
        assert all(m == 1 for m in mask[start:]), "the SID part is sampled"
        assert mask[start - len(generator.answer_sep_ids) : start] == [0] * len(generator.answer_sep_ids)
        if mode == "no_think":
            assert ids[:start] == empty and sum(mask[:start]) == 0
        else:
            assert sum(mask[:start]) <= 6, "at most think_budget sampled think tokens"
    padded = torch.full((len(out.completion_ids), max(map(len, out.completion_ids))), tokenizer.pad_token_id)
    for i, ids in enumerate(out.completion_ids):
        padded[i, : len(ids)] = torch.tensor(ids)
    recovered = sid_starts(padded, generator.think_close_id, len(generator.answer_sep_ids))
    assert recovered.tolist() == out.sid_start


def test_beam_groups_share_one_think_block_and_rank_distinct_items(world):
    index, _, tokenizer, _ = world
    rows = toy_rows(index, 3, think_share=1.0, seed=5)
    _, out = generate(world, rows, samples=4, think_budget=8, decoding="beam")
    texts = tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)
    for g in range(3):
        group = texts[g * 4 : (g + 1) * 4]
        assert len({split_answer(t)[0] for t in group}) == 1, "one sampled think block per group"
        assert len({split_answer(t)[1] for t in group}) == 4, "the beams are distinct SIDs"
        assert out.beam_rank[g * 4 : (g + 1) * 4] == [0, 1, 2, 3]


def test_two_sids_per_answer(world):
    index, _, tokenizer, _ = world
    rows = toy_rows(index, 4, think_share=0.0, seed=6)
    _, out = generate(world, rows, num_sids=2)
    for text in tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True):
        sids = index.parse(split_answer(text)[1])
        assert len(sids) == 2 and all(index.items_for_sid(s) for s in sids)


def test_prompt_mode_reads_the_switch():
    assert prompt_mode([{"role": "user", "content": "next? /no_think"}]) == "no_think"
    assert (
        prompt_mode([{"role": "system", "content": "x"}, {"role": "user", "content": "next? /think"}])
        == "think"
    )


def test_bad_settings_are_rejected(world):
    _, _, tokenizer, trie = world
    with pytest.raises(ValueError, match="decoding"):
        TwoStageGenerator(trie, tokenizer, decoding="greedy")
    with pytest.raises(ValueError, match="think_budget"):
        TwoStageGenerator(trie, tokenizer, think_budget=0)


def test_an_external_think_sampler_feeds_stage_one_and_stage_two_stays_on_the_trie(world):
    """With `use_vllm` the trainer samples think blocks on vLLM; the generator must take those
    tokens as they come (closed, or cut at the budget) and still decode the SID under the trie."""
    index, _, tokenizer, _ = world
    rows = toy_rows(index, 6, think_share=0.5, seed=5)
    words = tokenizer("a b", add_special_tokens=False)["input_ids"]
    close = tokenizer.convert_tokens_to_ids("</think>")
    seen = []

    def sampler(heads):
        seen.append(len(heads))
        return [words + [close] if k % 2 else words * 20 for k in range(len(heads))]

    generator, out = generate(world, rows, think_budget=5, think_sampler=sampler)
    assert seen == [len(rows)], "one call with every prompt (ranks must send equal counts to vLLM)"
    assert {r["mode"] for r in rows} == {"think", "no_think"}
    texts = tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)
    for ids, mask, start, mode, text in zip(
        out.completion_ids, out.env_mask, out.sid_start, out.modes, texts
    ):
        sids = index.parse(split_answer(text)[1])
        assert len(sids) == 1 and index.items_for_sid(sids[0]), text
        if mode == "think":
            sampled = sum(mask[:start])
            assert sampled in (len(words) + 1, 5), "a closed trace keeps its </think>, a long one is cut at 5"
            assert ids[len(generator.decoder.open_ids) : len(generator.decoder.open_ids) + 2] == words[:2]
