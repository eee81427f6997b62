"""Reward registry: named reward functions that recipes list with weights.

A recipe writes

    rewards:
      - {name: hit, weight: 1.0}
      - {name: format, weight: 0.2}
      - {name: trace_consistency, weight: 0.3}                # the SID follows the prefix the trace stated
      - {name: think_length, weight: 0.1, budget: 128}   # extra keys are the reward's parameters
      - {name: model:path/to/ranking-model, weight: 0.5}  # a reward *model* (TRL loads it)
      - {name: my_pkg.rewards.fn, weight: 0.5}            # any importable function, by dotted path

and `build_rewards(specs, context)` turns that into TRL's `reward_funcs` + `reward_weights`.
Every reward follows TRL's reward-function protocol: it gets `prompts`, `completions`,
`completion_ids` and every dataset column (`target_sids`, `target_terms`, `mode`, …, plus
`beam_rank` from beam rollouts) as keyword arguments and returns `list[float | None]`
(None = "does not apply to this sample"). Our rewards also get a `RewardContext` (the
item index, the tokenizer) so they can parse SIDs and ground Term IDs; a function named by
dotted path gets `prompts` and `context` when its signature takes them (or `**kwargs`), so
TRL-style reward functions work unchanged and a user's reward needs no edit here.

A reward that raises is re-run sample by sample to find the row that broke it, and a
`RewardError` names the reward, the sample index, its prompt and its completion.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from onereason.thinking import THINK_CLOSE, THINK_OPEN, split_answer

if TYPE_CHECKING:
    from onereason.item_index import ItemIndex

RewardFn = Callable[..., list]
_REGISTRY: dict[str, RewardFn] = {}
# A spec whose name starts with this is a reward model path or Hub id, handed to TRL as a string
# (TRL loads it with AutoModelForSequenceClassification and scores prompt + completion).
REWARD_MODEL_PREFIX = "model:"


class RewardError(RuntimeError):
    """A reward function failed; the message names the reward and the sample."""


@dataclass
class RewardContext:
    """What rewards may need beyond the batch: the item index (SID parsing, Term IDs) and tokenizer."""

    item_index: ItemIndex | None = None
    tokenizer: Any = None
    _grounder: Any = field(default=None, repr=False)

    def require_index(self, reward: str) -> ItemIndex:
        if self.item_index is None:
            raise ValueError(
                f"reward {reward!r} needs the item index (pass item_index or a model folder with one)"
            )
        return self.item_index

    def grounder(self):
        """GRLM elastic grounding over the catalogue's Term IDs, built on first use."""
        if self._grounder is None:
            from onereason.terms import ElasticGrounder

            index = self.require_index("term_overlap")
            terms = [index.terms(item) for item in index.item_ids]
            if not any(terms):
                raise ValueError(
                    "reward 'term_overlap': the item index has no Term IDs (build-ids with terms)"
                )
            self._grounder = ElasticGrounder(index.item_ids, terms)
        return self._grounder


