"""Top-K items per user by trie-constrained beam search, with or without thinking, or both.

Every mode shares the prompt (the task's chat, its switch set by `switch_mode`) and spends
the same beam budget, `num_beams` SID beams per user in all (`head_beams`), so a thinking
run is compared with a non-thinking run at equal decoding cost; the modes differ only in
what comes before the SIDs:

- **no_think**: prompt + `<think>\\n\\n</think>\\n\\n` (forced; the model never chooses its mode),
  then `num_beams` beams under the SID trie;
- **think**: prompt + `<think>\\n` (forced), then the trace is *sampled* with its own
  temperature / top-p / top-k until `</think>` or `think_budget` tokens (an unfinished trace
  is closed with a forced `\\n</think>\\n\\n`), then the same constrained beam search.
  With `think_samples = S > 1` (test-time scaling, e.g. 5 traces x 2 beams for 10 beams)
  S traces are sampled per user and share the beams (`onereason.decoding.split_beams`:
  `num_beams / S` each, the first traces getting the remainder; S may not exceed
  `num_beams`). The beams of all S searches are merged: `merge="mean_prob"` scores a SID
  by its probability averaged over the traces (a Monte-Carlo estimate of p(SID | prompt)
  with the trace marginalised out; a SID missing from a trace's beams counts 0 there),
  `merge="max"` by its best log-probability. With `think_search="beam"` the S traces are
  the S most probable ones (beam search over the think stage, nothing sampled), and
  `mean_prob` weights each trace by its probability renormalised over the S
  (`onereason.decoding.trace_log_weights`): sum over traces of p(trace) p(SID | trace), over
  distinct traces, where samples at a low temperature mostly repeat the likeliest one;
- **race**: half the beams go to thinking heads (the `think` mode's S traces, sharing
  `ceil(num_beams / 2)` beams) and half to a non-thinking head (`floor(num_beams / 2)`);
  the traces are merged among themselves as in `think`, then both sides are merged into
  one list. `race_merge="rank"` (the default) merges by rank: a SID scores the sum over
  the sides of 1 / (RRF_K + its rank there), so the two lists interleave and a SID both
  found rises. A merge by raw score (`race_merge="score"`) is not fair to the two sides:
  after a trace the model gives its SIDs far higher log-probabilities than without one,
  so that merge is the thinking list alone (measured on the quickstart: every top-10 SID
  from the thinking side). With `score`, a SID both sides found keeps its *best* score,
  not the log-sum-exp (two contexts' probabilities do not add). Each ranked SID records
  the mode it ranked best in, or whose score it kept (`ranked_modes`), and the report gives
  the share of each mode in the top-10 (`evaluation.metrics.mode_shares`).

- **adaptive**: think first, then answer after the trace only when it decides: when it names
  the interest the next item serves (`evaluation.traces.read_trace`'s `chosen_label`; a short
  trace's "interest X, due now"). A trace that leaves the choice open ("none is due", or a
  full trace's fallback) is spent but not followed: all `num_beams` beams go to the
  non-thinking head, whose list covers the open interests as the plain model's does. One trace
  per user (`think_samples` 1); `ranked_modes` says which side answered each user.

`trace_source="history"` puts the task builder's short trace of the user's history in the
think block instead of a sampled one (`evaluation.traces.history_tracer`; a short trace reads
the history only, never the target), and the model writes only the SIDs after it: what a
*right* trace is worth to this model, the ceiling of teaching it to write its own.

`view_weight=[w0, w1, ...]` searches every head together with its **views**: the same prompt
with the history cut to `view_items` items, its last ones for view 0 and ending one item
earlier for each view after it (`evaluation.protocols.history_viewer`, the task build's
renderer), each followed by the same think block. A SID scores log p(SID | prompt) +
sum_j w_j log p(SID | view j) (`onereason.sid_beam`, "views"): for a model trained on pair rows
the one-item views are their prompts, the item-to-item memory co-occurrence keeps over its
window, and the whole history reweighs it. Same beams, one more prompt per view.

Both stages run on `onereason.decoding.TwoStageDecoder`, the decoder RL rollouts use too.
SID answers are decoded by `onereason.sid_beam.constrained_beam_search`, which encodes each
head (prompt, or prompt + think block) once and copies its KV cache to the beams, instead
of `generate(num_beams=K)`, which encodes every head K times. Beam scores are the model's
summed log-probabilities of the SID tokens and EOS (every SID has the same length): the
trie removes continuations without renormalising, exactly as transformers' beam search
with the trie logits processor and `length_penalty=0` does, so a score is
log p(SID | context) under the model itself, which is also what the test-time-scaling
merge needs. If the catalogue has fewer SIDs than beams, the missing beams are skipped.
The returned list is the beams in score order, parsed back to SIDs token by token
(`index.parse` on the joined token strings, so decoding's spacing rules never matter). A
beam that is not exactly one catalogue SID is *invalid*: counted in `n_valid`, left out of
the ranking. With the trie every beam is valid by construction; the count guards a broken
trie or tokenizer.

`answer="term"` (Term-ID models; `no_think` and `think` only) decodes free text with the
same beams, reads `[term, term, …]` from each beam and grounds it to catalogue items with
`onereason.terms.ElasticGrounder`; beams contribute their grounded
items in beam order.

Latency: users are generated in batches, so a user's latency is its batch's wall time
divided by the batch size (use `batch_size=1` for true per-request latency).

Runs are written per shard (`<run>.shards/shard-NNNNN.jsonl`, each atomically), so an
interrupted evaluation restarts where it stopped; a manifest fingerprints the model, mode,
decoding settings and example keys, and a shard folder from a different setup is refused
rather than silently mixed in. Under `accelerate launch` each process takes every
n-th shard and all processes read the merged run at the end.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import GenerationConfig

from evaluation.protocols import EvalExample
from evaluation.traces import read_trace
from onereason.decoding import (
    BACKENDS,
    THINK_BUDGET,
    THINK_SEARCHES,
    ThinkBlock,
    ThinkSettings,
    TwoStageDecoder,
    VllmThinkSampler,
    by_beam_count,
    log_sum_exp,
    resolve_backend,
    split_beams,
    trace_log_weights,
)
from onereason.io import atomic_write_json, atomic_write_text
from onereason.terms import parse_answer_terms
from onereason.thinking import switch_mode
from onereason.vocab import check_itemic_tokens

logger = logging.getLogger(__name__)

EVAL_MODES = ("no_think", "think", "race", "adaptive")
TRACE_MODES = ("think", "race", "adaptive")  # the modes that write traces
MERGES = ("mean_prob", "max")
RACE_MERGES = ("rank", "score")
TRACE_SOURCES = (
    "model",
    "history",
)  # who writes the trace: the model samples it, or the builder reads the history
RRF_K = 60  # reciprocal-rank fusion's usual constant: ranks 1 and 2 differ little, so sides interleave
ANSWERS = ("sid", "term")
EVALUATE_WITH_ITS_INDEX = "evaluate with the index the model was trained with"


@dataclass
class DecodingConfig:
    """Decoding settings shared by every mode (only the `think_*` ones are thinking-only).

    `num_beams` is the beam budget per user of every mode (`head_beams`); `think_samples`
    traces share it."""

    num_beams: int = 20
    batch_size: int = 8
    think_budget: int = THINK_BUDGET
    think_temperature: float = 0.6
    think_top_p: float = 0.95
    think_top_k: int = 20
    think_samples: int = 1
    # sample | beam: the think_samples most probable traces, their answers weighted by p(trace)
    think_search: str = "sample"
    # model | history: the builder's trace of the history, nothing sampled (module doc)
    trace_source: str = "model"
    merge: str = "mean_prob"
    race_merge: str = "rank"
    # one weight per view (none: no view): every SID search also reads the prompt with its history
    # cut to `view_items` items, the last ones, then ending one item earlier per further view, and
    # scores a SID by log p(SID | prompt) + sum_j view_weight[j] * log p(SID | view j)
    view_weight: list[float] = field(default_factory=list)
    view_items: int = 1
    answer: str = "sid"
    max_answer_tokens: int = 48  # Term-ID answers only; SID answers use the SID length + EOS
    think_backend: str = "transformers"  # transformers | vllm | auto: who samples the think stage
    vllm_gpu_memory_utilization: float = 0.3  # think_backend vllm: its share of the GPU
    seed: int = 0

    def __post_init__(self):
        if self.num_beams < 1 or self.batch_size < 1 or self.think_samples < 1:
            raise ValueError("num_beams, batch_size and think_samples must be >= 1")
        if self.think_budget < 1:
            raise ValueError(f"think_budget must be >= 1, got {self.think_budget}")
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {self.merge!r}")
        if self.race_merge not in RACE_MERGES:
            raise ValueError(f"race_merge must be one of {RACE_MERGES}, got {self.race_merge!r}")
        if self.answer not in ANSWERS:
            raise ValueError(f"answer must be one of {ANSWERS}, got {self.answer!r}")
        if self.think_backend not in BACKENDS:
            raise ValueError(f"think_backend must be one of {BACKENDS}, got {self.think_backend!r}")
        if self.think_search not in THINK_SEARCHES:
            raise ValueError(f"think_search must be one of {THINK_SEARCHES}, got {self.think_search!r}")
        if self.think_search == "beam" and self.think_backend == "vllm":
            raise ValueError("think_search beam runs on transformers: use think_backend transformers")
        if self.trace_source not in TRACE_SOURCES:
            raise ValueError(f"trace_source must be one of {TRACE_SOURCES}, got {self.trace_source!r}")
        if self.trace_source == "history" and self.think_samples != 1:
            raise ValueError("trace_source history writes one trace per user: use think_samples 1")
        if isinstance(self.view_weight, (int, float)):  # one view, as YAML or Python often says it
            self.view_weight = [self.view_weight]
        self.view_weight = [float(w) for w in self.view_weight] if any(self.view_weight) else []
        if any(w < 0 for w in self.view_weight) or self.view_items < 1:
            raise ValueError(
                f"view_weight must be >= 0 and view_items >= 1, got {self.view_weight}, {self.view_items}"
            )
        if self.view_weight and self.answer != "sid":
            raise ValueError("view_weight weighs SID log-probabilities: it needs answer: sid")

    @property
    def view_weights(self) -> tuple[float, ...] | None:
        """The SID search's weights of (the prompt, its views...), or None: no view."""
        return (1.0, *self.view_weight) if self.view_weight else None


