"""The reward registry: each named reward on hand-written completions, YAML specs, error reports."""

from __future__ import annotations

import math

import pytest
from toy_world import toy_index

from onereason.rewards import (
    RewardContext,
    RewardError,
    RewardSpec,
    available_rewards,
    bind_reward,
    build_rewards,
    get_reward,
    parse_reward_specs,
    register_reward,
)


@pytest.fixture(scope="module")
def index():
    return toy_index(8, (2, 2, 2))  # item k has codes = binary digits of k


@pytest.fixture(scope="module")
def ctx(index):
    return RewardContext(item_index=index)


def answer(index, *items, trace=None):
    sids = "".join(index.sid_text(i) for i in items)
    think = f"<think>\n{trace}\n</think>\n\n" if trace else "<think>\n\n</think>\n\n"
    return [{"role": "assistant", "content": think + sids}]


def call(name, completions, ctx, **kwargs):
    return bind_reward(RewardSpec(name), ctx)(
        prompts=[None] * len(completions), completions=completions, **kwargs
    )


def test_registry_lists_every_built_in_reward():
    assert {"format", "valid_sid", "hit", "partial", "rank", "term_overlap", "think_length"} <= set(
        available_rewards()
    )
    with pytest.raises(KeyError, match="registered rewards"):
        get_reward("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_reward("hit")(lambda completions, context, **kw: [])


def test_format_checks_the_think_block_against_the_mode(index, ctx):
    sid = index.sid_text("item1")
    completions = [
        f"<think>\nlikes amber\n</think>\n\n{sid}",  # think, non-empty trace
        f"<think>\n\n</think>\n\n{sid}",  # think asked, empty trace
        f"<think>\n\n</think>\n\n{sid}",  # no_think, empty block
        f"<think>\ntrace\n</think>\n\n{sid}",  # no_think but a trace
        sid,  # no block at all
        "<think>\nnever closed",
        "<think>\na\n</think>\n\n",  # no answer
    ]
    modes = ["think", "think", "no_think", "no_think", "think", "think", "think"]
    assert call("format", completions, ctx, mode=modes) == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_valid_sid_hit_and_partial(index, ctx):
    bogus = "<think>\n\n</think>\n\n" + index.render((1, 1, 1)).replace("s_c_1", "s_c_9")
    completions = [
        answer(index, "item3"),
        answer(index, "item2"),
        answer(index, "item5", "item3"),
        bogus,
        "no sid",
    ]
    targets = [
        [index.sid_text("item3")],
        [index.sid_text("item3")],
        [index.sid_text("item3")],
        [index.sid_text("item7")],
        [],
    ]
    assert call("valid_sid", completions, ctx) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert call("hit", completions, ctx, target_sids=targets) == [1.0, 0.0, 1.0, 0.0, None]
    partial = call("partial", completions, ctx, target_sids=targets)
    # item2 = (0,1,0) vs item3 = (0,1,1): two of three levels; item5 = (1,0,1) vs (0,1,1): none.
    assert partial[:3] == [1.0, pytest.approx(2 / 3), 0.0]
    assert partial[4] is None


def test_hit_accepts_any_of_several_targets(index, ctx):
    targets = [[index.sid_text("item1"), index.sid_text("item6")]]
    assert call("hit", [answer(index, "item6")], ctx, target_sids=targets) == [1.0]


def test_rank_reward_penalises_high_ranked_misses_more(index, ctx):
    target = [index.sid_text("item3")]
    completions = [
        answer(index, "item3"),
        answer(index, "item1"),
        answer(index, "item2"),
        answer(index, "item4"),
    ]
    got = call("rank", completions, ctx, target_sids=[target] * 4, beam_rank=[0, 1, 2, 3])
    assert got[0] == 1.0
    assert got[1] < got[2] < got[3] < 0
    norm = sum(1 / math.log2(r + 2) for r in range(4))
    assert got[1] == pytest.approx(-(1 / math.log2(3)) / norm)
    assert call("rank", completions[:1], ctx, target_sids=[target]) == [
        None
    ]  # sampled rollouts: not applicable


def test_term_overlap_grounds_sids_and_term_ids(index, ctx):
    target_terms = [index.terms("item3")] * 3
    term_text = [
        {"role": "assistant", "content": "<think>\n\n</think>\n\n" + " | ".join(index.terms("item3"))}
    ]
    completions = [answer(index, "item3"), answer(index, "item2"), term_text]
    got = call("term_overlap", completions, ctx, target_terms=target_terms)
    assert got[0] == 1.0
    assert got[1] == pytest.approx(2 / 3)  # item2 shares "group 0" and "kind 1", not the cue
    assert got[2] == 1.0


def test_think_length_penalty(index, ctx):
    short = answer(index, "item1", trace="a b c")
    long = answer(index, "item1", trace=" ".join(["w"] * 15))
    very_long = answer(index, "item1", trace=" ".join(["w"] * 40))
    spec = RewardSpec("think_length", params={"budget": 10})
    got = bind_reward(spec, ctx)(prompts=[None] * 3, completions=[short, long, very_long])
    assert got == [0.0, pytest.approx(-0.5), -1.0]


def test_specs_from_yaml_and_command_line():
    specs = parse_reward_specs(
        [
            {"name": "hit", "weight": 1.0},
            {"name": "think_length", "weight": 0.1, "budget": 64},
            "format:0.2",
            "valid_sid",
        ]
    )
    assert [(s.name, s.weight, s.params) for s in specs] == [
        ("hit", 1.0, {}),
        ("think_length", 0.1, {"budget": 64}),
        ("format", 0.2, {}),
        ("valid_sid", 1.0, {}),
    ]
    assert parse_reward_specs(["model:runs/rm:0.5"]) == [RewardSpec("model:runs/rm", 0.5)]
    with pytest.raises(KeyError, match="unknown reward 'hti'"):
        parse_reward_specs(["hti"])
    with pytest.raises(ValueError, match="missing `name`"):
        parse_reward_specs([{"weight": 1.0}])


def test_build_rewards_gives_trl_functions_and_weights(ctx):
    funcs, weights = build_rewards([{"name": "hit", "weight": 2.0}, "model:runs/ranker:0.5"], ctx)
    assert funcs[0].__name__ == "hit" and callable(funcs[0])
    assert funcs[1] == "runs/ranker"  # TRL loads reward models given by path
    assert weights == [2.0, 0.5]


@register_reward("test_raises_on_bad_row")
def _raises_on_bad_row(completions, context, **kwargs):
    return [1.0 / (0 if "BAD" in str(c) else 1) for c in completions]


def test_a_raising_reward_names_itself_and_the_sample(ctx):
    reward = bind_reward(RewardSpec("test_raises_on_bad_row"), ctx)
    completions = ["fine", "fine too", "this one is BAD"]
    with pytest.raises(
        RewardError, match=r"reward 'test_raises_on_bad_row' failed on sample 2 .*ZeroDivisionError"
    ) as err:
        reward(prompts=["p0", "p1", "p2"], completions=completions)
    assert "this one is BAD" in str(err.value) and "p2" in str(err.value)


def test_a_reward_returning_the_wrong_length_is_reported(ctx):
    register_reward("test_wrong_length")(lambda completions, context, **kw: [1.0])
    with pytest.raises(RewardError, match="returned 1 values for 2 completions"):
        bind_reward(RewardSpec("test_wrong_length"), ctx)(prompts=None, completions=["a", "b"])


def test_a_reward_by_dotted_path_needs_no_registration(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def short(prompts, completions, **kwargs):\n"  # TRL's reward-function protocol
        "    return [1.0 if len(c[-1]['content']) < 10 else 0.0 for c in completions]\n"
        "def with_context(completions, context):\n"
        "    return [float(context.item_index is None)] * len(completions)\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    funcs, weights = build_rewards(
        [{"name": "my_rewards.short", "weight": 0.5}, "my_rewards.with_context", "hit:2"], RewardContext()
    )
    assert weights == [0.5, 1.0, 2.0]
    completions = [[{"role": "assistant", "content": "tiny"}], [{"role": "assistant", "content": "x" * 20}]]
    assert funcs[0](prompts=["p", "q"], completions=completions) == [1.0, 0.0]
    assert funcs[1](prompts=["p", "q"], completions=completions) == [1.0, 1.0]
    assert funcs[0].__name__ == "short"
    with pytest.raises(KeyError, match="cannot import"):
        parse_reward_specs(["my_rewards.missing"])
    with pytest.raises(KeyError, match="dotted path"):
        parse_reward_specs(["nope"])