def register_reward(name: str):
    """Decorator: make `fn(completions, context, **kwargs) -> list[float | None]` usable as `name` in YAML."""

    def decorate(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY:
            raise ValueError(f"reward {name!r} is already registered (by {_REGISTRY[name].__module__})")
        _REGISTRY[name] = fn
        return fn

    return decorate


def get_reward(name: str) -> RewardFn:
    """The registered reward `name`, or the function at dotted path `name` (`my_pkg.rewards.fn`)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if "." not in name:
        raise KeyError(
            f"unknown reward {name!r}; registered rewards: {sorted(_REGISTRY)}, or a dotted path "
            "to your own function (my_pkg.rewards.fn)"
        )
    module, _, attr = name.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise KeyError(f"reward {name!r}: cannot import it ({type(err).__name__}: {err})") from err
    if not callable(fn):
        raise KeyError(f"reward {name!r} is not a function")
    return fn


def _call_with(fn: RewardFn) -> Callable[..., Any]:
    """`call(prompts, completions, context, **columns)` passing `prompts` / `context` only when `fn` takes them."""
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    wants = [n for n in ("prompts", "context") if takes_any or n in params]

    def call(prompts, completions, context, **kwargs):
        extra = {"prompts": prompts, "context": context}
        return fn(completions=completions, **{n: extra[n] for n in wants}, **kwargs)

    return call


def available_rewards() -> list[str]:
    return sorted(_REGISTRY)


# --------------------------------------------------------------------------- helpers


def completion_text(completion: Any) -> str:
    """The assistant text of a TRL completion (conversational list of messages, or a plain string)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


def predicted_sids(text: str, index: ItemIndex) -> list[tuple[int, ...]]:
    """The SID codes written in the answer part (after the think block) of `text`."""
    _, answer = split_answer(text)
    return index.parse(answer)


def written_sids(text: str, index: ItemIndex) -> list[tuple[int, ...]]:
    """Every SID-shaped code tuple in the answer part, whether or not an item carries it
    (`index.parse` keeps only the catalogue's SIDs; validity rewards need the others too)."""
    _, answer = split_answer(text)
    return [tuple(int(g) for g in m.groups()) for m in index.sid_format.pattern().finditer(answer)]


def target_codes(target_sids: Sequence[str] | None, index: ItemIndex) -> list[tuple[int, ...]]:
    codes = []
    for sid in target_sids or ():
        codes.extend(index.parse(sid))
    return codes


def _column(kwargs: dict, name: str, n: int) -> list:
    values = kwargs.get(name)
    if values is None:
        return [None] * n
    return list(values)


# --------------------------------------------------------------------------- rewards


@register_reward("format")
def format_reward(completions, context: RewardContext, mode=None, **kwargs) -> list[float]:
    """1.0 for one well-formed think block followed by a non-empty answer; the block must be
    non-empty when the row asks for thinking and empty when it does not."""
    modes = _column({"mode": mode}, "mode", len(completions))
    out = []
    for completion, m in zip(completions, modes):
        text = completion_text(completion).strip()
        if not text.startswith(THINK_OPEN) or text.count(THINK_OPEN) != 1 or text.count(THINK_CLOSE) != 1:
            out.append(0.0)
            continue
        trace, answer = split_answer(text)
        ok = bool(answer) and (bool(trace) if m == "think" else (m != "no_think" or trace == ""))
        out.append(1.0 if ok else 0.0)
    return out


@register_reward("valid_sid")
def valid_sid_reward(completions, context: RewardContext, **kwargs) -> list[float]:
    """Share of the answer's SIDs that name a catalogue item (0 when it names none)."""
    index = context.require_index("valid_sid")
    out = []
    for completion in completions:
        sids = written_sids(completion_text(completion), index)
        out.append(sum(bool(index.items_for_sid(s)) for s in sids) / len(sids) if sids else 0.0)
    return out


@register_reward("hit")
def hit_reward(completions, context: RewardContext, target_sids=None, **kwargs) -> list[float | None]:
    """1.0 when a predicted SID is one of the row's target SIDs; None for rows without item targets."""
    index = context.require_index("hit")
    targets = _column({"t": target_sids}, "t", len(completions))
    out = []
    for completion, tgt in zip(completions, targets):
        wanted = set(target_codes(tgt, index))
        if not wanted:
            out.append(None)
            continue
        pred = predicted_sids(completion_text(completion), index)
        out.append(1.0 if any(p in wanted for p in pred) else 0.0)
    return out


@register_reward("partial")
def partial_reward(completions, context: RewardContext, target_sids=None, **kwargs) -> list[float | None]:
    """Hierarchical partial credit: the longest matching code prefix of the first predicted SID
    with any target, as a share of the SID levels (coarse levels are the item's category)."""
    index = context.require_index("partial")
    targets = _column({"t": target_sids}, "t", len(completions))
    out = []
    for completion, tgt in zip(completions, targets):
        wanted = target_codes(tgt, index)
        if not wanted:
            out.append(None)
            continue
        pred = written_sids(completion_text(completion), index)
        if not pred:
            out.append(0.0)
            continue
        first = pred[0]
        best = max(_common_prefix(first, w) for w in wanted)
        out.append(best / max(len(w) for w in wanted))
    return out


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@register_reward("rank")
def rank_reward(completions, context: RewardContext, target_sids=None, beam_rank=None, **kwargs) -> list:
    """Rank-aware reward over a beam group (MiniOneRec-style, NDCG-shaped).

    A hit earns 1.0 wherever it ranks; a miss is penalised by its rank's NDCG discount
    `1/log2(rank+2)`, normalised over the group, so a wrong answer the model ranked first
    costs more than one it ranked last. Rows without `beam_rank` (sampled rollouts) get None.
    """
    index = context.require_index("rank")
    n = len(completions)
    ranks = _column({"r": beam_rank}, "r", n)
    targets = _column({"t": target_sids}, "t", n)
    group_size = max((r + 1 for r in ranks if r is not None), default=1)
    norm = sum(1.0 / math.log2(r + 2) for r in range(group_size))
    out = []
    for completion, tgt, rank in zip(completions, targets, ranks):
        wanted = set(target_codes(tgt, index))
        if rank is None or not wanted:
            out.append(None)
            continue
        pred = predicted_sids(completion_text(completion), index)
        hit = any(p in wanted for p in pred)
        out.append(1.0 if hit else -(1.0 / math.log2(rank + 2)) / norm)
    return out


@register_reward("term_overlap")
def term_overlap_reward(
    completions, context: RewardContext, target_terms=None, **kwargs
) -> list[float | None]:
    """Term-ID overlap after grounding (GRLM): the answer's Term ID (or its SID's item) is
    grounded to a catalogue item, whose terms are compared with the target's terms
    (share of target terms recovered)."""
    from onereason.terms import normalize_term, parse_terms

    index = context.require_index("term_overlap")
    targets = _column({"t": target_terms}, "t", len(completions))
    out = []
    for completion, tgt in zip(completions, targets):
        wanted = {normalize_term(t) for t in tgt or ()}
        if not wanted:
            out.append(None)
            continue
        text = completion_text(completion)
        grounded = None
        items = [item for s in predicted_sids(text, index) for item in index.items_for_sid(s)]
        if items:
            grounded = items[0]
        else:
            terms = parse_terms(split_answer(text)[1], num_terms=len(tgt))
            hits = context.grounder().ground(terms, k=1) if terms else []
            grounded = hits[0].item_id if hits else None
        if grounded is None:
            out.append(0.0)
            continue
        got = {normalize_term(t) for t in index.terms(grounded)}
        out.append(len(got & wanted) / len(wanted))
    return out


@register_reward("think_length")
def think_length_reward(completions, context: RewardContext, budget: int = 256, **kwargs) -> list[float]:
    """Penalty for thinking past a budget: 0 within `budget` tokens, down to -1 at twice the budget.

    Tokens are counted with the tokenizer when the context has one, else whitespace words.
    """
    if budget <= 0:
        raise ValueError(f"reward 'think_length': budget must be positive, got {budget}")
    out = []
    for completion in completions:
        trace, _ = split_answer(completion_text(completion))
        trace = trace or ""
        if context.tokenizer is not None:
            length = len(context.tokenizer(trace, add_special_tokens=False)["input_ids"])
        else:
            length = len(trace.split())
        out.append(-min(1.0, max(0, length - budget) / budget))
    return out


def stated_prefix(trace: str | None, index: ItemIndex) -> tuple[int, ...] | None:
    """The SID prefix a trace commits to: the last run of itemic tokens, led by a first-level
    token, on the trace's last line (the Recommendation, where the toolkit's traces write "Its
    SID likely starts with …"); None when that line writes none."""
    lines = (trace or "").strip().splitlines()
    if not lines:
        return None
    fmt = index.sid_format
    level_tokens = "|".join(re.escape(p) for p in fmt.prefixes)
    runs = re.findall(rf"<{re.escape(fmt.prefixes[0])}_\d+>(?:\s*<(?:{level_tokens})_\d+>)*", lines[-1])
    return fmt.prefix_codes(runs[-1]) if runs else None


@register_reward("trace_consistency")
def trace_consistency_reward(completions, context: RewardContext, **kwargs) -> list[float | None]:
    """Does the answer follow its own reasoning? 1.0 when the answer's first SID starts with the
    prefix the trace committed to (`stated_prefix`), 0.0 when it does not or names no SID; None
    when there is no trace or it commits to no prefix. With `hit`, it rewards traces whose
    prefix is right *and* answers that use them, instead of a trace the answer ignores."""
    index = context.require_index("trace_consistency")
    out = []
    for completion in completions:
        text = completion_text(completion)
        trace, _ = split_answer(text)
        prefix = stated_prefix(trace, index)
        if prefix is None:
            out.append(None)
            continue
        sids = written_sids(text, index)
        out.append(1.0 if sids and tuple(sids[0][: len(prefix)]) == prefix else 0.0)
    return out


# --------------------------------------------------------------------------- from YAML to TRL


@dataclass(frozen=True)
class RewardSpec:
    name: str
    weight: float = 1.0
    params: dict = field(default_factory=dict)


def parse_reward_specs(raw: Sequence[Any] | None) -> list[RewardSpec]:
    """YAML entries (`{name, weight, **params}`) or CLI strings (`hit`, `hit:1.0`) → specs."""
    if not raw:
        raise ValueError("rewards: list at least one reward, e.g. [{name: hit, weight: 1.0}]")
    specs = []
    for i, entry in enumerate(raw):
        if isinstance(entry, str):
            specs.append(_spec_from_text(entry))
        elif isinstance(entry, dict):
            if "name" not in entry:
                raise ValueError(f"rewards[{i}]: missing `name` in {entry}")
            params = {k: v for k, v in entry.items() if k not in ("name", "weight")}
            specs.append(RewardSpec(str(entry["name"]), float(entry.get("weight", 1.0)), params))
        else:
            raise ValueError(f"rewards[{i}]: expected a mapping or a string, got {entry!r}")
    for i, spec in enumerate(specs):
        if not spec.name.startswith(REWARD_MODEL_PREFIX):
            get_reward(spec.name)  # unknown names fail here, before any model loads
        elif spec.params:
            raise ValueError(f"rewards[{i}]: a reward model takes no parameters, got {sorted(spec.params)}")
    return specs


def _spec_from_text(text: str) -> RewardSpec:
    """`hit`, `hit:0.5`, `model:path/to/rm`, `model:path/to/rm:0.5` (a trailing number is the weight)."""
    head, sep, tail = text.rpartition(":")
    if sep and _is_float(tail) and head not in ("", REWARD_MODEL_PREFIX.rstrip(":")):
        return RewardSpec(head, float(tail))
    return RewardSpec(text)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def bind_reward(spec: RewardSpec, context: RewardContext) -> RewardFn:
    """A TRL reward function for `spec` whose errors name the reward and the failing sample."""
    fn = _call_with(functools.partial(get_reward(spec.name), **spec.params))

    def reward(prompts=None, completions=None, **kwargs):
        try:
            return _check_output(spec.name, fn(prompts, completions, context, **kwargs), len(completions))
        except RewardError:
            raise
        except Exception as err:
            raise _locate_failure(spec.name, fn, context, prompts, completions, kwargs, err) from err

    reward.__name__ = spec.name.rpartition(".")[2]  # TRL logs rewards/<__name__>/mean
    return reward


def _check_output(name: str, values, n: int) -> list:
    values = list(values)
    if len(values) != n:
        raise RewardError(f"reward {name!r} returned {len(values)} values for {n} completions")
    return [None if v is None else float(v) for v in values]


def _locate_failure(name, fn, context, prompts, completions, kwargs, err) -> RewardError:
    """Re-run the reward one sample at a time to name the row that raised."""
    n = len(completions)
    for i in range(n):
        one = {k: [v[i]] if isinstance(v, list) and len(v) == n else v for k, v in kwargs.items()}
        try:
            prompt = [prompts[i]] if prompts is not None and i < len(prompts) else None
            fn(prompt, [completions[i]], context, **one)
        except Exception as sample_err:
            prompt = prompts[i] if prompts is not None and i < len(prompts) else None
            return RewardError(
                f"reward {name!r} failed on sample {i} ({type(sample_err).__name__}: {sample_err}); "
                f"prompt={_short(prompt)!r} completion={_short(completions[i])!r}"
            )
    return RewardError(f"reward {name!r} failed on the batch of {n} ({type(err).__name__}: {err})")


def _short(value: Any, limit: int = 300) -> str:
    text = (
        completion_text(value)
        if isinstance(value, list) and value and isinstance(value[-1], dict)
        else str(value)
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_rewards(raw_specs: Sequence[Any] | None, context: RewardContext) -> tuple[list, list[float]]:
    """(`reward_funcs`, `reward_weights`) for a TRL trainer from the recipe's `rewards:` list."""
    funcs, weights = [], []
    for spec in parse_reward_specs(raw_specs):
        if spec.name.startswith(REWARD_MODEL_PREFIX):
            funcs.append(spec.name[len(REWARD_MODEL_PREFIX) :])
        else:
            funcs.append(bind_reward(spec, context))
        weights.append(spec.weight)
    return funcs, weights
