"""onereason build-tasks end to end on the synthetic world: contract, leakage, interests, bad input, teacher."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("onereason.item_index", reason="onereason.item_index (ItemIndex) is not written yet")

from datasets import load_from_disk  # noqa: E402

from data_builders.build import BuildDataConfig, build_data  # noqa: E402
from data_builders.synthetic import SyntheticConfig, generate_world  # noqa: E402
from data_builders.tasks.build import BuildTasksConfig, build_tasks, main  # noqa: E402
from onereason.item_index import ItemIndex  # noqa: E402
from onereason.thinking import EMPTY_THINK, split_answer  # noqa: E402

CONTRACT_COLUMNS = [
    "prompt",
    "completion",
    "task",
    "mode",
    "user_id",
    "history_items",
    "target_items",
    "target_sids",
    "target_terms",
    "domain",
]
ALL_TASKS = """
seed: 0
tasks:
  - {task: rec_sid, mode: think, weight: 0.5}
  - {task: rec_sid, mode: no_think, weight: 0.5}
  - {task: rec_term, mode: no_think, weight: 0.2}
  - {task: rec_hybrid, mode: no_think, weight: 0.2}
  - {task: rec_multi, mode: think, weight: 0.1}
  - {task: rec_behavior, mode: no_think, weight: 0.2}
  - {task: caption, mode: no_think, weight: 1.0}
  - {task: text2sid, mode: no_think, weight: 1.0}
  - {task: sid2term, mode: no_think, count: 50}
  - {task: term2sid, mode: no_think, count: 50}
  - {task: item_qa, mode: no_think, weight: 1.0}
  - {task: association, mode: no_think, weight: 1.0}
