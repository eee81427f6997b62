"""Perception (R0) tasks: ground itemic tokens in language, one item (or pair) per example.

| task | prompt -> answer |
| --- | --- |
| `caption` | SID -> title / description |
| `text2sid` | title -> SID |
| `sid2term`, `term2sid` | SID <-> Term ID |
| `item_qa` | SID + an attribute name (brand, style, category level...) -> its value |
| `association` | two SIDs -> related or not, and how (shared attributes, co-interaction) |

These are answered without thinking (mode `no_think`, an empty think block), as in
OpenOneRec's alignment data. Association pairs come from the training histories
(consecutive items, counted) and from random pairs that share neither attributes nor
co-interactions; see `association_pairs`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from data_builders.tasks.catalog import ItemCatalog
from data_builders.tasks.history import clip, item_text, render_terms
from data_builders.tasks.phrasing import load_templates, pick, stable_hash
from data_builders.tasks.recommendation import example
from onereason.thinking import with_switch

ITEM_TASKS = ("caption", "text2sid", "sid2term", "term2sid", "item_qa")
PAIR_TASKS = ("association",)
PERCEPTION_TASKS = ITEM_TASKS + PAIR_TASKS
DESCRIPTION_CHARS = 200


class PerceptionTasks:
    def __init__(
        self, catalog: ItemCatalog, system_prompt: bool = True, seed: int = 0, title_max_chars: int = 120
    ):
        self.catalog = catalog
        self.system_prompt = system_prompt
        self.seed = seed
        self.title_max_chars = title_max_chars
        self.templates = load_templates("perception")

    def ineligible(self, task: str, item: int) -> str | None:
        c = self.catalog
        if not c.indexed(item):
            return "not_in_index"
        if task in ("caption", "text2sid") and not item_text(c, item):
            return "empty_text"
        if task in ("sid2term", "term2sid") and not c.terms[item]:
            return "no_term_id"
        if task == "item_qa" and not c.attributes[item]:
            return "no_attributes"
        return None

    def _prompt(self, user: str, key) -> list[dict]:
        prompt = []
        if self.system_prompt:
            prompt.append(
                {"role": "system", "content": pick(self.templates["system"], self.seed, "system", key)}
            )
        prompt.append({"role": "user", "content": with_switch(user, "no_think")})
        return prompt

    def build_item(self, task: str, item: int, copy: int = 0) -> dict:
        c, t = self.catalog, self.templates
        key = (self.seed, task, c.item_ids[item], copy)
        sid = c.sid_texts[item]
        if task == "caption":
            qa = pick(t["caption"], *key)
            title = item_text(c, item, self.title_max_chars)
            description = clip(c.descriptions[item], DESCRIPTION_CHARS) or c.category_path(item)
            fields = {
                "sid": sid,
                "title": title,
                "description": description,
                "category": c.category_path(item) or "the catalogue",
            }
            user, answer = qa["q"].format(**fields), qa["a"].format(**fields).strip()
        elif task == "text2sid":
            user, answer = (
                pick(t["text2sid"], *key).format(text=item_text(c, item, self.title_max_chars)),
                sid,
            )
        elif task == "sid2term":
            user, answer = pick(t["sid2term"], *key).format(sid=sid), f"[{render_terms(c.terms[item])}]"
        elif task == "term2sid":
            user, answer = pick(t["term2sid"], *key).format(terms=render_terms(c.terms[item])), sid
        elif task == "item_qa":
            names = list(c.attributes[item])
            name = names[stable_hash("attribute", *key) % len(names)]
            user = pick(t["item_qa"], *key).format(attribute=name.replace("_", " "), sid=sid)
            answer = pick(t["item_qa_answer"], *key).format(value=c.attributes[item][name])
        else:
            raise ValueError(f"unknown item task {task!r}; known: {ITEM_TASKS}")
        targets = [item] if task in ("text2sid", "term2sid") else []
        ex = example(
            self._prompt(user, key),
            answer,
            None,
            task,
            "no_think",
            "",
            [],
            [c.item_ids[i] for i in targets],
            c,
            targets,
        )
        if not targets:  # the item is the subject, not the answer: keep its metadata for rewards
            ex["target_terms"] = list(c.terms[item] or [])
            ex["domain"] = (c.categories[item] or [""])[0]
        return ex

    def build_pair(self, a: int, b: int, count: int, copy: int = 0) -> dict:
        c, t = self.catalog, self.templates
        key = (self.seed, "association", c.item_ids[a], c.item_ids[b], copy)
        sid_a, sid_b = c.sid_texts[a], c.sid_texts[b]
        root = c.attribute_names[0] if c.attribute_names else None
        shared = [
            f"{name.replace('_', ' ')} {v}"
            for name, v in c.attributes[a].items()
            if name != root and c.attributes[b].get(name) == v
        ]
        if shared and count:
            answer = t["association_both"].format(shared=", ".join(shared), count=count)
        elif shared:
            answer = t["association_yes_shared"].format(shared=", ".join(shared))
        elif count:
            answer = t["association_yes_cooccur"].format(count=count)
        else:
            answer = t["association_no"].format(
                sid_a=sid_a,
                sid_b=sid_b,
                what_a=c.category_path(a) or "uncategorised",
                what_b=c.category_path(b) or "uncategorised",
            )
        user = pick(t["association"], *key).format(sid_a=sid_a, sid_b=sid_b)
        return example(self._prompt(user, key), answer, None, "association", "no_think", "", [], [], c, [])


def pair_counts(catalog: ItemCatalog, histories) -> Counter:
    """How often each unordered pair of indexed items follows one another in the histories."""
    counts: Counter = Counter()
    for items in histories:
        for a, b in zip(items, items[1:]):
            if a != b and catalog.indexed(a) and catalog.indexed(b):
                counts[(min(a, b), max(a, b))] += 1
    return counts


def association_pairs(
    catalog: ItemCatalog, counts: Counter, max_pairs: int, seed: int = 0
) -> list[tuple[int, int, int]]:
    """(a, b, co-interaction count) pairs: the most frequent consecutive pairs of the training
    histories (`pair_counts`, summed over every user), plus as many random unrelated pairs (no
    shared non-root attribute, count 0)."""
    positives = [
        (a, b, k) for (a, b), k in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: max_pairs // 2]
    ]
    indexed = np.flatnonzero([catalog.indexed(i) for i in range(len(catalog))])
    rng = np.random.default_rng(seed)
    root = catalog.attribute_names[0] if catalog.attribute_names else None
    negatives: list[tuple[int, int, int]] = []
    tries = 0
    while len(negatives) < len(positives) and tries < 20 * max(1, len(positives)) and len(indexed) > 1:
        tries += 1
        a, b = (int(x) for x in rng.choice(indexed, size=2, replace=False))
        pair = (min(a, b), max(a, b))
        if pair in counts:
            continue
        if any(
            name != root and catalog.attributes[b].get(name) == v for name, v in catalog.attributes[a].items()
        ):
            continue
        negatives.append((*pair, 0))
    return positives + negatives