def head_beams(mode: str, cfg: DecodingConfig) -> list[tuple[str, int]]:
    """(kind of think block, beams) of each head a user gets in `mode`: `num_beams` beams in all.

    Thinking heads come first, one per trace; see the module doc for each mode's split.
    Impossible splits (more traces than beams) fail here, before any model loads.
    """
    if mode not in EVAL_MODES:
        raise ValueError(f"mode must be one of {EVAL_MODES}, got {mode!r}")
    if mode == "race" and cfg.answer != "sid":
        raise ValueError("mode race merges SID beams by score: it needs answer: sid")
    if mode == "adaptive" and cfg.think_samples != 1:
        raise ValueError("mode adaptive follows or sets aside one trace per user: use think_samples 1")
    try:
        if mode == "no_think":
            return [("no_think", cfg.num_beams)]
        thinking, plain = split_beams(cfg.num_beams, 2) if mode == "race" else (cfg.num_beams, 0)
        heads = [("think", k) for k in split_beams(thinking, cfg.think_samples)]
    except ValueError as e:
        raise ValueError(
            f"mode {mode} with num_beams {cfg.num_beams} and think_samples {cfg.think_samples}: {e}"
        ) from None
    return heads + ([("no_think", plain)] if plain else [])


class BeamRanker:
    """Ranks catalogue items for chat prompts with one model, tokenizer and item index."""

    def __init__(
        self,
        model,
        tokenizer,
        index,
        cfg: DecodingConfig,
        trie=None,
        model_path: str | None = None,
        history_trace: Callable[[Sequence[str]], str] | None = None,
        history_view: Callable[[EvalExample], list[dict]] | None = None,
    ):
        """`history_trace(history item ids)`: the trace of `trace_source="history"`;
        `history_view(example)`: its views (prompts with the history cut), one per `view_weight`
        (`evaluation.protocols.history_viewer`)."""
        if cfg.trace_source == "history" and history_trace is None:
            raise ValueError("trace_source history needs a history_trace (the task build's trace builder)")
        if cfg.view_weight and history_view is None:
            raise ValueError("view_weight needs a history_view (evaluation.protocols.history_viewer)")
        self.history_trace = history_trace
        self.history_view = history_view
        self.model = model
        self.tokenizer = tokenizer
        self.index = index
        self.cfg = cfg
        check_itemic_tokens(tokenizer, index, fix=EVALUATE_WITH_ITS_INDEX)
        if cfg.answer == "sid" and trie is None:
            from onereason.trie import SIDTrie

            trie = SIDTrie.from_index(index, tokenizer)
        self.trie = trie
        self.grounder = self._grounder() if cfg.answer == "term" else None
        self.encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
        eos = model.generation_config.eos_token_id
        eos = eos if eos is not None else tokenizer.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos)
        if tokenizer.eos_token_id not in eos_ids:
            eos_ids.insert(0, tokenizer.eos_token_id)
        self.decoder = TwoStageDecoder(tokenizer, trie, eos_ids)
        self.eos_ids, self.pad_id = self.decoder.eos_ids, self.decoder.pad_id
        self.think_backend = resolve_backend(cfg.think_backend)
        if self.think_backend == "vllm" and not model_path:
            raise ValueError("think_backend: vllm needs the checkpoint's path (vLLM loads it itself)")
        self.model_path = model_path
        self._vllm: VllmThinkSampler | None = None  # started on the first thinking batch

    def _grounder(self):
        from onereason.terms import ElasticGrounder

        if self.index.term_ids is None:
            raise ValueError("answer='term' needs an item index with Term IDs (build-ids with terms enabled)")
        return ElasticGrounder(self.index.item_ids, [self.index.terms(i) for i in self.index.item_ids])

    # ------------------------------------------------------------------ prompts

    def prompt_ids(self, messages: list[dict], mode: str) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            switch_mode(messages, mode), add_generation_prompt=True, tokenize=False
        )
        return self.encode(text)

    # ------------------------------------------------------------------ generation

    def _answers(self, heads: list, counts: list[int]):
        """(new tokens per beam, beam scores), head by head, `counts[h]` beams for head h:
        trie-constrained SID beams (a head is its views with `view_weight`) or free text."""
        if self.cfg.answer == "sid":
            return self.decoder.sid_beams(self.model, heads, counts, view_weights=self.cfg.view_weights)
        return by_beam_count(heads, counts, self._text_beams)

    def _text_beams(self, heads: list[list[int]], k: int):
        new, scores = self.decoder.generate(self.model, heads, self._text_config(k))
        return new, scores or [0.0] * len(new)  # one beam is greedy: no sequence scores

    def _think(self, prompts: list[list[int]]) -> list[list[ThinkBlock]]:
        """Per prompt, `think_samples` think blocks (on transformers or vLLM)."""
        cfg = self.cfg
        settings = ThinkSettings(
            cfg.think_budget, cfg.think_temperature, cfg.think_top_p, cfg.think_top_k, cfg.think_samples,
            cfg.think_search,
        )  # fmt: skip
        sampler = None
        if self.think_backend == "vllm":
            seed = int(torch.randint(2**31 - 1, ()).item())  # from the per-shard torch seed
            sampler = functools.partial(self._vllm_sampler(), seed=seed)
        return self.decoder.think(self.model, prompts, ["think"] * len(prompts), settings, sampler)

    def _vllm_sampler(self) -> VllmThinkSampler:
        if self._vllm is None:
            cfg = self.cfg
            self._vllm = VllmThinkSampler(
                self.model_path,
                cfg.think_temperature,
                cfg.think_top_p,
                cfg.think_top_k,
                cfg.think_budget,
                cfg.think_samples,
                stop_ids=[self.decoder.think_close_id, *self.eos_ids],
                eos_id=self.eos_ids[0],
                gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                seed=cfg.seed,
            )
        return self._vllm

    def _text_config(self, k: int) -> GenerationConfig:
        """Free-text (Term-ID) answers: `k` beams of at most `max_answer_tokens`."""
        beams = {"num_beams": k, "length_penalty": 0.0, "early_stopping": True} if k > 1 else {}
        return GenerationConfig(
            do_sample=False,
            num_return_sequences=k,
            **beams,
            max_new_tokens=self.cfg.max_answer_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            output_scores=True,
            return_dict_in_generate=True,
        )

    def trace_text(self, block: ThinkBlock) -> str:
        return self.tokenizer.decode(block.trace_ids, skip_special_tokens=True).strip()

    def trace_decides(self, block: ThinkBlock) -> bool:
        """Whether a trace names the interest the next item serves (mode `adaptive` follows it)."""
        return read_trace(self.trace_text(block)).chosen_label is not None

    def _tokens_text(self, ids: list[int]) -> str:
        kept = []
        for t in ids:
            if t in self.eos_ids or t == self.pad_id:
                break
            kept.append(t)
        if self.cfg.answer == "term":
            return self.tokenizer.decode(kept, skip_special_tokens=True)
        return "".join(self.tokenizer.convert_ids_to_tokens(kept))

    @torch.no_grad()
    def rank(self, examples: Sequence[EvalExample], mode: str) -> list[dict]:
        """Run records (see evaluation.metrics) for `examples` in `mode`, batch by batch."""
        out: list[dict] = []
        for start in range(0, len(examples), self.cfg.batch_size):
            out += self._rank_batch(examples[start : start + self.cfg.batch_size], mode)
        return out

    def _rank_batch(self, batch: Sequence[EvalExample], mode: str) -> list[dict]:
        plan = head_beams(mode, self.cfg)
        began = time.perf_counter()
        # each kind of head reads the prompt with its own switch, as its single-mode run does
        kinds = dict.fromkeys([kind for kind, _ in plan] + (["no_think"] if mode == "adaptive" else []))
        prompts = {kind: [self.prompt_ids(ex.messages, kind) for ex in batch] for kind in kinds}
        viewed = None  # with view_weight, each prompt's views: read with the same block
        if self.cfg.view_weight:
            views = [self.history_view(ex) for ex in batch]
            viewed = {kind: [[self.prompt_ids(v, kind) for v in vs] for vs in views] for kind in kinds}
        if "think" not in prompts:
            traces = None
        elif self.cfg.trace_source == "history":
            traces = [[self.decoder.written_block(self.history_trace(ex.history))] for ex in batch]
        else:
            traces = self._think(prompts["think"])
        plans = [plan] * len(batch)
        if mode == "adaptive":  # an open trace is set aside: the plain head takes every beam
            plain = [("no_think", self.cfg.num_beams)]
            plans = [plan if self.trace_decides(t[0]) else plain for t in traces]
        heads = []
        for u in range(len(batch)):
            blocks = iter(traces[u] if traces else [])
            for kind, _ in plans[u]:
                block = next(blocks) if kind == "think" else self.decoder.empty_block()
                head = prompts[kind][u] + block.ids
                heads.append((head, *[v + block.ids for v in viewed[kind][u]]) if viewed else head)
        new, scores = self._answers(heads, [k for u in range(len(batch)) for _, k in plans[u]])
        latency = (time.perf_counter() - began) / len(batch)
        records = []
        row = 0
        for u, ex in enumerate(batch):
            plan = plans[u]
            samples = traces[u] if traces else [self.decoder.empty_block()]
            weights = iter(trace_log_weights(samples))
            # (kind of head, text, log-prob, log-weight of its head among the heads of its kind)
            beams: list[tuple[str, str, float, float]] = []
            for kind, k in plan:
                weight = next(weights) if kind == "think" else 0.0
                for r in range(row, row + k):
                    if scores[r] != -math.inf:  # else the trie had fewer SIDs than beams: padding
                        beams.append((kind, self._tokens_text(new[r]), scores[r], weight))
                row += k
            records.append(self._record(ex, mode, samples, beams, plan, latency))
        return records

    # ------------------------------------------------------------------ beams -> ranking

    def _record(self, ex: EvalExample, mode: str, samples, beams, plan, latency: float) -> dict:
        if self.cfg.answer == "term":
            ranked_items, n_valid = self._ground(beams)
            ranked_sids = list(dict.fromkeys(self.index.sid_text(i) for i in ranked_items))
            scores: list[float] = []
            ranked_modes = [mode] * len(ranked_sids)  # term answers: think or no_think only
        else:
            ranked_sids, scores, ranked_modes, n_valid = self._merge(beams, Counter(k for k, _ in plan))
            ranked_items = [
                item for sid in ranked_sids for item in self.index.items_for_sid(self.index.parse(sid)[0])
            ]
        return {
            "key": ex.key,
            "user_id": ex.user_id,
            "mode": mode,
            "targets": list(ex.targets),
            "target_sids": list(dict.fromkeys(self.index.sid_text(t) for t in ex.targets if t in self.index)),
            "ranked_sids": ranked_sids,
            "ranked_items": ranked_items,
            "scores": scores,
            "ranked_modes": ranked_modes,
            "n_beams": len(beams),
            "n_valid": n_valid,
            "think_tokens": sum(s.n_sampled for s in samples) / len(samples),
            "think_budget_exhausted": any(s.exhausted for s in samples),
            "think": [self.trace_text(s) for s in samples] if mode in TRACE_MODES else [],
            "latency_s": latency,
        }

    def _merge(self, beams, heads: Counter) -> tuple[list[str], list[float], list[str], int]:
        """Valid beams -> (at most `num_beams` SIDs by merged score, best first; their scores;
        the kind of head each score came from; valid beams).

        Beams of heads of one kind (the traces) are merged by `merge` over `heads[kind]`
        heads, then the kinds by the best score (see the module doc).
        """
        per_sid: dict[tuple[str, str], list[tuple[float, float]]] = {}
        n_valid = 0
        for kind, text, score, weight in beams:
            sids = self.index.parse(text)
            if len(sids) != 1 or self.index.render(sids[0]) != text:
                continue
            n_valid += 1
            per_sid.setdefault((text, kind), []).append((score, weight))
        best: dict[str, tuple[float, str]] = {}
        for (sid, kind), sc in per_sid.items():
            merged = self._merge_scores(sc, heads[kind])
            if sid not in best or merged > best[sid][0]:
                best[sid] = (merged, kind)
        if len(heads) > 1 and self.cfg.race_merge == "rank":
            best = self._fuse_ranks(per_sid, heads)
        order = sorted(best, key=lambda s: -best[s][0])[: self.cfg.num_beams]  # stable: ties keep beam order
        return order, [best[s][0] for s in order], [best[s][1] for s in order], n_valid

    def _fuse_ranks(self, per_sid: dict, heads: Counter) -> dict[str, tuple[float, str]]:
        """Reciprocal-rank fusion of each kind's merged list: SID -> (score, kind it ranks best in)."""
        fused: dict[str, tuple[float, str, int]] = {}
        for kind in heads:
            mine = {sid: self._merge_scores(sc, heads[kind]) for (sid, k), sc in per_sid.items() if k == kind}
            for rank, sid in enumerate(sorted(mine, key=lambda s: -mine[s]), start=1):
                score, owner, owner_rank = fused.get(sid, (0.0, kind, rank))
                if rank < owner_rank:
                    owner, owner_rank = kind, rank
                fused[sid] = (score + 1.0 / (RRF_K + rank), owner, owner_rank)
        return {sid: (score, owner) for sid, (score, owner, _) in fused.items()}

    def _merge_scores(self, scored: list[tuple[float, float]], n_heads: int) -> float:
        """One SID's (log-prob, log-weight of its head) from `n_heads` heads of one kind -> its
        merged log-prob: `max`, its best log-prob; `mean_prob`, log sum_heads w p (a head whose
        beams missed the SID adds 0; weights from `trace_log_weights`)."""
        if self.cfg.merge == "max" or n_heads == 1:
            return max(s for s, _ in scored)
        return log_sum_exp([s + w for s, w in scored])

    def _ground(self, beams) -> tuple[list[str], int]:
        queries = [(text, parse_answer_terms(text)) for _, text, _, _ in beams]
        parsed = [q for _, q in queries if q]
        grounded = iter(self.grounder.ground_many(parsed, k=self.cfg.num_beams) if parsed else [])
        ranked: dict[str, None] = {}
        n_valid = 0
        for _, terms in queries:
            if not terms:
                continue
            items = next(grounded)
            n_valid += bool(items)
            for g in items:
                ranked.setdefault(g.item_id, None)
        return list(ranked), n_valid


