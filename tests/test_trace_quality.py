"""Trace quality: traces of the real builder read back and scored against target, history and truth."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_builders.synthetic import SyntheticConfig, generate_world
from data_builders.tasks.catalog import build_catalog
from data_builders.tasks.cot import CotConfig, DeterministicCot
from data_builders.tasks.interests import PlantedInterests
from evaluation.traces import TraceScorer, read_trace, trace_quality
from onereason.item_index import ItemIndex, SIDFormat

ITEMS = {  # item: (categories, style, SID codes)
    "a": (["Lab", "Glassware", "Beaker"], "minimalist", (1, 2, 3)),
    "b": (["Lab", "Glassware", "Flask"], "minimalist", (1, 2, 4)),
    "c": (["Out", "Camping", "Tent"], "rugged", (5, 6, 7)),
    "d": (["Lab", "Glassware", "Beaker"], "minimalist", (1, 3, 8)),
    "e": (["Out", "Camping", "Tent"], "rugged", (5, 6, 9)),
    "f": (["Out", "Camping", "Tent"], "rugged", (5, 6, 10)),
}
HISTORY = ["a", "c", "b", "a", "c", "e"]  # a fading glassware interest, a long-term camping one


def terms(item: str) -> list[str]:
    if ITEMS[item][0][1] == "Glassware":
        return ["glassware", "measure", "minimalist", "chemist", f"model {item}"]
    return ["tent", "shelter", "rugged", "camper", f"model {item}"]


@pytest.fixture(scope="module")
def shop():
    items = pa.table(
        {
            "item_id": list(ITEMS),
            "title": [f"Brand {i.upper()} {cats[-1]} Model-{i}" for i, (cats, _, _) in ITEMS.items()],
            "categories": [cats for cats, _, _ in ITEMS.values()],
            "style": [style for _, style, _ in ITEMS.values()],
        }
    )
    index = ItemIndex(list(ITEMS), np.array([c for _, _, c in ITEMS.values()]), [terms(i) for i in ITEMS])
    catalog = build_catalog(items, index)
    return items, index, catalog


def trace_for(catalog, history: list[str], target: str) -> str:
    """The real builder's trace for `target` after `history`."""
    pos = [catalog.position[i] for i in history]
    return DeterministicCot(catalog).build(pos, list(range(len(pos))), [catalog.position[target]]).text


def test_a_short_trace_states_each_interests_timing_and_leaves_an_undecided_choice_open(shop):
    _, index, catalog = shop
    pos = [catalog.position[i] for i in HISTORY]
    full = DeterministicCot(catalog).build(pos, list(range(len(pos))), [catalog.position["d"]])
    short = DeterministicCot(catalog, CotConfig(style="short")).build(
        pos, list(range(len(pos))), [catalog.position["d"]]
    )
    assert short.text.splitlines() == [
        "Derivation: latest Tent, rugged; Tent, rugged; Beaker, minimalist; Flask, minimalist.",
        "Evolution: Glassware, minimalist (fading, 3 4 6 ago); Camping, rugged (long-term, 1 2 5 ago).",
        "Recommendation: none is due; the recent interests go on.",
    ]
    assert short.chosen is None  # the full trace names the target's interest; no item gap is regular here
    assert len(short.text) < len(full.text) / 2 and "#" not in short.text
    stated = read_trace(short.text)
    assert stated.well_formed and stated.due is False and stated.chosen_label is None
    assert stated.latest[0] == "Tent, rugged" and stated.ago == [[3, 4, 6], [1, 2, 5]]
    assert [label for label, _ in stated.interests] == ["Glassware, minimalist", "Camping, rugged"]
    scorer = TraceScorer(index, catalog)
    verdict = scorer.score(short.text, HISTORY, "d")
    assert verdict.hallucinated == 0 and verdict.cited == 18
    assert not verdict.right  # it states nothing about the target: nothing to be right about
    # the item 3 ago is a flask, not camping gear: a timing that cites it for camping is made up
    moved = scorer.score(short.text.replace("long-term, 1 2 5 ago", "long-term, 1 3 5 ago"), HISTORY, "d")
    assert moved.hallucinated == 1
    # the latest item is a tent: calling it a beaker is a hallucination
    wrong = scorer.score(short.text.replace("latest Tent", "latest Beaker"), HISTORY, "d")
    assert wrong.hallucinated == 1


