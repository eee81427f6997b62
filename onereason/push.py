"""`onereason push`: a trained model folder -> a Hub repository that works on its own.

    onereason push --model_path runs/qwen3-1.7b/sft --repo_id me/qwen3-1.7b-onereason \\
        --report runs/eval/report.json
    onereason push --model_path runs/tiny/sft --dry-run        # writes runs/tiny/sft-hub/

A generative recommender is useless without its item index (the model writes SIDs; the
index turns them back into items), so the folder carries: the model and its generation
config, the tokenizer with the itemic tokens, `item_index.json`, the training history,
and a model card (built with `huggingface_hub.ModelCard`) stating the stages, the data,
the SID configuration and the evaluation results. `--dry-run` writes the folder and
uploads nothing; every file is written through a temporary folder renamed in one step.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onereason.configs import parse_config
from onereason.consistency import check_model_path, check_vocabulary, load_index, require_path
from onereason.errors import InputError
from onereason.io import MARKER, atomic_dir, check_output_dir, read_json
from onereason.stages.common import HISTORY_FILE, ITEM_INDEX_FILE, read_history

logger = logging.getLogger(__name__)


@dataclass
class PushArguments:
    model_path: str = field(metadata={"help": "A trained model folder (a `onereason train` output_dir)."})
    repo_id: str | None = field(
        default=None, metadata={"help": "Hub repository, e.g. me/qwen3-1.7b-onereason."}
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Where to write the Hub folder. Default: <model_path>-hub beside it."}
    )
    item_index: str | None = field(
        default=None, metadata={"help": "item_index.json to ship. Default: <model_path>/item_index.json."}
    )
    report: str | None = field(
        default=None,
        metadata={"help": "report.json from `onereason eval`; its metrics go into the model card."},
    )
    dry_run: bool = field(default=False, metadata={"help": "Write the folder only; upload nothing."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})
    license: str = field(default="apache-2.0", metadata={"help": "License identifier for the card metadata."})
    commit_message: str = field(default="Upload onereason model", metadata={"help": "Hub commit message."})
    overwrite: bool = field(
        default=False,
        metadata={"help": "Replace output_dir even when onereason did not write it (never an input folder)."},
    )

    def __post_init__(self):
        if not self.dry_run and not self.repo_id:
            raise ValueError("repo_id is required unless --dry-run is given")


# ---------------------------------------------------------------------------------------------
# The model card
# ---------------------------------------------------------------------------------------------


def _flatten_metrics(obj: Any, prefix: str = "") -> list[tuple[str, float]]:
    """Numeric leaves of a nested report as (dotted.key, value), in file order."""
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [(prefix, float(obj))]
    if isinstance(obj, dict):
        rows = []
        for key, value in obj.items():
            rows += _flatten_metrics(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    return []


def _stages_section(history: list[dict]) -> str:
    if not history:
        return "No training history was recorded (the folder was not written by `onereason train`)."
    lines = [
        "| # | stage | phase | from | data | tasks | steps | LoRA |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n, r in enumerate(history, 1):
        tasks = ", ".join(r.get("tasks") or []) or "all"
        lora = "yes" if r.get("use_peft") else "no"
        lines.append(
            f"| {n} | {r.get('stage', '?')} | {r.get('phase', '')} | `{r.get('model', '')}` | "
            f"`{r.get('dataset', '')}` | {tasks} | {r.get('global_step', '')} | {lora} |"
        )
    return "\n".join(lines)


def _sid_section(index) -> str:
    example_item = index.item_ids[0]
    meta = json.dumps(index.meta, indent=2, ensure_ascii=False, default=str)
    if len(meta) > 2000:
        meta = meta[:2000] + "\n…"
    return "\n".join(
        [
            f"- items: {len(index)}",
            f"- SID levels: {index.n_levels}",
            f"- itemic tokens: {len(index.itemic_tokens())}",
            f"- example: item `{example_item}` → `{index.sid_text(example_item)}`",
            "",
            "Index metadata (how the SIDs were built):",
            "",
            "```json",
            meta,
            "```",
        ]
    )


def _eval_section(report_path: str | None) -> str:
    if not report_path:
        return "No evaluation report was given (`onereason push --report report.json`)."
    rows = _flatten_metrics(read_json(report_path))
    if not rows:
        return f"`{Path(report_path).name}` holds no numeric metrics."
    lines = ["| metric | value |", "| --- | --- |"]
    lines += [f"| {key} | {value:.4g} |" for key, value in rows[:200]]
    return "\n".join(lines)


def build_model_card(args: PushArguments, index, history: list[dict]):
    """A `huggingface_hub.ModelCard`: metadata header plus stages, data, SID config, results."""
    from huggingface_hub import ModelCard, ModelCardData

    base_model = next((r["model"] for r in history if r.get("model") and not Path(r["model"]).exists()), None)
    datasets = sorted({str(r["dataset"]) for r in history if r.get("dataset")})
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        license=args.license,
        base_model=base_model,
        tags=["onereason", "generative-recommendation", "semantic-ids", "recommendation", "trl"],
    )
    name = args.repo_id or Path(args.model_path).name
    repo = args.repo_id or "<this folder>"
    sid_example = index.sid_text(index.item_ids[0])
    content = f"""---
{data.to_yaml()}
---

