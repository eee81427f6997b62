"""The two-stage decoder: think freely, then name items under the SID trie.

Every place that makes a recommender answer (RL rollouts, rejection sampling in unify,
evaluation) decodes the same way, here:

1. **think** (rows in `think` mode): `<think>\\n` is forced, then a trace is sampled (or,
   with `ThinkSettings.search="beam"`, the most probable traces are found by beam search) until
   the model writes `</think>` or spends `think_budget` tokens, on transformers
   (`generate`) or on any `sampler(heads) -> tokens` (vLLM in RL and evaluation). A trace
   that runs out, or ends the turn early (that EOS is dropped: the answer must follow), is
   closed with a forced `\\n</think>`; `\\n\\n` is forced after `</think>`. Rows in
   `no_think` mode get the empty block `<think>\\n\\n</think>\\n\\n`, forced.
2. **answer**: SIDs under the trie, either the top-K beams of
   `onereason.sid_beam.constrained_beam_search` (scores are log p(SID, EOS | head)) or
   sampled by `generate` with the trie's logits processor. K may differ per head
   (`sid_beams` takes one count per head): a budget of beams shared by several think
   blocks of one prompt (`split_beams`) is spent, not multiplied, by sampling more traces.

A `ThinkBlock` keeps, per think block, its token ids and which of them were sampled
(`mask`: 1 sampled, 0 forced), which RL needs for its loss and evaluation for its think
statistics. `THINK_BUDGET` is the one default think budget of every stage.

**Think stage on vLLM.** A thinking evaluation spends almost all its time sampling traces
and very little decoding the SIDs that follow; vLLM is much faster at the first, but its
beam search takes no logits processor, so the SIDs stay on `constrained_beam_search` over
the transformers model. With `think_backend: vllm` evaluation loads the checkpoint twice
on the GPU (vLLM with `vllm_gpu_memory_utilization` of the memory, and transformers);
`VllmThinkSampler` samples like the transformers path (same temperature / top-p / top-k /
budget, stop at `</think>` or EOS, `think_samples` per prompt). RL uses TRL's own vLLM
generation instead (TRL syncs the policy weights), through the same `sampler` hook.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from transformers import GenerationConfig

from onereason.sid_beam import constrained_beam_search, left_padded
from onereason.thinking import EMPTY_THINK, MODES, THINK_CLOSE, THINK_OPEN

THINK_BUDGET = 128  # most tokens sampled inside <think>, unless a recipe says otherwise

ThinkSampler = Callable[[list[list[int]]], Sequence[Sequence[int]]]
# search(heads, k) -> (k answers per head, flattened head by head; their scores)
BeamSearch = Callable[[list[list[int]], int], tuple[list[list[int]], list[float]]]


BACKENDS = ("transformers", "vllm", "auto")


def vllm_installed() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    """`auto` -> vllm when importable, else transformers; `vllm` without vLLM is an error now, not mid-run.

    `backend` is one of `BACKENDS` (`DecodingConfig` checks it)."""
    if backend == "auto":
        return "vllm" if vllm_installed() else "transformers"
    if backend == "vllm" and not vllm_installed():
        raise ImportError(
            "think_backend: vllm needs vLLM (pip install vllm, on a GPU machine); or use transformers"
        )
    return backend


def completion_ids(completion, eos_id: int) -> list[int]:
    """A vLLM `CompletionOutput`'s tokens, ending in the token it stopped at.

    vLLM reports why a sequence stopped (`finish_reason` 'stop' with `stop_reason` = the stop
    token id, or None for EOS; 'length' for the budget) and, depending on the version and on
    whether the token is special, may leave that token out of `token_ids`. The caller parses
    `</think>` / EOS positions, so the stop token is put back when missing.
    """
    ids = list(completion.token_ids)
    if completion.finish_reason == "stop" and not isinstance(completion.stop_reason, str):
        stop = eos_id if completion.stop_reason is None else completion.stop_reason
        if not ids or ids[-1] != stop:
            ids.append(stop)
    return ids


class VllmThinkSampler:
    """`sampler(heads, seed)` -> `think_samples` sampled continuations per head, in head order."""

    def __init__(
        self,
        model_path: str,
        temperature: float,
        top_p: float,
        top_k: int,
        max_tokens: int,
        samples: int,
        stop_ids: Sequence[int],
        eos_id: int,
        gpu_memory_utilization: float = 0.3,
        dtype: str = "auto",
        seed: int = 0,
    ):
        from vllm import LLM

        self.llm = LLM(
            model=str(model_path),
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=True,  # `think_samples` > 1 share their prompt
        )
        self.settings = dict(
            n=samples,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_tokens=max_tokens,
            stop_token_ids=list(stop_ids),
            skip_special_tokens=False,
        )
        self.eos_id = eos_id

    def __call__(self, heads: Sequence[Sequence[int]], seed: int) -> list[list[int]]:
        from vllm import SamplingParams

        params = SamplingParams(seed=seed, **self.settings)
        outputs = self.llm.generate([{"prompt_token_ids": list(h)} for h in heads], params, use_tqdm=False)
        return [completion_ids(c, self.eos_id) for out in outputs for c in out.outputs]


THINK_SEARCHES = ("sample", "beam")


@dataclass(frozen=True)
class ThinkSettings:
    """How the think stage finds its traces: budget, traces per prompt, and `search`:

    - `sample` (temperature / top-p / top-k): independent draws, which may repeat one
      another (a Monte-Carlo sample of the traces);
    - `beam`: the `samples` most probable distinct traces by beam search, each with its
      log-probability (`ThinkBlock.log_prob`), so a merge can weight each trace's answers by
      how likely the trace is. Deterministic; the sampling settings are not used.
    """

    budget: int = THINK_BUDGET
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    samples: int = 1
    search: str = "sample"

    def __post_init__(self):
        if self.budget < 1 or self.samples < 1:
            raise ValueError(f"think budget and samples must be >= 1, got {self.budget} and {self.samples}")
        if self.search not in THINK_SEARCHES:
            raise ValueError(f"think search must be one of {THINK_SEARCHES}, got {self.search!r}")


@dataclass
class ThinkBlock:
    """One think block, from `<think>` through the `\\n\\n` before the answer."""

    ids: list[int]
    mask: list[int]  # 1 where the model sampled the token, 0 where it was forced
    n_sampled: int = 0
    exhausted: bool = False  # the budget ran out before `</think>`
    trace_ids: list[int] = field(default_factory=list)  # the trace itself, without tags
    log_prob: float | None = None  # log p(trace | prompt) when beam search found it; None when sampled


def log_sum_exp(values: Sequence[float]) -> float:
    """log(sum(exp(v))), without overflow."""
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def trace_log_weights(blocks: Sequence[ThinkBlock]) -> list[float]:
    """How much each of one prompt's traces counts when their answers are merged (log, summing to 1).

    Sampled traces count alike (1/S each: the mean over a Monte-Carlo sample); traces found
    by beam search count by their probability, renormalised over the ones found, so that
    the merge estimates p(answer | prompt) = sum over traces of p(trace) p(answer | trace).
    """
    if len(blocks) > 1 and all(b.log_prob is not None for b in blocks):
        norm = log_sum_exp([b.log_prob for b in blocks])
        return [b.log_prob - norm for b in blocks]
    return [-math.log(len(blocks))] * len(blocks)


def sid_token_length(index, tokenizer, sample: int = 1000) -> int:
    """Tokens of the longest SID among the first `sample` items (SID formats have a fixed length)."""
    items = index.item_ids[:sample]
    return max(len(tokenizer(index.sid_text(i), add_special_tokens=False)["input_ids"]) for i in items)


def split_beams(total: int, parts: int) -> list[int]:
    """`total` beams shared by `parts` heads as evenly as possible; the first heads get the remainder.

    Sampling more traces then spends the same beam budget instead of multiplying it, so a
    thinking run and a non-thinking run compare at equal decoding cost (10 beams over 3
    traces: 4, 3, 3). Every head needs at least one beam.
    """
    if parts < 1 or total < parts:
        raise ValueError(f"{total} beams cannot be shared by {parts} heads: each needs at least one")
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def by_beam_count(heads: Sequence[Sequence[int]], counts: Sequence[int], search: BeamSearch):
    """`search` once per distinct beam count, its answers put back head by head: (answers, scores).

    A head's count is the width of its own beam search, never a cut of a wider one (the
    top 3 of a 6-beam search are not what a 3-beam search finds), so heads are batched only
    with heads of the same count.
    """
    if len(counts) != len(heads):
        raise ValueError(f"{len(heads)} heads but {len(counts)} beam counts")
    per_head: list = [None] * len(heads)
    for k in dict.fromkeys(counts):
        which = [h for h, c in enumerate(counts) if c == k]
        answers, scores = search([list(heads[h]) for h in which], k)
        for j, h in enumerate(which):
            per_head[h] = (answers[j * k : (j + 1) * k], scores[j * k : (j + 1) * k])
    return [a for answers, _ in per_head for a in answers], [s for _, scores in per_head for s in scores]


class TwoStageDecoder:
    """Think blocks and trie-constrained SID answers for token-id prompts, with one tokenizer and trie."""

    def __init__(self, tokenizer, trie=None, eos_ids: Sequence[int] | None = None):
        """`eos_ids`: the tokens that end a turn (default: the tokenizer's EOS)."""
        self.tokenizer = tokenizer
        self.trie = trie
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        self.think_close_id = tokenizer.convert_tokens_to_ids(THINK_CLOSE)
        if self.think_close_id is None or self.think_close_id not in tokenizer.get_vocab().values():
            raise ValueError(
                f"the tokenizer has no {THINK_CLOSE} token: two-stage decoding needs Qwen3-style think tokens"
            )
        self.open_ids = encode(THINK_OPEN + "\n")
        self.sep_ids = encode("\n\n")  # between </think> and the answer
        self.forced_close_ids = [*encode("\n"), self.think_close_id, *self.sep_ids]
        self.empty_think_ids = encode(EMPTY_THINK)
        if eos_ids is None:
            eos = tokenizer.eos_token_id
            eos_ids = [eos] if isinstance(eos, int) else list(eos)
        self.eos_ids = list(eos_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    def longest_think(self, budget: int) -> int:
        """Tokens of the longest think block with this budget (forced tags included)."""
        return max(len(self.open_ids) + budget + len(self.forced_close_ids), len(self.empty_think_ids))

    # ------------------------------------------------------------------ stage 1

    def empty_block(self) -> ThinkBlock:
        return ThinkBlock(list(self.empty_think_ids), [0] * len(self.empty_think_ids))

    def written_block(self, trace: str) -> ThinkBlock:
        """A think block holding `trace` as written elsewhere (nothing sampled), tokenized as
        SFT reads the same text."""
        ids = self.tokenizer(f"{THINK_OPEN}\n{trace.strip()}\n{THINK_CLOSE}\n\n", add_special_tokens=False)[
            "input_ids"
        ]
        trace_ids = self.tokenizer(trace.strip(), add_special_tokens=False)["input_ids"]
        return ThinkBlock(ids, [0] * len(ids), trace_ids=trace_ids)

    def think(
        self,
        model,
        prompts: Sequence[Sequence[int]],
        modes: Sequence[str],
        settings: ThinkSettings,
        sampler: ThinkSampler | None = None,
    ) -> list[list[ThinkBlock]]:
        """Per prompt, `settings.samples` think blocks (one empty block for `no_think` prompts).

        `sampler(heads)` returns `settings.samples` continuations per head, in head order; it
        receives every prompt, thinking or not (TRL's vLLM generation slices results by rank
        assuming equal counts), and the samples of `no_think` prompts are dropped.
        """
        if len(prompts) != len(modes):
            raise ValueError(f"{len(prompts)} prompts but {len(modes)} modes")
        unknown = sorted(set(modes) - set(MODES))
        if unknown:
            raise ValueError(f"mode must be 'think' or 'no_think', got {unknown}")
        thinking = [i for i, m in enumerate(modes) if m == "think"]
        n = settings.samples
        scores = None  # beam search's log p(trace | prompt), one per trace
        if sampler is not None and settings.search == "beam":
            raise ValueError("think search 'beam' runs on transformers: an external sampler only samples")
        if sampler is not None:
            every = list(sampler([list(p) + self.open_ids for p in prompts]))
            sampled = [list(every[i * n + s])[: settings.budget] for i in thinking for s in range(n)]
        elif thinking:
            if settings.search == "beam":  # length_penalty 0: a beam's score is log p(trace | prompt)
                search = dict(do_sample=False, num_beams=n, length_penalty=0.0, early_stopping=True)
            else:
                search = dict(
                    do_sample=True,
                    temperature=settings.temperature,
                    top_p=settings.top_p,
                    top_k=settings.top_k,
                )
            config = GenerationConfig(
                **search,
                max_new_tokens=settings.budget,
                num_return_sequences=n,
                eos_token_id=[self.think_close_id, *self.eos_ids],
                pad_token_id=self.pad_id,
                return_dict_in_generate=True,
                output_scores=settings.search == "beam",
            )
            heads = [list(prompts[i]) + self.open_ids for i in thinking]
            sampled, scores = self.generate(model, heads, config)
        else:
            sampled = []
        out: list[list[ThinkBlock]] = [[self.empty_block()] for _ in prompts]
        for k, i in enumerate(thinking):
            out[i] = [self.close_trace(new) for new in sampled[k * n : (k + 1) * n]]
            if settings.search == "beam" and scores is not None:
                for block, score in zip(out[i], scores[k * n : (k + 1) * n]):
                    block.log_prob = score
        return out

    def close_trace(self, new: Sequence[int]) -> ThinkBlock:
        """Sampled think tokens (possibly right-padded) → the closed block, forced tags included."""
        new = list(new)
        stop = next((j for j, t in enumerate(new) if t in self.eos_ids or t == self.think_close_id), None)
        if stop is not None and new[stop] == self.think_close_id:
            kept = new[: stop + 1]
            return ThinkBlock(
                self.open_ids + kept + self.sep_ids,
                [0] * len(self.open_ids) + [1] * len(kept) + [0] * len(self.sep_ids),
                n_sampled=len(kept),
                trace_ids=new[:stop],
            )
        # budget spent, or the turn ended early: that EOS is dropped, the answer must follow
        kept = new[:stop]
        return ThinkBlock(
            self.open_ids + kept + self.forced_close_ids,
            [0] * len(self.open_ids) + [1] * len(kept) + [0] * len(self.forced_close_ids),
            n_sampled=len(kept),
            exhausted=stop is None,
            trace_ids=kept,
        )

    # ------------------------------------------------------------------ stage 2

    def sid_beams(
        self,
        model,
        heads: Sequence[Sequence[int]],
        num_beams: int | Sequence[int],
        num_sids: int = 1,
        view_weights: Sequence[float] | None = None,
    ) -> tuple[list[list[int]], list[float]]:
        """The top trie-valid answers of every head, flattened head by head, with scores.

        `num_beams` is one count for every head or one per head (`by_beam_count`). A beam
        ends with EOS then padding; when the trie has fewer answers than beams, the missing
        beams have score `-inf` (callers skip them). With `view_weights` (V of them) each head
        is V token lists, the views of one request, searched together: a SID scores
        sum_v w_v log p(SID | view v) (`onereason.sid_beam`, "views").
        """
        counts = [num_beams] * len(heads) if isinstance(num_beams, int) else list(num_beams)
        weights = tuple(view_weights or (1.0,))
        return by_beam_count(heads, counts, lambda hs, k: self._sid_search(model, hs, k, num_sids, weights))

    def _sid_search(self, model, heads: list, num_beams: int, num_sids: int, view_weights=(1.0,)):
        device = next(model.parameters()).device
        if len(view_weights) > 1:  # each head is its views: stack them view by view
            heads = [list(head[v]) for v in range(len(view_weights)) for head in heads]
        input_ids, attention = left_padded(heads, self.pad_id)
        sequences, scores = constrained_beam_search(
            model,
            input_ids.to(device),
            attention.to(device),
            self._trie(),
            num_beams=num_beams,
            num_sids=num_sids,
            pad_token_id=self.pad_id,
            view_weights=view_weights,
        )
        return sequences.flatten(0, 1).tolist(), scores.flatten().tolist()

    def sample_sids(
        self, model, heads: Sequence[Sequence[int]], temperature: float, num_sids: int, max_sid_tokens: int
    ) -> list[list[int]]:
        """One sampled trie-valid answer per head, through its EOS."""
        config = GenerationConfig(
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=num_sids * max_sid_tokens + 1,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )
        width = max(len(h) for h in heads)
        processor = self._trie().logits_processor(width, num_sids=num_sids)
        new, _ = self.generate(model, heads, config, logits_processor=[processor])
        return [self.until_eos(a) for a in new]

    def until_eos(self, ids: Sequence[int]) -> list[int]:
        """`ids` through its first EOS (all of it when there is none)."""
        for j, t in enumerate(ids):
            if t in self.eos_ids:
                return list(ids[: j + 1])
        return list(ids)

    # ------------------------------------------------------------------ plumbing

    def generate(
        self, model, heads: Sequence[Sequence[int]], config: GenerationConfig, logits_processor=None
    ):
        """Left-padded batch `generate`: (new tokens per returned sequence, sequence scores or None)."""
        device = next(model.parameters()).device
        input_ids, attention = left_padded([list(h) for h in heads], self.pad_id)
        width = input_ids.shape[1]
        kwargs = {"logits_processor": logits_processor} if logits_processor else {}
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            generation_config=config,
            **kwargs,
        )
        sequences = out.sequences if hasattr(out, "sequences") else out
        scores = getattr(out, "sequences_scores", None)
        new = [row.tolist() for row in sequences[:, width:].cpu()]
        return new, (scores.float().cpu().tolist() if scores is not None else None)

    def _trie(self):
        if self.trie is None:
            raise ValueError("SID answers need a SIDTrie (TwoStageDecoder(tokenizer, trie=...))")
        return self.trie