def test_a_short_trace_commits_only_to_an_interest_the_history_says_is_due(shop):
    _, index, catalog = shop
    history = ["c", "a", "e", "b", "c", "a"]  # camping and glassware take turns
    pos = [catalog.position[i] for i in history]
    trace = DeterministicCot(catalog, CotConfig(style="short")).build(pos, None, [catalog.position["d"]])
    assert trace.text.splitlines()[1:] == [
        "Evolution: Camping, rugged (periodic, 2 4 6 ago); Glassware, minimalist (periodic, 1 3 5 ago).",
        "Recommendation: interest Camping, rugged, due now. It comes back like "
        "<|sid_begin|><s_a_5><s_b_6><s_c_7><|sid_end|>. Its SID likely starts with <s_a_5>.",
    ]  # camping came every 2 items and was last 2 ago (item c); glassware, 1 ago, is not due
    assert trace.interests[trace.chosen].key == ("Camping", "rugged") and not trace.matched
    stated = read_trace(trace.text)
    assert stated.due is True and stated.chosen_label == "Camping, rugged" and stated.prefix == "<s_a_5>"
    assert stated.due_item == index.sid_text("c")
    invented = trace.text.replace("<s_b_6><s_c_7>", "<s_b_6><s_c_10>")  # item f: not in this history
    assert TraceScorer(index, catalog).score(invented, history, "f").hallucinated == 1
    verdict = TraceScorer(index, catalog).score(trace.text, history, "d")
    assert verdict.hallucinated == 0 and verdict.criteria["category"] is False  # d is glassware
    assert verdict.criteria["sid_prefix"] is False and not verdict.right
    assert TraceScorer(index, catalog).score(trace.text, history, "f").right  # f is camping gear


def test_sid_prefixes_are_read_back_from_their_itemic_tokens():
    fmt = SIDFormat()
    assert fmt.prefix_codes("<s_a_1><s_b_22>") == (1, 22)
    assert fmt.prefix_codes(" <|sid_begin|><s_a_1> <s_b_2> ") == (1, 2)
    for bad in ("", "<s_b_2>", "<s_a_1>x", "s_a_1", "<s_a_>", None, 3):
        assert fmt.prefix_codes(bad) is None


def test_the_builders_trace_is_right_on_every_criterion_and_cites_only_the_history(shop):
    _, index, catalog = shop
    text = trace_for(catalog, HISTORY, "d")
    stated = read_trace(text)
    assert stated.well_formed and stated.chosen_label == "Glassware, minimalist"
    assert stated.prefix == "<s_a_1>" and stated.terms == ["glassware", "measure", "minimalist", "chemist"]
    assert stated.attributes == "department Lab, category Glassware, subcategory Beaker, style minimalist"
    assert stated.recent[0] == (6, "Tent, rugged", "<s_a_5><s_b_6>")
    assert stated.interests == [("Glassware, minimalist", [1, 3, 4]), ("Camping, rugged", [2, 5, 6])]
    score = TraceScorer(index, catalog).score(text, HISTORY, "d")
    assert score.criteria == {"sid_prefix": True, "category": True, "attributes": True, "terms": True}
    assert score.right and score.cited > 40 and score.hallucinated == 0
    # the same trace read for a camping target: every statement about the next item is wrong
    other = TraceScorer(index, catalog).score(text, HISTORY, "f")
    assert other.criteria == {"sid_prefix": False, "category": False, "attributes": False, "terms": False}
    assert not other.right and other.hallucinated == 0  # the history did not change
    # without an items table only what the index knows is scored
    bare = TraceScorer(index).score(text, HISTORY, "d")
    assert bare.criteria == {"sid_prefix": True, "terms": True} and bare.right


