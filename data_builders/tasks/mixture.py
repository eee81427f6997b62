"""The training mixture: which tasks, in which mode, how much of each — a YAML list.

    seed: 0                                       # optional; else the build's seed
    tasks:
      - {task: rec_sid, mode: think, weight: 0.5}
      - {task: rec_sid, mode: no_think, weight: 0.5}
      - {task: caption, mode: no_think, count: 2000}

`weight` is a multiplier over the task's source units (split rows for recommendation
tasks, items for perception tasks, item pairs for `association`): 1.0 uses each once,
0.5 a random half, 2.0 each twice (with different phrasings). `count` asks for exactly
that many examples (sampled without replacement, cycling when more are asked than exist).
`decided_weight` (thinking recommendation rows of the short trace style) is the weight of the
rows whose trace decides, naming the interest that is due (`DeterministicCot.decides`, from
the history alone), in place of `weight`: those rows teach what a decision means for the next
item, while a trace that leaves the choice open teaches the same as a row without one.
Each unit's draw depends only on (seed, task, mode, the unit's key), so a mixture is
reproducible, adding an entry does not reshuffle the others, and a user's rows get the same
copies whichever shard of a sharded build holds them (weights; a `count` needs every unit of
its task in one place).

The mixture shapes the training split. Validation and test hold every recommendation
(task, mode) of the mixture once per split row, so the two modes of one user see the same
prompt text there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import yaml

from data_builders.tasks.perception import PERCEPTION_TASKS
from onereason.tasks import RECOMMENDATION_TASKS, TRAIN_ONLY_TASKS
from onereason.thinking import MODES

TASKS = RECOMMENDATION_TASKS + PERCEPTION_TASKS
DEFAULT_MIXTURE = [
    {"task": "rec_sid", "mode": "think", "weight": 0.5},
    {"task": "rec_sid", "mode": "no_think", "weight": 0.5},
]


@dataclass(frozen=True)
class MixtureEntry:
    task: str
    mode: str
    weight: float | None = None
    count: int | None = None
    decided_weight: float | None = None  # the weight of units whose trace decides (module doc)

    def multiplicities(
        self,
        eligible: np.ndarray,
        seed: int,
        keys: Sequence[str] | None = None,
        decided: np.ndarray | None = None,
    ) -> np.ndarray:
        """Copies of this entry per source unit (0 where `eligible` is False); `keys` name the units
        (default: their positions); `decided` marks the units `decided_weight` applies to.

        A weight's fraction is a per-unit coin (`unit_draw` below the fraction); a count's
        remainder goes to the eligible units with the smallest draws.
        """
        out = np.zeros(len(eligible), dtype=np.int64)
        units = np.flatnonzero(eligible)
        if len(units) == 0:
            return out
        keys = keys if keys is not None else [str(u) for u in range(len(eligible))]
        if self.count is not None:
            full, rest = divmod(self.count, len(units))
            out[units] += full
            if rest:
                draws = np.array([self.unit_draw(seed, keys[u]) for u in units])
                out[units[np.argsort(draws, kind="stable")[:rest]]] += 1
        else:
            weights = np.full(len(eligible), self.weight)
            if self.decided_weight is not None and decided is not None:
                weights[decided] = self.decided_weight
            whole = np.floor(weights[units]).astype(np.int64)
            out[units] = whole
            fraction = weights[units] - whole
            tossed = fraction > 0  # whole weights need no draw
            heads = [self.unit_draw(seed, keys[u]) < f for u, f in zip(units[tossed], fraction[tossed])]
            out[units[tossed]] += np.array(heads, dtype=np.int64)
        return out

    def unit_draw(self, seed: int, key: str) -> float:
        """A uniform number in [0, 1) fixed by (seed, task, mode, key): no state shared between units."""
        text = f"{seed}\x1f{self.task}\x1f{self.mode}\x1f{key}".encode()
        return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") / 2**64


def parse_mixture(data, source: str = "mixture") -> list[MixtureEntry]:
    """Entries from a YAML value (`{tasks: [...]}` or a bare list); errors name `source` and the entry."""
    if isinstance(data, dict):
        data = data.get("tasks")
    if not isinstance(data, list) or not data:
        raise ValueError(f"{source}: a mixture is a non-empty list of {{task, mode, weight|count}} entries")
    entries = []
    seen = set()
    for n, raw in enumerate(data):
        where = f"{source}: entry {n}"
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected a mapping, got {raw!r}")
        unknown = set(raw) - {"task", "mode", "weight", "count", "decided_weight"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        task, mode = raw.get("task"), raw.get("mode", "no_think")
        if task not in TASKS:
            raise ValueError(f"{where}: unknown task {task!r}; known: {', '.join(TASKS)}")
        if mode not in MODES:
            raise ValueError(f"{where}: mode must be one of {MODES}, got {mode!r}")
        if task in TRAIN_ONLY_TASKS and mode != "no_think":
            raise ValueError(f"{where}: {task!r} rows train without a trace; use mode no_think")
        if task in PERCEPTION_TASKS and mode != "no_think":
            raise ValueError(f"{where}: perception task {task!r} has no reasoning trace; use mode no_think")
        if ("weight" in raw) == ("count" in raw):
            raise ValueError(f"{where}: give exactly one of weight or count")
        weight, count = raw.get("weight"), raw.get("count")
        if weight is not None and (not isinstance(weight, (int, float)) or weight < 0):
            raise ValueError(f"{where}: weight must be a number >= 0, got {weight!r}")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
            raise ValueError(f"{where}: count must be an integer >= 0, got {count!r}")
        decided = raw.get("decided_weight")
        if decided is not None:
            if weight is None or mode != "think" or task not in RECOMMENDATION_TASKS:
                raise ValueError(
                    f"{where}: decided_weight goes with a weight, on a thinking recommendation task"
                )
            if not isinstance(decided, (int, float)) or decided < 0:
                raise ValueError(f"{where}: decided_weight must be a number >= 0, got {decided!r}")
        if (task, mode) in seen:
            raise ValueError(f"{where}: ({task}, {mode}) appears twice")
        seen.add((task, mode))
        entries.append(
            MixtureEntry(
                task, mode, None if weight is None else float(weight), count,
                None if decided is None else float(decided),
            )
        )  # fmt: skip
    return entries


def load_mixture(path: str) -> tuple[list[MixtureEntry], int | None]:
    """(entries, seed or None) of a mixture YAML file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError as err:
        raise ValueError(f"mixture file not found: {path}") from err
    seed = data.get("seed") if isinstance(data, dict) else None
    return parse_mixture(data, path), seed
