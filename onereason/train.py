"""The one training entry point: the recipe's `stage:` picks the stage module.

    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml \\
        -m onereason.train --config recipes/qwen3-1.7b/sft.yaml --learning_rate 1e-5
    onereason train --config recipes/tiny/sft.yaml

`stage: align|sft|grpo|ppo|unify` names `onereason.stages.<stage>`; that module declares
`CONFIG_CLASSES` (its dataclasses, e.g. `(ModelConfig, DataArguments, AlignConfig)`) and
`run(*configs)`. The YAML plus `--key value` overrides are parsed into `StageArguments`
and those classes by TRL's parser, so an unknown key or a bad value stops the run here,
with the key's name, before any model loads.

Then, still before any model loads (`preflight`): the model folder, the task dataset, the
item index (no colliding SIDs, its itemic tokens in the tokenizer, the dataset's targets
known to it) and the output folder (never an input, never a user's folder without
`--overwrite`) are checked. During the run, datasets' transform caches (`cache-*.arrow`)
go to a temporary folder inside `output_dir` that is removed at exit, never beside the
task dataset; SIGINT / SIGTERM save a checkpoint at the end of the current step and exit
(130 / 143) — run the same command again to resume from it. A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from onereason.configs import flag_value, parse_config, read_yaml
from onereason.consistency import (
    SafetyArguments,
    check_dataset_dict,
    check_model_and_index,
    check_model_path,
    check_unknown,
    is_local_model,
    require_path,
)
from onereason.io import check_output_dir, make_output_dir

logger = logging.getLogger(__name__)

STAGES = ("align", "sft", "grpo", "ppo", "unify")


@dataclass
class StageArguments:
    stage: str = field(
        metadata={"help": f"Which training stage this recipe runs: one of {', '.join(STAGES)}."}
    )


def stage_module(stage: str):
    """Import `onereason.stages.<stage>`; a clear error for unknown or not-yet-installed stages."""
    if stage not in STAGES:
        raise SystemExit(f"error: stage: unknown stage {stage!r}; choose one of {list(STAGES)}")
    try:
        return importlib.import_module(f"onereason.stages.{stage}")
    except ModuleNotFoundError as err:
        if err.name == f"onereason.stages.{stage}":
            raise SystemExit(f"error: stage {stage!r} is not available in this installation") from err
        raise


def _stage_from_argv(argv: Sequence[str]) -> str:
    """`--stage X` on the command line wins over `stage:` in the YAML (as for every key)."""
    stage = flag_value(argv, "stage")
    if stage is not None:
        return stage
    config = flag_value(argv, "config")
    if config is None:
        raise SystemExit("error: pass --config <recipe>.yaml (its `stage:` key picks the training stage)")
    stage = read_yaml(config).get("stage")
    if stage is None:
        raise SystemExit(f"error: {config}: missing `stage:` (one of {list(STAGES)})")
    return str(stage)


def parse_stage(argv: Sequence[str] | None = None):
    """Parse a recipe + overrides into `(module, safety, configs)`; nothing heavy is loaded."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in {"-h", "--help"} for a in argv) and not any(
        a == "--config" or a.startswith("--config=") for a in argv
    ):
        print(f"usage: onereason train --config RECIPE.yaml [--key value ...]\n\n{__doc__}")
        print("`onereason train --config RECIPE.yaml --help` lists that stage's fields with their help text.")
        raise SystemExit(0)
    module = stage_module(_stage_from_argv(argv))
    parsed = parse_config(
        (StageArguments, SafetyArguments, *module.CONFIG_CLASSES),
        argv,
        prog=f"onereason train ({module.__name__})",
    )
    return module, parsed[1], parsed[2:]


def parse_stage_config(argv: Sequence[str] | None = None):
    """Parse a recipe + overrides into `(module, configs)`; nothing heavy is loaded."""
    module, _, configs = parse_stage(argv)
    return module, configs


def _find(configs, attribute: str):
    return next((c for c in configs if hasattr(c, attribute)), None)


def _dataset_targets(path: str, split: str) -> list[str]:
    """Distinct target item ids of one split of a task dataset (memory-mapped, no copy)."""
    import datasets
    import pyarrow.compute as pc

    data = datasets.load_from_disk(path)[split]
    if "target_items" not in data.column_names:
        return []
    column = data.data.column("target_items")
    return pc.unique(pc.list_flatten(column)).to_pylist()


