"""The evaluation report: `report.json`, `report.md` (tables) and `comparison.png`.

`RunResult` is one scored run (a checkpoint in one mode, or a baseline). `write_report`
puts all of them side by side, adds a paired bootstrap for every pair worth comparing —
each thinking mode (think, race) vs non-thinking of the same checkpoint, and each later
checkpoint vs the first in the same mode (e.g. RL vs SFT) — and draws two panels: the
headline metrics per run with 95% bootstrap intervals, and hit rate by think length for
the thinking runs. Thinking runs carry their trace quality (`evaluation.traces.trace_quality`)
and race runs the share of their top SIDs each mode found (`evaluation.metrics.mode_shares`)
in both reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluation.bootstrap import Interval, align_users, mean_interval, paired_bootstrap_many
from evaluation.metrics import Metrics
from onereason.io import atomic_write_bytes, atomic_write_json, atomic_write_text


@dataclass
class RunResult:
    name: str  # e.g. "sft/think" or "baseline/popularity"
    checkpoint: str
    mode: str  # "think", "no_think", "race" or "baseline"
    item: Metrics
    sid: Metrics | None = None
    stats: dict = field(default_factory=dict)
    think_tokens: np.ndarray | None = None  # per user, for the think-length panel
    traces: dict | None = None  # thinking runs: `evaluation.traces.trace_quality`
    mode_shares: dict | None = None  # race runs: `evaluation.metrics.mode_shares`

    @property
    def is_baseline(self) -> bool:
        return self.mode == "baseline"

    @property
    def thinks(self) -> bool:
        """Whether the run sampled traces (think and race runs)."""
        return self.mode not in ("baseline", "no_think")


@dataclass
class Comparison:
    a: str
    b: str
    level: str
    n_users: int
    users_not_shared: int
    intervals: dict[str, Interval]

    def to_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "difference": "a - b",
            "level": self.level,
            "n_users": self.n_users,
            "users_not_shared": self.users_not_shared,
            "metrics": {m: i.to_dict() for m, i in self.intervals.items()},
        }


def headline_metrics(ks: Sequence[int], families: Sequence[str]) -> list[str]:
    """The metrics the markdown table shows: each family at each K, then MRR when asked."""
    out = [f"{f}@{k}" for f in families if f != "mrr" for k in ks]
    return out + (["mrr"] if "mrr" in families else [])


def comparison_pairs(results: Sequence[RunResult]) -> list[tuple[RunResult, RunResult]]:
    """Each other mode (think, race) vs no_think per checkpoint; later checkpoints vs the first, per mode."""
    models = [r for r in results if not r.is_baseline]
    pairs = []
    for ckpt in dict.fromkeys(r.checkpoint for r in models):
        by_mode = {r.mode: r for r in models if r.checkpoint == ckpt}
        if "no_think" in by_mode:
            pairs += [(r, by_mode["no_think"]) for mode, r in by_mode.items() if mode != "no_think"]
    for mode in dict.fromkeys(r.mode for r in models):
        same = [r for r in models if r.mode == mode]
        pairs += [(later, same[0]) for later in same[1:]]
    return pairs


def compare(a: RunResult, b: RunResult, level: str = "item", n: int = 1000, seed: int = 0) -> Comparison:
    ma, mb = (a.item, b.item) if level == "item" else (a.sid, b.sid)
    va, vb, dropped = align_users(ma.user_ids, ma.per_user, mb.user_ids, mb.per_user)
    n_users = len(next(iter(va.values()))) if va else 0
    intervals = paired_bootstrap_many(va, vb, n=n, seed=seed) if n_users else {}
    return Comparison(a.name, b.name, level, n_users, dropped, intervals)


def _fmt(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.4f}" if abs(x) < 100 else f"{x:.1f}"
    return str(x)


def markdown(results, comparisons, columns, meta) -> str:
    lines = [f"# Evaluation report — {meta.get('protocol', '')}", ""]
    for key in ("data", "n_examples", "drops", "ranking"):
        if key in meta:
            lines.append(f"- {key}: {meta[key]}")
    lines += ["", "## Item level (collisions expanded; K counts item positions)", ""]
    extra = ["valid SID rate", "think tokens (mean / p95)", "users/s"]
    lines.append("| run | users | " + " | ".join(columns + extra) + " |")
    lines.append("|---" * (len(columns) + len(extra) + 2) + "|")
    for r in results:
        s = r.stats
        think = (
            f"{s['think_tokens_mean']:.1f} / {s['think_tokens_p95']:.0f}" if "think_tokens_mean" in s else "–"
        )
        cells = [_fmt(r.item.means.get(c)) for c in columns] + [
            _fmt(s.get("valid_sid_rate")),
            think,
            _fmt(s.get("users_per_s")),
        ]
        lines.append(f"| {r.name} | {r.item.n_users} | " + " | ".join(cells) + " |")
    sid_runs = [r for r in results if r.sid is not None]
    if sid_runs:
        lines += [
            "",
            "## SID level",
            "",
            "| run | " + " | ".join(columns) + " |",
            "|---" * (len(columns) + 1) + "|",
        ]
        for r in sid_runs:
            lines.append(f"| {r.name} | " + " | ".join(_fmt(r.sid.means.get(c)) for c in columns) + " |")
    lines += trace_table([r for r in results if r.traces is not None])
    lines += shares_table([r for r in results if r.mode_shares is not None])
    for c in comparisons:
        lines += [
            "",
            f"## {c.a} − {c.b} ({c.level} level, paired bootstrap over {c.n_users} users)",
            "",
            "| metric | difference | 95% interval | p | significant |",
            "|---|---|---|---|---|",
        ]
        for m in columns:
            if m in c.intervals:
                i = c.intervals[m]
                lines.append(
                    f"| {m} | {i.diff:+.4f} | [{i.low:+.4f}, {i.high:+.4f}] | {i.p_value:.3f} | {'yes' if i.significant else 'no'} |"
                )
    return "\n".join(lines) + "\n"


def trace_table(runs: Sequence[RunResult]) -> list[str]:
    """The markdown lines of the trace-quality table (thinking runs), or none without such runs."""
    if not runs:
        return []
    criteria = list(dict.fromkeys(c for r in runs for c in r.traces["criteria"]))
    metric = runs[0].traces["hit_by_trace"]["metric"]
    head = [
        "traces",
        "well formed",
        "right",
        *criteria,
        "hallucination",
        f"{metric} right (users)",
        f"{metric} wrong (users)",
    ]
    lines = [
        "",
        "## Trace quality (thinking runs; a criterion's accuracy is right / (right + wrong): "
        "malformed traces are wrong, silent ones left out)",
        "",
        "| run | " + " | ".join(head) + " |",
        "|---" * (len(head) + 1) + "|",
    ]
    for r in runs:
        t = r.traces
        split = [t["hit_by_trace"][side] for side in ("right", "wrong")]
        cells = [
            str(t["traces"]),
            _fmt(t["well_formed"]),
            _fmt(t["right"]),
            *[_fmt(t["criteria"].get(c, {}).get("accuracy")) for c in criteria],
            _fmt(t["hallucination"]["rate"]),
            *[f"{_fmt(h['value'])} ({h['users']})" for h in split],
        ]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    sources = dict.fromkeys(r.traces["scored_against"] for r in runs)
    skipped = {c: why for r in runs for c, why in r.traces["not_scored"].items()}
    lines += ["", f"- scored against: {', '.join(sources)}"]
    return lines + [f"- {c} not scored: {why}" for c, why in skipped.items()]


def shares_table(runs: Sequence[RunResult]) -> list[str]:
    """The markdown lines of the race runs' mode shares, or none without race runs."""
    if not runs:
        return []
    modes = list(dict.fromkeys(m for r in runs for m in r.mode_shares["shares"]))
    k = runs[0].mode_shares["k"]
    lines = [
        "",
        f"## Race: which mode found the top-{k} SIDs (share of SIDs, pooled over users)",
        "",
        "| run | SIDs | " + " | ".join(modes) + " |",
        "|---" * (len(modes) + 2) + "|",
    ]
    for r in runs:
        shares = r.mode_shares["shares"]
        cells = [str(r.mode_shares["sids"]), *[_fmt(shares.get(m)) for m in modes]]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return lines


