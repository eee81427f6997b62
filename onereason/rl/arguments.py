"""What the GRPO and PPO stages share: their recipe fields and one trainer builder.

`build_rl_trainer` is the whole set-up of an RL stage (reward weights settled, rows kept,
policy loaded, item index and trie, rewards bound, the constrained trainer built); the
stage modules add only what is theirs (PPO's critic settings, what a finished run saves).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import datasets

from onereason.configs import prefer
from onereason.decoding import THINK_BUDGET
from onereason.rewards import RewardContext, build_rewards, parse_reward_specs

logger = logging.getLogger(__name__)


@dataclass
class RLArguments:
    """Our RL fields that TRL's `GRPOConfig` does not have."""

    rewards: list[str] = field(
        default_factory=lambda: ["hit"],
        metadata={
            "help": "Rewards and weights. YAML: a list of {name, weight, **params} (e.g. {name: think_length, "
            "weight: 0.1, budget: 128}); command line: names or name:weight (hit:1.0 format:0.2). "
            "`model:<path>` plugs in a reward model."
        },
    )
    think_budget: int = field(
        default=THINK_BUDGET, metadata={"help": "Most tokens sampled inside <think> per rollout."}
    )
    num_sids: int = field(
        default=1, metadata={"help": "SIDs per answer; EOS is allowed only after that many."}
    )
    decoding: str = field(
        default="sample",
        metadata={
            "help": "sample: each group member sampled; beam: the group is the top-G constrained beams."
        },
    )
    max_sid_tokens: int | None = field(
        default=None, metadata={"help": "Tokens of one SID (default: measured on the item index)."}
    )
    domain_field: str = field(
        default="domain",
        metadata={"help": "Column that names a row's domain (domain, or task for task specialists)."},
    )
    domains: list[str] | None = field(
        default=None,
        metadata={"help": "Keep only rows whose `domain_field` is one of these (a specialist run)."},
    )

    def __post_init__(self):
        if self.decoding not in ("sample", "beam"):
            raise ValueError(f"decoding must be 'sample' or 'beam', got {self.decoding!r}")
        if self.think_budget < 1 or self.num_sids < 1:
            raise ValueError("think_budget and num_sids must be positive")
        parse_reward_specs(self.rewards)  # unknown reward names fail at parse time


def rl_rows(data: datasets.Dataset, args: RLArguments) -> datasets.Dataset:
    """Rows RL can score: with item targets (SID rewards), in the requested domains."""
    if "prompt" not in data.column_names:
        raise ValueError(f"the task dataset has no `prompt` column; it has {data.column_names}")
    if args.domains:
        if args.domain_field not in data.column_names:
            raise ValueError(f"domains: the dataset has no {args.domain_field!r} column to filter on")
        keep = set(args.domains)
        data = data.filter(lambda v: v in keep, input_columns=args.domain_field, desc="keep domains")
        if len(data) == 0:
            raise ValueError(f"no rows with {args.domain_field} in {sorted(keep)}")
    if "target_sids" in data.column_names:
        before = len(data)
        data = data.filter(lambda v: bool(v), input_columns="target_sids", desc="keep rows with target SIDs")
        dropped = before - len(data)
        if dropped:
            logger.info(
                "RL rows: dropped %d of %d rows without target_sids (no item to reward)", dropped, before
            )
    if len(data) == 0:
        raise ValueError("no RL rows left: the dataset has no rows with target_sids")
    # TRL renders the prompt itself; the reference answer must not reach it as a column named like its output.
    return data.remove_columns([c for c in ("completion",) if c in data.column_names])


def build_trie(index, tokenizer):
    from onereason.trie import SIDTrie

    return SIDTrie.from_index(index, tokenizer)


def rewards_for(args: RLArguments, index, tokenizer):
    """(`reward_funcs`, `reward_weights`) bound to the item index and tokenizer."""
    return build_rewards(args.rewards, RewardContext(item_index=index, tokenizer=tokenizer))


def reward_weights(rl_args: RLArguments, training_args: Any) -> list[float]:
    """The weights of the rewards: each `rewards:` entry's, or TRL's `reward_weights` when stated more explicitly.

    The two say the same thing twice; equally explicit ones that disagree are an error naming both.
    """
    specs = parse_reward_specs(rl_args.rewards)
    weights = [spec.weight for spec in specs]
    given = getattr(training_args, "reward_weights", None)
    if given is None or [float(w) for w in given] == weights:
        return weights
    clash = "--reward_weights {} --rewards {}".format(
        " ".join(f"{float(w):g}" for w in given), " ".join(f"{s.name}:{s.weight:g}" for s in specs)
    )
    if prefer((training_args, "reward_weights"), (rl_args, "rewards"), clash) == "rewards":
        return weights
    if len(given) != len(specs):
        raise ValueError(f"reward_weights: {len(given)} weights for {len(specs)} rewards ({clash})")
    return [float(w) for w in given]


def build_rl_trainer(trainer_class, model_args, data_args, rl_args: RLArguments, training_args, **extra):
    """(trainer, tokenizer, item index, train rows) of a GRPO or PPO stage, ready to `train()`."""
    from onereason.stages.common import (
        check_itemic_tokens,
        load_policy,
        load_task_dataset,
        resolve_item_index,
    )

    weights = reward_weights(rl_args, training_args)  # settled before anything loads
    train = rl_rows(load_task_dataset(data_args, "train", seed=training_args.seed), rl_args)
    model, tokenizer = load_policy(model_args, training_args)
    index = resolve_item_index(data_args, model_args.model_name_or_path)
    check_itemic_tokens(tokenizer, index)
    reward_funcs, _ = rewards_for(rl_args, index, tokenizer)
    training_args.reward_weights = weights
    trainer = trainer_class(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train,
        processing_class=tokenizer,
        trie=build_trie(index, tokenizer),
        **trainer_extras(rl_args, index, tokenizer),
        **extra,
    )
    return trainer, tokenizer, index, train


def run_record(stage: str, model_args, data_args, rl_args: RLArguments, training_args, train) -> dict:
    """The history line of a finished RL run (`onereason push` turns it into the model card)."""
    return {
        "stage": stage,
        "model": model_args.model_name_or_path,
        "dataset": data_args.dataset_path,
        "domains": rl_args.domains,
        "rewards": [r if isinstance(r, str) else dict(r) for r in rl_args.rewards],
        "decoding": rl_args.decoding,
        "train_rows": len(train),
        "learning_rate": training_args.learning_rate,
        "max_steps": training_args.max_steps,
    }


def trainer_extras(args: RLArguments, index, tokenizer) -> dict:
    """Keyword arguments of the constrained trainers taken from the recipe."""
    from onereason.rl.rollout import sid_token_length

    return {
        "think_budget": args.think_budget,
        "num_sids": args.num_sids,
        "decoding": args.decoding,
        "max_sid_tokens": args.max_sid_tokens or sid_token_length(index, tokenizer),
    }
