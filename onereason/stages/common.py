"""What every training stage shares: data arguments, the task dataset, the policy, the end of a run.

A stage module (`align`, `sft`, `grpo`, …) reads like this:

    data = load_task_dataset(data_args, "train")
    model, tokenizer = load_policy(model_args, training_args)
    index = resolve_item_index(data_args, model_args.model_name_or_path)
    trainer = SomeTRLTrainer(model=model, args=training_args, ...)
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    finish_run(trainer, tokenizer, index, training_args.output_dir, record={...})

so the rules that must hold for every stage live here once: which rows a run sees, how a
model is loaded (full or LoRA), where the item index comes from, how a killed run resumes,
and what a finished output folder holds (model, tokenizer, `item_index.json`, history).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets

from onereason.io import atomic_write_json, read_json
from onereason.item_index import ITEM_INDEX_FILE
from onereason.tasks import KNOWN_TASKS, MODES, PERCEPTION_TASKS, RECOMMENDATION_TASKS  # noqa: F401
from onereason.vocab import check_itemic_tokens  # noqa: F401  (stages import it from here)

if TYPE_CHECKING:  # imported lazily: item_index / peft are only needed by some callers
    import trl

    from onereason.item_index import ItemIndex

logger = logging.getLogger(__name__)

# One line per stage that produced this model, oldest first; `onereason push` turns it
# into the model card's "Training stages" section.
HISTORY_FILE = "onereason_history.json"

KNOWN_MODES = MODES  # task names and modes: onereason.tasks


@dataclass
class DataArguments:
    """Where a stage's data and item index come from, and which rows it keeps."""

    dataset_path: str = field(
        metadata={"help": "A `onereason build-tasks` output folder (a DatasetDict saved with save_to_disk)."},
    )
    item_index: str | None = field(
        default=None,
        metadata={"help": "Path to item_index.json. Default: <model_name_or_path>/item_index.json."},
    )
    tasks: list[str] | None = field(
        default=None,
        metadata={"help": f"Keep only rows of these tasks (any of {', '.join(KNOWN_TASKS)}). Default: all."},
    )
    modes: list[str] | None = field(
        default=None,
        metadata={"help": "Keep only rows of these modes (think, no_think). Default: both."},
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Use at most this many training rows (a seeded random subset). Default: all."},
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Use at most this many evaluation rows (a seeded random subset). Default: all."},
    )

    def __post_init__(self):
        # Checked here, at parse time, so a typo fails before any model loads.
        for name, values, known in (("tasks", self.tasks, KNOWN_TASKS), ("modes", self.modes, KNOWN_MODES)):
            unknown = sorted(set(values or ()) - set(known))
            if unknown:
                raise ValueError(f"{name}: unknown value(s) {unknown}; choose from {list(known)}")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value}")


def load_task_dataset(args: DataArguments, split: str, seed: int = 0) -> datasets.Dataset:
    """One split of the task dataset, filtered to `args.tasks` / `args.modes`, capped in size.

    `split` is `train`, `validation` or `test`. A cap takes a seeded random subset rather
    than the first rows, because a task mixture may be stored grouped by task.
    Raises FileNotFoundError / KeyError / ValueError naming the folder, split or filter.
    """
    path = Path(args.dataset_path)
    if not path.exists():
        raise FileNotFoundError(
            f"dataset_path {str(path)!r} does not exist; build it with `onereason build-tasks` "
            "(its output folder is a DatasetDict saved with save_to_disk)"
        )
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise KeyError(f"dataset_path {str(path)!r} has no split {split!r}; it has {sorted(loaded)}")
        data = loaded[split]
    else:
        raise ValueError(
            f"dataset_path {str(path)!r} holds a single Dataset; expected a DatasetDict with "
            f"train/validation/test splits (the `onereason build-tasks` output)"
        )
    for column, wanted in (("task", args.tasks), ("mode", args.modes)):
        if not wanted:
            continue
        if column not in data.column_names:
            raise ValueError(f"{path}[{split}] has no {column!r} column, so `{column}s` cannot filter it")
        keep = set(wanted)
        missing = sorted(keep - set(data.unique(column)))
        # Said, not refused: a default task list may name more than one mixture builds.
        if split == "train" and missing:
            logger.warning(
                "%s[%s] has no rows with %s %s (`%ss` asks for them); a build from another mixture?",
                path, split, column, missing, column,
            )  # fmt: skip
        before = len(data)
        data = data.filter(
            lambda value, keep=keep: value in keep, input_columns=column, desc=f"keep {column}s"
        )
        logger.info(
            "%s[%s]: kept %d of %d rows with %s in %s", path, split, len(data), before, column, sorted(keep)
        )
    if len(data) == 0:
        raise ValueError(
            f"{path}[{split}] has no rows left after filtering tasks={args.tasks} modes={args.modes}"
        )
    cap = args.max_train_samples if split == "train" else args.max_eval_samples
    if cap is not None and cap < len(data):
        data = data.shuffle(seed=seed).select(range(cap))
    return data


def lora_config(model_args: trl.ModelConfig):
    """TRL's LoRA config from `model_args` (None when `use_peft` is false)."""
    from trl import get_peft_config

    return get_peft_config(model_args)