"""


def synthetic_index(items: pa.Table) -> ItemIndex:
    """SIDs from the item attributes (department, subcategory+style, serial) and Term IDs whose
    distinguishing slot is the model number: a quick index without the identifier pipeline."""
    rows = items.to_pylist()
    dept = {d: k for k, d in enumerate(sorted({r["department"] for r in rows}))}
    group = {g: k for k, g in enumerate(sorted({(r["subcategory"], r["style"]) for r in rows}))}
    serial: dict = {}
    codes, terms = [], []
    for r in rows:
        a, b = dept[r["department"]], group[(r["subcategory"], r["style"])]
        c = serial.get((a, b), 0)
        serial[(a, b)] = c + 1
        codes.append([a, b, c])
        model = r["title"].split(",")[0].split()[-1].lower()
        terms.append(
            [r["product_type"].lower(), r["subcategory"].lower(), r["style"], r["price_band"], model]
        )
    return ItemIndex([r["item_id"] for r in rows], np.array(codes), terms)


@pytest.fixture(scope="module")
def synthetic_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    options = {"num_users": 300, "num_items": 300, "seed": 0}
    build_data(BuildDataConfig(source="synthetic", source_options=options, out_dir=str(root / "data")))
    world = generate_world(SyntheticConfig(**options))
    pq.write_table(world.truth, root / "data" / "truth.parquet")
    pq.write_table(world.interests, root / "data" / "interests.parquet")
    synthetic_index(pq.read_table(root / "data" / "items.parquet")).save(root / "item_index.json")
    (root / "mixture.yaml").write_text(ALL_TASKS)
    argv = ["--data_dir", str(root / "data"), "--item_index", str(root / "item_index.json")]
    argv += ["--out_dir", str(root / "out"), "--mixture", str(root / "mixture.yaml")]
    assert main(argv) == 0
    return root


def test_output_follows_the_task_dataset_contract(synthetic_build):
    out = synthetic_build / "out"
    ds = load_from_disk(str(out))
    assert list(ds) == ["train", "validation", "test"]
    for split in ds.values():
        assert split.column_names == CONTRACT_COLUMNS
    stats = json.loads((out / "stats.json").read_text())
    assert (out / "README.md").read_text().startswith("---\n")
    tasks = {k.split("/")[0] for k in stats["examples_per_task_mode"]["train"]}
    assert tasks == {
        "rec_sid",
        "rec_term",
        "rec_hybrid",
        "rec_multi",
        "rec_behavior",
        "caption",
        "text2sid",
    } | {"sid2term", "term2sid", "item_qa", "association"}
    train = ds["train"]
    assert stats["examples"]["train"] == len(train)
    for ex in train.select(range(200)):
        assert ex["prompt"][-1]["role"] == "user"
        assert ex["prompt"][-1]["content"].endswith(" /think" if ex["mode"] == "think" else " /no_think")
        content = ex["completion"][0]["content"]
        trace, answer = split_answer(content)
        if ex["mode"] == "no_think":
            assert content.startswith(EMPTY_THINK)
        else:
            assert trace.index("Derivation:") < trace.index("Evolution:") < trace.index("Recommendation:")
        if ex["task"] in ("rec_sid", "rec_behavior", "text2sid", "term2sid"):
            assert answer == ex["target_sids"][0]
        if ex["task"] == "rec_multi":
            assert answer == "".join(ex["target_sids"]) and len(ex["target_items"]) >= 2


def test_thinking_and_non_thinking_prompts_carry_the_same_history(synthetic_build):
    test = load_from_disk(str(synthetic_build / "out"))["test"].filter(
        lambda t: t == "rec_sid", input_columns="task"
    )
    by_user: dict = {}
    for ex in test:
        by_user.setdefault(ex["user_id"], {})[ex["mode"]] = ex["prompt"]
    assert len(by_user) > 100
    for modes in by_user.values():
        think, plain = modes["think"], modes["no_think"]
        assert think[:-1] == plain[:-1]
        assert think[-1]["content"].removesuffix(" /think") == plain[-1]["content"].removesuffix(" /no_think")


def test_deterministic_traces_never_leak_and_recover_planted_interests(synthetic_build):
    out = synthetic_build / "out"
    stats = json.loads((out / "stats.json").read_text())
    for split in ("train", "validation", "test"):
        assert stats["leakage"][split]["checked"] > 0
        assert stats["leakage"][split]["rate"] == 0.0
    recovery = stats["interest_recovery"]
    assert recovery["examples"] == 300
    assert recovery["f1"] >= 0.9, recovery
    # independent check: no thinking answer writes its target's title, SID or model number
    ds = load_from_disk(str(out))["train"].filter(lambda m: m == "think", input_columns="mode")
    index = ItemIndex.load(synthetic_build / "item_index.json")
    titles = dict(
        zip(
            *(
                pq.read_table(synthetic_build / "data" / "items.parquet").column(c).to_pylist()
                for c in ("item_id", "title")
            )
        )
    )
    for ex in ds:
        trace, _ = split_answer(ex["completion"][0]["content"])
        for item in ex["target_items"]:
            assert titles[item].lower() not in trace.lower()
            assert index.sid_text(item) not in trace
            assert index.terms(item)[4] not in trace.lower()


def test_bad_input_is_counted_and_the_build_completes(tmp_path):
    data = tmp_path / "data"
    (data / "splits").mkdir(parents=True)
    items = pa.table(
        {
            "item_id": ["a", "b", "c", "d", "ghost"],
            "title": ["Alpha glass beaker", "", "Gamma caliper", "Delta flask", "Ghost item"],
            "description": ["", "", "a caliper", "", ""],
            "categories": [
                ["Lab", "Glass"],
                ["Lab", "Glass"],
                ["Lab", "Measure"],
                ["Lab", "Glass"],
                ["Lab", "Glass"],
            ],
        }
    )
    pq.write_table(items, data / "items.parquet")
    split = pa.table(
        {
            "user_id": ["u1", "u2", "u3", "u4"],
            "history": [["a", "b", "c"], ["ghost"], ["a"], ["b", "ghost"]],
            "history_ts": [[1, 2, 3], [1], [1], [1, 2]],
            "target": ["d", "a", "ghost", "c"],
            "target_ts": [4, 2, 2, 3],
            "target_event": ["purchase", "view", "view", "view"],
        }
    )
    for name in ("train", "valid", "test"):
        pq.write_table(split, data / "splits" / f"{name}.parquet")
    # "ghost" is not in the index; "b" has an empty title (and description)
    ItemIndex(["a", "b", "c", "d"], np.array([[0, 0], [0, 1], [1, 0], [0, 2]]), None).save(
        tmp_path / "index.json"
    )
    mixture = tmp_path / "mix.yaml"
    mixture.write_text(ALL_TASKS)
    out, stats = build_tasks(
        BuildTasksConfig(
            data_dir=str(data),
            item_index=str(tmp_path / "index.json"),
            out_dir=str(tmp_path / "out"),
            mixture=str(mixture),
        )
    )
    assert stats["drops"]["target_not_in_index"] == 3  # u3 in each split
    assert stats["drops"]["empty_history"] == 3  # u2 in each split
    assert stats["drops"]["history_item_not_in_index"] == 6
    assert stats["drops"]["items_not_in_index"] == 1
    assert stats["ineligible"]["train/rec_term:no_term_id"] == 2
    ds = load_from_disk(str(out))
    assert len(ds["test"]) > 0 and set(ds["test"]["user_id"]) == {"u1", "u4"}
    for ex in ds["train"]:
        assert "ghost" not in ex["history_items"]
        assert all(line.strip() for line in ex["prompt"][-1]["content"].splitlines())


def test_a_failed_build_leaves_the_previous_output(synthetic_build, tmp_path):
    out = synthetic_build / "out"
    before = (out / "stats.json").read_text()
    # a data folder with items but no splits: the build fails after reading the catalogue
    (tmp_path / "items.parquet").write_bytes((synthetic_build / "data" / "items.parquet").read_bytes())
    config = BuildTasksConfig(
        data_dir=str(tmp_path), item_index=str(synthetic_build / "item_index.json"), out_dir=str(out)
    )
    with pytest.raises(FileNotFoundError, match="split file not found"):
        build_tasks(config)
    assert (out / "stats.json").read_text() == before


def test_garbage_teacher_is_rejected_counted_and_replaced(synthetic_build, make_tiny_model, tmp_path):
    model = make_tiny_model()
    out, stats = build_tasks(
        BuildTasksConfig(
            data_dir=str(synthetic_build / "data"),
            item_index=str(synthetic_build / "item_index.json"),
            out_dir=str(tmp_path / "out"),
            cot="teacher",
            teacher_model=str(model),
            teacher_backend="transformers",
            teacher_max_new_tokens=12,
            teacher_retries=1,
            teacher_limit=6,
            eval_max_rows=2,
            tokenizer=str(model),
            token_stats_sample=20,
        )
    )
    teacher = stats["teacher"]
    requested = 6 + 2 + 2  # teacher_limit on train, eval_max_rows on validation and test
    assert teacher["requested"] == requested
    assert teacher["generations"] == 2 * requested  # every output rejected, then retried once
    assert teacher["acceptance_rate"] == 0.0 and sum(teacher["rejected_by_reason"].values()) == requested
    # the fallback wrote every trace deterministically, and they were all checked for leaks
    assert stats["trace_sources"] == {"deterministic": sum(m["checked"] for m in stats["leakage"].values())}
    assert stats["token_lengths"]["rec_sid"]["p50"] > 20
    assert f"Teacher traces: 0 of {requested} accepted" in (out / "README.md").read_text()


def test_deterministic_traces_never_leak_on_scientific(tmp_path):
    """Real titles, brands and Term IDs: every test-split trace is free of its target's SID, title, term."""
    from collections import Counter

    from helpers import shared_data

    from data_builders.identifiers.term_ids import extractive_term_ids
    from data_builders.tasks.build import read_rows
    from data_builders.tasks.catalog import build_catalog
    from data_builders.tasks.cot import DeterministicCot
    from data_builders.tasks.leakage import find_leaks

    folder = shared_data("amazon-scientific")
    config = BuildDataConfig(
        source="lcrec",
        source_options={"path": str(folder), "name": "Scientific"},
        out_dir=str(tmp_path / "data"),
        max_history=20,
        progress=False,
    )
    build_data(config)
    items = pq.read_table(tmp_path / "data" / "items.parquet")
    terms = extractive_term_ids(items, None).terms
    published = ItemIndex.from_published_json(folder / "Scientific.rkmeans_zcr.index.json")
    codes = dict(zip(published.item_ids, published.codes.tolist()))
    ids = items.column("item_id").to_pylist()
    index = ItemIndex(ids, [codes[i] for i in ids], terms, published.sid_format)
    catalog = build_catalog(items, index)
    drops = Counter()
    rows = read_rows(tmp_path / "data" / "splits" / "test.parquet", "test", catalog, 20, 1, drops)
    assert len(rows) == 8317 and not drops
    cot = DeterministicCot(catalog)
    leaks = Counter()
    for row in rows:
        for kind in find_leaks(
            cot.build(row.history, row.timestamps, row.targets).text, catalog, row.targets
        ):
            leaks[kind] += 1
    assert leaks == Counter()