@pytest.mark.parametrize(
    ("edit", "criteria", "hallucinated"),
    [
        (  # a prefix the history has, the target does not
            ("starts with <s_a_1>.", "starts with <s_a_5>."),
            {"sid_prefix": False, "category": True, "attributes": True, "terms": True},
            0,
        ),
        (  # a prefix no item of the history has
            ("starts with <s_a_1>.", "starts with <s_a_9>."),
            {"sid_prefix": False, "category": True, "attributes": True, "terms": True},
            1,
        ),
        (  # another style: wrong of the target, and no history item is "vintage"
            ("subcategory Beaker, style minimalist.", "subcategory Beaker, style vintage."),
            {"sid_prefix": True, "category": True, "attributes": False, "terms": True},
            1,
        ),
        (  # a category off the target's path, yet in the history
            ("category Glassware, subcategory Beaker", "category Glassware, subcategory Tent"),
            {"sid_prefix": True, "category": False, "attributes": True, "terms": True},
            0,
        ),
        (  # a Term-ID word of the history, not of the target
            ("chemist.", "camper."),
            {"sid_prefix": True, "category": True, "attributes": True, "terms": False},
            0,
        ),
        (  # item #9 of a six-item history, described with a word it cannot have
            ("#6 (Tent, rugged;", "#9 (Tent, rugged;"),
            {"sid_prefix": True, "category": True, "attributes": True, "terms": True},
            4,  # the citation, its two words, its codes
        ),
        (  # #6 is a tent, not a beaker; codes of the glassware items
            ("#6 (Tent, rugged; codes <s_a_5><s_b_6>)", "#6 (Beaker, rugged; codes <s_a_1><s_b_2>)"),
            {"sid_prefix": True, "category": True, "attributes": True, "terms": True},
            2,
        ),
        (  # a relation that claims a value and a prefix #3 and #1 do not share
            (
                "(shared: Glassware, minimalist, prefix <s_a_1><s_b_2>)",
                "(shared: Glassware, Tent, prefix <s_a_5>)",
            ),
            {"sid_prefix": True, "category": True, "attributes": True, "terms": True},
            2,
        ),
    ],
)
def test_wrong_statements_are_wrong_and_invented_citations_are_counted(shop, edit, criteria, hallucinated):
    _, index, catalog = shop
    text = trace_for(catalog, HISTORY, "d")
    assert edit[0] in text
    score = TraceScorer(index, catalog).score(text.replace(edit[0], edit[1]), HISTORY, "d")
    assert score.criteria == criteria
    assert score.right == all(criteria.values())
    assert score.hallucinated == hallucinated


def test_a_trace_that_states_nothing_about_the_next_item_is_not_right(shop):
    _, index, catalog = shop
    # the history's interests are glassware and camping; a flask-only history matches none for a tent
    text = trace_for(catalog, ["a", "b", "a", "b"], "f")
    assert "no interest clearly continues" in text
    score = TraceScorer(index, catalog).score(text, ["a", "b", "a", "b"], "f")
    assert score.well_formed and not score.right and score.hallucinated == 0
    assert score.criteria == {"sid_prefix": None, "category": None, "attributes": None, "terms": None}


@pytest.mark.parametrize(
    "text",
    [
        "",
        None,
        12,
        "<think>",
        "Recommendation: Its SID likely starts with <s_a_",
        "Derivation: #1. Recommendation: x. Evolution: y.",  # out of order
        "Evolution: (1) : #; . Derivation: #99999999999999999999 (((; codes",
        "\x00\ufffd" * 50,
    ],
)
def test_malformed_traces_score_wrong_and_never_raise(shop, text):
    _, index, catalog = shop
    score = TraceScorer(index, catalog).score(text, HISTORY, "d")
    assert not score.well_formed and not score.right
    assert score.criteria == {"sid_prefix": False, "category": False, "attributes": False, "terms": False}


