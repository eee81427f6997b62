"""Stage `sft` on a tiny model: trains, saves a complete folder, resumes, runs with LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import build_world

from onereason.stages.common import HISTORY_FILE, DataArguments, load_task_dataset
from onereason.train import main as train_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_tiny_model):
    return build_world(tmp_path_factory.mktemp("sft-world"), make_tiny_model)


def sft_argv(world, out: Path, *extra: str) -> list[str]:
    """The tiny recipe as written, pointed at the test's model, data and output folder."""
    return [
        "--config", str(REPO / "recipes/tiny/sft.yaml"),
        "--model_name_or_path", str(world["itemic"]),
        "--dataset_path", str(world["tasks"]),
        "--item_index", str(world["index"]),
        "--output_dir", str(out),
        "--max_steps", "4",
        "--save_steps", "2",
        "--logging_steps", "1",
        "--per_device_train_batch_size", "4",
        "--dataloader_num_workers", "0",
        *extra,
    ]  # fmt: skip


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def changed(before: dict, after: dict) -> list[str]:
    return [k for k in before if k in after and not torch.equal(before[k], after[k])]


def test_dataset_filters_and_caps(world, caplog):
    args = DataArguments(
        dataset_path=str(world["tasks"]), tasks=["rec_sid"], modes=["think"], max_train_samples=5
    )
    data = load_task_dataset(args, "train")
    assert len(data) == 5
    assert set(data["task"]) == {"rec_sid"} and set(data["mode"]) == {"think"}
    with pytest.raises(KeyError, match="no split 'dev'"):
        load_task_dataset(args, "dev")
    stale = DataArguments(dataset_path=str(world["tasks"]), tasks=["rec_sid", "rec_multi"])
    with caplog.at_level("WARNING"):
        assert set(load_task_dataset(stale, "train")["task"]) == {"rec_sid"}
    assert "[train] has no rows with task ['rec_multi']" in caplog.text  # said, not silently skipped
    with pytest.raises(ValueError, match="no rows left"):
        load_task_dataset(DataArguments(dataset_path=str(world["tasks"]), tasks=["rec_multi"]), "train")


def test_sft_trains_and_writes_a_complete_model_folder(world, tmp_path):
    out = tmp_path / "sft"
    train_main(sft_argv(world, out))
    before, after = weights(world["itemic"]), weights(out)
    assert len(changed(before, after)) >= len(before) // 2, "most tensors should move in 4 steps at lr 1e-3"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from onereason.item_index import ItemIndex

    index = ItemIndex.load(out / "item_index.json")
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert all(t in tokenizer.get_vocab() for t in index.itemic_tokens())
    AutoModelForCausalLM.from_pretrained(out)
    history = json.loads((out / HISTORY_FILE).read_text())
    assert history[-1]["stage"] == "sft" and history[-1]["global_step"] == 4
    assert history[-1]["model"] == str(world["itemic"])


def test_sft_loss_is_on_the_completion_only(world, tmp_path):
    """TRL's prompt–completion path: the prompt tokens carry no loss (completion_mask)."""
    from trl import SFTConfig, SFTTrainer

    from onereason.modeling import load_model_and_tokenizer
    from onereason.stages.sft import training_rows

    model, tokenizer = load_model_and_tokenizer(world["itemic"])
    rows = training_rows(load_task_dataset(DataArguments(dataset_path=str(world["tasks"])), "train"))
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, max_length=256, report_to="none")
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=rows.select(range(2)), processing_class=tokenizer
    )
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    trained = tokenizer.decode(ids[labels != -100])
    assert "/no_think" not in trained and "Describe the item" not in trained
    assert trained.startswith("<think>") and trained.rstrip().endswith("<|im_end|>")


def test_killed_run_resumes_from_its_last_checkpoint(world, tmp_path):
    out = tmp_path / "sft"
    train_main(sft_argv(world, out, "--max_steps", "2"))  # "killed" after its checkpoint at step 2
    state_path = out / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["log_history"][0]["marker"] = "from-checkpoint-2"  # only a resumed run carries this forward
    state_path.write_text(json.dumps(state))
    (out / HISTORY_FILE).unlink()

    train_main(sft_argv(world, out, "--max_steps", "4"))
    final = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert final["global_step"] == 4
    assert final["log_history"][0].get("marker") == "from-checkpoint-2"
    assert [e["step"] for e in final["log_history"] if "loss" in e] == [1, 2, 3, 4]


def test_sft_with_lora_saves_merged_weights_and_the_adapter(world, tmp_path):
    out = tmp_path / "sft-lora"
    train_main(
        sft_argv(world, out, "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--max_steps", "2")
    )
    assert (out / "adapter" / "adapter_config.json").is_file()
    before, after = weights(world["itemic"]), weights(out)
    assert set(after) == set(before), "the merged folder is a plain model, no LoRA tensors"
    moved = changed(before, after)
    assert moved and all("proj" in k for k in moved), moved
    history = json.loads((out / HISTORY_FILE).read_text())
    assert history[-1]["use_peft"] is True


def test_padding_free_batches_give_the_padded_logits(world):
    """The recipes train padding-free: rows are concatenated and only `position_ids` separate
    them, so SDPA attention must not leak across rows. transformers builds that block mask only
    without a KV cache, which training turns off (`use_cache=False`)."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(world["itemic"]).eval()
    rows = [list(range(5, 40)), list(range(50, 62)), list(range(100, 180))]
    examples = [{"input_ids": r, "completion_mask": [1] * len(r)} for r in rows]
    flat = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    padded = DataCollatorForLanguageModeling(pad_token_id=0)(examples)
    assert "attention_mask" not in flat and flat["input_ids"].shape[0] == 1
    with torch.no_grad():
        flat_logits = model(
            input_ids=flat["input_ids"], position_ids=flat["position_ids"], use_cache=False
        ).logits[0]
        padded_logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    start = 0
    for i, row in enumerate(rows):
        torch.testing.assert_close(flat_logits[start : start + len(row)], padded_logits[i, : len(row)])
        start += len(row)
