"""Two-stage constrained rollouts, and the constrained log-probs that RL trains on.

A completion is built in two stages:

1. **think** (rows whose prompt asks `/think`): `<think>\\n` is forced, then the policy
   samples freely until it writes `</think>` or spends `think_budget` tokens; a trace
   that runs out (or ends the turn early) is closed with a forced `\\n</think>`.
   Rows asking `/no_think` skip this stage: the empty block `<think>\\n\\n</think>` is forced.
2. **answer**: `\\n\\n` is forced, then the SIDs are decoded under the item trie (every token
   a valid SID continuation, EOS only after `num_sids` complete SIDs), by sampling or by
   beam search. In beam mode the G rows of a prompt's group share one sampled think block
   and are the top-G beams, with their rank recorded (`beam_rank`) for rank-aware rewards.

Forced tokens were not sampled, so they get `env_mask = 0` and stay out of the loss
(TRL's `env_mask` / `tool_mask` machinery). The SID part starts right after the first
`</think>` and its forced `\\n\\n`; `sid_starts` recovers that position from the token ids
alone, so every log-prob computation (policy, old policy, reference) constrains the same
positions that generation constrained, and `constrained_log_probs` renormalises the
logits over the trie's allowed tokens there — the distribution actually sampled from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from onereason.decoding import THINK_BUDGET, ThinkSettings, TwoStageDecoder, sid_token_length
from onereason.thinking import SWITCH

__all__ = [
    "Rollout",
    "TwoStageGenerator",
    "constrained_log_probs",
    "prompt_mode",
    "sid_starts",
    "sid_token_length",
]


@dataclass
class Rollout:
    """One batch of completions, row-aligned with the prompts it was generated from."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    env_mask: list[list[int]]  # 1 where the policy chose the token, 0 where it was forced
    sid_start: list[int]  # index in the completion where the (constrained) SID part starts
    modes: list[str]
    beam_rank: list[int | None] = field(default_factory=list)


def prompt_mode(messages: Sequence[dict] | str) -> str:
    """`think` or `no_think` from the thinking switch at the end of the last user turn."""
    if isinstance(messages, str):
        text = messages
    else:
        users = [m for m in messages if m.get("role") == "user"]
        text = str(users[-1]["content"]) if users else ""
    return "no_think" if text.rstrip().endswith(SWITCH["no_think"]) else "think"


