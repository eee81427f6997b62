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

from onereason.configs import parse_config
from onereason.consistency import check_model_path, check_vocabulary, load_index, require_path
from onereason.errors import InputError
from onereason.io import MARKER, atomic_dir, check_output_dir, read_json
from onereason.stages.common import HISTORY_FILE, ITEM_INDEX_FILE, read_history

logger = logging.getLogger(__name__)

REPORT_FILE = "eval_report.json"  # the evaluation report, copied beside the model


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


def project_url() -> str | None:
    """The project's address as the installed package declares it (`[project.urls]`), else None.

    The card links only to an address the package itself names, never to a guessed one.
    """
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        urls = metadata("onereason").get_all("Project-URL") or []
    except PackageNotFoundError:
        return None
    return urls[0].split(",", 1)[-1].strip() if urls else None


def _metric_label(name: str) -> str:
    """`hit@10` -> `Hit@10`, `ndcg@10` -> `NDCG@10`, `mrr` -> `MRR` (how papers write them)."""
    family, at, k = name.partition("@")
    label = {"hit": "Hit", "recall": "Recall", "ndcg": "NDCG", "mrr": "MRR"}.get(family, family)
    return label + at + k


def _item_metrics(run: dict) -> dict[str, float]:
    """The item-level metric means of one report run (`onereason eval`'s `runs[i].item`)."""
    item = run.get("item") or {}
    skip = ("level", "ks", "n_users")
    return {k: float(v) for k, v in item.items() if k not in skip and isinstance(v, (int, float))}


def eval_results(report: dict) -> list:
    """model-index entries: every item-level metric of every model run (baselines are not this model)."""
    from huggingface_hub import EvalResult

    config = report.get("config") or {}
    data = str(config.get("data_path") or report.get("data") or "unknown")
    return [
        EvalResult(
            task_type="text-generation",
            task_name=f"Next-item recommendation ({report.get('protocol', 'loo')})",
            dataset_type=data,
            dataset_name=str(report.get("data") or data),
            dataset_split=config.get("split"),
            metric_type=metric,
            metric_name=f"{_metric_label(metric)} ({run['name']})",
            metric_config=run["name"],
            metric_value=value,
        )
        for run in report["runs"]
        if run.get("mode") != "baseline"
        for metric, value in _item_metrics(run).items()
    ]


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


def _eval_section(report: dict | None, report_name: str) -> str:
    """The report's item-level metrics, one row per run (checkpoint and mode, then baselines)."""
    if report is None:
        return "No evaluation report was given (`onereason push --report report.json`)."
    runs = report["runs"]
    columns = list(dict.fromkeys(m for run in runs for m in _item_metrics(run)))
    ranking = f" ({report['ranking']})" if report.get("ranking") else ""
    lines = [
        f"`onereason eval`, protocol `{report.get('protocol', '?')}`, on {report.get('data', '?')}: "
        f"{report.get('n_examples', '?')} users, item level: K counts item positions{ranking}. "
        f"The SID level, 95% intervals and paired bootstraps are in `{report_name}`.",
        "",
        "| run | mode | users | " + " | ".join(_metric_label(c) for c in columns) + " |",
        "|---" * (len(columns) + 3) + "|",
    ]
    for run in runs:
        values = _item_metrics(run)
        cells = [f"{values[c]:.4f}" if c in values else "–" for c in columns]
        users = (run.get("item") or {}).get("n_users", "")
        lines.append(f"| {run['name']} | {run.get('mode', '')} | {users} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_model_card(args: PushArguments, index, history: list[dict], report: dict | None = None):
    """A `huggingface_hub.ModelCard`: metadata header (with model-index results) plus stages,
    data, SID config and the evaluation table."""
    from huggingface_hub import ModelCard, ModelCardData

    base_model = next((r["model"] for r in history if r.get("model") and not Path(r["model"]).exists()), None)
    datasets = sorted({str(r["dataset"]) for r in history if r.get("dataset")})
    name = args.repo_id or Path(args.model_path).name
    data = ModelCardData(
        model_name=name,
        eval_results=eval_results(report) if report else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        license=args.license,
        base_model=base_model,
        tags=["onereason", "generative-recommendation", "semantic-ids", "recommendation", "trl"],
    )
    repo = args.repo_id or "<this folder>"
    sid_example = index.sid_text(index.item_ids[0])
    url = project_url()
    onereason = f"[onereason]({url})" if url else "onereason"
    content = f"""---
{data.to_yaml()}
---

# {name}

A reasoning generative recommender trained with {onereason}:
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

{_eval_section(report, REPORT_FILE)}
"""
    return ModelCard(content)


# ---------------------------------------------------------------------------------------------
# The folder and the upload
# ---------------------------------------------------------------------------------------------


def read_report(path: str) -> dict:
    """`onereason eval`'s report.json; a broken file, or one that is not such a report, fails here, naming it."""
    fix = "pass the report.json written by `onereason eval`"
    require_path(path, "report", "file", fix)
    try:
        report = read_json(path)
    except ValueError as err:
        raise InputError(f"report {path} is not valid JSON ({err})") from None
    runs = report.get("runs") if isinstance(report, dict) else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) and "name" in r for r in runs):
        raise InputError(f"report {path} has no list of named `runs`: {fix}")
    return report


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
    report = read_report(args.report) if args.report else None
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
            shutil.copyfile(args.report, tmp / REPORT_FILE)
        build_model_card(args, index, history, report).save(tmp / "README.md")
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
