"""The SASRec baseline: trains on split rows in seconds and ranks far above popularity."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from data_builders.build import BuildDataConfig, build_data
from evaluation.baselines import popularity_baseline
from evaluation.metrics import compute_metrics
from evaluation.run import ranking_depth
from evaluation.sasrec import SASRecConfig, sasrec_baseline, training_windows, user_sequences


def test_user_sequences_rebuild_the_training_sequence_from_prefix_rows():
    rows = [
        {"user_id": "u", "history": ["a", "b"], "target": "c", "target_ts": 3},
        {"user_id": "u", "history": ["a"], "target": "b", "target_ts": 2},
        {"user_id": "u", "history": ["a", "b", "c"], "target": "d", "target_ts": 4},
    ]
    assert user_sequences(rows) == {"u": ["a", "b", "c", "d"]}
    inputs, labels = training_windows([[1, 2, 3, 4, 5, 6, 7]], max_len=3)
    # Windows of max_len + 1 items from the end; every item but the first is a label once.
    assert inputs.tolist() == [[4, 5, 6], [1, 2, 3]]
    assert labels.tolist() == [[5, 6, 7], [2, 3, 4]]
    short_inputs, short_labels = training_windows([[8, 9]], max_len=3)  # right-padded with 0
    assert short_inputs.tolist() == [[8, 0, 0]] and short_labels.tolist() == [[9, 0, 0]]


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    out = tmp_path_factory.mktemp("sasrec") / "data"
    build_data(
        BuildDataConfig(
            source="synthetic",
            source_options={"num_users": 400, "num_items": 150, "seed": 3},
            out_dir=str(out),
        )
    )
    return {s: pq.read_table(out / "splits" / f"{s}.parquet").to_pylist() for s in ("train", "valid", "test")}


def test_sasrec_beats_popularity_on_the_synthetic_world(splits):
    cfg = SASRecConfig(max_epochs=30, patience=5, batch_size=64, learning_rate=3e-3)
    run = sasrec_baseline(splits["train"], splits["test"], k=10, valid_rows=splits["valid"], cfg=cfg)
    pop = popularity_baseline(splits["train"], splits["test"], k=10)
    assert len(run) == len(splits["test"]) and all(len(r["ranked_items"]) == 10 for r in run)
    sasrec, popular = compute_metrics(run, (10,)), compute_metrics(pop, (10,))
    assert sasrec.means["hit@10"] > popular.means["hit@10"] + 0.05, (sasrec.means, popular.means)


def test_reports_never_rank_deeper_than_the_beams():
    assert ranking_depth((1, 5, 10, 20, 32), 20)[0] == (1, 5, 10, 20)
    ks, note = ranking_depth((1, 5, 10, 20, 32), 10)
    assert ks == (1, 5, 10) and "K = 20, 32 not shown" in note
    assert ranking_depth((3, 5, 10), None)[0] == (3, 5, 10)  # baselines only: the protocol's K
    with pytest.raises(ValueError, match="below every cut-off"):
        ranking_depth((5, 10), 3)
