"""Stage `grpo`: GRPO with two-stage, trie-constrained rollouts and registry rewards.

    python -m onereason.train --config recipes/tiny/grpo.yaml --max_steps 20

Rows with item targets (optionally one domain's, for a specialist) are rolled out by
`ConstrainedGRPOTrainer` (free think block, then valid SIDs), scored by the recipe's
`rewards:` and trained with TRL's GRPO loss on the constrained log-probs. A killed run
restarted with the same command resumes from its newest checkpoint.
"""

from __future__ import annotations

from trl import GRPOConfig, ModelConfig

from onereason.rl.arguments import RLArguments, build_rl_trainer, run_record
from onereason.stages.common import DataArguments, finish_run, resume_checkpoint

CONFIG_CLASSES = (ModelConfig, DataArguments, RLArguments, GRPOConfig)


def run(
    model_args: ModelConfig,
    data_args: DataArguments,
    rl_args: RLArguments,
    training_args: GRPOConfig,
):
    from onereason.rl.grpo_trainer import ConstrainedGRPOTrainer

    trainer, tokenizer, index, train = build_rl_trainer(
        ConstrainedGRPOTrainer, model_args, data_args, rl_args, training_args
    )
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    record = run_record("grpo", model_args, data_args, rl_args, training_args, train)
    finish_run(trainer, tokenizer, index, training_args.output_dir, record=record)
    return trainer
