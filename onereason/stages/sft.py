"""Stage `sft`: supervised fine-tuning on the task mixture with TRL's `SFTTrainer`.

The task dataset is TRL's conversational prompt–completion format, so `SFTTrainer`
already computes the loss on the completion only (the assistant's think block and SIDs),
packs rows when `packing: true`, and wraps the model in LoRA when `use_peft: true`. This
module only chooses the rows, loads the policy with the item index beside it, adds a
completions table for wandb, resumes a killed run and saves a complete model folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import datasets
from transformers import GenerationConfig
from trl import ModelConfig, SFTConfig, SFTTrainer

from onereason.stages.common import (
    DataArguments,
    check_itemic_tokens,
    finish_run,
    load_policy,
    load_task_dataset,
    resolve_item_index,
    resume_checkpoint,
)

logger = logging.getLogger(__name__)

# The two columns TRL trains on; the metadata columns (task, target_items, …) serve
# rewards and evaluation and are dropped before the trainer sees the rows.
TRAINING_COLUMNS = ["prompt", "completion"]


@dataclass
class SFTArguments:
    """Our SFT fields that TRL's `SFTConfig` does not have."""

    completions_table_prompts: int = field(
        default=8,
        metadata={
            "help": "With report_to: wandb and an eval split, log a table of this many validation prompts and the "
            "model's completions every eval_steps (0 turns it off)."
        },
    )
    completions_max_new_tokens: int = field(
        default=128, metadata={"help": "Length limit of the completions in that table."}
    )


@dataclass
class OneReasonSFTConfig(SFTConfig):
    """TRL's `SFTConfig`; every field is TRL's, documented in TRL."""


CONFIG_CLASSES = (ModelConfig, DataArguments, SFTArguments, OneReasonSFTConfig)


def training_rows(data: datasets.Dataset) -> datasets.Dataset:
    missing = [c for c in TRAINING_COLUMNS if c not in data.column_names]
    if missing:
        raise ValueError(f"the task dataset lacks column(s) {missing}; it has {data.column_names}")
    return data.select_columns(TRAINING_COLUMNS)


def load_splits(data_args: DataArguments, training_args: SFTConfig):
    """Train rows, and validation rows when the run evaluates."""
    train = training_rows(load_task_dataset(data_args, "train", seed=training_args.seed))
    evaluate = training_args.eval_strategy != "no"
    valid = (
        training_rows(load_task_dataset(data_args, "validation", seed=training_args.seed))
        if evaluate
        else None
    )
    return train, valid


def add_completions_table(trainer, sft_args: SFTArguments, tokenizer) -> None:
    """TRL's `LogCompletionsCallback`, when there is somewhere and something to log."""
    report_to = trainer.args.report_to or []
    if "wandb" not in report_to or trainer.eval_dataset is None or sft_args.completions_table_prompts <= 0:
        return
    from trl.trainer.callbacks import LogCompletionsCallback

    callback = LogCompletionsCallback(
        trainer,
        generation_config=GenerationConfig(
            max_new_tokens=sft_args.completions_max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        num_prompts=min(sft_args.completions_table_prompts, len(trainer.eval_dataset)),
    )
    trainer.add_callback(callback)


def run(
    model_args: ModelConfig,
    data_args: DataArguments,
    sft_args: SFTArguments,
    training_args: OneReasonSFTConfig,
):
    train, valid = load_splits(data_args, training_args)
    model, tokenizer = load_policy(model_args, training_args)
    index = resolve_item_index(data_args, model_args.model_name_or_path)
    check_itemic_tokens(tokenizer, index)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=valid,
        processing_class=tokenizer,
    )
    add_completions_table(trainer, sft_args, tokenizer)
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    if valid is not None:
        trainer.evaluate()
    record = {
        "stage": "sft",
        "model": model_args.model_name_or_path,
        "dataset": data_args.dataset_path,
        "tasks": data_args.tasks,
        "modes": data_args.modes,
        "train_rows": len(train),
        "use_peft": model_args.use_peft,
        "learning_rate": training_args.learning_rate,
        "epochs": training_args.num_train_epochs,
        "max_steps": training_args.max_steps,
    }
    finish_run(trainer, tokenizer, index, training_args.output_dir, record=record)
    return trainer
