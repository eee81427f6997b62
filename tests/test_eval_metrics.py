"""Ranking metrics against ranx, collisions at item level, the paired bootstrap, the baselines."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.baselines import cooccurrence_baseline, popularity_baseline, popularity_counts
from evaluation.bootstrap import paired_bootstrap, paired_bootstrap_many
from evaluation.metrics import compute_metrics, generation_stats
from onereason.ranking import user_metrics

KS = (1, 5, 10, 20, 32)


def random_run(seed: int, n_users: int = 300, n_items: int = 200) -> list[dict]:
    """Random rankings and 1-3 targets per user; every user has a non-empty ranking."""
    rng = np.random.default_rng(seed)
    run = []
    for u in range(n_users):
        length = int(rng.integers(1, 45))
        ranked = [f"i{j}" for j in rng.choice(n_items, size=length, replace=False)]
        n_targets = int(rng.integers(1, 4))
        # half of the users get a target from their own list, so hits at every depth occur
        pool = ranked if rng.random() < 0.5 else [f"i{j}" for j in range(n_items)]
        targets = list(dict.fromkeys(rng.choice(pool, size=n_targets)))
        run.append({"key": f"u{u}", "user_id": f"u{u}", "targets": targets, "ranked_items": ranked})
    return run


@pytest.mark.slow  # ranx compiles its metrics with numba on first use (about a minute on 2 cores)
def test_metrics_equal_ranx_on_random_runs():
    from ranx import Qrels, Run, evaluate

    for seed in range(3):
        run = random_run(seed)
        ours = compute_metrics(run, KS, "item")
        qrels = Qrels({r["key"]: {t: 1 for t in r["targets"]} for r in run})
        ranx_run = Run(
            {
                r["key"]: {d: float(len(r["ranked_items"]) - p) for p, d in enumerate(r["ranked_items"])}
                for r in run
            }
        )
        names = {f"hit@{k}": f"hit_rate@{k}" for k in KS} | {f"recall@{k}": f"recall@{k}" for k in KS}
        names |= {f"ndcg@{k}": f"ndcg@{k}" for k in KS} | {"mrr": "mrr"}
        theirs = evaluate(qrels, ranx_run, list(names.values()), return_mean=False)
        # ranx orders queries by key; ours are in run order
        order = [i for i in sorted(range(len(run)), key=lambda i: run[i]["key"])]
        for ours_name, ranx_name in names.items():
            np.testing.assert_allclose(
                ours.per_user[ours_name][order], theirs[ranx_name], rtol=0, atol=1e-9, err_msg=ours_name
            )
            assert abs(ours.means[ours_name] - float(np.mean(theirs[ranx_name]))) < 1e-9


def test_metric_values_by_hand():
    m = user_metrics(["x", "a", "y", "b"], {"a", "b"}, ks=(1, 2, 4))
    assert m["hit@1"] == 0 and m["hit@2"] == 1
    assert m["recall@2"] == 0.5 and m["recall@4"] == 1.0
    ideal = 1 + 1 / np.log2(3)
    assert m["ndcg@4"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(5)) / ideal, abs=1e-12)
    assert m["mrr"] == 0.5
    empty = user_metrics([], {"a"}, ks=(1, 10))
    assert all(v == 0 for v in empty.values())


def test_item_level_counts_collisions_by_position():
    # one SID shared by three items; the target is the third of them
    record = {
        "targets": ["i3"],
        "target_sids": ["S1"],
        "ranked_sids": ["S1", "S2"],
        "ranked_items": ["i1", "i2", "i3", "i4"],
    }
    sid = compute_metrics([record], (1, 2, 3), "sid")
    item = compute_metrics([record], (1, 2, 3), "item")
    assert sid.means["hit@1"] == 1.0  # the SID is right at rank 1
    assert item.means["hit@1"] == 0.0 and item.means["hit@2"] == 0.0  # two other items come first
    assert item.means["hit@3"] == 1.0
    assert item.means["mrr"] == pytest.approx(1 / 3)


def test_metrics_refuse_users_without_targets():
    with pytest.raises(ValueError, match="no item-level targets"):
        compute_metrics([{"user_id": "u", "targets": [], "ranked_items": ["a"]}], KS, "item")


def test_generation_stats_count_invalid_beams_and_empty_users():
    run = [
        {"n_beams": 10, "n_valid": 10, "ranked_sids": ["a"], "think_tokens": 4, "latency_s": 0.1},
        {"n_beams": 10, "n_valid": 0, "ranked_sids": [], "think_tokens": 8, "latency_s": 0.3},
    ]
    stats = generation_stats(run, wall_s=0.5)
    assert stats["valid_sid_rate"] == 0.5
    assert stats["users_without_valid_sid"] == 1
    assert stats["think_tokens_mean"] == 6
    assert stats["users_per_s"] == 4.0


def test_bootstrap_identical_runs_give_a_zero_interval():
    values = np.random.default_rng(0).random(500)
    interval = paired_bootstrap(values, values, n=500, seed=1)
    assert interval.diff == interval.low == interval.high == 0.0
    assert not interval.significant and interval.p_value == 1.0


def test_bootstrap_clearly_better_run_excludes_zero():
    rng = np.random.default_rng(0)
    worse = (rng.random(400) < 0.2).astype(float)
    better = np.maximum(worse, (rng.random(400) < 0.3).astype(float))
    interval = paired_bootstrap(better, worse, n=1000, seed=0)
    assert interval.low > 0 and interval.significant
    assert interval.low <= interval.diff <= interval.high
    # the reverse comparison mirrors it
    reverse = paired_bootstrap(worse, better, n=1000, seed=0)
    assert reverse.high < 0 and reverse.diff == pytest.approx(-interval.diff)


def test_bootstrap_noise_difference_is_not_significant_and_is_reproducible():
    rng = np.random.default_rng(3)
    a = rng.random(300)
    noise = rng.normal(0, 0.3, 150)
    b = a + np.concatenate([noise, -noise])  # paired differences with mean exactly 0
    one = paired_bootstrap_many({"m": a}, {"m": b}, n=400, seed=7)["m"]
    two = paired_bootstrap_many({"m": a}, {"m": b}, n=400, seed=7)["m"]
    assert one == two
    assert one.low < 0 < one.high
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap(a, b[:-1])


TRAIN = [
    # user 1: a -> b -> c (train rows), user 2: a -> b, user 3: d -> b
    {"user_id": "1", "history": ["a"], "target": "b"},
    {"user_id": "1", "history": ["a", "b"], "target": "c"},
    {"user_id": "2", "history": ["a"], "target": "b"},
    {"user_id": "3", "history": ["d"], "target": "b"},
]


def test_popularity_counts_every_training_interaction_once():
    vocab = {i: n for n, i in enumerate("abcd")}
    counts = popularity_counts(TRAIN, vocab)
    assert counts.tolist() == [2, 3, 1, 1]  # a: first items of users 1 and 2; b: three targets
    run = popularity_baseline(TRAIN, [{"user_id": "9", "history": ["c"], "target": "a"}], k=3)
    assert run[0]["ranked_items"] == ["b", "a", "c"]  # ties (c, d) broken by catalogue order
    excluded = popularity_baseline(
        TRAIN, [{"user_id": "9", "history": ["b"], "target": "a"}], k=2, exclude_history=True
    )
    assert "b" not in excluded[0]["ranked_items"]


def test_cooccurrence_ranks_items_seen_with_the_last_item_first():
    test = [
        {"user_id": "9", "history": ["d"], "target": "b"},
        {"user_id": "8", "history": ["c"], "target": "a"},
    ]
    run = cooccurrence_baseline(TRAIN, test, k=3, window=2)
    assert run[0]["ranked_items"][0] == "b"  # d co-occurs only with b
    # c co-occurs with a and b (user 1's window), b is more popular among the tie
    assert run[1]["ranked_items"][:2] == ["b", "a"]
    scores = compute_metrics(run, (1, 3), "item").means
    assert scores["hit@1"] == 0.5 and scores["hit@3"] == 1.0
