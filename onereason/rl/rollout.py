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
from transformers import GenerationConfig

from onereason.sid_beam import left_padded
from onereason.thinking import EMPTY_THINK, SWITCH, THINK_CLOSE, THINK_OPEN


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
    """Generate think-then-SID completions with a `SIDTrie` holding the SID part to the catalogue."""

    def __init__(
        self,
        trie,
        tokenizer,
        think_budget: int = 128,
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
        self.trie = trie
        self.tokenizer = tokenizer
        self.think_budget = think_budget
        self.num_sids = num_sids
        self.temperature = temperature
        self.decoding = decoding
        self.max_sid_tokens = max_sid_tokens
        self.think_sampler = think_sampler
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        self.think_close_id = tokenizer.convert_tokens_to_ids(THINK_CLOSE)
        if self.think_close_id is None or self.think_close_id == tokenizer.unk_token_id:
            raise ValueError(
                f"the tokenizer has no {THINK_CLOSE} token; two-stage rollouts need Qwen3-style think tokens"
            )
        self.open_ids = encode(THINK_OPEN + "\n")
        self.newline_ids = encode("\n")
        self.answer_sep_ids = encode("\n\n")  # between </think> and the SIDs
        self.empty_think_ids = encode(EMPTY_THINK)
        close_forced = [*self.newline_ids, self.think_close_id, *self.answer_sep_ids]
        self.close_forced_ids = close_forced
        eos = tokenizer.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    @property
    def max_completion_tokens(self) -> int:
        """The longest completion this generator can produce."""
        think = len(self.open_ids) + self.think_budget + len(self.close_forced_ids)
        return max(think, len(self.empty_think_ids)) + self.num_sids * self.max_sid_tokens + 1

    # ------------------------------------------------------------------ public

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
        thinks = self._think(model, [prompt_ids[i] for i in leaders], [modes[i] for i in leaders])
        # Stage 2: SIDs under the trie.
        heads = [prompt_ids[i] + thinks[k][0] for k, i in enumerate(leaders)]
        if self.decoding == "beam":
            answers = self._beam_answers(model, heads, [len(g) for g in groups])
        else:
            answers = [[a] for a in self._sample_answers(model, heads)]
        n = len(prompt_ids)
        completion_ids: list[list[int]] = [[] for _ in range(n)]
        env_mask: list[list[int]] = [[] for _ in range(n)]
        sid_start = [0] * n
        beam_rank: list[int | None] = [None] * n
        for k, group in enumerate(groups):
            think_ids, think_mask = thinks[k]
            for rank, row in enumerate(group):
                answer = answers[k][rank]
                completion_ids[row] = think_ids + answer
                env_mask[row] = think_mask + [1] * len(answer)
                sid_start[row] = len(think_ids)
                beam_rank[row] = rank if self.decoding == "beam" else None
        return Rollout(prompt_ids, completion_ids, env_mask, sid_start, list(modes), beam_rank)

    # ------------------------------------------------------------------ stage 1

    def _think(
        self, model, prompts: list[list[int]], modes: Sequence[str]
    ) -> list[tuple[list[int], list[int]]]:
        """Per prompt: (ids of the think block up to and including the forced `\\n\\n`, env mask)."""
        out: list[tuple[list[int], list[int]] | None] = [None] * len(prompts)
        thinking = [i for i, m in enumerate(modes) if m == "think"]
        for i, m in enumerate(modes):
            if m != "think":
                out[i] = (list(self.empty_think_ids), [0] * len(self.empty_think_ids))
        heads = [prompts[i] + self.open_ids for i in thinking]
        if self.think_sampler is not None:
            # Every prompt goes to the sampler, not only the thinking ones: TRL's vLLM generation
            # gathers prompts across ranks and slices the results back assuming each rank sent as
            # many. The no-think rows' samples are dropped.
            every = self.think_sampler([p + self.open_ids for p in prompts])
            sampled = [list(every[i])[: self.think_budget] for i in thinking]
        elif heads:
            config = GenerationConfig(
                do_sample=True,
                temperature=self.temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=self.think_budget,
                eos_token_id=[self.think_close_id, *self.eos_ids],
                pad_token_id=self.pad_id,
            )
            sampled = self._generate(model, heads, config)
        else:
            sampled = []
        for i, new in zip(thinking, sampled):
            trace, mask = self._close_trace(new)
            out[i] = (self.open_ids + trace, [0] * len(self.open_ids) + mask)
        return out  # type: ignore[return-value]

    def _close_trace(self, new: list[int]) -> tuple[list[int], list[int]]:
        """Sampled think tokens → (tokens through the forced `\\n\\n`, mask); closes an unfinished trace."""
        if self.think_close_id in new:
            cut = new.index(self.think_close_id) + 1
            return new[:cut] + self.answer_sep_ids, [1] * cut + [0] * len(self.answer_sep_ids)
        stop = next((j for j, t in enumerate(new) if t in self.eos_ids), len(new))
        kept = new[:stop]  # an EOS inside the think block is dropped: the turn cannot end before the answer
        return kept + self.close_forced_ids, [1] * len(kept) + [0] * len(self.close_forced_ids)

    # ------------------------------------------------------------------ stage 2

    def _answer_config(self, **kwargs) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=self.num_sids * self.max_sid_tokens + 1,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            **kwargs,
        )

    def _sample_answers(self, model, heads: list[list[int]]) -> list[list[int]]:
        config = self._answer_config(do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0)
        return [self._until_eos(a) for a in self._generate(model, heads, config, constrained=True)]

    def _beam_answers(self, model, heads: list[list[int]], sizes: list[int]) -> list[list[list[int]]]:
        """Top-`size` beams per head (heads with the same group size are batched together)."""
        out: list[list[list[int]] | None] = [None] * len(heads)
        for size in sorted(set(sizes)):
            which = [k for k, s in enumerate(sizes) if s == size]
            config = self._answer_config(
                do_sample=False, num_beams=size, num_return_sequences=size, early_stopping=True
            )
            beams = self._generate(model, [heads[k] for k in which], config, constrained=True)
            for j, k in enumerate(which):
                out[k] = [self._until_eos(b) for b in beams[j * size : (j + 1) * size]]
        return out  # type: ignore[return-value]

    def _until_eos(self, ids: list[int]) -> list[int]:
        for j, t in enumerate(ids):
            if t in self.eos_ids:
                return ids[: j + 1]
        return ids

    def _generate(self, model, heads: list[list[int]], config: GenerationConfig, constrained: bool = False):
        """Left-padded batch generation; returns the new tokens of each returned sequence."""
        device = next(model.parameters()).device
        input_ids, attention_mask = left_padded(heads, self.pad_id)
        width = input_ids.shape[1]
        kwargs = {}
        if constrained:
            kwargs["logits_processor"] = [self.trie.logits_processor(width, num_sids=self.num_sids)]
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=config,
            **kwargs,
        )
        return [row.tolist() for row in out[:, width:].cpu()]


def sid_token_length(index, tokenizer, sample: int = 1000) -> int:
    """Tokens of the longest SID among the first `sample` items (SID formats have a fixed length)."""
    items = index.item_ids[:sample]
    return max(len(tokenizer(index.sid_text(i), add_special_tokens=False)["input_ids"]) for i in items)


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
    # Spare columns of padding on the right: `SIDTrie.constrain_logits` reads up to
    # sid_length-1 columns past a position that starts a new SID, and indexed past the end
    # when a row's SID part ended exactly at the last column (reported to the trie's owner).
    spare = getattr(trie, "sid_length", 1)
    padded_ids = torch.nn.functional.pad(completion_ids, (0, spare), value=0)
    padded_logits = torch.nn.functional.pad(logits, (0, 0, 0, spare))
    constrained = trie.constrain_logits(padded_logits, padded_ids, sid_start, num_sids=num_sids)[
        :, : logits.size(1)
    ]
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