def plot(
    path: Path, results: Sequence[RunResult], metrics: Sequence[str], intervals: dict, k_hit: str
) -> None:
    """Two panels: metrics per run with 95% intervals; hit rate by think length (thinking runs)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(results), 1)
    x = np.arange(len(metrics))
    for j, r in enumerate(results):
        means = [r.item.means[m] for m in metrics]
        lows = [means[i] - intervals[r.name][m].low for i, m in enumerate(metrics)]
        highs = [intervals[r.name][m].high - means[i] for i, m in enumerate(metrics)]
        left.bar(x + j * width, means, width, yerr=[lows, highs], capsize=3, label=r.name)
    left.set_xticks(x + width * (len(results) - 1) / 2, metrics)
    left.set_ylabel("mean over users (95% bootstrap interval)")
    left.set_title("metric by run and mode")
    left.legend(fontsize=8)
    thinking = [r for r in results if r.thinks and r.think_tokens is not None and len(r.think_tokens)]
    for r in thinking:
        tokens, hits = r.think_tokens, r.item.per_user[k_hit]
        edges = np.unique(np.quantile(tokens, np.linspace(0, 1, 6)))
        if len(edges) < 2:
            right.scatter([tokens.mean()], [hits.mean()], label=r.name)
            continue
        bins = np.clip(np.searchsorted(edges, tokens, side="right") - 1, 0, len(edges) - 2)
        centers = [tokens[bins == b].mean() for b in range(len(edges) - 1) if (bins == b).any()]
        rates = [hits[bins == b].mean() for b in range(len(edges) - 1) if (bins == b).any()]
        right.plot(centers, rates, marker="o", label=r.name)
    if thinking:
        right.set_xlabel("think tokens (quintile bins)")
        right.set_ylabel(k_hit)
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, "no thinking run", ha="center", va="center", transform=right.transAxes)
    right.set_title(f"{k_hit} by think length")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_report(
    out_dir: str | Path,
    results: Sequence[RunResult],
    ks: Sequence[int] = (1, 5, 10, 20, 32),
    families: Sequence[str] = ("hit", "recall", "ndcg", "mrr"),
    meta: dict | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Write report.json, report.md and comparison.png to `out_dir`; return the JSON object."""
    out = Path(out_dir)
    meta = dict(meta or {})
    columns = headline_metrics(ks, families)
    comparisons = [compare(a, b, "item", n_bootstrap, seed) for a, b in comparison_pairs(results)]
    comparisons += [
        compare(a, b, "sid", n_bootstrap, seed)
        for a, b in comparison_pairs(results)
        if a.sid is not None and b.sid is not None
    ]
    intervals = {
        r.name: {m: mean_interval(r.item.per_user[m], n_bootstrap, seed) for m in columns}
        for r in results
        if r.item.n_users
    }
    report = {
        **meta,
        "ks": list(ks),
        "runs": [
            {
                "name": r.name,
                "checkpoint": r.checkpoint,
                "mode": r.mode,
                "item": r.item.to_dict(),
                "sid": r.sid.to_dict() if r.sid is not None else None,
                "intervals_95": {m: [i.low, i.high] for m, i in intervals.get(r.name, {}).items()},
                "stats": r.stats,
                **({"traces": r.traces} if r.traces is not None else {}),
                **({"mode_shares": r.mode_shares} if r.mode_shares is not None else {}),
            }
            for r in results
        ],
        "comparisons": [c.to_dict() for c in comparisons],
    }
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", markdown(results, comparisons, columns, meta))
    k_plot = 10 if 10 in ks else max(ks)
    plotted = [m for m in (f"hit@{k_plot}", f"ndcg@{k_plot}", "mrr") if m in columns]
    plot(out / "comparison.png", [r for r in results if r.item.n_users], plotted, intervals, f"hit@{k_plot}")
    return report