def preflight(module, safety: SafetyArguments, configs) -> None:
    """Everything cheap, checked before any model loads (see the module docstring)."""
    stage = module.__name__.rsplit(".", 1)[-1]
    model_args, data_args = _find(configs, "model_name_or_path"), _find(configs, "dataset_path")
    training_args = _find(configs, "output_dir")
    model = str(model_args.model_name_or_path or "") if model_args else ""
    check_model_path(model or None)
    inputs = [model if is_local_model(model) else None]
    indexes = {}
    if data_args is not None:
        evaluate = getattr(training_args, "eval_strategy", "no") not in ("no", None)
        splits = ["train", "validation"] if evaluate else ["train"]
        check_dataset_dict(data_args.dataset_path, splits=splits)
        inputs += [data_args.dataset_path, data_args.item_index]
        fix = "run the `align` stage first (it adds them), or start from a model that has them"
        indexes = check_model_and_index(
            [model], data_args.item_index, safety.allow_unknown, "model_name_or_path",
            fix=None if stage == "align" else fix,  # align is the stage that adds the itemic tokens
        )  # fmt: skip
    items_path = getattr(_find(configs, "items_path"), "items_path", None)
    if items_path:
        require_path(items_path, "items_path", "file", "run `onereason build-data` first")
        inputs.append(items_path)
    for index_path, index in indexes.items():  # none for a Hub model without --item_index
        targets = _dataset_targets(str(data_args.dataset_path), "train")
        unknown = [t for t in targets if t not in index]
        check_unknown(
            "target items", len(unknown), len(targets),
            f"dataset_path {data_args.dataset_path} vs item_index {index_path}",
            unknown, safety.allow_unknown, safety.max_unknown_share,
        )  # fmt: skip
    if training_args is not None:
        check_output_dir(
            training_args.output_dir,
            inputs=inputs,
            overwrite=safety.overwrite,
            what="output_dir",
            replaces=False,
        )


# ---------------------------------------------------------------------------------------------
# During the run: caches and signals
# ---------------------------------------------------------------------------------------------


class TrainingInterrupted(Exception):
    """SIGINT / SIGTERM ended the run; a checkpoint was saved when training had started."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _stop_callback_class():
    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        """Turn a signal into "save a checkpoint now, then stop" at the end of the current step."""

        def __init__(self):
            self.signum: int | None = None
            self.training = False
            self.checkpoint: str | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.training = True

        def on_step_end(self, args, state, control, **kwargs):
            if self.signum is not None:
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kwargs):
            if self.signum is not None:
                self.checkpoint = str(Path(args.output_dir) / f"checkpoint-{state.global_step}")

        def on_train_end(self, args, state, control, **kwargs):
            self.training = False
            if self.signum is not None:
                name = signal.Signals(self.signum).name
                saved = f"saved {self.checkpoint}" if self.checkpoint else "no checkpoint saved"
                raise TrainingInterrupted(
                    f"interrupted by {name} at step {state.global_step}: {saved}; run the same command again "
                    "to resume from it",
                    128 + self.signum,
                )

    return StopOnSignal


@contextlib.contextmanager
def graceful_signals() -> Iterator[None]:
    """While training, SIGINT / SIGTERM ask every Trainer to save a checkpoint and stop.

    The callback joins every `transformers.Trainer` built inside the block (through
    `transformers.trainer.DEFAULT_CALLBACKS`, so each stage's trainer gets it without
    knowing). Outside the training loop, or at a second signal, the run stops at once.
    """
    import transformers.trainer as hf_trainer

    callback = _stop_callback_class()()

    def handler(signum, frame):
        if callback.training and callback.signum is None:
            callback.signum = signum
            logger.warning(
                "%s received: saving a checkpoint at the end of this step", signal.Signals(signum).name
            )
            return
        raise TrainingInterrupted(
            f"interrupted by {signal.Signals(signum).name} before a checkpoint could be saved; "
            "run the same command again (it resumes from the last checkpoint, if any)",
            128 + signum,
        )

    main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    if main_thread:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
    hf_trainer.DEFAULT_CALLBACKS.append(callback)
    try:
        yield
    finally:
        hf_trainer.DEFAULT_CALLBACKS.remove(callback)
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def caches_under(output_dir: str) -> Iterator[None]:
    """datasets' transform caches in a temporary folder under `output_dir`, never beside the inputs.

    A dataset loaded with `load_from_disk` writes the result of every `map`/`filter` next to
    its own files (the task dataset, an input). With caching off, datasets writes them to its
    temporary folder instead (deleted at exit), which is made here, inside `output_dir`.
    """
    import datasets
    import datasets.fingerprint as fingerprint

    was_enabled = datasets.is_caching_enabled()
    if getattr(fingerprint, "_TEMP_DIR_FOR_TEMP_CACHE_FILES", None) is None:
        saved = {k: os.environ.get(k) for k in ("TMPDIR",)}
        os.environ["TMPDIR"] = str(Path(output_dir).resolve())
        try:
            fingerprint.get_temporary_cache_files_directory()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    datasets.disable_caching()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_caching()


def main(argv: Sequence[str] | None = None) -> int:
    from accelerate import PartialState

    module, safety, configs = parse_stage(argv)
    training_args = _find(configs, "output_dir")
    # Under `accelerate launch` every rank checks and makes the same output folder: the main
    # process first, so no rank sees the folder half-made (created, not yet marked as ours).
    with PartialState().main_process_first():
        preflight(module, safety, configs)
        if training_args is not None:
            make_output_dir(training_args.output_dir, overwrite=True, what="output_dir", replaces=False)
    if training_args is None:
        module.run(*configs)
        return 0
    with caches_under(training_args.output_dir), graceful_signals():
        module.run(*configs)
    return 0


if __name__ == "__main__":
    from onereason.cli import run_command

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    args = [a for a in sys.argv[1:] if a != "--debug"]
    raise SystemExit(run_command("train", main, args, debug="--debug" in sys.argv))
