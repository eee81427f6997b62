"""Thinking at the non-thinking beam budget: several traces share the beams, and race mode
merges thinking and non-thinking beams into one list; beams are counted where they are decoded."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from test_eval_generate import examples, make_index, split_folder

import onereason.decoding
from evaluation.generate import BeamRanker, DecodingConfig, head_beams
from evaluation.metrics import mode_shares
from evaluation.report import RunResult, comparison_pairs
from evaluation.run import EvalConfig
from onereason.configs import ConflictingSettings
from onereason.decoding import ThinkBlock, ThinkSettings, split_beams, trace_log_weights


@pytest.fixture(scope="module")
def world(make_tiny_model):
    from onereason.modeling import load_model_and_tokenizer

    index = make_index()
    path = make_tiny_model(itemic_tokens=index.itemic_tokens())
    index.save(path / "item_index.json")
    model, tokenizer = load_model_and_tokenizer(path, dtype=torch.float32)
    model.eval()
    return path, index, model, tokenizer


@pytest.fixture
def decoded(monkeypatch):
    """Beams every constrained beam search returns, per call (rows x beams of its scores)."""
    calls: list[int] = []
    search = onereason.decoding.constrained_beam_search

    def counting(*args, **kwargs):
        sequences, scores = search(*args, **kwargs)
        calls.append(scores.numel())
        return sequences, scores

    monkeypatch.setattr(onereason.decoding, "constrained_beam_search", counting)
    return calls


def test_beams_are_split_evenly_with_the_remainder_to_the_first_heads():
    assert split_beams(10, 5) == [2] * 5  # OneRec-Think's 5 traces x 2 beams of a 10-beam budget
    assert split_beams(10, 3) == [4, 3, 3]
    assert split_beams(4, 4) == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="each needs at least one"):
        split_beams(2, 3)


def test_every_mode_plans_the_non_thinking_budget():
    cfg = DecodingConfig(num_beams=7, think_samples=2)
    assert head_beams("no_think", cfg) == [("no_think", 7)]
    assert head_beams("think", cfg) == [("think", 4), ("think", 3)]
    assert head_beams("race", cfg) == [("think", 2), ("think", 2), ("no_think", 3)]
    for mode in ("no_think", "think", "race"):
        assert sum(k for _, k in head_beams(mode, cfg)) == 7
    with pytest.raises(ValueError, match="mode race with num_beams 3 and think_samples 3"):
        head_beams("race", DecodingConfig(num_beams=3, think_samples=3))
    with pytest.raises(ValueError, match="mode think with num_beams 2 and think_samples 3"):
        head_beams("think", DecodingConfig(num_beams=2, think_samples=3))
    with pytest.raises(ValueError, match="answer: sid"):
        head_beams("race", DecodingConfig(num_beams=4, answer="term"))
    with pytest.raises(ValueError, match="mode must be one of"):
        head_beams("sprint", cfg)


@pytest.mark.parametrize(
    "mode, samples, search",
    [
        ("no_think", 1, "sample"),
        ("think", 1, "sample"),
        ("think", 3, "sample"),
        ("race", 1, "sample"),
        ("race", 2, "sample"),
        ("think", 3, "beam"),
        ("race", 2, "beam"),
    ],
)
def test_each_mode_decodes_exactly_the_non_thinking_beam_budget(world, decoded, mode, samples, search):
    _, index, model, tokenizer = world
    cfg = DecodingConfig(
        num_beams=7, batch_size=2, think_budget=6, think_samples=samples, think_search=search
    )
    ranker = BeamRanker(model, tokenizer, index, cfg)
    run = ranker.rank(examples(index, 3), mode)
    assert sum(decoded) == 3 * 7  # beams decoded, over every search of every batch
    for r in run:
        assert r["n_beams"] == 7  # the trie holds more SIDs than beams: no padding beam
        assert 0 < len(r["ranked_sids"]) == len(set(r["ranked_sids"])) <= 7
        assert r["scores"] == sorted(r["scores"], reverse=True)
        assert len(r["ranked_modes"]) == len(r["ranked_sids"])
        assert len(r["think"]) == (samples if mode != "no_think" else 0)
        if mode != "race":
            assert set(r["ranked_modes"]) == {mode}


def test_race_records_say_which_mode_each_sid_came_from(world):
    _, index, model, tokenizer = world
    cfg = DecodingConfig(num_beams=10, batch_size=4, think_budget=6)
    run = BeamRanker(model, tokenizer, index, cfg).rank(examples(index, 4), "race")
    modes = Counter(m for r in run for m in r["ranked_modes"])
    assert set(modes) <= {"think", "no_think"} and modes["no_think"] > 0
    shares = mode_shares(run, k=10)
    assert shares["sids"] == sum(modes.values())
    assert sum(shares["shares"].values()) == pytest.approx(1.0)
    assert shares["shares"]["no_think"] == modes["no_think"] / shares["sids"]


DECIDES = (
    "Derivation: latest Tent, vintage.\nEvolution: Camping, vintage (periodic, 3 6 ago).\n"
    "Recommendation: interest Camping, vintage, due now."
)
OPEN = (
    "Derivation: latest Tent, vintage.\nEvolution: Camping, vintage (periodic, 2 5 ago).\n"
    "Recommendation: none is due; the recent interests go on."
)


def test_adaptive_follows_a_trace_that_decides_and_answers_plainly_after_an_open_one(world, decoded):
    _, index, model, tokenizer = world
    cfg = DecodingConfig(num_beams=5, batch_size=3, trace_source="history")
    users = examples(index, 4)
    decided = {users[0].history[0], users[2].history[0]}  # users 0 and 2 get a trace that decides
    ranker = BeamRanker(
        model, tokenizer, index, cfg, history_trace=lambda h: DECIDES if h[0] in decided else OPEN
    )
    run = ranker.rank(users, "adaptive")
    assert sum(decoded) == 4 * 5  # the trace is written for every user; the beams stay 5 each
    think, plain = ranker.rank(users, "think"), ranker.rank(users, "no_think")
    for u, r in enumerate(run):
        side, same = ("think", think[u]) if u in (0, 2) else ("no_think", plain[u])
        assert set(r["ranked_modes"]) == {side} and r["n_beams"] == 5
        assert r["ranked_sids"] == same["ranked_sids"]  # exactly that side's list
        assert r["think"] == [DECIDES if u in (0, 2) else OPEN]  # spent either way, and recorded
    assert mode_shares(run, k=10)["shares"]["think"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="adaptive .* think_samples 1"):
        head_beams("adaptive", DecodingConfig(num_beams=6, think_samples=2))


def test_merge_keeps_at_most_num_beams_sids_by_score_and_the_best_side_of_a_race(world):
    _, index, model, tokenizer = world
    ranker = BeamRanker(model, tokenizer, index, DecodingConfig(num_beams=3, race_merge="score"))
    a, b, c, d = (index.sid_text(f"i{i}") for i in (2, 3, 4, 5))
    beams = [
        ("think", a, -1.0, 0.0),
        ("think", b, -3.0, 0.0),
        ("no_think", a, -2.0, 0.0),  # found by both sides: keeps the thinking side's better score
        ("no_think", c, -0.5, 0.0),
        ("no_think", d, -4.0, 0.0),  # fourth by score: cut at num_beams
        ("think", "not a sid", -0.1, 0.0),  # invalid: counted, not ranked
    ]
    sids, scores, modes, n_valid = ranker._merge(beams, Counter(think=1, no_think=1))
    assert (sids, scores, modes, n_valid) == (
        [c, a, b],
        [-0.5, -1.0, -3.0],
        ["no_think", "think", "think"],
        5,
    )
    # two traces: a SID's thinking score is its probability averaged over both (0 where missing)
    half = -math.log(2)  # two sampled traces count alike
    beams = [
        ("think", a, -1.0, half),
        ("think", a, -2.0, half),
        ("think", b, -1.5, half),
        ("no_think", c, -1.2, 0.0),
    ]
    sids, scores, modes, _ = ranker._merge(beams, Counter(think=2, no_think=1))
    assert scores[sids.index(a)] == pytest.approx(math.log((math.exp(-1.0) + math.exp(-2.0)) / 2))
    assert scores[sids.index(b)] == pytest.approx(-1.5 - math.log(2))
    assert sids == [c, a, b] and modes == ["no_think", "think", "think"]  # -1.2 > log(0.25) > -2.2


def test_traces_found_by_beam_search_are_distinct_and_scored_by_their_log_probability(world):
    """`think_search: beam` keeps the S most probable traces, each with log p(trace | prompt)
    under the model itself (checked against a forward pass), best first."""
    _, index, model, tokenizer = world
    ranker = BeamRanker(model, tokenizer, index, DecodingConfig(num_beams=6, think_budget=5))
    prompt = ranker.prompt_ids(examples(index, 1)[0].messages, "think")
    settings = ThinkSettings(budget=5, samples=3, search="beam")
    blocks = ranker.decoder.think(model, [prompt], ["think"], settings)[0]
    assert len(blocks) == 3 and len({tuple(b.ids) for b in blocks}) == 3
    scores = [b.log_prob for b in blocks]
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(ValueError, match="think_search must be one of"):
        DecodingConfig(think_search="greedy")
    with pytest.raises(ValueError, match="think_search beam runs on transformers"):
        DecodingConfig(think_search="beam", think_backend="vllm")
    head = prompt + ranker.decoder.open_ids
    for block in blocks:
        sampled = [t for t, m in zip(block.ids, block.mask) if m]  # the trace, and its </think> if written
        ids = torch.tensor([head + sampled])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, len(head) - 1 : -1].float(), -1)
        assert block.log_prob == pytest.approx(
            logp.gather(1, ids[0, len(head) :, None]).sum().item(), abs=1e-3
        )


def test_beam_searched_traces_weight_their_answers_by_the_trace_probability(world):
    _, index, model, tokenizer = world
    likely, unlikely = ThinkBlock([], [], log_prob=math.log(0.6)), ThinkBlock([], [], log_prob=math.log(0.2))
    assert [math.exp(w) for w in trace_log_weights([likely, unlikely])] == pytest.approx([0.75, 0.25])
    sampled = [ThinkBlock([], []), ThinkBlock([], [])]  # sampled traces count alike
    assert trace_log_weights(sampled) == pytest.approx([-math.log(2)] * 2)
    assert trace_log_weights([likely]) == [0.0]
    ranker = BeamRanker(model, tokenizer, index, DecodingConfig(num_beams=3))
    a, b = (index.sid_text(f"i{i}") for i in (2, 3))
    w1, w2 = trace_log_weights([likely, unlikely])
    # b is each trace's runner-up, but its probability over the two traces beats a's,
    # which only the unlikely trace found
    beams = [
        ("think", b, math.log(0.4), w1),
        ("think", a, math.log(0.9), w2),
        ("think", b, math.log(0.1), w2),
    ]
    sids, scores, _, _ = ranker._merge(beams, Counter(think=2))
    assert sids == [b, a]
    assert scores == pytest.approx([math.log(0.75 * 0.4 + 0.25 * 0.1), math.log(0.25 * 0.9)])


def test_a_race_merged_by_rank_interleaves_the_two_sides_whatever_their_scores(world):
    """After a trace the model's SID log-probs are far higher: by rank, the sides still alternate,
    a SID both sides found comes first, and the list keeps num_beams SIDs."""
    _, index, model, tokenizer = world
    ranker = BeamRanker(model, tokenizer, index, DecodingConfig(num_beams=4))
    a, b, c, d, e = (index.sid_text(f"i{i}") for i in (2, 3, 4, 5, 6))
    beams = [
        ("think", a, -0.1, 0.0),
        ("think", b, -0.2, 0.0),
        ("think", e, -0.3, 0.0),
        ("no_think", c, -5.0, 0.0),
        ("no_think", d, -6.0, 0.0),
        ("no_think", e, -7.0, 0.0),  # third on both sides: rises above b and d
    ]
    sids, scores, modes, n_valid = ranker._merge(beams, Counter(think=1, no_think=1))
    assert n_valid == 6 and len(sids) == 4
    assert sids == [e, a, c, b] and modes == ["think", "think", "no_think", "think"]
    assert scores[0] == pytest.approx(2 / 63) and scores[1] == pytest.approx(scores[2]) == pytest.approx(
        1 / 61
    )
    # the same beams merged by raw score: the thinking side alone
    by_score = BeamRanker(model, tokenizer, index, DecodingConfig(num_beams=4, race_merge="score"))
    assert by_score._merge(beams, Counter(think=1, no_think=1))[2] == ["think"] * 3 + ["no_think"]


def test_mode_shares_pool_the_top_k_sids_and_sum_to_one():
    run = [{"ranked_modes": ["think"] * 3 + ["no_think"] * 9}, {"ranked_modes": ["no_think"] * 2}]
    assert mode_shares(run, k=10) == {"k": 10, "sids": 12, "shares": {"think": 0.25, "no_think": 0.75}}
    assert mode_shares([{"ranked_modes": []}], k=10)["shares"] == {"think": None, "no_think": None}


def test_race_is_a_mode_compared_with_no_think_like_think():
    assert EvalConfig(compare=True, modes=["no_think", "race"]).modes == ["no_think", "race"]
    with pytest.raises(ConflictingSettings):
        EvalConfig(compare=True, modes=["race"])
    with pytest.raises(ValueError, match="modes must be among"):
        EvalConfig(modes=["no_think", "sprint"])
    runs = [
        RunResult(f"{c}/{m}", c, m, item=None) for c in ("sft", "rl") for m in ("no_think", "think", "race")
    ]
    pairs = {(a.name, b.name) for a, b in comparison_pairs(runs)}
    assert {("sft/race", "sft/no_think"), ("sft/think", "sft/no_think"), ("rl/race", "sft/race")} <= pairs


@pytest.mark.slow
def test_onereason_eval_race_end_to_end(world, tmp_path):
    from evaluation.run import main

    path, _, _, _ = world
    data = split_folder(tmp_path / "data")
    out = tmp_path / "eval"
    argv = [
        "--models", str(path), "--names", "sft", "--data_path", str(data), "--modes", "no_think", "race",
        "--out_dir", str(out), "--num_beams", "10", "--think_budget", "8", "--n_bootstrap", "200",
        "--device", "cpu", "--allow_unknown",  # the index has a collision on purpose
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    runs = {r["name"]: r for r in report["runs"]}
    assert list(runs)[:2] == ["sft/no_think", "sft/race"]
    race = runs["sft/race"]
    assert race["mode"] == "race" and race["item"]["n_users"] == 12 and "traces" in race
    assert race["mode_shares"]["k"] == 10 and race["mode_shares"]["sids"] > 0
    assert sum(race["mode_shares"]["shares"].values()) == pytest.approx(1.0)
    assert "mode_shares" not in runs["sft/no_think"]
    pairs = {(c["a"], c["b"], c["level"]) for c in report["comparisons"]}
    assert {("sft/race", "sft/no_think", "item"), ("sft/race", "sft/no_think", "sid")} <= pairs
    records = [json.loads(line) for line in (out / "runs" / "sft-race.jsonl").read_text().splitlines()]
    assert len(records) == 12
    assert all(r["n_beams"] == 10 and len(r["ranked_modes"]) == len(r["ranked_sids"]) for r in records)
    md = (out / "report.md").read_text()
    assert "## Race: which mode found the top-10 SIDs" in md and "| sft/race |" in md
    assert "## sft/race − sft/no_think" in md
