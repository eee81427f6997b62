"""The trace-consistency reward reads the SID prefix a trace commits to and checks the answer follows it."""

from __future__ import annotations

import numpy as np
import pytest

from data_builders.tasks.catalog import build_catalog
from data_builders.tasks.cot import CotConfig, DeterministicCot
from onereason.item_index import ItemIndex
from onereason.rewards import RewardContext, get_reward, stated_prefix
from onereason.thinking import format_answer

INDEX = ItemIndex(["a", "b", "c"], np.array([[3, 1, 0], [3, 2, 0], [4, 1, 0]]))
SID = {i: INDEX.sid_text(i) for i in ("a", "b", "c")}


@pytest.mark.parametrize(
    "trace, prefix",
    [
        (
            "Derivation: x.\nEvolution: y.\nRecommendation: interest Glassware. Its SID likely starts with <s_a_3>.",
            (3,),
        ),
        ("Recommendation: Its SID likely starts with <s_a_3><s_b_2>.", (3, 2)),
        # codes in earlier lines are the history's, not a commitment
        ("Derivation: #2 (Beaker; codes <s_a_4><s_b_1>).\nRecommendation: interest Glassware.", None),
        ("Recommendation: the next item resembles <s_b_2>.", None),  # no first-level token: no prefix
        ("", None),
        (None, None),
    ],
)
def test_the_prefix_a_trace_commits_to_is_on_its_last_line(trace, prefix):
    assert stated_prefix(trace, INDEX) == prefix


def test_an_answer_is_rewarded_for_following_its_traces_prefix_and_only_then():
    reward = get_reward("trace_consistency")
    trace = "Derivation: x.\nEvolution: y.\nRecommendation: interest Glassware. Its SID likely starts with <s_a_3>."
    completions = [
        [{"role": "assistant", "content": format_answer(SID["b"], trace)}],  # <s_a_3>...: follows
        [{"role": "assistant", "content": format_answer(SID["c"], trace)}],  # <s_a_4>...: ignores it
        [{"role": "assistant", "content": format_answer("no item", trace)}],  # names no SID
        [{"role": "assistant", "content": format_answer(SID["a"], None)}],  # no trace: does not apply
        [{"role": "assistant", "content": format_answer(SID["a"], "Recommendation: interest Glassware.")}],
    ]
    assert reward(completions, RewardContext(item_index=INDEX)) == [1.0, 0.0, 0.0, None, None]


def test_the_builders_short_trace_commits_to_the_due_interests_first_code():
    """A short trace the task builder writes for a due interest states the first code its items
    share: the reward reads exactly that code back, so a model answering under it scores 1."""
    import pyarrow as pa

    items = pa.table(
        {
            "item_id": ["a", "b", "c"],
            "title": ["Beaker A", "Beaker B", "Tent C"],
            "categories": [["Lab", "Glassware", "Beaker"]] * 2 + [["Out", "Camping", "Tent"]],
            "style": ["minimalist"] * 2 + ["rugged"],
        }
    )
    catalog = build_catalog(items, INDEX)
    history = [catalog.position[i] for i in ("a", "c", "a", "c")]  # a every 2 items, last 2 ago: due
    trace = DeterministicCot(catalog, CotConfig(style="short")).build(history, None, [catalog.position["b"]])
    assert stated_prefix(trace.text, INDEX) == (3,)
    completion = [{"role": "assistant", "content": format_answer(SID["b"], trace.text)}]
    assert get_reward("trace_consistency")([completion], RewardContext(item_index=INDEX)) == [1.0]
