"""`onereason eval`: checkpoints × modes × protocol → runs, metrics, baselines, report.

    onereason eval --config recipes/scientific/eval.yaml --models runs/sft runs/grpo   # compare: true
    onereason eval --models runs/tiny/sft --data_path runs/tiny/data --compare --max_examples 50

Writes to `out_dir`: `runs/<checkpoint>-<mode>.jsonl` (one line per user), `report.json`,
`report.md`, `comparison.png` (docs/ARCHITECTURE.md, "evaluation outputs"); with `--report_to
wandb` the metrics of every run and mode, the report table and the plot also go to a wandb run.
Generation is resumable: rerunning the same command skips the shards already on disk; under
`accelerate launch` the processes share the users (shards) and write the report one process writes.

`modes` are `no_think`, `think`, `race` (thinking and non-thinking beams merged into one
list) and `adaptive` (the trace followed only where it decides; `evaluation.generate`), all
at the same beam budget per user; every other mode is compared with `no_think` of the same
checkpoint by a paired bootstrap. A race or adaptive run reports the share of its top-10
SIDs each mode found.

Every thinking (think, race or adaptive) run also gets its trace quality
(`evaluation.traces`): traces scored against the target, the history and, on the synthetic
world, the planted interests, with Hit@10 split by right vs wrong traces. The items table
and ground truth come from the build-data folder (`data_dir`, else found from `data_path`).

`data_path` may be a task dataset (`onereason build-tasks` output: the prompts the model was
trained with), a split folder (`onereason build-data` output; `splits/<split>.parquet`), a
split parquet file, or a MiniOneRec CSV. `protocol` picks the cut-offs (`loo`: K in
{1,5,10,20,32}; `minionerec`: HR/NDCG@{3,5,10}).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from evaluation.baselines import cooccurrence_baseline, popularity_baseline
from evaluation.generate import (
    EVAL_MODES,
    TRACE_MODES,
    DecodingConfig,
    evaluate_checkpoint,
    head_beams,
    load_item_index,
)
from evaluation.metrics import compute_metrics, generation_stats, mode_shares
from evaluation.protocols import (
    PROTOCOLS,
    EvalExample,
    check_targets,
    examples_from_rows,
    examples_from_tasks,
    history_viewer,
    read_minionerec_csv,
    read_split,
)
from evaluation.report import RunResult, write_report
from evaluation.sasrec import sasrec_baseline
from evaluation.traces import TraceScorer, history_tracer, trace_quality
from onereason.configs import prefer
from onereason.consistency import (
    SafetyArguments,
    check_model_and_index,
    check_model_path,
    check_unknown,
    is_local_model,
    require_path,
)
from onereason.errors import UsageError
from onereason.io import check_output_dir, make_output_dir

logger = logging.getLogger(__name__)

BASELINES = ("popularity", "cooccurrence", "sasrec")


@dataclass
class EvalConfig:
    """What to evaluate and where to write it (decoding settings are in `DecodingArgs`)."""

    models: list[str] = field(
        default_factory=list, metadata={"help": "checkpoint folders or Hub ids, compared in order"}
    )
    names: list[str] = field(
        default_factory=list, metadata={"help": "short names per model (default: folder names)"}
    )
    item_index: str | None = field(
        default=None, metadata={"help": "item index path (default: <model>/item_index.json)"}
    )
    data_path: str = field(
        default="", metadata={"help": "task dataset, split folder, split parquet or MiniOneRec CSV"}
    )
    split: str = field(default="test", metadata={"help": "which split to evaluate"})
    protocol: str = field(default="loo", metadata={"help": "loo | minionerec"})
    tasks: list[str] = field(
        default_factory=lambda: ["rec_sid"], metadata={"help": "task-dataset tasks to evaluate"}
    )
    modes: list[str] = field(
        default_factory=lambda: ["no_think"], metadata={"help": "no_think, think, race and/or adaptive"}
    )
    compare: bool = field(
        default=False,
        metadata={
            "help": "evaluate no_think and think (unless modes already pair no_think with think or "
            "race) and add paired bootstraps"
        },
    )
    max_history: int = field(default=20, metadata={"help": "history items shown in plain prompts"})
    max_examples: int | None = field(default=None, metadata={"help": "evaluate only the first N examples"})
    baselines: list[str] = field(
        default_factory=lambda: ["popularity", "cooccurrence"],
        metadata={"help": "popularity, cooccurrence, sasrec (trained on the train split; minutes on a CPU)"},
    )
    train_split: str | None = field(
        default=None, metadata={"help": "train split for baselines (default: <data>/splits/train.parquet)"}
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "build-data folder whose items.parquet (and truth.parquet, synthetic world) thinking "
            "traces are scored against (default: found from data_path)"
        },
    )
    out_dir: str = field(default="runs/eval", metadata={"help": "output folder"})
    shard_size: int = field(default=256, metadata={"help": "users per resumable shard"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, … (default: accelerate's device)"})
    dtype: str = field(default="auto", metadata={"help": "model dtype"})
    n_bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples"})
    bootstrap_seed: int = field(default=0)
    report_to: list[str] = field(
        default_factory=list,
        metadata={
            "help": "wandb: also log every run and mode's metrics, the report table and comparison.png to a "
            "wandb run (WANDB_PROJECT, WANDB_MODE and the like apply); none: no logging"
        },
    )

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {self.protocol!r}")
        if self.compare and not compared(self.modes):
            # `compare` means no_think and a thinking mode; an explicit `modes` beats a recipe's
            # `compare`, and vice versa.
            clash = f"--compare true --modes {' '.join(self.modes)}"
            if prefer((self, "compare"), (self, "modes"), clash) == "compare":
                self.modes = ["no_think", "think"]
            else:
                self.compare = False
        bad = [m for m in self.modes if m not in EVAL_MODES]
        if bad:
            raise ValueError(f"modes must be among {EVAL_MODES}, got {bad}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baselines {unknown}; known: {BASELINES}")
        if self.names and len(self.names) != len(self.models):
            raise ValueError(f"{len(self.names)} names for {len(self.models)} models")
        wanted = [self.report_to] if isinstance(self.report_to, str) else self.report_to
        self.report_to = [r for r in wanted if r != "none"]
        if any(r != "wandb" for r in self.report_to):
            raise ValueError(f"report_to: evaluation logs to wandb or none, got {self.report_to}")


def compared(modes: Sequence[str]) -> bool:
    """Whether `modes` hold what `compare` asks for: no_think and at least one thinking mode."""
    return "no_think" in modes and any(m in TRACE_MODES for m in modes)


@dataclass
class DecodingArgs(DecodingConfig):
    """Decoding settings (same for every mode; `think_*` apply to the thinking stage only)."""


def load_examples(cfg: EvalConfig, index) -> tuple[list[EvalExample], str]:
    """The examples of `cfg.data_path` and the kind of input it was."""
    path = Path(cfg.data_path)
    if not cfg.data_path or not path.exists():
        raise FileNotFoundError(f"data_path not found: {cfg.data_path!r}")
    if path.suffix == ".csv":
        rows, kind = read_minionerec_csv(path), "minionerec_csv"
    elif path.suffix == ".parquet":
        rows, kind = read_split(path), "split"
    elif (path / "splits").is_dir():
        rows, kind = read_split(path / "splits" / f"{cfg.split}.parquet"), "split"
    elif (path / "dataset_dict.json").exists():
        return examples_from_tasks(
            path, cfg.split if cfg.split != "valid" else "validation", cfg.tasks
        ), "tasks"
    else:
        raise ValueError(f"{path}: not a task dataset, a split folder, a .parquet split or a .csv")
    return examples_from_rows(rows, index, cfg.max_history, source=str(path)), kind


def train_rows(cfg: EvalConfig) -> list[dict] | None:
    if cfg.train_split:
        path = Path(cfg.train_split)
        return read_minionerec_csv(path) if path.suffix == ".csv" else read_split(path)
    default = Path(cfg.data_path) / "splits" / "train.parquet"
    return read_split(default) if default.exists() else None


def ranking_depth(ks: Sequence[int], num_beams: int | None) -> tuple[tuple[int, ...], str]:
    """The cut-offs every row of a report can be scored at, and the sentence that says so.

    A model's list holds the items behind its `num_beams` SIDs, so K may not exceed the beams
    (MRR too is taken over that depth): K is cut for models and baselines alike, and the
    baselines rank exactly as deep as the models.
    """
    if num_beams is None:
        return tuple(ks), f"baselines rank the top {max(ks)} items of the whole catalogue"
    kept = tuple(k for k in ks if k <= num_beams)
    if not kept:
        raise ValueError(f"num_beams {num_beams} is below every cut-off of the protocol {list(ks)}")
    cut = [k for k in ks if k > num_beams]
    note = (
        f"models rank the items behind their {num_beams} beams (trie-constrained SIDs), baselines the "
        f"top {max(kept)} items of the whole catalogue; K <= {max(kept)} for every row"
    )
    if cut:
        note += f" (K = {', '.join(map(str, cut))} not shown: deeper than the beams)"
    return kept, note


def build_data_folder(cfg: EvalConfig) -> Path | None:
    """The build-data folder behind `data_path` (a split folder, a split file inside one, or a task
    dataset whose config.yaml names it), where trace scoring finds the items table; None when unknown."""
    import yaml

    if cfg.data_dir:
        return Path(cfg.data_dir)
    path = Path(cfg.data_path)
    if (path / "splits").is_dir():
        return path
    if path.suffix == ".parquet" and path.parent.name == "splits":
        return path.parent.parent
    config = path / "config.yaml"
    if (path / "dataset_dict.json").exists() and config.is_file():
        built = (yaml.safe_load(config.read_text()) or {}).get("data_dir")
        return Path(built) if built and Path(built).is_dir() else None
    return None


def views_of(cfg: EvalConfig, kind: str, index, decoding: DecodingConfig):
    """The views of each example (decoding's `view_weight`), rendered as its prompt is."""
    n_items, n_views = decoding.view_items, len(decoding.view_weight)
    if kind != "tasks":
        return history_viewer(index, n_items, n_views=n_views)
    built, data = Path(cfg.data_path) / "config.yaml", build_data_folder(cfg)
    if data is None or not built.is_file():
        raise ValueError(
            f"view_weight needs the task build's config.yaml and its build-data folder to render a view: "
            f"{cfg.data_path} has no {'config.yaml' if not built.is_file() else 'items table'}"
        )
    return history_viewer(index, n_items, built, data, n_views)


def valid_rows(cfg: EvalConfig) -> list[dict] | None:
    """Validation split rows beside the train split (SASRec stops on them), if there are any."""
    train = Path(cfg.train_split) if cfg.train_split else Path(cfg.data_path) / "splits" / "train.parquet"
    path = train.with_name("valid.parquet")
    return read_split(path) if path.exists() and path.suffix == ".parquet" else None


def score(
    name: str,
    checkpoint: str,
    mode: str,
    run: list[dict],
    ks,
    wall_s: float | None,
    traces: dict | None = None,
    shares: dict | None = None,
) -> RunResult:
    has_sids = all(r.get("target_sids") for r in run)
    return RunResult(
        name=name,
        checkpoint=checkpoint,
        mode=mode,
        item=compute_metrics(run, ks, "item"),
        sid=compute_metrics(run, ks, "sid") if has_sids and run else None,
        stats=generation_stats(run, wall_s) if mode != "baseline" else {"n_users": len(run)},
        think_tokens=np.array([float(r.get("think_tokens") or 0) for r in run]),
        traces=traces,
        mode_shares=shares,
    )


def run_baselines(
    cfg: EvalConfig, examples: Sequence[EvalExample], index, ks
) -> tuple[list[RunResult], str | None]:
    if not cfg.baselines:
        return [], None
    train = train_rows(cfg)
    if train is None:
        return [], f"no train split found (set train_split); baselines {cfg.baselines} skipped"
    test = [ex.to_row() for ex in examples]
    out = []
    for name in cfg.baselines:
        if name == "sasrec":
            run = sasrec_baseline(train, test, k=max(ks), valid_rows=valid_rows(cfg), items=index.item_ids)
        else:
            fn = popularity_baseline if name == "popularity" else cooccurrence_baseline
            run = fn(train, test, k=max(ks))
        for record in run:  # SID view of the baseline's ranking, for SID-level metrics
            record["target_sids"] = list(dict.fromkeys(index.sid_text(t) for t in record["targets"]))
            record["ranked_sids"] = list(
                dict.fromkeys(index.sid_text(i) for i in record["ranked_items"] if i in index)
            )
        out.append(score(f"baseline/{name}", name, "baseline", run, ks, None))
    return out, None


def preflight(cfg: EvalConfig, safety: SafetyArguments) -> None:
    """Cheap checks before any model loads: model folders, data, item index, vocabularies, out_dir."""
    if not cfg.models and not cfg.baselines:
        raise UsageError("nothing to evaluate: give --models and/or --baselines")
    for model in cfg.models:
        check_model_path(model, "models")
    require_path(
        cfg.data_path or None, "data_path", hint="a task dataset, split folder, .parquet split or .csv"
    )
    if cfg.train_split:
        require_path(cfg.train_split, "train_split", "file")
    if cfg.data_dir:
        require_path(cfg.data_dir, "data_dir", "dir")
    if not cfg.item_index and not cfg.models:
        raise UsageError("item_index is not set (with no --models there is no model folder to take it from)")
    check_model_and_index(  # no models: the --item_index alone
        cfg.models or [""], cfg.item_index, safety.allow_unknown, "models",
        fix="evaluate a model trained with this index (after the align stage), or pass its --item_index",
    )  # fmt: skip
    inputs = [*[m for m in cfg.models if is_local_model(m)], cfg.data_path, cfg.item_index, cfg.train_split]
    check_output_dir(cfg.out_dir, inputs=inputs, overwrite=safety.overwrite, replaces=False)


def evaluate(cfg: EvalConfig, decoding: DecodingConfig, safety: SafetyArguments | None = None) -> dict:
    """The whole `onereason eval` run; returns the report object."""
    from onereason.modeling import load_model_and_tokenizer

    safety = safety or SafetyArguments()

    if not cfg.models and not cfg.baselines:
        raise ValueError("nothing to evaluate: give models and/or baselines")
    protocol = PROTOCOLS[cfg.protocol]
    for mode in cfg.modes if cfg.models else ():
        head_beams(mode, decoding)  # an impossible beam split fails before any model loads
    ks, depth = ranking_depth(protocol.ks, decoding.num_beams if cfg.models else None)
    out = Path(cfg.out_dir)
    index = (
        load_item_index(cfg.models[0], cfg.item_index) if cfg.models else load_item_index("", cfg.item_index)
    )
    examples, kind = load_examples(cfg, index)
    examples, drops = check_targets(examples, index)
    check_unknown(
        "users (every target item)", drops["unknown_target_users"], len(examples) + drops["unknown_target_users"],
        f"data_path {cfg.data_path} vs item index", (), safety.allow_unknown, safety.max_unknown_share,
    )  # fmt: skip
    if cfg.max_examples:
        examples = examples[: cfg.max_examples]
    if not examples:
        raise ValueError(f"{cfg.data_path}: no example has a target in the item index (drops: {drops})")
    logger.info("%d examples from %s (%s); drops %s", len(examples), cfg.data_path, kind, drops)
    make_output_dir(out, overwrite=True, replaces=False)  # checked by `preflight`; made once inputs pass
    results: list[RunResult] = []
    names = cfg.names or [Path(m).name or m for m in cfg.models]
    histories = {ex.key: ex.history for ex in examples}
    k_top = 10 if 10 in ks else max(ks)  # trace quality's Hit@k and race's mode shares
    for model_path, name in zip(cfg.models, names):
        this_index = load_item_index(model_path, cfg.item_index)
        loaded = load_model_and_tokenizer(model_path, dtype=cfg.dtype, device=cfg.device or _default_device())
        thinking = any(m in TRACE_MODES for m in cfg.modes)
        scorer = TraceScorer.from_folder(this_index, build_data_folder(cfg)) if thinking else None
        tracer = None
        if thinking and decoding.trace_source == "history":
            built = Path(cfg.data_path) / "config.yaml"
            if build_data_folder(cfg) is None or not built.is_file():
                raise ValueError(
                    f"trace_source history needs a task dataset (its config.yaml) and its build-data folder: "
                    f"{cfg.data_path} has no {'config.yaml' if not built.is_file() else 'items table'}"
                )
            tracer = history_tracer(this_index, build_data_folder(cfg), built)
        viewer = views_of(cfg, kind, this_index, decoding) if decoding.view_weight else None
        for mode in cfg.modes:
            run, wall = evaluate_checkpoint(
                model_path,
                examples,
                this_index,
                mode,
                decoding,
                out / "runs" / f"{name}-{mode}.jsonl",
                cfg.shard_size,
                model_and_tokenizer=loaded,
                history_trace=tracer,
                history_view=viewer,
            )
            traces = trace_quality(run, scorer, histories, k_top) if mode in TRACE_MODES else None
            shares = mode_shares(run, k_top) if mode in ("race", "adaptive") else None
            results.append(score(f"{name}/{mode}", name, mode, run, ks, wall, traces, shares))
    baselines, skipped = run_baselines(cfg, examples, index, ks)
    meta = {
        "protocol": cfg.protocol,
        "ranking": depth,
        "data": f"{cfg.data_path} ({kind}, split {cfg.split})",
        "n_examples": len(examples),
        "drops": drops,
        "config": asdict(cfg),
        "decoding": asdict(decoding),
    }
    if skipped:
        meta["baselines_skipped"] = skipped
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return {}
    report = write_report(
        out, results + baselines, ks, protocol.families, meta, cfg.n_bootstrap, cfg.bootstrap_seed
    )
    if "wandb" in cfg.report_to:
        log_to_wandb(report, out)
    return report


def log_to_wandb(report: dict, out: Path) -> None:
    """One wandb run for the evaluation: each run and mode's metrics as `<run>/<mode>/<level>/<metric>`
    (e.g. `sft/think/item/hit@10`, baselines as `baseline/<name>/...`), the report table, comparison.png."""
    import wandb

    columns, rows, metrics = None, [], {}
    for run in report["runs"]:
        for level in ("item", "sid"):
            values = {k: v for k, v in (run[level] or {}).items() if k not in ("level", "ks", "n_users")}
            if not values:
                continue
            metrics.update({f"{run['name']}/{level}/{k}": v for k, v in values.items()})
            columns = columns or list(values)
            rows.append([run["name"], run["mode"], level, *(values.get(c) for c in columns)])
    logged = {**metrics, "report": wandb.Table(columns=["run", "mode", "level", *(columns or [])], data=rows)}
    if (out / "comparison.png").is_file():
        logged["comparison"] = wandb.Image(str(out / "comparison.png"))
    config = {k: report.get(k) for k in ("protocol", "ranking", "data", "n_examples", "config", "decoding")}
    run = wandb.init(job_type="eval", name=out.resolve().name, config=config)
    try:
        run.log(logged)
    finally:
        run.finish()


def _default_device() -> str:
    from accelerate import PartialState

    return str(PartialState().device)


def main(argv: Sequence[str] | None = None) -> int:
    from onereason.configs import parse_config

    cfg, decoding, safety = parse_config(
        [EvalConfig, DecodingArgs, SafetyArguments], argv, prog="onereason eval"
    )
    preflight(cfg, safety)
    report = evaluate(cfg, decoding, safety)
    if report:
        print((Path(cfg.out_dir) / "report.md").read_text())
    return 0