def load_policy(model_args: trl.ModelConfig, training_args: Any, peft_config: Any = None):
    """Load the model being trained and its tokenizer; wrap it in LoRA when `use_peft`.

    `peft_config` overrides the LoRA config built from `model_args`. Returns `(model, tokenizer)`.
    """
    from transformers import set_seed

    from onereason.modeling import load_model_and_tokenizer

    if getattr(model_args, "load_in_8bit", False) or getattr(model_args, "load_in_4bit", False):
        raise ValueError(
            "load_in_8bit / load_in_4bit: quantized training is not supported by onereason stages"
        )
    if not model_args.model_name_or_path:
        raise ValueError(
            "model_name_or_path is required (a Hub id such as Qwen/Qwen3-1.7B or a local folder)"
        )
    # Seed before any random initialisation (new embedding rows, LoRA matrices).
    set_seed(getattr(training_args, "seed", 42))
    model, tokenizer = load_model_and_tokenizer(
        model_args.model_name_or_path,
        dtype=model_args.dtype or "auto",
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
    )
    # Training with a KV cache wastes memory and conflicts with activation checkpointing.
    model.config.use_cache = False
    if model_args.use_peft:
        model = wrap_lora(model, model_args, training_args, peft_config)
    return model, tokenizer


def wrap_lora(model, model_args: trl.ModelConfig, training_args: Any, peft_config: Any = None):
    """`model` wrapped in LoRA adapters from `peft_config` (default: built from `model_args`)."""
    from peft import get_peft_model

    config = peft_config if peft_config is not None else lora_config(model_args)
    if getattr(training_args, "gradient_checkpointing", False):
        # LoRA leaves the embedding frozen; checkpointed blocks then need inputs that require grad.
        model.enable_input_require_grads()
    model = get_peft_model(model, config)
    model.print_trainable_parameters()
    return model


def resolve_item_index(args: DataArguments, model_name_or_path: str) -> ItemIndex:
    """The item index for this run: `args.item_index`, else `item_index.json` beside the model."""
    from onereason.item_index import ItemIndex

    return ItemIndex.resolve(model_name_or_path, args.item_index)


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-<step>` folder in `output_dir`, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    if not Path(output_dir).is_dir():
        return None
    return get_last_checkpoint(str(output_dir))


def resume_checkpoint(training_args: Any) -> str | bool | None:
    """What to pass to `trainer.train(resume_from_checkpoint=...)`.

    An explicit `resume_from_checkpoint` path wins; otherwise a run whose `output_dir`
    already holds checkpoints continues from the newest one, so a killed run restarted
    with the same command loses no finished steps. Set `resume_from_checkpoint: "false"`
    to start over.
    """
    explicit = training_args.resume_from_checkpoint
    if isinstance(explicit, str) and explicit.lower() in {"false", "no", "none"}:
        return None
    if isinstance(explicit, str) and explicit.lower() not in {"true", "yes", "last"}:
        if not Path(explicit).is_dir():
            raise FileNotFoundError(f"resume_from_checkpoint {explicit!r} is not a checkpoint folder")
        return explicit
    found = last_checkpoint(training_args.output_dir)
    if found:
        logger.info("resuming from %s", found)
    elif explicit is not None:
        raise FileNotFoundError(
            f"resume_from_checkpoint asked for, but {training_args.output_dir} has no checkpoint"
        )
    return found


def read_history(model_name_or_path: str | os.PathLike) -> list[dict]:
    """The stages that produced a local model folder (empty for a base model)."""
    path = Path(model_name_or_path) / HISTORY_FILE
    return list(read_json(path)) if path.is_file() else []


def finish_run(
    trainer, tokenizer, index: ItemIndex | None, output_dir: str | os.PathLike, record: dict | None = None
):
    """Save what the next stage (and `onereason push`) needs into `output_dir`.

    Model weights (gathered across processes by the trainer: DDP, ZeRO-2/3), tokenizer,
    generation config, `item_index.json`, and `onereason_history.json` — the history of the
    input model plus `record` (stage name, data, key hyper-parameters). A LoRA run is
    merged into full weights here, so every stage reads and writes a plain model folder;
    the adapter itself is kept in `<output_dir>/adapter`. Pushes to the Hub when
    `push_to_hub` is set in the training arguments.
    """
    output_dir = Path(output_dir)
    model = trainer.accelerator.unwrap_model(trainer.model)
    is_peft = hasattr(model, "merge_and_unload")
    trainer.save_model(str(output_dir / "adapter") if is_peft else str(output_dir))
    if trainer.is_world_process_zero():
        if is_peft:
            merged = model.merge_and_unload()
            merged.save_pretrained(str(output_dir))
        tokenizer.save_pretrained(str(output_dir))
        if index is not None:
            index.save(output_dir / ITEM_INDEX_FILE)
        history = read_history(record["model"]) if record and record.get("model") else []
        if record is not None:
            history.append({**record, "global_step": trainer.state.global_step})
        atomic_write_json(output_dir / HISTORY_FILE, history)
        logger.info("saved model, tokenizer%s and history to %s", ", item index" if index else "", output_dir)
    trainer.accelerator.wait_for_everyone()
    if getattr(trainer.args, "push_to_hub", False):
        trainer.push_to_hub()
