"""Evaluation speed on Amazon Scientific (leave-one-out) with a tiny model, plus the baselines.

    python benchmarks/bench_eval.py                        # full test split, both modes, baselines
    python benchmarks/bench_eval.py --users 512 --think_users 64 --hf_users 64

Prints, for the full test split (8,317 users, 20 beams, non-thinking), the wall time and
users/second; the same for thinking mode on `--think_users` users (think budget
`--think_budget`); the SID answer is decoded by `onereason.sid_beam.constrained_beam_search`
(each prompt prefilled once). With `--hf_users N` it also times transformers'
`generate(num_beams=...)` with the trie logits processor (the previous path, which prefills
every prompt once per beam) on the first N non-thinking users, checks that both paths rank
the same SIDs, and prints the speed-up. Then Hit@10 / NDCG@10 of the popularity and co-occurrence baselines on
the same leave-one-out split. The model is an untrained tiny Qwen3 (the figures measure the
evaluation machinery, not recommendation quality); SIDs come from the published 4-level
index `Scientific.rkmeans_zcr.index.json`; test rows are derived from `Scientific.inter.json`
(last item = target, history = up to 20 items before it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation.baselines import cooccurrence_baseline, popularity_baseline  # noqa: E402
from evaluation.generate import BeamRanker, DecodingConfig, generate_run  # noqa: E402
from evaluation.metrics import compute_metrics, generation_stats  # noqa: E402
from evaluation.protocols import check_targets, examples_from_rows, leave_one_out_rows, read_inter_json  # noqa: E402
from onereason.sid_beam import left_padded  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "amazon-scientific"
CORPUS = [
    "The user's history, oldest first: What will the user interact with next?",
    "Derivation: the recent items share a category. Evolution: a long-term interest in lab supplies.",
] * 30


class HFGenerateRanker(BeamRanker):
    """The previous SID path, for comparison: `generate(num_beams=K)` + the trie logits processor."""

    def _generate(self, heads, config, constrained):
        if not constrained:
            return super()._generate(heads, config, constrained)
        input_ids, attention = left_padded(heads, self.pad_id)
        width = input_ids.shape[1]
        out = self.model.generate(
            input_ids=input_ids.to(self.model.device),
            attention_mask=attention.to(self.model.device),
            generation_config=config,
            logits_processor=[self.trie.logits_processor(width, num_sids=1)],
        )
        return out.sequences[:, width:].tolist(), out.sequences_scores.float().tolist()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--users", type=int, default=None, help="non-thinking users (default: all test users)"
    )
    parser.add_argument("--think_users", type=int, default=256)
    parser.add_argument("--think_budget", type=int, default=64)
    parser.add_argument("--num_beams", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--hf_users", type=int, default=0, help="also time HF generate beam search on this many users"
    )
    parser.add_argument(
        "--dump", default=None, help="write every run's ranked SIDs to this JSON file (to compare rankings)"
    )
    args = parser.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} is absent (see ../shared/data/README.md)")
        return 0
    torch.set_num_threads(args.threads)

    from onereason.item_index import ItemIndex
    from onereason.modeling import init_model, load_model_and_tokenizer

    index = ItemIndex.from_published_json(DATA / "Scientific.rkmeans_zcr.index.json")
    splits = leave_one_out_rows(read_inter_json(DATA / "Scientific.inter.json"), max_history=20)
    examples, drops = check_targets(examples_from_rows(splits["test"], index), index)
    print(f"index: {index!r}")
    print(f"leave-one-out: {len(splits['train'])} train rows, {len(examples)} test users, drops {drops}")

    with tempfile.TemporaryDirectory() as tmp:
        init_model(tmp, CORPUS, preset="tiny", itemic_tokens=index.itemic_tokens())
        model, tokenizer = load_model_and_tokenizer(tmp, dtype=torch.float32)
        model.eval()

        def timed(
            mode: str, users, cfg: DecodingConfig, ranker_class=BeamRanker, label: str = ""
        ) -> tuple[list, float]:
            ranker = ranker_class(model, tokenizer, index, cfg)
            began = time.perf_counter()
            run, _ = generate_run(ranker, users, mode, None, shard_size=1024, progress=False)
            wall = time.perf_counter() - began
            stats = generation_stats(run, wall)
            item = compute_metrics(run, (10,), "item").means
            print(
                f"{label or mode:>8}: {len(run)} users, {cfg.num_beams} beams, batch {cfg.batch_size}: {wall:.1f} s, "
                f"{stats['users_per_s']:.1f} users/s, latency p50 {stats['latency_p50_s'] * 1000:.1f} ms "
                f"p95 {stats['latency_p95_s'] * 1000:.1f} ms, valid SID rate {stats['valid_sid_rate']:.4f}, "
                f"think tokens mean {stats['think_tokens_mean']:.1f} p95 {stats['think_tokens_p95']:.0f}, "
                f"hit@10 {item['hit@10']:.4f} (untrained)"
            )
            dumped[label or mode] = [r["ranked_sids"] for r in run]
            return run, wall

        dumped: dict[str, list] = {}
        base = {"num_beams": args.num_beams, "batch_size": args.batch_size}
        if args.hf_users:
            users = examples[: args.hf_users]
            hf_run, hf_wall = timed("no_think", users, DecodingConfig(**base), HFGenerateRanker, "hf")
            new_run, new_wall = timed("no_think", users, DecodingConfig(**base), BeamRanker, "new")
            same = sum(a["ranked_sids"] == b["ranked_sids"] for a, b in zip(hf_run, new_run))
            gap = max(abs(x - y) for a, b in zip(hf_run, new_run) for x, y in zip(a["scores"], b["scores"]))
            speedup = hf_wall / new_wall
            print(
                f"hf vs new: same ranking for {same}/{len(users)} users, max score gap {gap:.2e}, "
                f"speed-up x{speedup:.1f}"
            )
        timed("no_think", examples[: args.users] if args.users else examples, DecodingConfig(**base))
        think_cfg = DecodingConfig(
            **base, think_budget=args.think_budget, think_temperature=1.0, think_top_k=0, think_top_p=1.0
        )
        timed("think", examples[: args.think_users], think_cfg)

    if args.dump:
        Path(args.dump).write_text(json.dumps(dumped), encoding="utf-8")
    test_rows = [ex.to_row() for ex in examples]
    for name, fn in (("popularity", popularity_baseline), ("cooccurrence", cooccurrence_baseline)):
        began = time.perf_counter()
        run = fn(splits["train"], test_rows, k=32)
        m = compute_metrics(run, (5, 10), "item").means
        print(
            f"baseline {name:>12}: hit@5 {m['hit@5']:.4f} ndcg@5 {m['ndcg@5']:.4f} "
            f"hit@10 {m['hit@10']:.4f} ndcg@10 {m['ndcg@10']:.4f} ({time.perf_counter() - began:.1f} s)"
        )
    print(json.dumps({"machine": "2 shared CPU cores (contended)", "threads": args.threads}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
