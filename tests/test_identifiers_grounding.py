"""Elastic grounding: exact, position-weighted overlap, embedding fallback."""

from __future__ import annotations

import numpy as np
import pytest

from onereason.terms import ElasticGrounder, Grounded

ITEMS = ["beaker-1", "beaker-2", "flask-1", "tent-1"]
TERMS = [
    ["beaker", "glassware", "borosilicate", "laboratory", "acme"],
    ["beaker", "glassware", "plastic", "student", "bolt"],
    ["flask", "glassware", "borosilicate", "laboratory", "acme"],
    ["tent", "camping", "waterproof", "traveller", "cora"],
]


def test_exact_match_answers_first_with_score_one():
    g = ElasticGrounder(ITEMS, TERMS)
    assert g.ground(TERMS[0], k=3) == [Grounded("beaker-1", 1.0, "exact")]
    twins = ElasticGrounder(["a", "b", "c"], [TERMS[0], TERMS[0], TERMS[1]])
    assert [r.item_id for r in twins.ground(TERMS[0], k=3)] == ["a", "b"]


def test_overlap_ranks_by_shared_terms_when_nothing_matches_exactly():
    g = ElasticGrounder(ITEMS, TERMS)
    out = g.ground(["beaker", "glassware", "borosilicate", "laboratory", "zed"], k=3)
    # beaker-1 shares 4 terms in place, flask-1 3, beaker-2 2
    assert [r.item_id for r in out] == ["beaker-1", "flask-1", "beaker-2"]
    assert all(r.rule == "overlap" for r in out) and out[0].score > out[1].score > out[2].score
    assert out[0].score < 1.0


def test_generated_terms_are_normalised_before_matching():
    g = ElasticGrounder(ITEMS, TERMS)
    out = g.ground(["Beakers", "Glassware", "Borosilicate", "Laboratory", "ACME"], k=1)
    assert out[0].item_id == "beaker-1" and out[0].rule == "exact"


def test_overlap_is_position_weighted():
    g = ElasticGrounder(ITEMS, TERMS, off_slot=0.5)
    # 'beaker' in the category slot (in place) vs in the feature slot (off slot)
    b = g.vocab["beaker"]
    in_place = g.overlap_scores(np.array([b, -2, -2, -2, -2]))
    off_place = g.overlap_scores(np.array([-2, -2, b, -2, -2]))
    w = g.slot_weights
    assert in_place[1][0] == pytest.approx(w[0] / w.sum())
    assert off_place[1][0] == pytest.approx(0.5 * w[2] / w.sum())
    out = g.ground(["flask", "glassware", "plastic", "nobody", "acme"], k=2)
    assert out[0].item_id == "flask-1" and out[0].rule == "overlap"


def test_embedding_rule_fires_only_without_overlap():
    emb = np.eye(4, dtype=np.float32)
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.tile(np.array([[0, 0, 0.2, 1]], dtype=np.float32), (len(texts), 1))

    g = ElasticGrounder(ITEMS, TERMS, item_embeddings=emb, encode=encode)
    out = g.ground(["igloo", "arctic", "snow", "explorer", "zed"], k=2)
    assert [r.rule for r in out] == ["embedding", "embedding"] and out[0].item_id == "tent-1"
    assert out[0].score > out[1].score
    assert g.ground(TERMS[3], k=1)[0].rule == "exact"
    assert len(calls) == 1  # the exact query never touched the encoder
    many = g.ground_many([TERMS[1], ["igloo", "arctic", "snow", "explorer", "zed"]], k=1)
    assert many[0][0].rule == "exact" and many[1][0].rule == "embedding"
    assert calls[-1] == ["igloo arctic snow explorer zed"]  # one batch, only the fallback query


def test_no_match_and_no_encoder_returns_empty():
    g = ElasticGrounder(ITEMS, TERMS)
    assert g.ground(["igloo", "arctic", "snow", "explorer", "zed"]) == []


def test_mismatched_inputs_are_errors():
    with pytest.raises(ValueError, match="item ids"):
        ElasticGrounder(ITEMS[:2], TERMS)
    with pytest.raises(ValueError, match="slot weights"):
        ElasticGrounder(ITEMS, TERMS, slot_weights=[1.0, 1.0])
