"""Constrained two-stage generation, resumable shards, bad input, and `onereason eval` end to end."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from evaluation.generate import (
    BeamRanker,
    DecodingConfig,
    generate_run,
    load_item_index,
)
from evaluation.protocols import EvalExample, check_targets, examples_from_rows
from onereason.decoding import completion_ids, vllm_installed
from onereason.terms import parse_answer_terms
from onereason.thinking import EMPTY_THINK
from onereason.vocab import check_itemic_tokens

N_ITEMS = 30


def make_index(with_terms: bool = True):
    from onereason.item_index import ItemIndex, SIDFormat

    rng = np.random.default_rng(0)
    codes = rng.choice(64, size=N_ITEMS, replace=False)
    codes = np.stack([codes // 16, (codes // 4) % 4, codes % 4], axis=1)
    codes[1] = codes[0]  # i0 and i1 share a SID: a collision
    terms = [["glassware", f"kind{i % 5}", f"brand{i % 7}"] for i in range(N_ITEMS)] if with_terms else None
    return ItemIndex([f"i{i}" for i in range(N_ITEMS)], codes, terms=terms, sid_format=SIDFormat())


@pytest.fixture(scope="module")
def world(make_tiny_model):
    from onereason.modeling import load_model_and_tokenizer

    index = make_index()
    path = make_tiny_model(itemic_tokens=index.itemic_tokens())
    index.save(path / "item_index.json")
    model, tokenizer = load_model_and_tokenizer(path, dtype=torch.float32)
    model.eval()
    return path, index, model, tokenizer


def examples(index, n: int = 5) -> list[EvalExample]:
    rows = [
        {
            "user_id": f"u{u}",
            "history": [f"i{(u + j) % N_ITEMS}" for j in range(3)],
            "target": f"i{(u * 7) % N_ITEMS}",
        }
        for u in range(n)
    ]
    return examples_from_rows(rows, index)


def test_no_think_beams_are_valid_distinct_and_scored_by_log_prob(world):
    _, index, model, tokenizer = world
    ranker = BeamRanker(model, tokenizer, index, DecodingConfig(num_beams=6, batch_size=3))
    exs = examples(index, 4)
    run = ranker.rank(exs, "no_think")
    assert [r["key"] for r in run] == [e.key for e in exs]
    for r in run:
        assert r["n_valid"] == r["n_beams"] == 6  # the trie makes every beam a catalogue SID
        assert len(set(r["ranked_sids"])) == 6
        assert r["scores"] == sorted(r["scores"], reverse=True)
        expanded = [i for s in r["ranked_sids"] for i in index.items_for_sid(index.parse(s)[0])]
        assert r["ranked_items"] == expanded and r["think_tokens"] == 0 and r["think"] == []
    # a beam's score is the model's summed log-prob of its SID + EOS after the prompt
    ex, record = exs[0], run[0]
    prompt = ranker.prompt_ids(ex.messages, "no_think") + ranker.decoder.empty_think_ids
    for sid, score in zip(record["ranked_sids"][:3], record["scores"][:3]):
        answer = tokenizer(sid, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logits = model(ids).logits[:, len(prompt) - 1 : -1]
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, len(prompt) :, None]).sum().item()
        assert logp == pytest.approx(score, abs=1e-3)


def test_prompt_ends_with_the_switch_and_modes_share_the_history(world):
    _, index, model, tokenizer = world
    ranker = BeamRanker(model, tokenizer, index, DecodingConfig(num_beams=2))
    ex = examples(index, 1)[0]
    no_think = tokenizer.decode(ranker.prompt_ids(ex.messages, "no_think"))
    think = tokenizer.decode(ranker.prompt_ids(ex.messages, "think"))
    assert "/no_think" in no_think and "/think" in think and "/no_think" not in think
    assert no_think.split("/no_think")[0] == think.split("/think")[0]
    assert tokenizer.decode(ranker.decoder.empty_think_ids) == EMPTY_THINK


def test_think_mode_respects_the_budget_and_closes_the_trace(world):
    _, index, model, tokenizer = world
    cfg = DecodingConfig(
        num_beams=4, batch_size=2, think_budget=12, think_temperature=1.0, think_top_k=0, think_top_p=1.0
    )
    ranker = BeamRanker(model, tokenizer, index, cfg)
    torch.manual_seed(0)
    run = ranker.rank(examples(index, 3), "think")
    for r in run:
        assert 0 < r["think_tokens"] <= 12
        assert r["n_valid"] == r["n_beams"] == 4
        assert len(r["think"]) == 1
        if r["think_budget_exhausted"]:
            assert r["think_tokens"] == 12
    # an untrained model rarely writes </think> on its own: the forced close must have happened
    assert any(r["think_budget_exhausted"] for r in run)


def test_vllm_completions_are_normalised_to_end_at_their_stop_token():
    done = SimpleNamespace(token_ids=[5, 6], finish_reason="stop", stop_reason=99)  # stop token left out
    kept = SimpleNamespace(token_ids=[5, 6, 99], finish_reason="stop", stop_reason=99)
    eos = SimpleNamespace(token_ids=[5], finish_reason="stop", stop_reason=None)
    budget = SimpleNamespace(token_ids=[5, 6, 7], finish_reason="length", stop_reason=None)
    assert completion_ids(done, eos_id=2) == completion_ids(kept, eos_id=2) == [5, 6, 99]
    assert completion_ids(eos, eos_id=2) == [5, 2]
    assert completion_ids(budget, eos_id=2) == [5, 6, 7]


def test_think_stage_on_a_vllm_style_sampler_gives_the_same_records(world):
    """The vLLM path hands back unpadded completions of any length; `_think` must read them as it
    reads transformers' padded ones (vLLM itself needs a GPU: the sampler here replays fixed tokens)."""
    _, index, model, tokenizer = world
    cfg = DecodingConfig(num_beams=3, batch_size=2, think_budget=8)
    ranker = BeamRanker(model, tokenizer, index, cfg)
    words = ranker.encode("a b")
    close = ranker.decoder.think_close_id
    replies = [words + [close], [words[0]] * 8]  # one closed trace, one that spends the budget
    ranker.think_backend = "vllm"
    ranker._vllm = lambda heads, seed: [list(replies[i % 2]) for i in range(len(heads))]
    run = ranker.rank(examples(index, 2), "think")
    closed, spent = run
    assert closed["think_tokens"] == len(words) + 1 and not closed["think_budget_exhausted"]
    assert closed["think"] == [tokenizer.decode(words, skip_special_tokens=True).strip()]
    assert spent["think_tokens"] == 8 and spent["think_budget_exhausted"]
    assert all(r["n_valid"] == r["n_beams"] == 3 for r in run)