# ---------------------------------------------------------------------- shards and resume


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def checkpoint_stamp(model_path: str) -> list:
    """(file, bytes, mtime ns) of a local checkpoint's weight files: a model retrained into the
    same folder is another model, and its shards must not resume the old one's. A Hub id (no
    local folder) is named by its id alone."""
    folder = Path(model_path)
    if not folder.is_dir():
        return []
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def run_fingerprint(model_path: str, mode: str, cfg: DecodingConfig, examples: Sequence[EvalExample]) -> str:
    decoding = {k: v for k, v in asdict(cfg).items() if k != "vllm_gpu_memory_utilization"}  # not a result
    payload = json.dumps(
        {
            "model": str(model_path),
            "weights": checkpoint_stamp(model_path),
            "mode": mode,
            "decoding": decoding,
            "heads": head_beams(mode, cfg),  # how the beams are shared: shards split otherwise never mix
            "keys": [e.key for e in examples],
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _jsonl(records: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def generate_run(
    ranker: BeamRanker,
    examples: Sequence[EvalExample],
    mode: str,
    run_path: str | Path | None = None,
    shard_size: int = 256,
    model_path: str = "",
    progress: bool = True,
) -> tuple[list[dict], float | None]:
    """(run records in example order, generation wall seconds) — resumable when `run_path` is given.

    The wall seconds are None when shards were read back: this call's time is not the run's, and
    `evaluation.metrics.generation_stats` then adds up the latencies each record kept."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    state = PartialState()
    shards = [list(examples[i : i + shard_size]) for i in range(0, len(examples), shard_size)]
    shard_dir = None
    if run_path is not None:
        shard_dir = Path(f"{run_path}.shards")
        fingerprint = run_fingerprint(model_path, mode, ranker.cfg, examples)
        manifest = shard_dir / "manifest.json"
        if manifest.exists():
            found = json.loads(manifest.read_text()).get("fingerprint")
            if found != fingerprint:
                raise ValueError(
                    f"{shard_dir} holds shards of a different evaluation (fingerprint {found}, this one "
                    f"{fingerprint}: model weights, mode, decoding or examples changed); delete it or use another out_dir"
                )
        elif state.is_main_process:
            atomic_write_json(
                manifest, {"fingerprint": fingerprint, "n_examples": len(examples), "shard_size": shard_size}
            )
        state.wait_for_everyone()
    mine = [i for i in range(len(shards)) if i % state.num_processes == state.process_index]
    todo = [i for i in mine if shard_dir is None or not (shard_dir / f"shard-{i:05d}.jsonl").exists()]
    if shard_dir is not None and len(todo) < len(mine):
        logger.info("%s: %d of %d shards already done, resuming", run_path, len(mine) - len(todo), len(mine))
    results: dict[int, list[dict]] = {}
    began = time.perf_counter()
    bar = tqdm(
        total=sum(len(shards[i]) for i in todo),
        desc=f"{mode}",
        unit="user",
        disable=not progress or not state.is_main_process,
    )
    for i in todo:
        torch.manual_seed(ranker.cfg.seed + i)  # a resumed shard samples the same traces
        records = ranker.rank(shards[i], mode)
        if shard_dir is not None:
            atomic_write_text(shard_dir / f"shard-{i:05d}.jsonl", _jsonl(records))
        results[i] = records
        bar.update(len(records))
    bar.close()
    wall = time.perf_counter() - began if len(todo) == len(mine) else None
    if shard_dir is None:
        if state.num_processes > 1:
            raise ValueError("multi-process evaluation needs a run_path (shards are exchanged through files)")
        return [r for i in sorted(results) for r in results[i]], wall
    state.wait_for_everyone()
    run = []
    for i in range(len(shards)):
        records = results.get(i) or read_jsonl(shard_dir / f"shard-{i:05d}.jsonl")
        if [r["key"] for r in records] != [e.key for e in shards[i]]:
            raise ValueError(
                f"{shard_dir}/shard-{i:05d}.jsonl does not hold the expected users; delete the folder"
            )
        run += records
    if state.is_main_process:
        atomic_write_text(run_path, _jsonl(run))
    return run, wall


# ---------------------------------------------------------------------- one call per checkpoint


def load_item_index(model_path: str | Path, explicit: str | Path | None = None):
    """The item index of a checkpoint (`ItemIndex.resolve`): `explicit` if given, else `<model>/item_index.json`."""
    from onereason.item_index import ItemIndex

    return ItemIndex.resolve(model_path, explicit)


def evaluate_checkpoint(
    model_path: str | Path,
    examples: Sequence[EvalExample],
    index,
    mode: str,
    cfg: DecodingConfig | None = None,
    run_path: str | Path | None = None,
    shard_size: int = 256,
    device: str | None = None,
    dtype: str = "auto",
    progress: bool = True,
    model_and_tokenizer=None,
    history_trace: Callable[[Sequence[str]], str] | None = None,
    history_view: Callable[[EvalExample], list[dict]] | None = None,
) -> tuple[list[dict], float]:
    """(run records, generation wall seconds) of one checkpoint in one mode.

    `index` may be None (read from the checkpoint). Pass `model_and_tokenizer` to reuse a
    loaded model across modes; `history_trace` for `trace_source="history"`, `history_view`
    for `view_weight > 0` (`BeamRanker`).
    """
    from accelerate import PartialState

    from onereason.modeling import load_model_and_tokenizer

    cfg = cfg or DecodingConfig()
    if index is None:
        index = load_item_index(model_path)
    if model_and_tokenizer is None:
        device = device or str(PartialState().device)
        model_and_tokenizer = load_model_and_tokenizer(model_path, dtype=dtype, device=device)
    model, tokenizer = model_and_tokenizer
    model.eval()
    check_itemic_tokens(tokenizer, index, f"tokenizer of {model_path}", EVALUATE_WITH_ITS_INDEX)
    ranker = BeamRanker(
        model,
        tokenizer,
        index,
        cfg,
        model_path=str(model_path),
        history_trace=history_trace,
        history_view=history_view,
    )
    return generate_run(ranker, examples, mode, run_path, shard_size, str(model_path), progress)
