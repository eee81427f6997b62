"""Non-neural baselines on the same split, so every model number has context.

Both read *split rows* (`user_id, history, target`; docs/ARCHITECTURE.md, "splits on disk")
and return a run in the same record format as the model (`ranked_items`, `targets`, …), so
the same metric code scores them.

- **most popular**: items ranked by how often they were interacted with in the training
  period. Every training interaction is counted once: the target of each train row, plus the
  first history item of each user's earliest row (a history of length 1), which is no row's
  target.
- **item-to-item co-occurrence**: two items co-occur when one is a train target and the
  other is among the `window` items just before it in that user's history (counted both
  ways). A test user's score for a candidate is the sum over their last `window` history
  items of co-occurrence counts, the most recent item weighted 1, the one before `decay`,
  and so on. Ties and users with no co-occurring candidate fall back to popularity.

Neither excludes items already in the history (the model does not either); set
`exclude_history=True` to do so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import sparse


def _targets(row: Mapping) -> list[str]:
    if row.get("targets"):
        return [str(t) for t in row["targets"]]
    return [str(row["target"])]


def _vocabulary(train_rows: Sequence[Mapping], test_rows: Sequence[Mapping]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for row in list(train_rows) + list(test_rows):
        for item in list(row.get("history") or []) + _targets(row):
            vocab.setdefault(str(item), len(vocab))
    return vocab


def popularity_counts(train_rows: Iterable[Mapping], vocab: Mapping[str, int]) -> np.ndarray:
    """Training interactions per item (see the module doc for what counts once)."""
    counts = np.zeros(len(vocab))
    for row in train_rows:
        counts[vocab[str(row["target"])]] += 1
        history = row.get("history") or []
        if len(history) == 1:
            counts[vocab[str(history[0])]] += 1
    return counts


def _records(
    test_rows: Sequence[Mapping], scores: np.ndarray, items: list[str], k: int, exclude: bool, vocab
) -> list[dict]:
    out = []
    for row, user_scores in zip(test_rows, scores):
        user_scores = user_scores.copy()
        if exclude:
            seen = [vocab[str(i)] for i in row.get("history") or []]
            user_scores[seen] = -np.inf
        top = np.argpartition(-user_scores, min(k, len(items) - 1))[:k]
        top = top[np.lexsort((top, -user_scores[top]))]  # score desc, then catalogue order
        out.append(
            {
                "key": str(row.get("key") or row.get("user_id")),
                "user_id": str(row.get("user_id")),
                "targets": _targets(row),
                "ranked_items": [items[i] for i in top],
            }
        )
    return out


def popularity_baseline(
    train_rows: Sequence[Mapping], test_rows: Sequence[Mapping], k: int = 32, exclude_history: bool = False
) -> list[dict]:
    """Run records ranking the `k` most popular training items for every test user."""
    vocab = _vocabulary(train_rows, test_rows)
    items = list(vocab)
    counts = popularity_counts(train_rows, vocab)
    scores = np.broadcast_to(counts, (len(test_rows), len(items)))
    return _records(test_rows, scores, items, k, exclude_history, vocab)


def cooccurrence_matrix(
    train_rows: Iterable[Mapping], vocab: Mapping[str, int], window: int = 3
) -> sparse.csr_matrix:
    """Symmetric item x item counts of (train target, one of the `window` items before it)."""
    rows, cols = [], []
    for row in train_rows:
        target = vocab[str(row["target"])]
        for item in (row.get("history") or [])[-window:]:
            other = vocab[str(item)]
            if other != target:
                rows += [target, other]
                cols += [other, target]
    data = np.ones(len(rows))
    n = len(vocab)
    return sparse.csr_matrix((data, (rows, cols)), shape=(n, n))


def cooccurrence_baseline(
    train_rows: Sequence[Mapping],
    test_rows: Sequence[Mapping],
    k: int = 32,
    window: int = 3,
    decay: float = 0.5,
    exclude_history: bool = False,
    batch: int = 2048,
) -> list[dict]:
    """Run records ranking items by recency-weighted co-occurrence with the user's last items."""
    vocab = _vocabulary(train_rows, test_rows)
    items = list(vocab)
    co = cooccurrence_matrix(train_rows, vocab, window)
    # Popularity as a tie-breaker: scaled below one co-occurrence count so it only orders ties.
    counts = popularity_counts(train_rows, vocab)
    tiebreak = counts / (counts.max() + 1.0) * 1e-3
    out: list[dict] = []
    for start in range(0, len(test_rows), batch):
        chunk = test_rows[start : start + batch]
        r, c, w = [], [], []
        for j, row in enumerate(chunk):
            recent = list(row.get("history") or [])[-window:]
            for age, item in enumerate(reversed(recent)):
                r.append(j)
                c.append(vocab[str(item)])
                w.append(decay**age)
        weights = sparse.csr_matrix((w, (r, c)), shape=(len(chunk), len(items)))
        scores = np.asarray((weights @ co).todense()) + tiebreak
        out += _records(chunk, scores, items, k, exclude_history, vocab)
    return out
