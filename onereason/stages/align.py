"""Stage `align` (R0, itemic alignment): teach a text LLM the itemic tokens.

Three steps in one run, as in OpenOneRec's itemic–text alignment:

1. **Vocabulary expansion.** `onereason.vocab.add_itemic_tokens` adds the item index's
   itemic tokens to the tokenizer and initialises their embedding rows from item text.
2. **Phase `embeddings`.** Only the new rows learn: every parameter is frozen except the
   input embedding (and an untied `lm_head`), and a gradient hook zeroes the gradient of
   every old row, so the pretrained vocabulary stays bit-identical while the new rows move
   toward what the model's layers expect. Weight decay is off in this phase (it would
   shrink old rows even with a zero gradient).
3. **Phase `model`.** Full or LoRA training (`use_peft`) on the perception tasks
   (caption, text2sid, sid2term, term2sid, item_qa, association) mixed with plain `text`
   rows, which keep the language ability. With LoRA the new rows keep training (the
   old rows stay frozen) through the same row mask as phase `embeddings`.

The phase-1 model is saved to `<output_dir>/embeddings/`; a restarted run finds it there
and goes straight to phase 2 (each phase also resumes from its own checkpoints).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.state import AcceleratorState
from trl import ModelConfig, SFTConfig, SFTTrainer

from onereason.modeling import load_model_and_tokenizer
from onereason.stages.common import (
    HISTORY_FILE,
    PERCEPTION_TASKS,
    DataArguments,
    finish_run,
    load_policy,
    read_history,
    resolve_item_index,
    resume_checkpoint,
    wrap_lora,
)
from onereason.stages.sft import load_splits

logger = logging.getLogger(__name__)

PHASES = ("embeddings", "model")
ALIGN_TASKS = [*PERCEPTION_TASKS, "text"]


@dataclass
class AlignArguments:
    """Our alignment fields; the phase-2 optimisation is TRL's `SFTConfig` (learning_rate, max_steps, …)."""

    phases: list[str] = field(
        default_factory=lambda: list(PHASES),
        metadata={
            "help": "Which phases to run, in order: `embeddings` (new rows only) and/or `model` (full or LoRA)."
        },
    )
    items_path: str | None = field(
        default=None,
        metadata={
            "help": "items.parquet from `onereason build-data` (item_id, title, description): the text that "
            "initialises each new itemic token's row. Default: rows initialised without item text."
        },
    )
    embedding_max_steps: int = field(
        default=200, metadata={"help": "Optimizer steps of the `embeddings` phase."}
    )
    embedding_learning_rate: float = field(
        default=1e-3,
        metadata={"help": "Learning rate of the `embeddings` phase (new rows start far from trained ones)."},
    )

    def __post_init__(self):
        unknown = [p for p in self.phases if p not in PHASES]
        if unknown or not self.phases:
            raise ValueError(f"phases: unknown or empty {self.phases!r}; choose from {list(PHASES)}")
        if self.embedding_max_steps <= 0:
            raise ValueError(f"embedding_max_steps must be positive, got {self.embedding_max_steps}")
        if self.embedding_learning_rate <= 0:
            raise ValueError(f"embedding_learning_rate must be positive, got {self.embedding_learning_rate}")


@dataclass
class AlignConfig(SFTConfig):
    """TRL's `SFTConfig` for the `model` phase; every field is TRL's, documented in TRL."""


CONFIG_CLASSES = (ModelConfig, DataArguments, AlignArguments, AlignConfig)


def read_item_texts(items_path: str | None) -> dict[str, str] | None:
    """item_id -> "title. description" from a build-data items.parquet (None when not given)."""
    if not items_path:
        return None
    from onereason.tables import read_items

    rows = read_items(items_path).to_pylist()
    return {
        str(r["item_id"]): ". ".join(t for t in (r.get("title"), r.get("description")) if t) for r in rows
    }


def embedding_weights(model) -> list[torch.nn.Parameter]:
    """The input embedding, and the output embedding when it is a separate (untied) matrix."""
    weights = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not weights[0]:
        weights.append(output.weight)
    return weights


def train_rows(model, row_ids: list[int]) -> list:
    """Make the embedding matrices trainable but only in rows `row_ids`; returns the hook handles.

    The matrices stay trainable as whole parameters (optimizers, DDP and DeepSpeed see
    ordinary parameters), and a gradient hook multiplies every other row's gradient by
    zero. With Adam and no weight decay a row whose gradient is always zero never moves.
    """
    handles = []
    for weight in embedding_weights(model):
        keep = torch.zeros(weight.shape[0], 1, dtype=torch.bool)
        keep[torch.as_tensor(row_ids, dtype=torch.long)] = True
        weight.requires_grad_(True)

        def mask_old_rows(grad, keep=keep):
            return grad * keep.to(device=grad.device, dtype=grad.dtype)

        handles.append(weight.register_hook(mask_old_rows))
    return handles


def train_only_rows(model, row_ids: list[int]) -> list:
    """Freeze all of `model` except the embedding rows `row_ids` (phase `embeddings`)."""
    model.requires_grad_(False)
    return train_rows(model, row_ids)