def test_a_malformed_trace_is_wrong_even_when_its_recommendation_is_right(shop):
    _, index, catalog = shop
    text = trace_for(catalog, HISTORY, "d").replace("Evolution:", "Evolution")
    score = TraceScorer(index, catalog).score(text, HISTORY, "d")
    assert not score.well_formed and not score.right and set(score.criteria.values()) == {False}
    assert score.hallucinated == 0 and score.cited > 40  # the history is still checked


def planted(rows: list[tuple[str, str | None]]) -> PlantedInterests:
    """User u's logged sequence (item, interest id) and its two interests."""
    truth = pa.table(
        {
            "user_id": ["u"] * len(rows),
            "item_id": [i for i, _ in rows],
            "timestamp": list(range(len(rows))),
            "interest_id": [iid for _, iid in rows],
        }
    )
    interests = pa.table(
        {
            "user_id": ["u", "u"],
            "interest_id": ["u/0", "u/1"],
            "pattern": ["fading", "long_term"],
            "department": ["Lab", "Out"],
            "subcategory": ["Glassware", "Camping"],
            "style": ["minimalist", "rugged"],
        }
    )
    return PlantedInterests(truth, interests)


def test_the_interest_behind_the_target_is_found_in_the_log_and_must_be_named(shop):
    _, index, catalog = shop
    glass, camp = "u/0", "u/1"
    log = [("a", glass), ("c", camp), ("b", glass), ("a", glass), ("c", camp), ("e", camp)]
    text = trace_for(catalog, HISTORY, "d")  # chooses the glassware interest
    for behind, verdict in ((glass, True), (camp, False)):
        scorer = TraceScorer(index, catalog, planted(log + [("d", behind)]))
        assert scorer.score(text, HISTORY, "d", "u").criteria["interest"] is verdict
    noise = TraceScorer(index, catalog, planted(log + [("d", None)]))
    assert "interest" not in noise.score(text, HISTORY, "d", "u").criteria  # noise: nothing to name
    # "a" was taken twice: the occurrence after the history counts
    twice = planted([("a", glass), ("c", camp), ("a", None)])
    assert twice.behind("u", ["a", "c"], "a") is None and twice.behind("u", [], "a") is None
    assert twice.behind("u", ["x"], "c")["subcategory"] == "Camping" and twice.behind("v", [], "a") is None
    # choosing no interest names none
    fallback = trace_for(catalog, ["a", "b", "a", "b"], "f")
    scorer = TraceScorer(index, catalog, planted([("a", glass), ("b", glass)] * 2 + [("f", camp)]))
    assert scorer.score(fallback, ["a", "b", "a", "b"], "f", "u").criteria["interest"] is False


def synthetic_index(items: pa.Table) -> ItemIndex:
    """Distinct SIDs (department, subcategory, serial) and Term IDs from the attributes."""
    rows = items.to_pylist()
    dept = {d: k for k, d in enumerate(sorted({r["department"] for r in rows}))}
    sub = {s: k for k, s in enumerate(sorted({r["subcategory"] for r in rows}))}
    serial: dict = {}
    codes = []
    for r in rows:
        key = (dept[r["department"]], sub[r["subcategory"]])
        serial[key] = serial.get(key, 0) + 1
        codes.append([*key, serial[key]])
    words = [
        [r["product_type"].lower(), r["subcategory"].lower(), r["style"], r["price_band"], r["item_id"]]
        for r in rows
    ]
    return ItemIndex([r["item_id"] for r in rows], np.array(codes), words)


def world_histories(num_users: int):
    """(scorer, catalog, {user: (history, target)}) of a small synthetic world: each user's last
    interaction after at most 20 before it."""
    world = generate_world(SyntheticConfig(num_users=num_users, num_items=150, seed=0))
    index = synthetic_index(world.items)
    catalog = build_catalog(world.items, index)
    scorer = TraceScorer(index, catalog, PlantedInterests(world.truth, world.interests))
    sequences: dict[str, list[str]] = {}
    for user, item in zip(
        world.interactions["user_id"].to_pylist(), world.interactions["item_id"].to_pylist()
    ):
        sequences.setdefault(user, []).append(item)
    return scorer, catalog, {user: (seq[:-1][-20:], seq[-1]) for user, seq in sequences.items()}


