"""Teacher-written three-level traces: a scripted teacher's good traces are accepted, its bad ones
rejected with their reason, retried, counted, and the accepted ones are the traces the rows carry.

The teacher is a model stub whose `generate` replays a script (valid traces, a trace without its
sections, one that names the target, a loop, a citation of an item the history lacks) through the
real transformers path of `TeacherCot`: chat template, tokenizer, decoding, verification.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest
from scripted_lm import ScriptedLM

from data_builders.tasks.catalog import build_catalog
from data_builders.tasks.cot_teacher import TeacherCot, TeacherRequest

VALID = (
    "Derivation: #1 opens this history and the later items follow it.\n"
    "Evolution: (1) a long-term interest, shown by #1.\n"
    "Recommendation: an item that serves this interest, in a similar style."
)
NO_SECTIONS = "The user will like something nice."
LOOP = (
    "Derivation: #1. Evolution: " + "the user likes this kind of thing a lot " * 4 + "Recommendation: more."
)
BAD_CITATION = VALID.replace("shown by #1", "shown by #99")
TARGET = re.compile(r"Their next item was: (.*) \(")


def leak(prompt: str) -> str:
    """A trace that names the target (the teacher's prompt shows it)."""
    return VALID.replace("an item that", f"the {TARGET.search(prompt).group(1)}, which")


@pytest.fixture
def scripted(monkeypatch, make_tiny_model):
    """Install a scripted teacher for `TeacherCot(..., model=<tiny model folder>)`; returns a setter."""
    from transformers import AutoTokenizer

    import onereason.modeling

    holder = {}

    def load(path, *args, **kwargs):
        tokenizer = AutoTokenizer.from_pretrained(path)
        holder["teacher"] = ScriptedLM(tokenizer, holder["script"])
        return holder["teacher"], tokenizer

    monkeypatch.setattr(onereason.modeling, "load_model_and_tokenizer", load)

    def use(script):
        holder["script"] = script
        return str(make_tiny_model()), holder

    return use


def catalog():
    items = pa.table(
        {
            "item_id": [f"i{k}" for k in range(8)],
            "title": [f"Acme {kind} Model AX-{k}" for k, kind in enumerate(["Beaker", "Flask"] * 4)],
            "categories": [["Lab", "Glassware", kind] for kind in ["Beaker", "Flask"] * 4],
            "style": ["minimalist", "rugged"] * 4,
        }
    )
    return build_catalog(items)


def test_scripted_teacher_accepts_rejects_retries_and_counts_reasons(scripted):
    # request 0: valid at once; 1: no sections, then valid on the retry; 2: names its target twice;
    # 3: loops twice; 4: cites #99 of a 3-item history twice; 5: valid at once
    plans = {
        0: [VALID],
        1: [NO_SECTIONS, VALID],
        2: ["leak", "leak"],
        3: [LOOP, LOOP],
        4: [BAD_CITATION, BAD_CITATION],
        5: [VALID],
    }

    def script(number, attempt, prompt):
        text = plans[number][attempt]
        return f"<think>\n{leak(prompt)}\n</think>" if text == "leak" else text

    model, holder = scripted(script)
    teacher = TeacherCot(catalog(), model, backend="transformers", retries=1, batch_size=4)
    requests = [TeacherRequest(history=[k, k + 1, k + 2], targets=[(k + 3) % 8]) for k in range(6)]
    traces = teacher.traces(requests)
    assert traces == [VALID, VALID, None, None, None, VALID]
    assert teacher.report() == {
        "requested": 6,
        "accepted": 3,
        "acceptance_rate": 0.5,
        "generations": 6 + 4,  # every request once, the four rejected ones once more
        "rejected_by_reason": {"leak": 1, "loop": 1, "bad_citation": 1},
    }
    assert holder["teacher"].order and set(holder["teacher"].attempts.values()) == {1, 2}


def test_build_tasks_puts_the_accepted_teacher_traces_in_the_rows(scripted, tmp_path):
    """End to end on a small synthetic world: which rows carry the teacher's trace, which the fallback's."""
    import pyarrow.parquet as pq
    from datasets import load_from_disk

    from data_builders.build import BuildDataConfig, build_data
    from data_builders.tasks.build import BuildTasksConfig, build_tasks
    from onereason.item_index import ItemIndex
    from onereason.thinking import split_answer

    data = tmp_path / "data"
    build_data(
        BuildDataConfig(
            source="synthetic",
            source_options={"num_users": 60, "num_items": 64, "seed": 0},
            out_dir=str(data),
        )
    )
    ids = pq.read_table(data / "items.parquet").column("item_id").to_pylist()
    codes = np.array([[k // 16, (k // 4) % 4, k % 4] for k in range(len(ids))])
    ItemIndex(ids, codes).save(tmp_path / "item_index.json")
    # requests in order: a third valid at once, a third valid on the retry, a third leak twice
    written = {0: "first", 1: "retry", 2: "leak"}

    def script(number, attempt, prompt):
        kind = written[number % 3]
        if kind == "leak":
            return leak(prompt)
        return VALID if kind == "first" or attempt == 1 else NO_SECTIONS

    model, _ = scripted(script)
    out, stats = build_tasks(
        BuildTasksConfig(
            data_dir=str(data), item_index=str(tmp_path / "item_index.json"), out_dir=str(tmp_path / "tasks"),
            cot="teacher", teacher_model=model, teacher_backend="transformers", teacher_retries=1,
            teacher_limit=6, eval_max_rows=2,
        )
    )  # fmt: skip
    requested = 6 + 2 + 2  # teacher_limit on train, eval_max_rows on validation and test
    accepted = sum(written[n % 3] != "leak" for n in range(requested))  # 7
    teacher = stats["teacher"]
    assert teacher["requested"] == requested and teacher["accepted"] == accepted
    assert teacher["generations"] == requested + 2 * requested // 3  # the retry and leak thirds twice
    assert teacher["rejected_by_reason"] == {"leak": requested - accepted}
    checked = sum(m["checked"] for m in stats["leakage"].values())
    assert stats["trace_sources"] == {"teacher": accepted, "deterministic": checked - accepted}
    assert f"Teacher traces: {accepted} of {requested} accepted" in (out / "README.md").read_text()
    dataset = load_from_disk(str(out))
    thinking = [
        split_answer(row["completion"][-1]["content"])[0]
        for split in dataset.values()
        for row in split
        if row["mode"] == "think"
    ]
    assert sum(t == VALID for t in thinking) == accepted, "each accepted trace is a row's think block"
    assert not any(", which serves this interest" in (t or "") for t in thinking), "no leaking trace is used"
