"""`onereason push --dry-run`: a Hub-ready folder that reloads on its own and decodes SIDs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from train_fixtures import ITEM_IDS, make_index, make_task_dataset

from onereason.errors import InputError
from onereason.push import REPORT_FILE, project_url
from onereason.push import main as push_main
from onereason.stages.common import HISTORY_FILE, ITEM_INDEX_FILE


@pytest.fixture(scope="module")
def report(tmp_path_factory, make_tiny_model):
    """A report.json as `onereason eval` writes it: a tiny model, both modes, a task dataset."""
    from evaluation.run import main as eval_main

    root = tmp_path_factory.mktemp("eval")
    index = make_index()
    model = root / "sft"
    shutil.copytree(make_tiny_model(itemic_tokens=index.itemic_tokens()), model)
    index.save(model / ITEM_INDEX_FILE)
    argv = ["--models", str(model), "--data_path", str(make_task_dataset(root / "tasks", index))]
    argv += ["--compare", "--num_beams", "10", "--think_budget", "4", "--n_bootstrap", "20"]
    assert eval_main([*argv, "--device", "cpu", "--out_dir", str(root / "out")]) == 0
    return root / "out" / "report.json"


@pytest.fixture()
def trained(tmp_path, make_tiny_model, report):
    """A model folder as `onereason train` leaves it: weights, tokenizer, index, history."""
    index = make_index()
    folder = tmp_path / "sft"
    shutil.copytree(make_tiny_model(itemic_tokens=index.itemic_tokens()), folder)
    index.save(folder / ITEM_INDEX_FILE)
    history = [
        {
            "stage": "align",
            "phase": "model",
            "model": "Qwen/Qwen3-0.6B",
            "dataset": "data/tasks",
            "tasks": ["caption"],
            "global_step": 10,
        },
        {
            "stage": "sft",
            "model": str(tmp_path / "align"),
            "dataset": "data/tasks",
            "tasks": None,
            "global_step": 20,
            "use_peft": True,
        },
    ]
    (folder / HISTORY_FILE).write_text(json.dumps(history))
    return folder, report


def test_dry_run_writes_a_folder_that_reloads_and_decodes_sids(trained, tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from onereason.item_index import ItemIndex

    folder, report = trained
    out = tmp_path / "hub"
    assert (
        push_main(
            ["--model_path", str(folder), "--output_dir", str(out), "--report", str(report), "--dry-run"]
        )
        == 0
    )
    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        ITEM_INDEX_FILE,
        "README.md",
    ):
        assert (out / name).is_file(), name

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    index = ItemIndex.load(out / ITEM_INDEX_FILE)
    GenerationConfig.from_pretrained(out)
    item = ITEM_IDS[3]
    ids = tokenizer(index.sid_text(item), add_special_tokens=False)["input_ids"]
    assert len(ids) == index.n_levels + 2, "each itemic token is one token"
    assert index.parse_items(tokenizer.decode(ids)) == [item]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape[-1] >= len(tokenizer)

    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "Qwen/Qwen3-0.6B"
    assert "onereason" in card.data.tags
    text = card.text
    assert "| 1 | align | model |" in text and "| 2 | sft |" in text
    url = project_url()
    assert (f"[onereason]({url})" in text) if url else "[onereason](" not in text
    assert f"SID levels: {index.n_levels}" in text and index.sid_text(ITEM_IDS[0]) in text


def test_the_card_carries_every_run_and_mode_of_the_eval_report(trained, tmp_path):
    from huggingface_hub import ModelCard

    folder, report = trained
    out = tmp_path / "hub"
    push_main(["--model_path", str(folder), "--output_dir", str(out), "--report", str(report), "--dry-run"])
    runs = json.loads(report.read_text())["runs"]
    models = [r for r in runs if r["mode"] != "baseline"]
    assert [r["mode"] for r in models] == ["no_think", "think"]
    card = ModelCard.load(out / "README.md")
    results = {(r.metric_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    for run in models:
        for metric in ("hit@10", "ndcg@10", "recall@10", "mrr"):
            assert results[(run["name"], metric)] == pytest.approx(run["item"][metric])
    header = card.text.split("## Evaluation", 1)[1]
    assert "| run | mode | users | Hit@1 |" in header and "NDCG@10" in header and "MRR" in header
    for run in runs:
        row = next(line for line in header.splitlines() if line.startswith(f"| {run['name']} |"))
        assert f"| {run['mode']} | {run['item']['n_users']} |" in row
        assert f"{run['item']['hit@10']:.4f}" in row and f"{run['item']['ndcg@10']:.4f}" in row
    assert json.loads((out / REPORT_FILE).read_text()) == json.loads(report.read_text())


def test_push_without_repo_or_index_or_with_another_report_fails_clearly(trained, tmp_path):
    folder, _ = trained
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"no_think": {"recall@10": 0.1}}))
    with pytest.raises(InputError, match="no list of named `runs`"):
        push_main(["--model_path", str(folder), "--report", str(other), "--dry-run"])
    with pytest.raises(SystemExit, match="repo_id is required"):
        push_main(["--model_path", str(folder)])
    (folder / ITEM_INDEX_FILE).unlink()
    with pytest.raises(InputError, match="needs its item index"):
        push_main(["--model_path", str(folder), "--dry_run", "true"])
