"""Units of the task builders: mixture parsing and sampling, leakage checker, time patterns, templates."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest

from data_builders.tasks.catalog import build_catalog
from data_builders.tasks.cot import DeterministicCot, classify_pattern
from data_builders.tasks.cot_teacher import verify_trace
from data_builders.tasks.leakage import _contains_words, find_leaks
from data_builders.tasks.mixture import MixtureEntry, parse_mixture
from data_builders.tasks.phrasing import load_templates


def catalog_with_sids():
    items = pa.table(
        {
            "item_id": ["a", "b", "c", "d"],
            "title": [
                "Aurix Minimalist Beaker AU-123, Black",
                "Belon Pro Flask BE-1",
                "Coro Tent CO-9",
                "Dexa Beaker DE-5",
            ],
            "categories": [
                ["Lab", "Glassware", "Beaker"],
                ["Lab", "Glassware", "Flask"],
                ["Out", "Camping", "Tent"],
                ["Lab", "Glassware", "Beaker"],
            ],
            "style": ["minimalist", "minimalist", "rugged", "minimalist"],
        }
    )
    catalog = build_catalog(items)
    for i, codes in enumerate([(1, 2, 3), (1, 2, 4), (5, 6, 7), (1, 3, 8)]):
        tokens = tuple(f"<s_{'abc'[k]}_{c}>" for k, c in enumerate(codes))
        catalog.sid_tokens[i] = tokens
        catalog.sid_texts[i] = "<|sid_begin|>" + "".join(tokens) + "<|sid_end|>"
        catalog.terms[i] = ["beaker", "glassware", "minimalist", "lab", f"model {i}"]
    return catalog


def test_mixture_errors_name_the_entry():
    with pytest.raises(ValueError, match="mix.yaml: entry 1: unknown task 'rec_foo'"):
        parse_mixture(
            [{"task": "rec_sid", "mode": "think", "weight": 1}, {"task": "rec_foo", "weight": 1}], "mix.yaml"
        )
    with pytest.raises(ValueError, match="entry 0: perception task 'caption' has no reasoning trace"):
        parse_mixture([{"task": "caption", "mode": "think", "weight": 1}])
    with pytest.raises(ValueError, match="exactly one of weight or count"):
        parse_mixture([{"task": "rec_sid", "mode": "think", "weight": 1, "count": 3}])


def test_mixture_sampling_is_seeded_and_honours_weight_and_count():
    eligible = np.ones(1000, dtype=bool)
    eligible[::10] = False
    half = MixtureEntry("rec_sid", "think", weight=0.5)
    first, again = half.multiplicities(eligible, seed=3), half.multiplicities(eligible, seed=3)
    assert np.array_equal(first, again) and not np.array_equal(first, half.multiplicities(eligible, seed=4))
    assert first[~eligible].sum() == 0 and 400 < first.sum() < 500
    assert MixtureEntry("caption", "no_think", count=2000).multiplicities(eligible, 0).sum() == 2000
    assert MixtureEntry("caption", "no_think", weight=2.0).multiplicities(eligible, 0).sum() == 1800


def test_leakage_checker_finds_sid_tokens_title_and_distinguishing_term():
    c = catalog_with_sids()
    assert find_leaks("expect <s_a_1><s_b_2> items", c, [0]) == []
    assert find_leaks("next: <s_a_1><s_b_2><s_c_3>", c, [0]) == ["sid"]
    assert find_leaks("the AURIX MINIMALIST BEAKER AU-123, black one", c, [0]) == ["title"]
    assert find_leaks("something like model 0 again", c, [0]) == ["term"]
    assert find_leaks("something like model 01", c, [0]) == []


def test_whole_word_search_agrees_with_the_regex_it_replaced():
    """`_contains_words` is a str.find loop for speed; it must match the lookaround regex exactly."""
    rng = np.random.default_rng(0)
    alphabet = list("ab1 -,é")
    for _ in range(20_000):
        haystack = "".join(rng.choice(alphabet, size=rng.integers(0, 12)))
        needle = "".join(rng.choice(alphabet, size=rng.integers(1, 4)))
        expected = re.search(r"(?<![a-z0-9])" + re.escape(needle) + r"(?![a-z0-9])", haystack) is not None
        assert _contains_words(haystack, needle) == expected, (haystack, needle)


def test_recommendation_promises_only_what_the_target_has():
    c = catalog_with_sids()
    c.attributes[3]["style"] = "rugged"  # the target keeps the category, changes style
    trace = DeterministicCot(c).build([0, 1, 0, 2], [0, 1, 2, 3], targets=[3])
    expect = trace.text.split("Expect an item with ")[1].split(".")[0]
    assert trace.matched and expect == "department Lab, category Glassware, subcategory Beaker"  # no style
    tent = DeterministicCot(c).build([0, 1, 0, 1], [0, 1, 2, 3], targets=[2])  # a camping target
    assert not tent.matched and "no interest clearly continues" in tent.text


def test_time_patterns():
    assert classify_pattern([1, 4, 7, 10], 12) == ("periodic", 3)
    assert classify_pattern([8, 10, 11], 12) == ("short_term", 0)
    assert classify_pattern([0, 2, 5], 12) == ("fading", 0)
    assert classify_pattern([0, 5, 11], 12) == ("long_term", 0)


def test_trace_groups_history_and_describes_the_interest_without_the_target():
    c = catalog_with_sids()
    trace = DeterministicCot(c).build([0, 2, 1, 0, 2], [0, 1, 2, 3, 4], targets=[3])
    assert [p.key for p in trace.interests] == [("Glassware", "minimalist"), ("Camping", "rugged")]
    assert trace.interests[0].evidence == [0, 2, 3] and trace.matched
    assert trace.interests[trace.chosen].key == ("Glassware", "minimalist")
    # the interest's items share <s_a_1><s_b_2>, the target (1, 3, 8) only <s_a_1>: say only what is true of it
    assert "Its SID likely starts with <s_a_1>." in trace.text and "<s_a_1><s_b_2>." not in trace.text
    assert find_leaks(trace.text, c, [3]) == [] and "model 3" not in trace.text
    assert verify_trace(trace.text, c, [0, 2, 1, 0, 2], [3]) is None


def test_verify_trace_rejects_missing_sections_leaks_citations_and_loops():
    c = catalog_with_sids()
    ok = "Derivation: #1 and #2 are glassware. Evolution: (1) glassware #1, #2. Recommendation: more glassware."
    assert verify_trace(ok, c, [0, 1], [3]) is None
    assert verify_trace("Derivation: x. Recommendation: y.", c, [0, 1], [3]) == "missing_sections"
    assert verify_trace(ok + " Maybe Dexa Beaker DE-5.", c, [0, 1], [3]) == "leak"
    assert verify_trace(ok.replace("#2", "#9"), c, [0, 1], [3]) == "bad_citation"
    assert verify_trace(ok + " the same words again and again" * 5, c, [0, 1], [3]) == "loop"
    assert verify_trace("   ", c, [0, 1], [3]) == "empty"


def test_every_template_file_loads_and_lists_phrasings():
    rec, perception = load_templates("recommendation"), load_templates("perception")
    assert all(len(v) >= 2 for v in rec["question"].values())
    assert {"caption", "text2sid", "sid2term", "term2sid", "item_qa", "association"} <= set(perception)
    assert set(load_templates("cot")) == {"derivation", "evolution", "recommendation", "short"}


def test_short_prompts_are_one_fixed_phrasing_for_both_row_kinds():
    from data_builders.tasks.history import HistoryStyle
    from data_builders.tasks.recommendation import RecommendationTasks, RecRow

    c = catalog_with_sids()
    style = HistoryStyle("sid", "none", numbered=False)
    short = RecommendationTasks(c, style, system_prompt=False, short_prompts=True)
    pooled = RecommendationTasks(c, style, system_prompt=False)
    rows = [RecRow(f"train:{k}", "u", [0, 1], [0, 0], [3]) for k in range(12)]
    texts = {short.user_text(task, r) for r in rows for task in ("rec_sid", "rec_seq")}
    assert texts == {f"History:\n{c.sid_texts[0]}{c.sid_texts[1]}\nNext item?"}
    assert len({pooled.user_text("rec_sid", r) for r in rows}) > 1  # the pool varies per row
    assert all(len(short.user_text("rec_sid", r)) < len(pooled.user_text("rec_sid", r)) for r in rows)
    row = short.build("rec_sid", "no_think", rows[0], None)
    assert row["prompt"][-1]["content"].startswith("History:\n") and row["completion"][-1][
        "content"
    ].endswith(c.sid_texts[3])


def test_a_countdown_history_numbers_each_item_by_how_long_ago_it_was():
    from data_builders.tasks.build import BuildTasksConfig
    from data_builders.tasks.history import HistoryStyle, render_history

    c = catalog_with_sids()
    lines = render_history(c, [0, 1, 2], HistoryStyle("sid", "none", numbered=True, countdown=True))
    assert lines.splitlines() == [f"3. {c.sid_texts[0]}", f"2. {c.sid_texts[1]}", f"1. {c.sid_texts[2]}"]
    ascending = render_history(c, [0, 1, 2], HistoryStyle("sid", "none"))
    assert ascending.splitlines()[0] == f"1. {c.sid_texts[0]}"
    with pytest.raises(ValueError, match="numbered"):
        HistoryStyle("sid", "none", numbered=False, countdown=True)
    with pytest.raises(ValueError, match="trace_style short"):  # full traces cite #n from the oldest
        BuildTasksConfig(history_countdown=True)
    assert BuildTasksConfig(history_countdown=True, trace_style="short").history_countdown