class TwoStageGenerator:
    """RL rollouts from the two-stage decoder (`onereason.decoding`): think, then SIDs under the trie."""

    def __init__(
        self,
        trie,
        tokenizer,
        think_budget: int = THINK_BUDGET,
        num_sids: int = 1,
        temperature: float = 1.0,
        decoding: str = "sample",
        max_sid_tokens: int = 16,
        think_sampler=None,
    ):
        """`max_sid_tokens` bounds one SID's length (see `sid_token_length`); decoding stops at EOS.

        `think_sampler(heads) -> new tokens per head` replaces transformers `generate` for stage 1
        (the trainer passes TRL's vLLM generation there when `use_vllm`); it must sample with
        this generator's temperature, stop at `</think>` or EOS and spend at most `think_budget`
        tokens. Stage 2 always runs here, under the trie.
        """
        if decoding not in ("sample", "beam"):
            raise ValueError(f"decoding must be 'sample' or 'beam', got {decoding!r}")
        if think_budget < 1:
            raise ValueError(f"think_budget must be at least 1, got {think_budget}")
        self.decoder = TwoStageDecoder(tokenizer, trie)
        self.trie = trie
        self.tokenizer = tokenizer
        self.think_budget = think_budget
        self.num_sids = num_sids
        self.temperature = temperature
        self.decoding = decoding
        self.max_sid_tokens = max_sid_tokens
        self.think_sampler = think_sampler
        self.think_close_id = self.decoder.think_close_id
        self.answer_sep_ids = self.decoder.sep_ids  # between </think> and the SIDs
        self.eos_ids = self.decoder.eos_ids

    @property
    def settings(self) -> ThinkSettings:
        """The think stage's sampling: this generator's budget and temperature, no top-p / top-k."""
        return ThinkSettings(budget=self.think_budget, temperature=self.temperature)

    @property
    def max_completion_tokens(self) -> int:
        """The longest completion this generator can produce."""
        return self.decoder.longest_think(self.think_budget) + self.num_sids * self.max_sid_tokens + 1

    @torch.no_grad()
    def generate(
        self, model, prompt_ids: Sequence[Sequence[int]], modes: Sequence[str], group_size: int = 1
    ) -> Rollout:
        """Completions for `prompt_ids` (one per row; in beam mode consecutive identical rows form a group)."""
        if len(prompt_ids) != len(modes):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(modes)} modes")
        prompt_ids = [list(p) for p in prompt_ids]
        if self.decoding == "beam":
            groups = _groups(prompt_ids, group_size)
        else:
            groups = [[i] for i in range(len(prompt_ids))]
        leaders = [g[0] for g in groups]
        # Stage 1: one think block per group (per row when sampling).
        blocks = self.decoder.think(
            model,
            [prompt_ids[i] for i in leaders],
            [modes[i] for i in leaders],
            self.settings,
            self.think_sampler,
        )
        thinks = [b[0] for b in blocks]
        # Stage 2: SIDs under the trie.
        heads = [prompt_ids[i] + thinks[k].ids for k, i in enumerate(leaders)]
        if self.decoding == "beam":
            answers = self._beam_answers(model, heads, [len(g) for g in groups])
        else:
            sampled = self.decoder.sample_sids(
                model, heads, self.temperature, self.num_sids, self.max_sid_tokens
            )
            answers = [[a] for a in sampled]
        n = len(prompt_ids)
        completion_ids: list[list[int]] = [[] for _ in range(n)]
        env_mask: list[list[int]] = [[] for _ in range(n)]
        sid_start = [0] * n
        beam_rank: list[int | None] = [None] * n
        for k, group in enumerate(groups):
            think = thinks[k]
            for rank, row in enumerate(group):
                answer = answers[k][rank]
                completion_ids[row] = think.ids + answer
                env_mask[row] = think.mask + [1] * len(answer)
                sid_start[row] = len(think.ids)
                beam_rank[row] = rank if self.decoding == "beam" else None
        return Rollout(prompt_ids, completion_ids, env_mask, sid_start, list(modes), beam_rank)

    def _beam_answers(self, model, heads: list[list[int]], sizes: list[int]) -> list[list[list[int]]]:
        """Top-`size` beams per head (one beam search per group size, in the decoder).

        When the trie has fewer SIDs than a group has rows, the best beam fills the missing ranks.
        """
        beams, scores = self.decoder.sid_beams(model, heads, sizes, self.num_sids)
        out, start = [], 0
        for size in sizes:
            ranked = [
                self.decoder.until_eos(beams[b])
                for b in range(start, start + size)
                if scores[b] != float("-inf")
            ]
            out.append(ranked + [ranked[0]] * (size - len(ranked)))
            start += size
        return out


def _groups(prompt_ids: list[list[int]], group_size: int) -> list[list[int]]:
    """Runs of consecutive identical prompts, each at most `group_size` long (TRL repeats a
    prompt `num_generations` times in a row)."""
    groups: list[list[int]] = []
    for i, p in enumerate(prompt_ids):
        if groups and prompt_ids[groups[-1][0]] == p and len(groups[-1]) < max(group_size, 1):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


# ---------------------------------------------------------------------- log-probs


def sid_starts(completion_ids: torch.Tensor, think_close_id: int, answer_sep_len: int) -> torch.Tensor:
    """Per row, the completion index where the SID part starts: after the first `</think>` and
    the `answer_sep_len` forced separator tokens (0 when the completion has no `</think>`,
    i.e. the prompt already ended with the think block)."""
    is_close = completion_ids == think_close_id
    has = is_close.any(dim=1)
    first = is_close.int().argmax(dim=1)
    return torch.where(has, first + 1 + answer_sep_len, torch.zeros_like(first))


def constrained_log_probs(
    trie, logits: torch.Tensor, completion_ids: torch.Tensor, sid_start: torch.Tensor, num_sids: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token log-probs of `completion_ids`, constrained logits) under the trie.

    `logits[b, t]` are the (temperature-scaled) logits that predicted `completion_ids[b, t]`.
    Positions from `sid_start[b]` on are renormalised over the tokens the trie allows there
    (with the same `num_sids` as generation); earlier positions (the think block) keep the
    free distribution. Positions where the trie allows nothing keep their raw logits, and
    tokens with no probability get log-prob 0 rather than -inf, so positions the loss masks
    out (padding) cannot turn it into NaN.
    """
    constrained = trie.constrain_logits(logits, completion_ids, sid_start, num_sids=num_sids)
    dead = (constrained == float("-inf")).all(dim=-1, keepdim=True)
    constrained = torch.where(dead, logits, constrained)
    logp = torch.log_softmax(constrained.float(), dim=-1)
    token_logp = logp.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    token_logp = token_logp.masked_fill(~torch.isfinite(token_logp), 0.0)
    return token_logp, constrained


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position; -inf entries (forbidden tokens) contribute 0."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    return -(p * logp.masked_fill(p == 0, 0.0)).sum(-1)
