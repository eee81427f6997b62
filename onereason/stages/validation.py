"""Validation by ranking during SFT: Hit@10 / NDCG@10 of constrained beam search.

The token loss on validation rows says little about recommendation quality (a model can
lower it on the boundary tokens while ranking worse). `RankingCallback` ranks a fixed
subset of validation users at every evaluation with the same trie-constrained beam search
as `onereason eval` (non-thinking mode: the prompt ends with the empty think block), and
adds `eval_hit@10` and `eval_ndcg@10` to the evaluation metrics. Set
`metric_for_best_model: eval_ndcg@10` with `load_best_model_at_end: true` and transformers
keeps the best checkpoint; `early_stopping_patience` stops a run that no longer improves.
"""

from __future__ import annotations

import math

import datasets
import torch
from transformers import TrainerCallback

from onereason.decoding import TwoStageDecoder
from onereason.item_index import ItemIndex
from onereason.ranking import mean_hit_ndcg
from onereason.thinking import switch_mode
from onereason.trie import SIDTrie


def ranking_subset(valid: datasets.Dataset, n: int, seed: int = 0) -> datasets.Dataset:
    """A fixed sample of at most `n` `rec_sid` validation rows, one per user and target.

    A mixture with only thinking `rec_sid` rows still has validation prompts: the ranking
    switches every prompt to non-thinking, as `onereason eval` does.
    """
    rows = valid.filter(lambda task: task == "rec_sid", input_columns="task")
    mode = "no_think" if "no_think" in set(rows["mode"]) else "think"
    keep = rows.filter(lambda m: m == mode, input_columns="mode")
    return keep.shuffle(seed=seed).select(range(n)) if len(keep) > n else keep


def ranking_rows(subset: datasets.Dataset) -> list[dict]:
    """What the callback ranks: each row's prompt and the items that count as a hit."""
    return [{"prompt": p, "targets": t} for p, t in zip(subset["prompt"], subset["target_items"])]


@torch.no_grad()
def rank_items(model, tokenizer, index: ItemIndex, trie: SIDTrie, rows, num_beams=20, batch_size=64):
    """The ranked item list of every row: non-thinking beams best first, each SID expanded to its items."""
    decoder = TwoStageDecoder(tokenizer, trie)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        heads = [
            tokenizer.apply_chat_template(
                switch_mode(r["prompt"], "no_think"), add_generation_prompt=True, tokenize=True
            )
            for r in chunk
        ]
        heads = [list(h["input_ids"] if hasattr(h, "keys") else h) + decoder.empty_think_ids for h in heads]
        beams, scores = decoder.sid_beams(model, heads, num_beams)
        for b in range(len(chunk)):
            items = []
            for k in range(b * num_beams, (b + 1) * num_beams):
                codes = (
                    []
                    if scores[k] == -math.inf
                    else index.parse(tokenizer.decode(beams[k][: trie.sid_length]))
                )
                if codes:
                    items += index.items_for_sid(codes[0])
            out.append(items)
    model.train(was_training)
    return out


class RankingCallback(TrainerCallback):
    """Adds `eval_hit@10` / `eval_ndcg@10` (constrained beam search) to every evaluation."""

    def __init__(self, trainer, index: ItemIndex, rows: list[dict], num_beams: int = 20):
        self.trainer = trainer
        self.index = index
        self.rows = rows
        self.num_beams = num_beams
        tok = trainer.processing_class
        self.trie = SIDTrie.from_index(index, tok, eos_token_id=tok.eos_token_id)
        self.history: list[dict] = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics is None or not self.rows:
            return
        tok = self.trainer.processing_class
        model = self.trainer.model
        ranked = rank_items(model, tok, self.index, self.trie, self.rows, self.num_beams)
        hit, ndcg = mean_hit_ndcg(ranked, [r["targets"] for r in self.rows])
        metrics["eval_hit@10"], metrics["eval_ndcg@10"] = hit, ndcg  # seen by best-model selection
        point = {"step": state.global_step, "epoch": state.epoch, "eval_hit@10": hit, "eval_ndcg@10": ndcg}
        self.history.append(point)
        self.trainer.log({"eval_hit@10": hit, "eval_ndcg@10": ndcg})
