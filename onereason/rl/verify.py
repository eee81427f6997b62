"""Verified rollouts and hit rates outside a trainer (specialize-then-unify uses both).

`sample_verified` rolls out a model on task rows with the same two-stage constrained
generator RL trains with and keeps the rollouts the `hit` reward accepts;
`rejection_sampling_rows` turns many specialists' verified rollouts into one SFT set
(hits only, deduplicated, balanced across domains); `hit_rate` is the constrained
top-1 hit rate used to compare the unified model with each specialist per domain.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Sequence

import torch

from onereason.decoding import THINK_BUDGET
from onereason.rewards import RewardContext, hit_reward
from onereason.rl.rollout import TwoStageGenerator, prompt_mode

logger = logging.getLogger(__name__)

# Metadata carried from a task row into its rejection-sampling row.
CARRIED_COLUMNS = (
    "task",
    "mode",
    "domain",
    "user_id",
    "history_items",
    "target_items",
    "target_sids",
    "target_terms",
)


def prompt_token_ids(tokenizer, prompts: Sequence[list[dict]]) -> list[list[int]]:
    """Chat-templated prompt ids with the assistant turn opened (what TRL's GRPO feeds `generate`)."""
    out = []
    for prompt in prompts:
        encoded = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        ids = encoded["input_ids"]
        out.append(list(ids[0] if ids and isinstance(ids[0], list) else ids))
    return out


@torch.no_grad()
def rollouts(
    model, tokenizer, generator: TwoStageGenerator, rows: Sequence[dict], samples: int, batch_size: int = 16
):
    """`samples` completions (decoded text) per row, rows in order: list of (row, text, beam_rank)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = list(rows[start : start + batch_size])
            prompts = [r["prompt"] for r in chunk for _ in range(samples)]
            ids = prompt_token_ids(tokenizer, prompts)
            modes = [r.get("mode") or prompt_mode(r["prompt"]) for r in chunk for _ in range(samples)]
            result = generator.generate(model, ids, modes, group_size=samples)
            texts = tokenizer.batch_decode(result.completion_ids, skip_special_tokens=True)
            for k, text in enumerate(texts):
                out.append((chunk[k // samples], text, result.beam_rank[k]))
    finally:
        model.train(was_training)
    return out


def _hits(index, outputs) -> list[bool]:
    context = RewardContext(item_index=index)
    scores = hit_reward(
        [text for _, text, _ in outputs], context, target_sids=[row["target_sids"] for row, _, _ in outputs]
    )
    return [s == 1.0 for s in scores]


def sample_verified(
    model, tokenizer, generator, index, rows: Sequence[dict], samples: int, batch_size: int = 16
):
    """Rejection sampling: the rollouts of `rows` whose answer hits a target, as SFT rows."""
    outputs = rollouts(model, tokenizer, generator, rows, samples, batch_size)
    kept = []
    for (row, text, _), hit in zip(outputs, _hits(index, outputs)):
        if hit:
            carried = {c: row[c] for c in CARRIED_COLUMNS if c in row}
            kept.append(
                {"prompt": row["prompt"], "completion": [{"role": "assistant", "content": text}], **carried}
            )
    logger.info("rejection sampling: %d of %d rollouts hit a target", len(kept), len(outputs))
    return kept


def hit_rate(
    model,
    tokenizer,
    trie,
    index,
    rows: Sequence[dict],
    think_budget: int = THINK_BUDGET,
    batch_size: int = 16,
) -> float:
    """Share of rows whose top-1 constrained answer (greedy SIDs after the row's think mode) hits a target."""
    if not rows:
        return float("nan")
    generator = TwoStageGenerator(trie, tokenizer, think_budget=think_budget, decoding="beam")
    outputs = rollouts(model, tokenizer, generator, rows, samples=1, batch_size=batch_size)
    hits = _hits(index, outputs)
    return sum(hits) / len(hits)


def rejection_sampling_rows(
    rows: Sequence[dict], domain_field: str = "domain", balance: bool = True, seed: int = 0, verified=None
) -> tuple[list[dict], dict]:
    """Verified rows → (deduplicated, domain-balanced rows, counts).

    `verified(row) -> bool` re-checks each row (rows that fail are dropped and counted), so
    the set holds only hits even if a caller passes unverified rollouts. Duplicates (same
    prompt and completion) are kept once. With `balance`, every domain is down-sampled
    (seeded) to the size of the smallest one, so no specialist dominates the unified model.
    """
    stats: dict = {"input": len(rows), "not_hit": 0, "duplicate": 0}
    seen, unique = set(), []
    for row in rows:
        if verified is not None and not verified(row):
            stats["not_hit"] += 1
            continue
        key = (json.dumps(row["prompt"], sort_keys=True), row["completion"][-1]["content"])
        if key in seen:
            stats["duplicate"] += 1
            continue
        seen.add(key)
        unique.append(row)
    by_domain: dict[str, list[dict]] = defaultdict(list)
    for row in unique:
        by_domain[str(row.get(domain_field, ""))].append(row)
    stats["per_domain_before_balance"] = {d: len(v) for d, v in sorted(by_domain.items())}
    if balance and by_domain:
        size = min(len(v) for v in by_domain.values())
        rng = random.Random(seed)
        by_domain = {d: rng.sample(v, size) if len(v) > size else v for d, v in by_domain.items()}
    out = [row for d in sorted(by_domain) for row in by_domain[d]]
    stats["per_domain"] = dict(sorted(Counter(str(r.get(domain_field, "")) for r in out).items()))
    stats["output"] = len(out)
    return out, stats


def verifier(index):
    """`verified(row)` for `rejection_sampling_rows`: the row's completion hits one of its targets."""
    context = RewardContext(item_index=index)

    def verified(row: dict) -> bool:
        return hit_reward([row["completion"]], context, target_sids=[row.get("target_sids")])[0] == 1.0

    return verified
