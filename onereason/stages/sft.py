"""Stage `sft`: supervised fine-tuning on the task mixture with TRL's `SFTTrainer`.

The task dataset is TRL's conversational prompt–completion format, so `SFTTrainer`
already computes the loss on the completion only (the assistant's think block and SIDs),
packs rows when `packing: true`, and wraps the model in LoRA when `use_peft: true`. This
module only chooses the rows, loads the policy with the item index beside it, adds a
completions table for wandb, resumes a killed run and saves a complete model folder.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import datasets
import torch
from transformers import EarlyStoppingCallback, GenerationConfig
from transformers.loss.loss_utils import ForCausalLMLoss
from trl import ModelConfig, SFTConfig, SFTTrainer

from onereason.sequence_loss import (
    IGNORE_INDEX,
    has_sequence_rows,
    label_tokens,
    tokenize_with_sequence_loss,
)
from onereason.stages.common import (
    DataArguments,
    check_itemic_tokens,
    finish_run,
    load_policy,
    load_task_dataset,
    resolve_item_index,
    resume_checkpoint,
)
from onereason.stages.validation import RankingCallback, ranking_rows, ranking_subset

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
    ranking_eval_users: int = field(
        default=0,
        metadata={
            "help": "At every evaluation, rank this many validation users (non-thinking rec_sid rows) by "
            "trie-constrained beam search and log eval_hit@10 / eval_ndcg@10 (0 turns it off). Pair with "
            "metric_for_best_model: eval_ndcg@10 and load_best_model_at_end: true to keep the best checkpoint."
        },
    )
    ranking_eval_beams: int = field(default=20, metadata={"help": "Beams of that ranking."})
    early_stopping_patience: int = field(
        default=0,
        metadata={
            "help": "Stop after this many evaluations without a better metric_for_best_model (0: never)."
        },
    )
    batches_by_length: bool = field(
        default=False,
        metadata={
            "help": "Batch rows of similar length together (little padding) and shuffle the batches every epoch. "
            "Unlike train_sampling_strategy: group_by_length, the batches come in random order, not longest first "
            "within each mega-batch."
        },
    )
    fused_lm_head: bool = field(
        default=True,
        metadata={
            "help": "TRL's chunked LM head: per-token log-probs without the full logits (the memory saver for large "
            "vocabularies on GPUs). false: the model's own head and transformers' loss, with logits only at the "
            "positions that carry a label; about 2.5x faster for a from-scratch model's small vocabulary on a CPU "
            "(Scientific's rows, 2 cores). The entropy and token-accuracy logs are then absent."
        },
    )


CONFIG_CLASSES = (ModelConfig, DataArguments, SFTArguments, SFTConfig)


def training_rows(data: datasets.Dataset) -> datasets.Dataset:
    missing = [c for c in TRAINING_COLUMNS if c not in data.column_names]
    if missing:
        raise ValueError(f"the task dataset lacks column(s) {missing}; it has {data.column_names}")
    return data.select_columns(TRAINING_COLUMNS)


def load_splits(data_args: DataArguments, training_args: SFTConfig):
    """Train rows, and validation rows when the run evaluates (prompt and completion only)."""
    train = training_rows(load_task_dataset(data_args, "train", seed=training_args.seed))
    evaluate = training_args.eval_strategy != "no"
    valid = (
        training_rows(load_task_dataset(data_args, "validation", seed=training_args.seed))
        if evaluate
        else None
    )
    return train, valid


def sft_splits(data_args: DataArguments, sft_args: SFTArguments, training_args: SFTConfig):
    """Train rows, validation rows when the run evaluates, and the rows ranked at each evaluation.

    With `ranking_eval_users`, validation is those users' non-thinking `rec_sid` rows
    (the rows `onereason eval` ranks), whatever tasks the training rows are.
    """
    train = load_task_dataset(data_args, "train", seed=training_args.seed)
    if training_args.eval_strategy == "no":
        return train, None, []
    if sft_args.ranking_eval_users:
        valid_args = dataclasses.replace(data_args, tasks=["rec_sid"], modes=None, max_eval_samples=None)
        valid = load_task_dataset(valid_args, "validation", seed=training_args.seed)
        subset = ranking_subset(valid, sft_args.ranking_eval_users, seed=training_args.seed)
        return train, subset, ranking_rows(subset)
    return train, load_task_dataset(data_args, "validation", seed=training_args.seed), []


def prepare_rows(data: datasets.Dataset, tokenizer, index, training_args: SFTConfig) -> datasets.Dataset:
    """Rows for `SFTTrainer`: pre-tokenized with per-SID labels when the data has sequence rows."""
    if has_sequence_rows(data):
        return tokenize_with_sequence_loss(
            data, tokenizer, index, training_args.completion_only_loss is not False
        )
    return training_rows(data)


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


def epoch_tokens(data: datasets.Dataset) -> dict:
    """Tokens one epoch reads, and how many of them carry a loss (the trainer's tokenized rows)."""
    out = {"tokens_per_epoch": sum(len(ids) for ids in data["input_ids"])}
    if "labels" in data.column_names:
        out["loss_tokens_per_epoch"] = label_tokens(data)
    return out


class LengthBucketSampler(torch.utils.data.Sampler):
    """Row order where each run of `batch_size` rows has similar lengths and the runs are shuffled.

    Every epoch: shuffle the rows, sort each mega-batch of `64 * batch_size` rows by length,
    cut it into batches, then shuffle all the batches. Padded batches then waste little
    (on the quickstart, 2.4x fewer tokens than random batches), while no epoch walks from long
    rows to short ones (transformers' `LengthGroupedSampler` keeps that order, a curriculum
    nobody asked for).
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, mega_batches: int = 64):
        self.lengths, self.batch_size, self.seed, self.mega = lengths, batch_size, seed, mega_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        rng = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=rng).tolist()
        size = self.mega * self.batch_size
        batches = []
        for start in range(0, len(order), size):
            chunk = sorted(order[start : start + size], key=self.lengths.__getitem__)
            batches += [chunk[k : k + self.batch_size] for k in range(0, len(chunk), self.batch_size)]
        for b in torch.randperm(len(batches), generator=rng).tolist():
            yield from batches[b]


def next_token_labels(labels: torch.Tensor) -> torch.Tensor:
    """The label of the token each position predicts (`labels` shifted left; the last predicts nothing)."""
    return torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]


class OneReasonSFTTrainer(SFTTrainer):
    """TRL's `SFTTrainer`, with `LengthBucketSampler` when `batches_by_length` is on, and the
    model's own LM head, at the labelled positions only, when `fused_lm_head` is off.

    TRL's fused head computes its log-probs tile by tile; without a GPU kernel that loop costs
    more than the whole backbone of a small model (measured: 5.9k vs 11k tokens/s on 2 CPU cores).
    The model's own head over every position still spends ~40% of a small model's step on
    logits nobody reads: a Scientific pair row has 33 tokens and 5 labels. transformers'
    `logits_to_keep` takes a boolean mask, so the forward (through any DDP or PEFT wrapper)
    projects only the labelled positions, and transformers' own loss runs on those.
    """

    def __init__(self, *args, batches_by_length: bool = False, fused_lm_head: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches_by_length = batches_by_length
        self.fused_lm_head = fused_lm_head

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.fused_lm_head:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        targets = next_token_labels(inputs["labels"])
        keep = targets != IGNORE_INDEX
        features = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**features, use_cache=False, logits_to_keep=keep)
        logits = outputs.logits  # (labelled positions, vocabulary)
        loss = ForCausalLMLoss(logits, None, logits.shape[-1], num_items_in_batch, shift_labels=targets[keep])
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = (
                loss * self.accelerator.num_processes
            )  # as Trainer does under data parallelism: the count spans every process
        return (loss, outputs) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):
        data = train_dataset if train_dataset is not None else self.train_dataset
        if not self.batches_by_length or data is None or "input_ids" not in data.column_names:
            return super()._get_train_sampler(train_dataset)
        return LengthBucketSampler(
            [len(ids) for ids in data["input_ids"]],
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            seed=self.args.seed,
        )


def run(
    model_args: ModelConfig,
    data_args: DataArguments,
    sft_args: SFTArguments,
    training_args: SFTConfig,
):
    train, valid, ranked_rows = sft_splits(data_args, sft_args, training_args)
    model, tokenizer = load_policy(model_args, training_args)
    index = resolve_item_index(data_args, model_args.model_name_or_path)
    check_itemic_tokens(tokenizer, index)
    train = prepare_rows(train, tokenizer, index, training_args)
    if valid is not None:
        valid = prepare_rows(valid, tokenizer, index, training_args)
    trainer = OneReasonSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=valid,
        processing_class=tokenizer,
        batches_by_length=sft_args.batches_by_length,
        fused_lm_head=sft_args.fused_lm_head,
    )
    add_completions_table(trainer, sft_args, tokenizer)
    ranking = None
    if ranked_rows:
        ranking = RankingCallback(trainer, index, ranked_rows, sft_args.ranking_eval_beams)
        trainer.add_callback(ranking)
    if sft_args.early_stopping_patience:
        trainer.add_callback(EarlyStoppingCallback(sft_args.early_stopping_patience))
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    record = {
        "stage": "sft",
        "model": model_args.model_name_or_path,
        "dataset": data_args.dataset_path,
        "tasks": data_args.tasks,
        "modes": data_args.modes,
        "train_rows": len(train),
        **epoch_tokens(trainer.train_dataset),
        "validation_curve": ranking.history if ranking else [],
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_metric": trainer.state.best_metric,
        "use_peft": model_args.use_peft,
        "learning_rate": training_args.learning_rate,
        "epochs": training_args.num_train_epochs,
        "max_steps": training_args.max_steps,
    }
    finish_run(trainer, tokenizer, index, training_args.output_dir, record=record)
    return trainer
