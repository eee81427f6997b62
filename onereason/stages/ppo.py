"""Stage `ppo`: PPO (value head, GAE, clipped losses) on the constrained two-stage rollouts.

    python -m onereason.train --config recipes/tiny/ppo.yaml

Same rows, rollouts and reward registry as `grpo`; `ppo_epochs` is TRL's `num_iterations`
and the KL penalty to a reference model is TRL's `beta`. The value head is trained with
the policy and saved beside the model as `value_head.pt` (the model folder itself stays a
plain causal LM that the next stage and `onereason eval` load as usual).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from trl import GRPOConfig, ModelConfig

from onereason.rl.arguments import RLArguments, build_rl_trainer, run_record
from onereason.stages.common import DataArguments, finish_run, resume_checkpoint

VALUE_HEAD_FILE = "value_head.pt"


@dataclass
class PPOArguments:
    """The critic's fields (the policy side is TRL's GRPOConfig: epsilon, beta, num_iterations, …)."""

    gamma: float = field(default=1.0, metadata={"help": "GAE discount."})
    lam: float = field(default=0.95, metadata={"help": "GAE trace decay (lambda)."})
    vf_coef: float = field(default=0.5, metadata={"help": "Weight of the value loss."})
    cliprange_value: float = field(
        default=0.2, metadata={"help": "Value clipping range around the rollout's values."}
    )
    whiten_advantages: bool = field(
        default=True, metadata={"help": "Normalise advantages over scored tokens."}
    )


CONFIG_CLASSES = (ModelConfig, DataArguments, RLArguments, PPOArguments, GRPOConfig)


def run(
    model_args: ModelConfig,
    data_args: DataArguments,
    rl_args: RLArguments,
    ppo_args: PPOArguments,
    training_args: GRPOConfig,
):
    from onereason.rl.ppo_trainer import VALUE_HEAD_ATTR, ConstrainedPPOTrainer

    trainer, tokenizer, index, train = build_rl_trainer(
        ConstrainedPPOTrainer,
        model_args,
        data_args,
        rl_args,
        training_args,
        gamma=ppo_args.gamma,
        lam=ppo_args.lam,
        vf_coef=ppo_args.vf_coef,
        cliprange_value=ppo_args.cliprange_value,
        whiten_advantages=ppo_args.whiten_advantages,
    )
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    # Keep the model folder a plain causal LM: the critic is saved on its own.
    policy = trainer.accelerator.unwrap_model(trainer.model)
    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    head = getattr(base, VALUE_HEAD_ATTR)
    delattr(base, VALUE_HEAD_ATTR)
    record = {
        **run_record("ppo", model_args, data_args, rl_args, training_args, train),
        "gamma": ppo_args.gamma,
        "lam": ppo_args.lam,
        "vf_coef": ppo_args.vf_coef,
    }
    finish_run(trainer, tokenizer, index, training_args.output_dir, record=record)
    if trainer.is_world_process_zero():
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(training_args.output_dir) / f".{VALUE_HEAD_FILE}.tmp"
        torch.save(head.state_dict(), tmp)
        tmp.replace(Path(training_args.output_dir) / VALUE_HEAD_FILE)
    return trainer