def test_think_backend_auto_falls_back_to_transformers_and_vllm_is_checked_up_front(world):
    _, index, model, tokenizer = world
    if vllm_installed():
        pytest.skip("vLLM is installed here: nothing to refuse")
    auto = BeamRanker(model, tokenizer, index, DecodingConfig(think_backend="auto"))
    assert auto.think_backend == "transformers"
    with pytest.raises(ImportError, match="vLLM"):
        BeamRanker(model, tokenizer, index, DecodingConfig(think_backend="vllm"), model_path="m")
    with pytest.raises(ValueError, match="think_backend"):
        DecodingConfig(think_backend="tgi")


def test_test_time_scaling_merges_beams_of_several_traces(world):
    _, index, model, tokenizer = world
    cfg = DecodingConfig(num_beams=5, batch_size=2, think_budget=6, think_samples=3)
    ranker = BeamRanker(model, tokenizer, index, cfg)
    run = ranker.rank(examples(index, 2), "think")
    for r in run:
        assert r["n_beams"] == 5 and len(r["think"]) == 3  # 2 + 2 + 1 beams: the non-thinking budget
        assert 0 < len(r["ranked_sids"]) == len(set(r["ranked_sids"])) <= 5
        assert r["scores"] == sorted(r["scores"], reverse=True)
        # merged log-probs average probabilities over 3 traces: at most the best single beam
        assert all(s <= 0 for s in r["scores"])


def test_shards_resume_and_refuse_a_different_setup(world, tmp_path):
    path, index, model, tokenizer = world
    cfg = DecodingConfig(num_beams=3, batch_size=2)
    ranker = BeamRanker(model, tokenizer, index, cfg)
    exs = examples(index, 5)
    run_path = tmp_path / "runs" / "m-no_think.jsonl"
    first, wall = generate_run(
        ranker, exs, "no_think", run_path, shard_size=2, model_path=str(path), progress=False
    )
    assert wall > 0
    shards = sorted((tmp_path / "runs" / "m-no_think.jsonl.shards").glob("shard-*.jsonl"))
    assert len(shards) == 3 and len(first) == 5
    kept = shards[0].stat().st_mtime_ns
    os.utime(shards[0], ns=(kept - 10**9, kept - 10**9))
    shards[1].unlink()  # an interrupted run lost this shard
    again, wall = generate_run(
        ranker, exs, "no_think", run_path, shard_size=2, model_path=str(path), progress=False
    )
    assert wall is None  # read back in part: throughput comes from the records' latencies
    assert shards[0].stat().st_mtime_ns == kept - 10**9  # finished shards are not regenerated
    assert [r["ranked_sids"] for r in again] == [r["ranked_sids"] for r in first]
    with open(run_path) as f:
        assert [json.loads(line)["key"] for line in f] == [e.key for e in exs]
    other = BeamRanker(model, tokenizer, index, DecodingConfig(num_beams=4))
    with pytest.raises(ValueError, match="different evaluation"):
        generate_run(other, exs, "no_think", run_path, shard_size=2, model_path=str(path), progress=False)
    # the same folder, retrained: other weights, so the old shards are not this model's
    weights = next(f for f in path.iterdir() if f.suffix == ".safetensors")
    stamp = weights.stat().st_mtime_ns
    try:
        os.utime(weights, ns=(stamp + 10**9, stamp + 10**9))
        with pytest.raises(ValueError, match="different evaluation"):
            generate_run(
                ranker, exs, "no_think", run_path, shard_size=2, model_path=str(path), progress=False
            )
    finally:
        os.utime(weights, ns=(stamp, stamp))


