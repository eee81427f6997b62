"""Stage `unify`: specialize-then-unify (OneReason).

    python -m onereason.train --config recipes/tiny/unify.yaml

1. **Specialize**: one RL run per domain — the recipe `specialist_recipe` (a `grpo` or
   `ppo` YAML) with `domains: [<d>]`, where a domain is a value of `domain_field`
   (item category group `domain`, or `task` for task specialists). Each lands in
   `<work_dir>/specialists/<d>`; a finished specialist is not run again, and an unfinished
   one resumes from its checkpoints, so a killed unify run loses no finished steps.
2. **Verify**: each specialist rolls out `samples_per_prompt` constrained two-stage
   completions per training prompt of its domain; only hits are kept.
3. **Unify**: the verified rollouts are deduplicated and balanced across domains
   (`<work_dir>/rs_data`, a DatasetDict with its `stats.json`), and the base model is
   fine-tuned on them with TRL's `SFTTrainer` into `output_dir` (rejection-sampling FT).
4. **Compare**: constrained top-1 hit rate per domain of the unified model beside every
   specialist, written to `<output_dir>/unify_report.json`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from trl import ModelConfig, SFTConfig, SFTTrainer

from onereason.decoding import THINK_BUDGET
from onereason.io import atomic_dir, atomic_write_json, read_json
from onereason.stages.common import (
    HISTORY_FILE,
    DataArguments,
    finish_run,
    load_policy,
    load_task_dataset,
    resolve_item_index,
    resume_checkpoint,
)

logger = logging.getLogger(__name__)

REPORT_FILE = "unify_report.json"


@dataclass
class UnifyArguments:
    specialist_recipe: str = field(
        metadata={"help": "A grpo or ppo recipe YAML; each specialist runs it on one domain's rows."}
    )
    specialist_overrides: list[str] | None = field(
        default=None,
        metadata={"help": "Recipe fields for every specialist run, as key=value (e.g. max_steps=20)."},
    )
    domain_field: str = field(
        default="domain", metadata={"help": "Column that splits specialists: domain or task."}
    )
    domains: list[str] | None = field(
        default=None, metadata={"help": "Specialist domains. Default: every value."}
    )
    work_dir: str | None = field(
        default=None, metadata={"help": "Where specialists and the RS data go. Default: <output_dir>-work."}
    )
    samples_per_prompt: int = field(
        default=4, metadata={"help": "Rollouts per prompt when sampling verified data."}
    )
    max_prompts_per_domain: int | None = field(
        default=None, metadata={"help": "Cap on prompts sampled per domain."}
    )
    think_budget: int = field(
        default=THINK_BUDGET, metadata={"help": "Think-token budget of the verification rollouts."}
    )
    num_sids: int = field(default=1, metadata={"help": "SIDs per answer."})
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature of verification rollouts."}
    )
    balance: bool = field(default=True, metadata={"help": "Down-sample every domain to the smallest one."})
    eval_rows_per_domain: int | None = field(
        default=64, metadata={"help": "Validation rows per domain for the report."}
    )

    def __post_init__(self):
        for item in self.specialist_overrides or ():
            if "=" not in item or item.startswith("-"):
                raise ValueError(f"specialist_overrides: expected key=value, got {item!r}")
        if not Path(self.specialist_recipe).is_file():
            raise ValueError(f"specialist_recipe {self.specialist_recipe!r} does not exist")
        if self.samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be positive, got {self.samples_per_prompt}")


CONFIG_CLASSES = (ModelConfig, DataArguments, UnifyArguments, SFTConfig)


def slug(domain: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", domain).strip("_") or "empty"


def work_dir_of(args: UnifyArguments, output_dir: str) -> Path:
    return Path(args.work_dir) if args.work_dir else Path(str(output_dir).rstrip("/") + "-work")


def domains_of(data: datasets.Dataset, args: UnifyArguments) -> list[str]:
    if args.domain_field not in data.column_names:
        raise ValueError(f"domain_field {args.domain_field!r} is not a dataset column ({data.column_names})")
    present = sorted({str(v) for v in data[args.domain_field]})
    if not args.domains:
        return present
    missing = sorted(set(args.domains) - set(present))
    if missing:
        raise ValueError(f"domains {missing} have no training rows (the dataset has {present})")
    return list(args.domains)


def run_specialist(domain: str, out: Path, model_args, data_args, args: UnifyArguments) -> Path:
    """Train (or reuse, or resume) the specialist of `domain`."""
    if (out / HISTORY_FILE).is_file():
        logger.info("specialist %s: finished earlier in %s, reused", domain, out)
        return out
    from onereason.train import parse_stage_config

    argv = ["--config", args.specialist_recipe, "--model_name_or_path", model_args.model_name_or_path]
    argv += ["--dataset_path", data_args.dataset_path, "--output_dir", str(out)]
    argv += ["--domain_field", args.domain_field, "--domains", domain]
    if data_args.item_index:
        argv += ["--item_index", data_args.item_index]
    for item in args.specialist_overrides or ():
        key, _, value = item.partition("=")
        argv += [f"--{key.strip()}", value.strip()]
    module, configs = parse_stage_config(argv)
    if module.__name__.rsplit(".", 1)[-1] not in ("grpo", "ppo"):
        raise ValueError(f"specialist_recipe must be a grpo or ppo recipe, got stage {module.__name__}")
    logger.info("specialist %s: training with %s", domain, args.specialist_recipe)
    module.run(*configs)
    return out


def domain_rows(
    data: datasets.Dataset, field_name: str, domain: str, cap: int | None, seed: int
) -> list[dict]:
    rows = data.filter(lambda v, t: str(v) == domain and bool(t), input_columns=[field_name, "target_sids"])
    if cap is not None and cap < len(rows):
        rows = rows.shuffle(seed=seed).select(range(cap))
    return [dict(r) for r in rows]


def load_for_rollouts(path: Path, use_cpu: bool):
    """A finished model folder for generation: on the GPU in its own dtype when there is one."""
    import torch

    from onereason.modeling import load_model_and_tokenizer

    on_gpu = torch.cuda.is_available() and not use_cpu
    return load_model_and_tokenizer(
        path, dtype="auto" if on_gpu else "float32", device="cuda" if on_gpu else "cpu"
    )


def build_rs_dataset(
    specialists: dict[str, Path], train, index, args: UnifyArguments, training_args, out: Path
):
    """Verified, deduplicated, balanced rollouts of every specialist, saved to `out`."""
    from onereason.rl.rollout import TwoStageGenerator
    from onereason.rl.verify import rejection_sampling_rows, sample_verified, verifier
    from onereason.trie import SIDTrie

    if (out / "stats.json").is_file():
        logger.info("rejection-sampling data: reusing %s", out)
        return datasets.load_from_disk(str(out))["train"], read_json(out / "stats.json")
    rows = []
    for domain, path in specialists.items():
        model, tokenizer = load_for_rollouts(path, training_args.use_cpu)
        generator = TwoStageGenerator(
            SIDTrie.from_index(index, tokenizer),
            tokenizer,
            think_budget=args.think_budget,
            num_sids=args.num_sids,
            temperature=args.temperature,
        )
        prompts = domain_rows(
            train, args.domain_field, domain, args.max_prompts_per_domain, training_args.seed
        )
        rows += sample_verified(model, tokenizer, generator, index, prompts, args.samples_per_prompt)
        del model
    kept, stats = rejection_sampling_rows(
        rows, args.domain_field, args.balance, training_args.seed, verified=verifier(index)
    )
    if not kept:
        raise RuntimeError(
            f"rejection sampling kept no rollouts ({stats}); train the specialists longer or sample more per prompt"
        )
    data = datasets.Dataset.from_list(kept)
    with atomic_dir(out) as tmp:
        datasets.DatasetDict({"train": data}).save_to_disk(str(tmp))
        atomic_write_json(Path(tmp) / "stats.json", stats)
    logger.info("rejection-sampling data: %s", stats)
    return data, stats


def evaluation_rows(data_args: DataArguments, args: UnifyArguments, domain: str, seed: int) -> list[dict]:
    try:
        data = load_task_dataset(data_args, "validation", seed=seed)
    except (KeyError, ValueError):
        data = load_task_dataset(data_args, "train", seed=seed)
    return domain_rows(data, args.domain_field, domain, args.eval_rows_per_domain, seed)


def compare(models: dict[str, Path], data_args, args, index, domains: list[str], training_args) -> dict:
    """{model name: {domain: constrained top-1 hit rate}} for the unified model and each specialist."""
    from onereason.rl.verify import hit_rate
    from onereason.trie import SIDTrie

    rows = {d: evaluation_rows(data_args, args, d, training_args.seed) for d in domains}
    table = {}
    for name, path in models.items():
        model, tokenizer = load_for_rollouts(path, training_args.use_cpu)
        trie = SIDTrie.from_index(index, tokenizer)
        table[name] = {
            d: hit_rate(model, tokenizer, trie, index, rows[d], args.think_budget) for d in domains
        }
    return {
        "metric": "hit@1 (constrained, greedy SIDs)",
        "rows_per_domain": {d: len(r) for d, r in rows.items()},
        "hit_rate": table,
    }


def run(
    model_args: ModelConfig,
    data_args: DataArguments,
    args: UnifyArguments,
    training_args: SFTConfig,
):
    train = load_task_dataset(data_args, "train", seed=training_args.seed)
    domains = domains_of(train, args)
    work = work_dir_of(args, training_args.output_dir)
    index = resolve_item_index(data_args, model_args.model_name_or_path)
    specialists = {
        d: run_specialist(d, work / "specialists" / slug(d), model_args, data_args, args) for d in domains
    }
    rs_data, rs_stats = build_rs_dataset(specialists, train, index, args, training_args, work / "rs_data")

    model, tokenizer = load_policy(model_args, training_args)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=rs_data.select_columns(["prompt", "completion"]),
        processing_class=tokenizer,
    )
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    record = {
        "stage": "unify",
        "model": model_args.model_name_or_path,
        "dataset": data_args.dataset_path,
        "domain_field": args.domain_field,
        "domains": domains,
        "specialists": {d: str(p) for d, p in specialists.items()},
        "rs_rows": len(rs_data),
        "learning_rate": training_args.learning_rate,
    }
    finish_run(trainer, tokenizer, index, training_args.output_dir, record=record)
    if trainer.is_world_process_zero():
        models = {"unified": Path(training_args.output_dir)} | {
            f"specialist:{d}": p for d, p in specialists.items()
        }
        report = compare(models, data_args, args, index, domains, training_args)
        report["rejection_sampling"] = rs_stats
        atomic_write_json(Path(training_args.output_dir) / REPORT_FILE, report)
        logger.info("unify report: %s", report["hit_rate"])
    return trainer