def test_on_the_synthetic_world_full_traces_are_never_wrong_and_never_hallucinate():
    """The full trace states only what the target has and cites only the history: read back from
    its text, no verdict may be wrong; the interest verdict agrees with the builder's own choice."""
    scorer, catalog, examples = world_histories(60)
    verdicts = []
    style = "full"
    for user, (history, target) in examples.items():
        pos = [catalog.position[i] for i in history]
        cot = DeterministicCot(catalog, CotConfig(style=style))
        trace = cot.build(pos, list(range(len(pos))), [catalog.position[target]])
        score = scorer.score(trace.text, history, target, user)
        assert score.well_formed and score.hallucinated == 0 and score.cited > 0, trace.text
        assert False not in [score.criteria[c] for c in ("sid_prefix", "category", "attributes", "terms")]
        truth = scorer.planted.behind(user, history, target)
        if truth is None:
            assert "interest" not in score.criteria
            continue
        chosen = trace.interests[trace.chosen].label.split(", ") if trace.matched else []
        assert score.criteria["interest"] == ({truth["subcategory"], truth["style"]} <= set(chosen))
        verdicts.append(score.criteria["interest"])
    assert True in verdicts and False in verdicts


def test_on_the_synthetic_world_short_traces_never_hallucinate_and_call_due_interests_from_the_history():
    """A short trace decides from the history alone, so it can be wrong about the target, but
    never about the history; when it says an interest is due, the target mostly came from that
    (periodic) interest, and the scorer's due verdict is exactly that."""
    scorer, catalog, examples = world_histories(400)
    cot = DeterministicCot(catalog, CotConfig(style="short"))
    calls = right_calls = periodic = found = 0
    for user, (history, target) in examples.items():
        trace = cot.build([catalog.position[i] for i in history], None, [catalog.position[target]])
        score = scorer.score(trace.text, history, target, user)
        assert score.well_formed and score.hallucinated == 0 and score.cited > 0, trace.text
        truth = scorer.planted.behind(user, history, target)
        is_periodic = truth is not None and truth["pattern"] == "periodic"
        label = set(trace.interests[trace.chosen].label.split(", ")) if trace.chosen is not None else set()
        named = is_periodic and {truth["subcategory"], truth["style"]} <= label
        if trace.interests:
            assert score.criteria["due"] == (named if trace.chosen is not None else not is_periodic)
        calls += trace.chosen is not None
        right_calls += named
        periodic += is_periodic
        found += named
    # measured: 53 calls, 35 of them name the periodic interest behind the target (0.66, where
    # 16% of all targets are periodic); 35 of the 65 periodic targets are called
    assert calls >= 20 and right_calls / calls >= 3 * periodic / len(examples)
    assert found / periodic >= 0.45


def record(key: str, hit: bool, traces: list[str]) -> dict:
    target = "d"
    return {
        "key": key,
        "user_id": key,
        "targets": [target],
        "ranked_items": ["x"] * 9 + ([target] if hit else ["y"]),  # the target at rank 10, or missing
        "think": traces,
    }