def test_bad_inputs_fail_clearly_or_are_counted(world, tmp_path):
    from onereason.item_index import ItemIndex, SIDFormat

    _, index, model, tokenizer = world
    with pytest.raises(FileNotFoundError, match="has no item_index.json"):
        load_item_index(tmp_path)
    foreign = ItemIndex(["x"], np.array([[9, 9, 9]]), sid_format=SIDFormat())  # codes the tokenizer lacks
    with pytest.raises(ValueError, match="does not match"):
        check_itemic_tokens(tokenizer, foreign)
    exs = examples(index, 3)
    exs.append(EvalExample("ghost#9", "ghost", exs[0].messages, ["not-an-item"]))
    exs.append(EvalExample("half#10", "half", exs[0].messages, ["i3", "not-an-item"]))
    kept, drops = check_targets(exs, index)
    assert [e.user_id for e in kept] == ["u0", "u1", "u2", "half"]
    assert kept[-1].targets == ["i3"]
    assert drops == {"unknown_target_users": 1, "unknown_targets_removed": 1, "no_target": 0}


def test_term_answers_are_grounded_and_garbage_is_counted(world):
    _, index, model, tokenizer = world
    assert parse_answer_terms("x [glassware, kind2, brand3] y") == ["glassware", "kind2", "brand3"]
    assert parse_answer_terms("no terms here") is None
    ranker = BeamRanker(model, tokenizer, index, DecodingConfig(num_beams=3, answer="term"))
    ranked, n_valid = ranker._ground([(0, "[glassware, kind2, brand3]", 0.0, 0.0), (0, "garbage", 0.0, 0.0)])
    assert n_valid == 1
    exact = [f"i{i}" for i in range(N_ITEMS) if i % 5 == 2 and i % 7 == 3]
    assert ranked[: len(exact)] == exact
    run = ranker.rank(examples(index, 2), "no_think")  # an untrained model: whatever it writes is counted
    assert all(r["n_beams"] == 3 and 0 <= r["n_valid"] <= 3 for r in run)


def split_folder(data):
    """A build-data style folder at `data`: 12 users with train and test splits, plus one test
    user whose target is not in the catalogue (dropped and counted)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    splits = {"train": [], "test": []}
    for u in range(12):
        seq = [f"i{j}" for j in rng.choice(N_ITEMS, size=6, replace=False)]
        splits["train"] += [{"user_id": f"u{u}", "history": seq[:t], "target": seq[t]} for t in range(1, 4)]
        splits["test"].append({"user_id": f"u{u}", "history": seq[:5], "target": seq[5]})
    splits["test"].append({"user_id": "ghost", "history": ["i1"], "target": "unknown-item"})
    for name, rows in splits.items():
        (data / "splits").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), data / "splits" / f"{name}.parquet")
    return data


@pytest.mark.slow
def test_onereason_eval_compare_end_to_end(world, tmp_path):
    from evaluation.run import main

    path, index, _, _ = world
    data = split_folder(tmp_path / "data")
    out = tmp_path / "eval"
    argv = [
        "--models",
        str(path),
        str(path),
        "--names",
        "sft",
        "rl",
        "--data_path",
        str(data),
        "--compare",
        "--out_dir",
        str(out),
        "--num_beams",
        "10",
        "--think_budget",
        "8",
        "--shard_size",
        "5",
        "--n_bootstrap",
        "200",
        "--device",
        "cpu",
        "--allow_unknown",  # the index has a collision on purpose (item-level metrics count it)
    ]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    names = [r["name"] for r in report["runs"]]
    assert names == [
        "sft/no_think",
        "sft/think",
        "rl/no_think",
        "rl/think",
        "baseline/popularity",
        "baseline/cooccurrence",
    ]
    assert report["drops"]["unknown_target_users"] == 1 and report["n_examples"] == 12
    pairs = {(c["a"], c["b"], c["level"]) for c in report["comparisons"]}
    assert ("sft/think", "sft/no_think", "item") in pairs and ("rl/no_think", "sft/no_think", "item") in pairs
    # the same model twice: identical non-thinking runs, so a zero interval
    same = next(c for c in report["comparisons"] if c["a"] == "rl/no_think" and c["level"] == "item")
    assert same["metrics"]["hit@10"]["low"] == same["metrics"]["hit@10"]["high"] == 0.0
    for run in report["runs"][:4]:
        assert run["stats"]["valid_sid_rate"] == 1.0 and run["item"]["n_users"] == 12
    # A model ranks as deep as its beams: no row, baselines included, is scored deeper.
    assert report["ks"] == [1, 5, 10] and "beams" in report["ranking"]
    md = (out / "report.md").read_text()
    assert "@20" not in md and "@32" not in md and "K = 20, 32 not shown" in md
    assert "| sft/think |" in md and "baseline/cooccurrence" in md and "95% interval" in md
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "runs" / "sft-think.jsonl").read_text().splitlines()) == 12
