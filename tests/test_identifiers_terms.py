"""Term IDs: normalisation, the extractive and LLM generators, collision resolution."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from helpers import shared_data

from data_builders.identifiers import term_ids
from data_builders.synthetic import SyntheticConfig, generate_world
from onereason.terms import (
    SLOTS,
    base_form,
    is_legal_term,
    is_legal_term_id,
    normalize_term,
    parse_terms,
)


@pytest.fixture(scope="module")
def world_items():
    return generate_world(SyntheticConfig(num_items=240, num_users=20, seed=1)).items


def test_base_form_is_idempotent_and_singular():
    for w in [
        "staples",
        "batteries",
        "glasses",
        "boxes",
        "gloves",
        "tubes",
        "glass",
        "bus",
        "series",
        "caps",
    ]:
        assert base_form(base_form(w)) == base_form(w)
    assert [base_form(w) for w in ["staples", "batteries", "glasses", "boxes", "glass"]] == [
        "staple",
        "battery",
        "glass",
        "box",
        "glass",
    ]


def test_normalize_and_legality():
    assert normalize_term("Lab Supplies & Consumables") == "lab supply consumable"
    assert normalize_term("  The  ") == ""
    assert is_legal_term("test tube") and not is_legal_term("Test Tube") and not is_legal_term("tubes")
    assert not is_legal_term("a b c d") and not is_legal_term("") and not is_legal_term("the")
    assert not is_legal_term_id(["the", "b", "c", "d", "e"])  # a stopword is no term
    assert is_legal_term_id(["beaker", "glassware", "glass", "laboratory", "acme"])
    assert not is_legal_term_id(["beaker", "beaker", "glass", "laboratory", "acme"])  # not distinct
    assert not is_legal_term_id(["beaker", "glassware", "glass", "laboratory"])  # wrong count


def test_parse_terms_is_lenient_but_strict_about_shape():
    assert parse_terms("Term ID: Beakers | Glassware | borosilicate glass | labs | Acme", 5) == [
        "beaker",
        "glassware",
        "borosilicate glass",
        "lab",
        "acme",
    ]
    assert parse_terms(
        "<think>hmm</think>\ncategory: pens; function: writing; feature: ink; audience: students; distinguishing: bic",
        5,
    ) == [
        "pen",
        "writing",
        "ink",
        "student",
        "bic",
    ]
    assert parse_terms("just some words", 5) is None
    assert parse_terms("a | b | c", 5) is None
    assert parse_terms("x | x | y | z | w", 5) is None  # duplicates
    assert parse_terms("", 5) is None


def test_extractive_on_synthetic_catalogue_is_legal_unique_and_meaningful(world_items):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(world_items.num_rows, 16)).astype(np.float32)
    result = term_ids.extractive_term_ids(world_items, emb, num_terms=5)
    rep = result.report
    assert rep["after"]["legal_rate"] == 1.0 and rep["after"]["collision_rate"] == 0.0
    assert rep["before"]["collision_rate"] >= rep["after"]["collision_rate"]
    assert len({tuple(t) for t in result.terms}) == world_items.num_rows
    rows = world_items.to_pylist()
    # the category slot names the item's product type; the distinguishing slot starts from the brand
    hits = sum(t[0] == normalize_term(r["product_type"]) for t, r in zip(result.terms, rows))
    assert hits / len(rows) > 0.9
    unchanged = [i for i in range(len(rows)) if result.terms[i][-1] == normalize_term(rows[i]["brand"], 2)]
    assert len(unchanged) >= len(rows) - rep["items_changed_by_resolution"]
    # deterministic
    again = term_ids.extractive_term_ids(world_items, emb, num_terms=5)
    assert again.terms == result.terms


def test_neighbour_votes_make_similar_items_share_vocabulary():
    # item 2 can be described by two function terms; its neighbours use only the second one
    def cand(function):
        return term_ids.Candidates(
            {"category": [("beaker", 1.0)], "function": function, "distinguishing": [("acme", 1.0)]}
        )

    cands = [
        cand([("mixing sample", 0.8)]),
        cand([("mixing sample", 0.8)]),
        cand([("heating liquid", 0.8), ("mixing sample", 0.7)]),
    ]
    emb = np.array([[1, 0], [1, 0.01], [1, 0.02]], dtype=np.float32)
    alone = term_ids.choose_terms(cands, None)
    voted = term_ids.choose_terms(cands, term_ids.nearest_neighbours(emb, 2))
    assert alone[2][1] == "heating liquid"  # its own best
    assert voted[2][1] == "mixing sample"  # the neighbours' shared term wins
    assert voted[2][0] == "beaker" and voted[2][4] == "acme"
    assert voted[2][2] == "standard" and voted[2][3] == "general"  # slots without candidates fall back


def test_resolution_only_changes_the_distinguishing_slot():
    rows = [
        {
            "item_id": str(i),
            "title": "Acme Beaker",
            "description": "Glass beaker.",
            "brand": "Acme",
            "categories": ["Lab", "Beakers"],
        }
        for i in range(4)
    ]
    table = pa.Table.from_pylist(rows)
    result = term_ids.extractive_term_ids(table, None, num_terms=5)
    assert result.report["before"]["collision_rate"] == 0.75
    assert result.report["after"]["collision_rate"] == 0.0 and result.report["after"]["legal_rate"] == 1.0
    assert result.report["items_changed_by_resolution"] == 3
    assert len({tuple(t[:-1]) for t in result.terms}) == 1


def test_num_terms_out_of_range_is_an_error(world_items):
    with pytest.raises(ValueError, match="num_terms"):
        term_ids.extractive_term_ids(world_items, None, num_terms=7)


def test_llm_generator_with_a_tiny_model_counts_its_fallbacks_honestly(make_tiny_model, world_items):
    items = world_items.slice(0, 6)
    model = make_tiny_model()
    result = term_ids.llm_term_ids(
        items,
        str(model),
        None,
        num_terms=5,
        batch_size=4,
        max_new_tokens=12,
        max_retries=1,
        backend="transformers",
    )
    rep = result.report
    assert rep["backend"] == "transformers"
    assert rep["ok_first_try"] + rep["ok_after_retry"] + rep["fallback_extractive"] == 6
    # first try covers 6 prompts; retries only the ones that failed
    assert rep["generations"] == 6 + (6 - rep["ok_first_try"])
    assert rep["after"]["legal_rate"] == 1.0 and rep["after"]["collision_rate"] == 0.0
    assert all(is_legal_term_id(t) for t in result.terms)


def test_llm_generator_counts_which_items_got_llm_terms_and_which_fell_back(
    make_tiny_model, world_items, monkeypatch
):
    """A scripted model (its `generate` replays a script; tokenizer, chat template and parsing are real):
    items 0-2 get a Term ID at once, item 3 after one garbage answer, items 4-5 never (extractive)."""
    import transformers
    from scripted_lm import ScriptedLM

    items = world_items.slice(0, 6)
    titles = items.column("title").to_pylist()
    apart = ["alpha", "bravo", "charlie", "delta"]  # each LLM Term ID's distinguishing slot
    answers = [f"Term ID: beaker | mixing | borosilicate glass | laboratory | {w}" for w in apart]

    def script(number, attempt, prompt):
        (k,) = [k for k, title in enumerate(titles) if f"Item: {title}" in prompt]
        if k < 3 or (k == 3 and attempt == 1):
            return answers[k]
        return "I am not sure what this item is."

    model = make_tiny_model()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    scripted = ScriptedLM(tokenizer, script)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: scripted)
    result = term_ids.llm_term_ids(
        items, str(model), None, num_terms=5, batch_size=4, max_retries=2, backend="transformers"
    )
    rep = result.report
    assert (rep["ok_first_try"], rep["ok_after_retry"], rep["fallback_extractive"]) == (3, 1, 2)
    assert rep["generations"] == 6 + 3 + 2  # all, then the 3 unparsed, then the 2 still unparsed
    assert sorted(scripted.attempts.values()) == [1, 1, 1, 2, 3, 3]
    assert result.terms[:4] == [["beaker", "mixing", "borosilicate glass", "laboratory", w] for w in apart]
    extractive = term_ids.extractive_term_ids(items, None, num_terms=5).terms
    assert result.terms[4:] == extractive[4:], "items without an LLM answer keep their extractive Term ID"
    assert rep["after"]["legal_rate"] == 1.0 and rep["after"]["collision_rate"] == 0.0


def test_extractive_on_scientific_is_fully_legal():
    path = shared_data("amazon-scientific", "Scientific.item.json")
    raw = json.loads(path.read_text())
    rows = [
        {
            "item_id": k,
            "title": v.get("title", ""),
            "description": v.get("description", ""),
            "brand": v.get("brand", ""),
            "categories": [c for c in v.get("categories", "").split(",") if c],
        }
        for k, v in list(raw.items())[:800]
    ]
    result = term_ids.extractive_term_ids(pa.Table.from_pylist(rows), None, num_terms=len(SLOTS))
    assert result.report["after"]["legal_rate"] == 1.0
    assert result.report["after"]["collision_rate"] == 0.0