def test_hit_at_10_is_split_by_right_and_wrong_traces(shop):
    _, index, catalog = shop
    right = trace_for(catalog, HISTORY, "d")
    wrong = right.replace("<s_a_1>.", "<s_a_5>.")
    run = [
        record("u1", True, [right]),
        record("u2", False, [right]),
        record("u3", True, [wrong]),
        record("u4", True, ["gibberish"]),
        record("u5", True, [right, wrong]),  # two sampled traces, one wrong: the user's trace is wrong
    ]
    histories = {r["key"]: HISTORY for r in run}
    report = trace_quality(run, TraceScorer(index, catalog), histories, k=10)
    assert report["traces"] == 6 and report["right"] == 3 / 6 and report["well_formed"] == 5 / 6
    assert report["hit_by_trace"] == {
        "metric": "hit@10",
        "right": {"users": 2, "value": 0.5},
        "wrong": {"users": 3, "value": 1.0},
    }
    assert report["criteria"]["sid_prefix"] == {"right": 3, "wrong": 3, "not_stated": 0, "accuracy": 0.5}
    assert report["criteria"]["terms"] == {"right": 5, "wrong": 1, "not_stated": 0, "accuracy": 5 / 6}
    assert report["hallucination"]["hallucinated"] == 0 and report["hallucination"]["rate"] == 0.0
    assert set(report["not_scored"]) == {"interest", "due"}
    at_5 = trace_quality(run, TraceScorer(index, catalog), histories, k=5)["hit_by_trace"]
    assert at_5["metric"] == "hit@5" and at_5["right"]["value"] == at_5["wrong"]["value"] == 0.0


@pytest.mark.slow
def test_a_thinking_evaluation_reports_trace_quality(shop, make_tiny_model, tmp_path):
    from evaluation.run import main

    items, index, _ = shop
    path = make_tiny_model(itemic_tokens=index.itemic_tokens())
    index.save(path / "item_index.json")
    data = tmp_path / "data"
    (data / "splits").mkdir(parents=True)
    pq.write_table(items, data / "items.parquet")
    rows = [{"user_id": f"u{u}", "history": HISTORY[u:], "target": t} for u, t in enumerate("dfd")]
    pq.write_table(pa.Table.from_pylist(rows), data / "splits" / "test.parquet")
    out = tmp_path / "eval"
    argv = ["--models", str(path), "--data_path", str(data), "--modes", "think", "--out_dir", str(out)]
    argv += ["--num_beams", "10", "--think_budget", "6", "--n_bootstrap", "20", "--device", "cpu"]
    assert main(argv) == 0
    (run,) = json.loads((out / "report.json").read_text())["runs"]
    traces = run["traces"]
    assert traces["traces"] == 3 and str(data) in traces["scored_against"]
    assert list(traces["criteria"]) == ["sid_prefix", "category", "attributes", "terms"]
    assert set(traces["not_scored"]) == {"interest", "due"}
    split = traces["hit_by_trace"]
    assert split["metric"] == "hit@10" and split["right"]["users"] + split["wrong"]["users"] == 3
    assert {"citations", "hallucinated", "rate"} <= set(traces["hallucination"])
    md = (out / "report.md").read_text()
    assert "## Trace quality" in md and "hit@10 right (users)" in md and "interest not scored" in md


