"""Training throughput: onereason stages vs plain TRL on the same model, data and settings.

    python benchmarks/bench_train.py                  # CPU, `tiny` preset (a few minutes)
    python benchmarks/bench_train.py --preset small   # CPU, ~5M parameters
    python benchmarks/bench_train.py --preset base --steps 50   # on a GPU

Each section trains the same rows twice — once through `onereason train` (the stage's
`run`), once through TRL's trainer built directly — and prints tokens/s of both and their
ratio (the target is >= 0.95). Sections are registered in `SECTIONS`; a stage adds its
own with `@section("name")` (GRPO goes here next to SFT).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tiny item world the stage tests use

SECTIONS: dict[str, Callable[[argparse.Namespace, dict], list[tuple[str, float]]]] = {}


def section(name: str):
    def register(fn):
        SECTIONS[name] = fn
        return fn

    return register


def build_world(root: Path, preset: str) -> dict:
    from train_fixtures import THINK, TITLES, make_index, make_task_dataset

    from onereason.modeling import init_model

    index = make_index()
    index.save(root / "item_index.json")
    model = init_model(
        root / "model", [THINK, *TITLES] * 20, preset=preset, itemic_tokens=index.itemic_tokens()
    )
    return {
        "model": model,
        "index": root / "item_index.json",
        "tasks": make_task_dataset(root / "tasks", index),
    }


def sft_config(out: Path, args, config_class=None):
    import torch
    from trl import SFTConfig

    gpu = torch.cuda.is_available()
    return (config_class or SFTConfig)(
        output_dir=str(out),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-4,
        max_length=512,
        use_cpu=not gpu,
        bf16=gpu,
        activation_checkpointing=False,
        logging_steps=args.steps,
        save_strategy="no",
        report_to="none",
        include_num_input_tokens_seen="all",
        seed=0,
        dataloader_num_workers=0,
    )


def tokens_per_second(trainer) -> float:
    """Input tokens over the training loop's own runtime (model loading and saving excluded)."""
    return trainer.state.num_input_tokens_seen / trainer.state.log_history[-1]["train_runtime"]


@section("sft")
def bench_sft(args, world) -> list[tuple[str, float]]:
    """SFT: `onereason.stages.sft.run` vs `trl.SFTTrainer` on the same prompt–completion rows."""
    from trl import ModelConfig, SFTTrainer

    from onereason.modeling import load_model_and_tokenizer
    from onereason.stages.common import DataArguments, load_task_dataset
    from onereason.stages.sft import SFTArguments, SFTConfig, run, training_rows

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data_args = DataArguments(dataset_path=str(world["tasks"]), item_index=str(world["index"]))
        for repeat in range(args.repeats):
            # Plain TRL first, then ours, alternating, so machine load affects both alike.
            model, tokenizer = load_model_and_tokenizer(world["model"], dtype="float32")
            rows = training_rows(load_task_dataset(data_args, "train"))
            trainer = SFTTrainer(
                model=model,
                args=sft_config(Path(tmp) / f"trl{repeat}", args),
                train_dataset=rows,
                processing_class=tokenizer,
            )
            trainer.train()
            results.append(("trl", tokens_per_second(trainer)))

            config = sft_config(Path(tmp) / f"ours{repeat}", args, SFTConfig)
            model_args = ModelConfig(model_name_or_path=str(world["model"]), dtype="float32")
            ours = run(model_args, data_args, SFTArguments(), config)
            results.append(("onereason", tokens_per_second(ours)))
    trl_tps = max(v for k, v in results if k == "trl")
    ours_tps = max(v for k, v in results if k == "onereason")
    return [
        ("sft trl tokens/s", trl_tps),
        ("sft onereason tokens/s", ours_tps),
        ("sft ratio onereason/trl", ours_tps / trl_tps),
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny", help="model size preset (tiny, small, base)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs per side")
    parser.add_argument("--sections", nargs="+", default=None, help=f"which of {sorted(SECTIONS)}")
    args = parser.parse_args(argv)
    import torch

    print(
        f"device: {'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}; preset {args.preset}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        world = build_world(Path(tmp), args.preset)
        for name in args.sections or list(SECTIONS):
            for label, value in SECTIONS[name](args, world):
                print(f"{label:<32} {value:12.2f}")


if __name__ == "__main__":
    main()
