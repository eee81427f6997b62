"""SASRec (Kang & McAuley, ICDM 2018): the sequential model users would otherwise pick.

A small causal self-attention encoder over item ids, trained on the same split as every
other run and scored by the same metric code, so a report always shows the number a
recommendation team would compare against. The architecture is the published one (item +
learned position embeddings, `num_layers` pre-norm self-attention blocks with a point-wise
feed-forward, dropout, a final layer norm, scores = hidden · item embedding); the loss is
cross-entropy over every item of the catalogue at every position (the `CE` loss of RecBole,
stronger than the paper's one sampled negative). Training stops on validation NDCG@10 when
validation rows are given, and the best epoch's weights rank the test users over the full
catalogue.

It reads *split rows* (`user_id, history, target`, one row per prediction), rebuilds each
user's training sequence from the train rows (the first row's history, then every train
target in time order), trains on windows of `max_len + 1` items, and returns run records like
the other baselines (`evaluation.baselines`).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from onereason.ranking import mean_hit_ndcg

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SASRecConfig:
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.3
    max_len: int = 20
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 10  # epochs without a better validation NDCG@10
    seed: int = 0


class SASRec(nn.Module):
    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        d = cfg.hidden_size
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)  # 0 pads
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        self.dropout = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            d, cfg.num_heads, dim_feedforward=d, dropout=cfg.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        nn.init.normal_(self.item_emb.weight, std=d**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, T, d] of right-padded item sequences [B, T] (0 = pad)."""
        t = seq.shape[1]
        pos = torch.arange(t, device=seq.device)
        x = self.item_emb(seq) * self.item_emb.embedding_dim**0.5 + self.pos_emb(pos)
        x = self.dropout(x) * (seq > 0).unsqueeze(-1)
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=seq.device)
        # Right padding: a real position attends only to earlier real positions, so no key mask.
        return self.norm(self.encoder(x, mask=causal, is_causal=True))

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.item_emb.weight[1:].T  # [.., n_items]: column j is item j + 1


def user_sequences(train_rows: Sequence[Mapping]) -> dict[str, list[str]]:
    """Each user's training sequence: the first row's history, then every train target in order."""
    by_user: dict[str, list[Mapping]] = defaultdict(list)
    for row in train_rows:
        by_user[str(row["user_id"])].append(row)
    out = {}
    for user, rows in by_user.items():
        rows.sort(key=lambda r: (int(r.get("target_ts") or 0), len(r.get("history") or [])))
        out[user] = [str(i) for i in rows[0].get("history") or []] + [str(r["target"]) for r in rows]
    return out