@pytest.mark.slow
def test_an_evaluation_with_builder_written_traces_thinks_with_the_builders_trace_of_each_history(
    tmp_path, make_tiny_model
):
    """`trace_source history`: every user's think block is the short trace the task build writes
    for their history (no target), so the records carry exactly that text, well formed and with
    nothing made up; the same build's full traces are refused (they name the target's interest)."""
    from test_tasks_build import synthetic_index

    from data_builders.build import BuildDataConfig, build_data
    from data_builders.tasks.build import main as build_tasks_main
    from evaluation.protocols import examples_from_tasks
    from evaluation.run import main as eval_main

    options = {"num_users": 40, "num_items": 120, "seed": 1}
    build_data(BuildDataConfig(source="synthetic", source_options=options, out_dir=str(tmp_path / "data")))
    items = pq.read_table(tmp_path / "data" / "items.parquet")
    index = synthetic_index(items)
    index.save(tmp_path / "item_index.json")
    (tmp_path / "mixture.yaml").write_text("tasks:\n  - {task: rec_sid, mode: think, weight: 1.0}\n")
    argv = ["--data_dir", str(tmp_path / "data"), "--item_index", str(tmp_path / "item_index.json")]
    argv += ["--mixture", str(tmp_path / "mixture.yaml"), "--history_text", "none", "--max_history", "8"]
    short = argv + [
        "--out_dir",
        str(tmp_path / "tasks"),
        "--trace_style",
        "short",
        "--history_countdown",
        "true",
    ]
    assert build_tasks_main(short) == 0
    model = make_tiny_model(itemic_tokens=index.itemic_tokens())
    index.save(model / "item_index.json")
    run = ["--models", str(model), "--modes", "think", "--num_beams", "4", "--n_bootstrap", "10"]
    run += ["--device", "cpu", "--trace_source", "history", "--max_examples", "12"]
    out = tmp_path / "eval"
    assert eval_main(run + ["--data_path", str(tmp_path / "tasks"), "--out_dir", str(out)]) == 0
    records = [
        json.loads(line) for line in (out / "runs" / f"{model.name}-think.jsonl").read_text().splitlines()
    ]
    histories = {ex.key: ex.history for ex in examples_from_tasks(tmp_path / "tasks")}
    catalog = build_catalog(items, index)
    cot = DeterministicCot(catalog, CotConfig(style="short", recent_items=4))
    assert len(records) == 12
    for r in records:
        history = [catalog.position[i] for i in histories[r["key"]]]
        assert r["think"] == [cot.build(history, None, []).text] and r["think_tokens"] == 0
    (report,) = json.loads((out / "report.json").read_text())["runs"]
    assert report["traces"]["well_formed"] == 1.0 and report["traces"]["hallucination"]["hallucinated"] == 0
    assert build_tasks_main(argv + ["--out_dir", str(tmp_path / "full")]) == 0
    refused = run + ["--data_path", str(tmp_path / "full"), "--out_dir", str(tmp_path / "eval-full")]
    with pytest.raises(ValueError, match="trace_style short"):
        eval_main(refused)


def test_a_mixture_can_keep_every_row_whose_trace_decides_and_a_share_of_the_others(tmp_path):
    """`decided_weight`: the thinking rows whose short trace names a due interest all stay, at
    1.0, while the open ones are sampled at `weight`; full traces (they choose with the target)
    refuse it."""
    from collections import Counter
    from pathlib import Path

    from datasets import load_from_disk
    from test_tasks_build import synthetic_index

    from data_builders.build import BuildDataConfig, build_data
    from data_builders.tasks.build import main as build_tasks_main
    from onereason.errors import UsageError

    options = {"num_users": 200, "num_items": 120, "seed": 2}
    build_data(BuildDataConfig(source="synthetic", source_options=options, out_dir=str(tmp_path / "data")))
    index = synthetic_index(pq.read_table(tmp_path / "data" / "items.parquet"))
    index.save(tmp_path / "item_index.json")
    argv = ["--data_dir", str(tmp_path / "data"), "--item_index", str(tmp_path / "item_index.json")]
    argv += ["--history_text", "none", "--max_history", "10"]

    def build(name: str, entry: str, style: str = "short") -> Path:
        (tmp_path / f"{name}.yaml").write_text(f"tasks:\n  - {{task: rec_sid, mode: think, {entry}}}\n")
        out = tmp_path / name
        mixture = ["--mixture", str(tmp_path / f"{name}.yaml"), "--trace_style", style]
        assert build_tasks_main(argv + mixture + ["--out_dir", str(out)]) == 0
        return out

    def deciding(out: Path) -> Counter:
        return Counter("due now" in r["completion"][-1]["content"] for r in load_from_disk(str(out))["train"])

    every = deciding(build("every", "weight: 1.0"))
    kept = deciding(build("decided", "weight: 0.1, decided_weight: 1.0"))
    assert every[True] >= 30 and kept[True] == every[True]  # every deciding row, once
    assert 0.04 * every[False] < kept[False] < 0.2 * every[False]  # a tenth of the open ones
    with pytest.raises(UsageError, match="trace_style short"):
        build("full", "weight: 0.1, decided_weight: 1.0", style="full")