def phase_arguments(training_args: SFTConfig, align_args: AlignArguments, output_dir: Path) -> SFTConfig:
    """The `embeddings` phase's arguments: the run's own, with its steps, rate and no weight decay."""
    return dataclasses.replace(
        training_args,
        output_dir=str(output_dir),
        max_steps=align_args.embedding_max_steps,
        learning_rate=align_args.embedding_learning_rate,
        weight_decay=0.0,
        push_to_hub=False,
        eval_strategy="no",
        load_best_model_at_end=False,
    )


def expand_vocabulary(model_args: ModelConfig, training_args, index, items_path: str | None):
    """Load the base model (no LoRA yet) and add the itemic tokens; returns (model, tokenizer, new ids)."""
    from onereason.vocab import add_itemic_tokens

    model, tokenizer = load_policy(dataclasses.replace(model_args, use_peft=False), training_args)
    new_ids = list(add_itemic_tokens(model, tokenizer, index, read_item_texts(items_path)))
    logger.info("added %d itemic tokens (vocabulary now %d)", len(new_ids), len(tokenizer))
    return model, tokenizer, new_ids


def finished_phase(folder: Path) -> dict | None:
    """The `embeddings` record of a folder the phase completed in, else None."""
    if not (folder / HISTORY_FILE).is_file():
        return None
    records = [
        r for r in read_history(folder) if r.get("stage") == "align" and r.get("phase") == "embeddings"
    ]
    return records[-1] if records else None


def train_embeddings_phase(model_args, align_args, training_args, index, train, out: Path, base_record: dict):
    """Expand the vocabulary, train only the new rows, save the result to `out`; returns the trainer."""
    model, tokenizer, new_ids = expand_vocabulary(model_args, training_args, index, align_args.items_path)
    handles = train_only_rows(model, new_ids)
    args = phase_arguments(training_args, align_args, out)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=resume_checkpoint(args))
    for handle in handles:
        handle.remove()
    record = {
        **base_record,
        "phase": "embeddings",
        "model": model_args.model_name_or_path,
        "new_token_ids": new_ids,
        "learning_rate": args.learning_rate,
        "max_steps": args.max_steps,
    }
    finish_run(trainer, tokenizer, index, out, record=record)
    return trainer


def run(
    model_args: ModelConfig, data_args: DataArguments, align_args: AlignArguments, training_args: AlignConfig
):
    if data_args.tasks is None:
        data_args = dataclasses.replace(data_args, tasks=list(ALIGN_TASKS))
    train, valid = load_splits(data_args, training_args)
    index = resolve_item_index(data_args, model_args.model_name_or_path)
    output_dir = Path(training_args.output_dir)
    run_model_phase = "model" in align_args.phases
    embeddings_dir = output_dir / "embeddings" if run_model_phase else output_dir
    base_record = {
        "stage": "align",
        "dataset": data_args.dataset_path,
        "tasks": data_args.tasks,
        "train_rows": len(train),
    }

    if run_model_phase and "embeddings" in align_args.phases and finished_phase(embeddings_dir) is None:
        trainer = train_embeddings_phase(
            model_args, align_args, training_args, index, train, embeddings_dir, base_record
        )
        # Phase 2 starts from the saved folder, as a restarted run would: under ZeRO-3 the
        # in-memory weights are shards. Accelerate allows one DeepSpeed Accelerator per
        # process state, so that state is cleared (the process group is kept).
        del trainer
        gc.collect()
        AcceleratorState._reset_state()

    done = finished_phase(embeddings_dir) if run_model_phase else None
    if done is not None:
        logger.info("embeddings phase finished in %s; continuing with the model phase", embeddings_dir)
        model, tokenizer = load_model_and_tokenizer(embeddings_dir, dtype=model_args.dtype or "auto")
        model.config.use_cache = False
        new_ids, source = done["new_token_ids"], str(embeddings_dir)
    elif run_model_phase:  # phases: [model] — expand the vocabulary and train the whole model at once
        model, tokenizer, new_ids = expand_vocabulary(model_args, training_args, index, align_args.items_path)
        source = model_args.model_name_or_path
    else:  # phases: [embeddings] — the phase-1 model is this run's output
        return train_embeddings_phase(
            model_args, align_args, training_args, index, train, output_dir, base_record
        )

    model.requires_grad_(True)
    if model_args.use_peft:
        # LoRA adapters on the layers, plus the new rows through the same row-masked embedding as
        # phase 1. (peft's `trainable_token_indices` would be lighter, but TRL's fused LM-head loss
        # reads `lm_head.weight` directly and fails on peft's TrainableTokensWrapper.)
        if training_args.weight_decay:
            raise ValueError(
                "weight_decay must be 0 for a LoRA alignment: it would shrink the frozen vocabulary rows"
            )
        model = wrap_lora(model, model_args, training_args)
        train_rows(model.get_base_model(), new_ids)
    trainer = SFTTrainer(
        model=model, args=training_args, train_dataset=train, eval_dataset=valid, processing_class=tokenizer
    )
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    if valid is not None:
        trainer.evaluate()
    record = {
        **base_record,
        "phase": "model",
        "model": source,
        "new_token_ids": new_ids,
        "use_peft": model_args.use_peft,
        "learning_rate": training_args.learning_rate,
        "epochs": training_args.num_train_epochs,
        "max_steps": training_args.max_steps,
    }
    finish_run(trainer, tokenizer, index, output_dir, record=record)
    return trainer
