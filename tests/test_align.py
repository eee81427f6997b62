"""Stage `align`: vocabulary expansion, new-rows-only phase, full / LoRA phase, restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import build_world

from onereason.stages.align import read_item_texts, train_only_rows
from onereason.stages.common import HISTORY_FILE
from onereason.train import main as train_main

REPO = Path(__file__).resolve().parents[1]
EMBED = "model.embed_tokens.weight"


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_tiny_model):
    return build_world(tmp_path_factory.mktemp("align-world"), make_tiny_model)


def align_argv(world, out: Path, *extra: str) -> list[str]:
    """The tiny recipe as written, pointed at the test's model, data and output folder."""
    return [
        "--config", str(REPO / "recipes/tiny/align.yaml"),
        "--model_name_or_path", str(world["base"]),
        "--dataset_path", str(world["tasks"]),
        "--item_index", str(world["index"]),
        "--items_path", str(world["items"]),
        "--output_dir", str(out),
        "--embedding_max_steps", "3",
        "--max_steps", "2",
        "--save_steps", "2",
        "--logging_steps", "1",
        "--per_device_train_batch_size", "4",
        *extra,
    ]  # fmt: skip


def test_grad_hook_keeps_old_rows_and_other_weights_bit_identical(world):
    from onereason.modeling import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(world["base"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new_rows = [5, 7]
    train_only_rows(model, new_rows)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [EMBED]
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.0
    )
    for _ in range(3):
        ids = torch.randint(0, 50, (2, 8))
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    old = torch.ones(after[EMBED].shape[0], dtype=torch.bool)
    old[new_rows] = False
    assert torch.equal(after[EMBED][old], before[EMBED][old])
    assert not torch.equal(after[EMBED][new_rows], before[EMBED][new_rows])
    tied = {EMBED, "lm_head.weight"}  # the tiny model ties them: one matrix, two names
    assert all(torch.equal(after[k], before[k]) for k in before if k not in tied)


def test_embeddings_phase_changes_only_the_new_rows(world, tmp_path):
    out = tmp_path / "align"
    train_main(align_argv(world, out, "--phases", "embeddings"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    history = json.loads((out / HISTORY_FILE).read_text())
    new_ids = history[-1]["new_token_ids"]
    assert new_ids and tokenizer.convert_ids_to_tokens(new_ids[0]).startswith("<s_")
    before, after = (
        load_file(str(world["base"] / "model.safetensors")),
        load_file(str(out / "model.safetensors")),
    )
    rows = before[EMBED].shape[0]
    assert after[EMBED].shape[0] >= rows
    old = torch.ones(rows, dtype=torch.bool)
    old[[i for i in new_ids if i < rows]] = False
    assert torch.equal(after[EMBED][:rows][old], before[EMBED][old]), "old rows must be bit-identical"
    assert not torch.equal(after[EMBED][new_ids], _initial_rows(world, new_ids)), "new rows must move"
    assert all(torch.equal(after[k], before[k]) for k in before if k != EMBED)


def _initial_rows(world, new_ids):
    """The new rows right after vocabulary expansion (before any training)."""
    from onereason.item_index import ItemIndex
    from onereason.modeling import load_model_and_tokenizer
    from onereason.vocab import add_itemic_tokens

    model, tokenizer = load_model_and_tokenizer(world["base"])
    ids = add_itemic_tokens(
        model, tokenizer, ItemIndex.load(world["index"]), read_item_texts(str(world["items"]))
    )
    assert list(ids) == new_ids
    return model.get_input_embeddings().weight.detach()[new_ids]


def test_both_phases_then_a_restart_skips_the_finished_phase(world, tmp_path):
    out = tmp_path / "align"
    train_main(align_argv(world, out))
    phase1 = load_file(str(out / "embeddings" / "model.safetensors"))
    final = load_file(str(out / "model.safetensors"))
    moved = [k for k in phase1 if not torch.equal(phase1[k], final[k])]
    assert len(moved) > len(phase1) // 2, "the model phase trains the whole model"
    history = json.loads((out / HISTORY_FILE).read_text())
    assert [(r["stage"], r["phase"]) for r in history] == [("align", "embeddings"), ("align", "model")]
    assert (out / "item_index.json").is_file()

    # Restart with more steps: phase 1 is not redone (its folder is untouched), phase 2 resumes.
    stamp = (out / "embeddings" / "model.safetensors").stat().st_mtime_ns
    train_main(align_argv(world, out, "--max_steps", "4"))
    assert (out / "embeddings" / "model.safetensors").stat().st_mtime_ns == stamp
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_lora_model_phase_trains_adapters_and_the_new_rows(world, tmp_path):
    out = tmp_path / "align-lora"
    train_main(align_argv(world, out, "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8"))
    assert (out / "adapter" / "adapter_config.json").is_file()
    new_ids = json.loads((out / HISTORY_FILE).read_text())[-1]["new_token_ids"]
    phase1 = load_file(str(out / "embeddings" / "model.safetensors"))
    final = load_file(str(out / "model.safetensors"))
    assert set(final) == set(phase1)
    rows = phase1[EMBED].shape[0]
    old = torch.ones(rows, dtype=torch.bool)
    old[new_ids] = False
    assert torch.equal(final[EMBED][old], phase1[EMBED][old]), "LoRA leaves the old rows alone"
    assert not torch.equal(final[EMBED][new_ids], phase1[EMBED][new_ids]), "the new rows keep learning"
    assert any("proj" in k and not torch.equal(final[k], phase1[k]) for k in final)
