"""The dataset card (README.md): format, columns, counts, quality measures and the config.

A card is what a user of the Hub dataset reads first, so it states what the rows look
like (with one real example), how many there are per split, task and mode, what was
dropped and why, and the measured leakage rate, all taken from `stats.json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import yaml

COLUMNS = [
    (
        "prompt",
        "list of {role, content}",
        "system (optional) + user turn ending in ` /think` or ` /no_think`",
    ),
    (
        "completion",
        "list of one {role: assistant, content}",
        "`<think>` trace `</think>` then the answer; empty think block in no_think mode",
    ),
    (
        "task",
        "string",
        "rec_sid, rec_seq, rec_pair, rec_term, rec_hybrid, rec_multi, rec_behavior, caption, text2sid, sid2term, term2sid, item_qa, association",
    ),
    ("mode", "string", "think or no_think"),
    ("user_id", "string", "empty for item-level tasks"),
    ("history_items", "list of string", "item ids of the rendered history, oldest first"),
    ("target_items", "list of string", "item ids the answer names"),
    ("target_sids", "list of string", "their SID texts"),
    ("target_terms", "list of string", "Term IDs of the first target"),
    ("domain", "string", "the first target's top-level category"),
]


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def dataset_card(config, stats: dict, dataset_dict) -> str:
    splits = list(dataset_dict)
    front = {
        "tags": [
            "recommendation",
            "generative-recommendation",
            "semantic-ids",
            "chain-of-thought",
            "onereason",
        ],
        "task_categories": ["text-generation"],
        "configs": [
            {"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*"} for s in splits]}
        ],
    }
    per_task = stats["examples_per_task_mode"]
    keys = sorted({k for c in per_task.values() for k in c})
    count_rows = [
        [k.split("/")[0], k.split("/")[1]] + [per_task.get(s, {}).get(k, 0) for s in splits] for k in keys
    ]
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---",
        "# Task dataset built by onereason",
        "Recommendation, perception and three-level chain-of-thought (Derivation -> Evolution -> "
        "Recommendation) examples in TRL's conversational prompt-completion format, built by "
        "`onereason build-tasks`. Thinking answers are `<think>\\n{trace}\\n</think>\\n\\n{answer}`; "
        "non-thinking answers carry an empty think block (Qwen3 convention). A thinking and a "
        "non-thinking prompt for the same example differ only in the trailing `/think` / `/no_think`.",
        "Which rows are which: `rec_seq` rows (train split only) are sequence-level: one per window of "
        "a user's training sequence, shaped like a non-thinking `rec_sid` row, and `onereason train` "
        "(SFT) puts the loss on every SID in them, so each history item is learnt as the next item "
        "of those before it. `rec_pair` rows (train split only) show one history item alone (the last, "
        "or one of the last `pair_window`) and answer the next item's SID: one item-to-item "
        "transition a row. `rec_sid` rows are per "
        "target (one row per prediction, both modes); thinking rows, RL and evaluation use them.",
        "## Columns",
        _table(["column", "type", "meaning"], [list(c) for c in COLUMNS]),
        "## Examples per split, task and mode",
        _table(["task", "mode", *splits], count_rows),
        "## Quality",
        _table(
            ["split", "traces checked", "leaked", "leakage rate"],
            [[s, m["checked"], m["leaked"], f"{m['rate']:.4f}"] for s, m in stats["leakage"].items()],
        )
        + "\n\nA trace leaks when it names a target's SID, title or distinguishing Term-ID term; leaking traces are dropped.",
    ]
    if "interest_recovery" in stats:
        r = stats["interest_recovery"]
        parts.append(
            f"Interest recovery on the synthetic world (test rows): precision {r['precision']:.3f}, "
            f"recall {r['recall']:.3f}, F1 {r['f1']:.3f}, time-pattern accuracy {r['pattern_accuracy']:.3f}."
        )
    if "teacher" in stats:
        t = stats["teacher"]
        parts.append(
            f"Teacher traces: {t['accepted']} of {t['requested']} accepted ({t['acceptance_rate']:.1%})."
        )
    if "token_lengths" in stats:
        parts += [
            "## Token lengths (prompt + completion)",
            _table(
                ["task", "p50", "p90", "p99", "max"],
                [[t, v["p50"], v["p90"], v["p99"], v["max"]] for t, v in stats["token_lengths"].items()],
            ),
        ]
    if stats.get("drops"):
        parts += ["## Dropped", _table(["reason", "count"], [[k, v] for k, v in stats["drops"].items()])]
    for split in splits:
        if len(dataset_dict[split]):
            example = dataset_dict[split][0]
            parts += [
                f"## An example ({split})",
                "```json\n"
                + json.dumps(
                    {k: example[k] for k in ("prompt", "completion", "task", "mode")},
                    indent=2,
                    ensure_ascii=False,
                )
                + "\n```",
            ]
            break
    parts += [
        "## Usage",
        '```python\nfrom datasets import load_from_disk  # or load_dataset(<repo id>)\nds = load_from_disk("<out_dir>")\n```',
        "## Build config",
        "```yaml\n" + yaml.safe_dump(asdict(config), sort_keys=False) + "```",
    ]
    return "\n\n".join(parts) + "\n"
