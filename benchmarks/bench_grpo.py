"""GRPO step time: two-stage constrained rollouts vs TRL's unconstrained GRPO, same model and data.

    python benchmarks/bench_grpo.py                      # CPU, `small` preset (~5M parameters)
    python benchmarks/bench_grpo.py --preset base --device cuda --steps 20

Both trainers get the same fresh model, the same prompts (half /think, half /no_think), the
same group size and the same `max_completion_length`, set to the longest completion the
two-stage generator can write (think budget + forced tags + one SID); the unconstrained
run samples freely up to that length. Reported: mean seconds per optimizer step after
`--warmup` steps (generation, rewards, constrained log-probs and the update are all
inside), and the ratio
constrained / unconstrained (the target is <= 1.2x). Constrained completions are
usually shorter (no_think rows skip the think stage, SIDs end with EOS), so the step
time is also reported per completion token, the like-for-like figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from onereason.modeling import load_model_and_tokenizer
from onereason.rewards import RewardContext, build_rewards
from onereason.rl.grpo_trainer import ConstrainedGRPOTrainer
from onereason.rl.rollout import TwoStageGenerator, sid_token_length

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the toy world the RL tests use
from toy_world import toy_index, toy_model, toy_rows  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t)


def run(kind: str, model_dir: Path, index, args, completion_len: int, out: Path) -> list[float]:
    from onereason.trie import SIDTrie

    model, tokenizer = load_model_and_tokenizer(model_dir, dtype="float32")
    data = datasets.Dataset.from_list(toy_rows(index, 512, think_share=0.5)).remove_columns(["completion"])
    funcs, weights = build_rewards(["hit"], RewardContext(index, tokenizer))
    cpu = args.device == "cpu"
    config = GRPOConfig(
        output_dir=str(out / kind), use_cpu=cpu, bf16=not cpu, activation_checkpointing=False, report_to=[],
        per_device_train_batch_size=args.batch, num_generations=args.generations, max_completion_length=completion_len,
        max_steps=args.warmup + args.steps, learning_rate=1e-4, logging_steps=1, save_strategy="no", seed=0,
        reward_weights=weights, disable_tqdm=True,
    )  # fmt: skip
    common = dict(
        model=model, reward_funcs=funcs, args=config, train_dataset=data, processing_class=tokenizer
    )
    if kind == "constrained":
        trainer = ConstrainedGRPOTrainer(
            **common, trie=SIDTrie.from_index(index, tokenizer), think_budget=args.think_budget,
            max_sid_tokens=sid_token_length(index, tokenizer),
        )  # fmt: skip
    else:
        trainer = GRPOTrainer(**common)
    timer = StepTimer()
    trainer.add_callback(timer)
    torch.manual_seed(0)
    trainer.train()
    lengths = [
        h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h
    ]
    return timer.times[args.warmup :], float(np.mean(lengths[args.warmup :]))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", default="small", help="tiny | small | base (onereason.modeling.SIZE_PRESETS)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--think_budget", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")

    index = toy_index(args.items, (4, 4, 4))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = toy_model(tmp / "model", index, preset=args.preset)
        _, tokenizer = load_model_and_tokenizer(model_dir)
        from onereason.trie import SIDTrie

        generator = TwoStageGenerator(
            SIDTrie.from_index(index, tokenizer), tokenizer, think_budget=args.think_budget,
            max_sid_tokens=sid_token_length(index, tokenizer),
        )  # fmt: skip
        completion_len = generator.max_completion_tokens
        threads = torch.get_num_threads()
        print(
            f"device={args.device} preset={args.preset} items={args.items} batch={args.batch} "
            f"generations={args.generations} think_budget={args.think_budget} max_completion_length={completion_len} "
            f"steps={args.steps} (+{args.warmup} warmup) torch threads={threads}"
        )
        results = {
            kind: run(kind, model_dir, index, args, completion_len, tmp)
            for kind in ("unconstrained", "constrained")
        }
    base_times, base_len = results["unconstrained"]
    base, base_tok = np.mean(base_times), np.mean(base_times) / base_len
    print(
        f"{'rollouts':15s} {'s/step mean':>12s} {'median':>8s} {'ratio':>7s} {'tokens':>7s} {'ms/token':>9s} {'ratio':>7s}"
    )
    for kind, (times, length) in results.items():
        per_token = np.mean(times) / length
        print(
            f"{kind:15s} {np.mean(times):12.3f} {np.median(times):8.3f} {np.mean(times) / base:7.2f}x "
            f"{length:7.1f} {1000 * per_token:9.2f} {per_token / base_tok:7.2f}x"
        )
    print(
        "tokens = mean completion length; ms/token = step time / completion length (same-length comparison)"
    )


if __name__ == "__main__":
    main()