# {name}

A reasoning generative recommender trained with [onereason](https://github.com/onereason/onereason):
it reads a user's history written in itemic tokens (semantic IDs) and answers with the next
item's SID, after a three-level reasoning trace (`/think`) or directly (`/no_think`).
`{ITEM_INDEX_FILE}` in this repository maps SIDs back to items.

## Usage

```python
from huggingface_hub import hf_hub_download
from transformers import AutoModelForCausalLM, AutoTokenizer
from onereason.item_index import ItemIndex

model = AutoModelForCausalLM.from_pretrained("{repo}")
tokenizer = AutoTokenizer.from_pretrained("{repo}")
index = ItemIndex.load(hf_hub_download("{repo}", "{ITEM_INDEX_FILE}"))
messages = [{{"role": "user", "content": "The user's history, oldest first: {sid_example}. Which item comes next? /no_think"}}]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
answer = tokenizer.decode(model.generate(ids, max_new_tokens=64)[0, ids.shape[1]:])
print(index.parse_items(answer))  # item ids
```

For valid SIDs only, generate with `onereason.trie.SIDTrie` (constrained decoding).

## Training stages

{_stages_section(history)}

## Data

{chr(10).join(f"- `{d}`" for d in datasets) or "Not recorded."}

## Semantic IDs

{_sid_section(index)}

## Evaluation

{_eval_section(args.report)}
"""
    return ModelCard(content)


# ---------------------------------------------------------------------------------------------
# The folder and the upload
# ---------------------------------------------------------------------------------------------


def write_hub_folder(args: PushArguments) -> Path:
    """Write the Hub-ready folder; returns its path."""
    from onereason.modeling import load_model_and_tokenizer

    # Cheap checks first: folders, index, report, vocabulary vs index, output folder.
    check_model_path(args.model_path, "model_path")
    model_path = Path(args.model_path)
    index_path = Path(args.item_index) if args.item_index else model_path / ITEM_INDEX_FILE
    if not args.item_index and not index_path.is_file():
        raise InputError(
            f"model_path {model_path} has no {ITEM_INDEX_FILE}: the model needs its item index (pass --item_index)"
        )
    index = load_index(index_path)
    if args.report:
        require_path(args.report, "report", "file", "pass the report.json written by `onereason eval`")
        try:
            read_json(args.report)  # a broken file fails here, naming it
        except ValueError as err:
            raise InputError(f"report {args.report} is not valid JSON ({err})") from None
    check_vocabulary(
        model_path, index, "model_path", "push the model trained with this index, or pass its --item_index"
    )
    out = Path(args.output_dir) if args.output_dir else model_path.with_name(f"{model_path.name}-hub")
    check_output_dir(
        out, inputs=[model_path, args.item_index, args.report], overwrite=args.overwrite, what="output_dir"
    )
    # Loading, not copying, proves the folder is complete and rewrites it as safetensors.
    model, tokenizer = load_model_and_tokenizer(model_path, dtype="auto")
    history = read_history(model_path)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)  # weights, config.json, generation_config.json
        tokenizer.save_pretrained(tmp)
        index.save(tmp / ITEM_INDEX_FILE)
        if (model_path / HISTORY_FILE).is_file():
            shutil.copyfile(model_path / HISTORY_FILE, tmp / HISTORY_FILE)
        if args.report:
            shutil.copyfile(args.report, tmp / "eval_report.json")
        build_model_card(args, index, history).save(tmp / "README.md")
    logger.info("wrote the Hub folder %s", out)
    return out


def upload(folder: Path, args: PushArguments) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(args.repo_id, private=args.private, exist_ok=True)
    info = api.upload_folder(
        repo_id=args.repo_id,
        folder_path=str(folder),
        commit_message=args.commit_message,
        ignore_patterns=[MARKER],  # our local ownership marker is not part of the model
    )
    return str(info)


def main(argv: Sequence[str] | None = None) -> int:
    (args,) = parse_config([PushArguments], argv, prog="onereason push")
    folder = write_hub_folder(args)
    if args.dry_run:
        print(f"dry run: Hub folder written to {folder} (nothing uploaded)")
        return 0
    print(f"uploaded {folder} to {args.repo_id}: {upload(folder, args)}")
    return 0


if __name__ == "__main__":
    import sys

    from onereason.cli import run_command

    raise SystemExit(run_command("push", main, sys.argv[1:]))
