"""Specialize-then-unify: the rejection-sampling set (hits only, deduplicated, balanced) and the
whole tiny recipe with two specialists, including a relaunch that reuses finished work."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from toy_world import toy_index, toy_model, write_toy_dataset

from onereason.rl.verify import rejection_sampling_rows, verifier
from onereason.stages.common import HISTORY_FILE


def rs_row(index, item, target, domain, prompt="p"):
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "completion": [{"role": "assistant", "content": "<think>\n\n</think>\n\n" + index.sid_text(item)}],
        "target_sids": [index.sid_text(target)],
        "domain": domain,
    }


def test_rejection_sampling_keeps_verified_unique_rows_balanced_by_domain():
    index = toy_index(8, (2, 2, 2))
    rows = [
        rs_row(index, "item0", "item0", "a", "p1"),
        rs_row(index, "item0", "item0", "a", "p1"),  # duplicate
        rs_row(index, "item1", "item1", "a", "p2"),
        rs_row(index, "item2", "item2", "a", "p3"),
        rs_row(index, "item3", "item4", "a", "p4"),  # a miss
        rs_row(index, "item5", "item5", "b", "p5"),
        rs_row(index, "item6", "item6", "b", "p6"),
    ]
    kept, stats = rejection_sampling_rows(rows, "domain", balance=True, seed=0, verified=verifier(index))
    assert stats["not_hit"] == 1 and stats["duplicate"] == 1
    assert stats["per_domain_before_balance"] == {"a": 3, "b": 2}
    assert stats["per_domain"] == {"a": 2, "b": 2} and stats["output"] == 4
    keys = [(r["prompt"][0]["content"], r["completion"][0]["content"]) for r in kept]
    assert len(set(keys)) == len(keys)
    assert all(verifier(index)(r) for r in kept)
    unbalanced, _ = rejection_sampling_rows(rows, "domain", balance=False, verified=verifier(index))
    assert len(unbalanced) == 5


@pytest.mark.slow
def test_tiny_unify_recipe_end_to_end_with_two_specialists(tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    index = toy_index(8, (2, 2, 2))
    model_dir = toy_model(tmp_path / "model", index)
    tasks = write_toy_dataset(tmp_path / "tasks", index, n_train=48, n_eval=16)
    out = tmp_path / "unify"
    argv = [
        "--config", "recipes/tiny/unify.yaml", "--model_name_or_path", str(model_dir), "--dataset_path", str(tasks),
        "--output_dir", str(out), "--max_steps", "6", "--think_budget", "8", "--eval_rows_per_domain", "8",
        "--specialist_overrides", "max_steps=6", "save_steps=3", "think_budget=8", "max_completion_length=40",
    ]  # fmt: skip
    from onereason.train import main

    main(argv)
    work = Path(str(out) + "-work")
    specialists = sorted(p.name for p in (work / "specialists").iterdir())
    assert specialists == ["group0", "group1"]
    for name in specialists:
        record = json.loads((work / "specialists" / name / HISTORY_FILE).read_text())[-1]
        assert record["stage"] == "grpo" and record["domains"] == [name] and record["global_step"] == 6

    rs = datasets.load_from_disk(str(work / "rs_data"))["train"]
    stats = json.loads((work / "rs_data" / "stats.json").read_text())
    check = verifier(index)
    assert len(rs) > 0 and all(check(row) for row in rs), "only verified hits"
    keys = [(json.dumps(r["prompt"]), r["completion"][0]["content"]) for r in rs]
    assert len(set(keys)) == len(keys), "deduplicated"
    counts = {d: rs["domain"].count(d) for d in set(rs["domain"])}
    assert set(counts) == {"group0", "group1"} and len(set(counts.values())) == 1, counts
    assert stats["per_domain"] == counts

    report = json.loads((out / "unify_report.json").read_text())
    assert set(report["hit_rate"]) == {"unified", "specialist:group0", "specialist:group1"}
    for table in report["hit_rate"].values():
        assert set(table) == {"group0", "group1"} and all(0.0 <= v <= 1.0 for v in table.values())
    assert json.loads((out / HISTORY_FILE).read_text())[-1]["stage"] == "unify"

    # Relaunch: finished specialists and the RS set are reused, not recomputed.
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob(HISTORY_FILE)} | {
        work / "rs_data" / "stats.json": (work / "rs_data" / "stats.json").stat().st_mtime_ns
    }
    main(argv)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