def training_windows(sequences: Sequence[list[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-item labels [N, max_len], right-padded with 0; long users give several windows."""
    inputs, labels = [], []
    for seq in sequences:
        if len(seq) < 2:
            continue
        end = len(seq)
        while end > 1:
            window = seq[max(0, end - max_len - 1) : end]
            x, y = window[:-1], window[1:]
            inputs.append(x + [0] * (max_len - len(x)))
            labels.append(y + [0] * (max_len - len(y)))
            end -= max_len
    return np.asarray(inputs, dtype=np.int64), np.asarray(labels, dtype=np.int64)


def _histories(rows: Sequence[Mapping], vocab: Mapping[str, int], max_len: int) -> torch.Tensor:
    batch = []
    for row in rows:
        ids = [vocab[str(i)] for i in row.get("history") or [] if str(i) in vocab][-max_len:] or [0]
        batch.append(ids + [0] * (max_len - len(ids)))
    return torch.tensor(batch, dtype=torch.long)


@torch.no_grad()
def rank(model: SASRec, rows: Sequence[Mapping], vocab: Mapping[str, int], k: int, max_len: int, batch=512):
    """Top-k item positions (0-based over the catalogue) for each row's history."""
    model.eval()
    out = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        seq = _histories(chunk, vocab, max_len)
        last = (seq > 0).sum(1).clamp(min=1) - 1
        hidden = model(seq)[torch.arange(len(chunk)), last]
        out.append(torch.topk(model.scores(hidden), k, dim=-1).indices.numpy())
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def train_sasrec(
    train_rows: Sequence[Mapping],
    valid_rows: Sequence[Mapping] | None,
    items: Sequence[str],
    cfg: SASRecConfig = SASRecConfig(),
) -> tuple[SASRec, dict]:
    """Train on the users' train sequences; keep the epoch with the best validation NDCG@10."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    vocab = {item: n + 1 for n, item in enumerate(items)}
    sequences = [[vocab[i] for i in seq if i in vocab] for seq in user_sequences(train_rows).values()]
    inputs, labels = training_windows(sequences, cfg.max_len)
    model = SASRec(len(items), cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    valid = [r for r in valid_rows or [] if str(r["target"]) in vocab]
    valid_targets = np.array([vocab[str(r["target"])] - 1 for r in valid])
    best, best_state, best_epoch, curve = -1.0, None, 0, []
    start = time.perf_counter()
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        order = rng.permutation(len(inputs))
        total = 0.0
        for b in range(0, len(order), cfg.batch_size):
            idx = order[b : b + cfg.batch_size]
            width = int((inputs[idx] > 0).sum(1).max())  # right-padded: drop all-pad columns
            x, y = torch.from_numpy(inputs[idx, :width]), torch.from_numpy(labels[idx, :width])
            real = y > 0
            loss = nn.functional.cross_entropy(model.scores(model(x)[real]), y[real] - 1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        point = {"epoch": epoch, "loss": total / max(len(order), 1)}
        if valid:
            top = rank(model, valid, vocab, 10, cfg.max_len)
            point["valid_ndcg@10"] = mean_hit_ndcg(top.tolist(), valid_targets[:, None].tolist())[1]
            if point["valid_ndcg@10"] > best:
                best, best_epoch = point["valid_ndcg@10"], epoch
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            elif epoch - best_epoch >= cfg.patience:
                curve.append(point)
                break
        curve.append(point)
        logger.debug("SASRec epoch %s", point)
    if best_state is not None:
        model.load_state_dict(best_state)
    info = {
        "best_epoch": best_epoch or len(curve),
        "epochs": len(curve),
        "train_windows": len(inputs),
        "train_s": round(time.perf_counter() - start, 1),
        "curve": curve,
    }
    logger.info("SASRec: %d epochs (best %d), %.1f s", info["epochs"], info["best_epoch"], info["train_s"])
    return model, info


def sasrec_baseline(
    train_rows: Sequence[Mapping],
    test_rows: Sequence[Mapping],
    k: int = 20,
    valid_rows: Sequence[Mapping] | None = None,
    items: Sequence[str] | None = None,
    cfg: SASRecConfig = SASRecConfig(),
) -> list[dict]:
    """Run records ranking the top `k` items of the whole catalogue for every test row."""
    if items is None:
        seen: dict[str, None] = {}
        for row in list(train_rows) + list(valid_rows or []) + list(test_rows):
            for i in [*(row.get("history") or []), *(row.get("targets") or [row.get("target")])]:
                if i is not None:
                    seen.setdefault(str(i))
        items = list(seen)
    items = list(items)
    model, _ = train_sasrec(train_rows, valid_rows, items, cfg)
    vocab = {item: n + 1 for n, item in enumerate(items)}
    top = rank(model, test_rows, vocab, min(k, len(items)), cfg.max_len)
    return [
        {
            "key": str(row.get("key") or row.get("user_id")),
            "user_id": str(row.get("user_id")),
            "targets": [str(t) for t in row["targets"]] if row.get("targets") else [str(row["target"])],
            "ranked_items": [items[j] for j in ranked],
        }
        for row, ranked in zip(test_rows, top)
    ]
