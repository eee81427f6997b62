"""`onereason push --dry-run`: a Hub-ready folder that reloads on its own and decodes SIDs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from train_fixtures import ITEM_IDS, make_index

from onereason.errors import InputError
from onereason.push import main as push_main
from onereason.stages.common import HISTORY_FILE, ITEM_INDEX_FILE


@pytest.fixture()
def trained(tmp_path, make_tiny_model):
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
    report = tmp_path / "report.json"
    report.write_text(
        json.dumps(
            {
                "no_think": {"recall@10": 0.125, "ndcg@10": 0.0625},
                "think": {"recall@10": 0.25},
                "n_users": 100,
            }
        )
    )
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
    assert "| no_think.recall@10 | 0.125 |" in text and "| think.recall@10 | 0.25 |" in text
    assert f"SID levels: {index.n_levels}" in text and index.sid_text(ITEM_IDS[0]) in text


def test_push_without_repo_or_index_fails_clearly(trained, tmp_path):
    folder, _ = trained
    with pytest.raises(SystemExit, match="repo_id is required"):
        push_main(["--model_path", str(folder)])
    (folder / ITEM_INDEX_FILE).unlink()
    with pytest.raises(InputError, match="needs its item index"):
        push_main(["--model_path", str(folder), "--dry_run", "true"])
