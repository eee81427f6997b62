"""Stage `grpo`: GRPO with two-stage, trie-constrained rollouts and registry rewards.

    python -m onereason.train --config recipes/tiny/grpo.yaml --max_steps 20

Rows with item targets (optionally one domain's, for a specialist) are rolled out by
`ConstrainedGRPOTrainer` (free think block, then valid SIDs), scored by the recipe's
`rewards:` and trained with TRL's GRPO loss on the constrained log-probs. A killed run
restarted with the same command resumes from its newest checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from trl import GRPOConfig, ModelConfig

from onereason.rl.arguments import RLArguments, build_trie, rewards_for, rl_rows, trainer_extras
from onereason.stages.common import (
    DataArguments,
    check_itemic_tokens,
    finish_run,
    load_policy,
    load_task_dataset,
    resolve_item_index,
    resume_checkpoint,
)


@dataclass
class OneReasonGRPOConfig(GRPOConfig):
    """TRL's `GRPOConfig`; every field is TRL's, documented in TRL."""


CONFIG_CLASSES = (ModelConfig, DataArguments, RLArguments, OneReasonGRPOConfig)


def run(
    model_args: ModelConfig,
    data_args: DataArguments,
    rl_args: RLArguments,
    training_args: OneReasonGRPOConfig,
):
    from onereason.rl.grpo_trainer import ConstrainedGRPOTrainer

    train = rl_rows(load_task_dataset(data_args, "train", seed=training_args.seed), rl_args)
    model, tokenizer = load_policy(model_args, training_args)
    index = resolve_item_index(data_args, model_args.model_name_or_path)
    check_itemic_tokens(tokenizer, index)
    reward_funcs, weights = rewards_for(rl_args, index, tokenizer)
    training_args.reward_weights = weights
    trainer = ConstrainedGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train,
        processing_class=tokenizer,
        trie=build_trie(index, tokenizer),
        **trainer_extras(rl_args, index, tokenizer),
    )
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    record = {
        "stage": "grpo",
        "model": model_args.model_name_or_path,
        "dataset": data_args.dataset_path,
        "domains": rl_args.domains,
        "rewards": [r if isinstance(r, str) else dict(r) for r in rl_args.rewards],
        "decoding": rl_args.decoding,
        "train_rows": len(train),
        "learning_rate": training_args.learning_rate,
        "max_steps": training_args.max_steps,
    }
    finish_run(trainer, tokenizer, index, training_args.output_dir, record=record)
    return trainer
