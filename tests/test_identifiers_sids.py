"""Semantic IDs: residual k-means, RQ-VAE, collision resolution, quality reports."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_builders.identifiers import collisions, quality
from data_builders.identifiers.rq_kmeans import ResidualKMeans, balanced_assign
from data_builders.identifiers.rqvae import RQVAE


def clustered(n=600, d=16, centres=12, seed=0):
    """Points around `centres` random centres: structure that k-means should find."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d)).astype(np.float32) * 3
    labels = rng.integers(0, centres, n)
    return (c[labels] + rng.normal(size=(n, d)).astype(np.float32) * 0.3), labels


def test_residual_kmeans_codes_shape_range_and_residual_shrinks():
    x, _ = clustered()
    q = ResidualKMeans(levels=3, codebook_size=16, seed=0).fit(x)
    codes, last = q.encode(x, return_residuals=True)
    assert codes.shape == (600, 3) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 16
    recon = sum(cb[codes[:, lv]] for lv, cb in enumerate(q.codebooks))
    err = np.linalg.norm(x - recon, axis=1).mean()
    assert err < 0.5 * np.linalg.norm(x - x.mean(0), axis=1).mean()
    # last input is the residual after two levels
    np.testing.assert_allclose(last, x - q.codebooks[0][codes[:, 0]] - q.codebooks[1][codes[:, 1]], atol=1e-4)


def test_residual_kmeans_first_level_follows_clusters():
    x, labels = clustered(centres=8)
    codes = ResidualKMeans(levels=2, codebook_size=16, seed=0).fit(x).encode(x)
    # each first-level code holds (almost) only items of one true cluster
    used = np.unique(codes[:, 0])
    purity = np.mean([np.bincount(labels[codes[:, 0] == c]).max() / (codes[:, 0] == c).sum() for c in used])
    assert purity > 0.95


def test_residual_kmeans_is_deterministic_for_a_seed():
    x, _ = clustered()
    a = ResidualKMeans(levels=3, codebook_size=16, seed=3).fit(x).encode(x)
    b = ResidualKMeans(levels=3, codebook_size=16, seed=3).fit(x).encode(x)
    np.testing.assert_array_equal(a, b)


def test_balanced_assignment_respects_capacity_and_spreads_items():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 8)).astype(np.float32)
    x[:600] += 5  # a dense blob that plain assignment would send to few centroids
    centroids = x[rng.choice(1000, 10, replace=False)]
    assign = balanced_assign(x, centroids, slack=0.05)
    assert (assign >= 0).all()
    assert np.bincount(assign, minlength=10).max() <= int(np.ceil(100 * 1.05))
    codes = ResidualKMeans(levels=2, codebook_size=10, seed=0, balanced=True).fit(x).encode(x)
    plain = ResidualKMeans(levels=2, codebook_size=10, seed=0).fit(x).encode(x)
    assert (
        quality.level_stats(codes, [10, 10])[0]["normalized_entropy"]
        >= quality.level_stats(plain, [10, 10])[0]["normalized_entropy"] - 1e-9
    )
    assert np.bincount(codes[:, 0]).max() <= 106


def test_min_cost_resolution_leaves_every_sid_unique_and_keeps_prefixes():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(800, 12)).astype(np.float32)
    q = ResidualKMeans(levels=2, codebook_size=64, seed=0).fit(x)
    codes, last = q.encode(x, return_residuals=True)
    assert collisions.collision_stats(codes)["collision_rate"] > 0  # the test needs collisions
    resolved, info = collisions.resolve(codes, "min_cost", last, q.codebooks[-1])
    assert info["after"]["collision_rate"] == 0.0 and info["after"]["unique_sids"] == 800
    np.testing.assert_array_equal(resolved[:, :-1], codes[:, :-1])  # only the last level moves
    assert info["before"]["collision_rate"] == collisions.collision_stats(codes)["collision_rate"]
    # minimum cost: no worse than a greedy nearest-free choice inside each group
    cost = lambda c: ((last - q.codebooks[-1][c[:, -1]]) ** 2).sum()  # noqa: E731
    greedy = codes.copy()
    taken = set()
    for i in np.argsort(((last - q.codebooks[-1][codes[:, -1]]) ** 2).sum(1)):
        order = np.argsort(((last[i] - q.codebooks[-1]) ** 2).sum(1))
        greedy[i, -1] = next(c for c in order if (codes[i, 0], c) not in taken)
        taken.add((codes[i, 0], greedy[i, -1]))
    assert cost(resolved) <= cost(greedy) + 1e-3


def test_min_cost_refuses_a_prefix_group_larger_than_the_codebook():
    codes = np.zeros((5, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="extra_level"):
        collisions.resolve_min_cost(codes, np.zeros((5, 3), np.float32), np.zeros((4, 3), np.float32))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=60))
def test_extra_level_makes_rows_unique_and_keeps_original_codes(rows):
    codes = np.array(rows, dtype=np.int64)
    out, info = collisions.resolve_extra_level(codes)
    assert out.shape == (len(rows), 3)
    np.testing.assert_array_equal(out[:, :2], codes)
    assert collisions.collision_stats(out)["collision_rate"] == 0.0
    assert info["extra_level_size"] == collisions.collision_stats(codes)["max_items_per_sid"]
    assert (out[:, 2] == 0).sum() == len({tuple(r) for r in rows})


def test_quality_report_figures():
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 0]])
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    rep = quality.sid_report(codes, emb, [4, 2])
    assert rep["collisions"] == {
        "items": 4,
        "unique_sids": 3,
        "collision_rate": 0.25,
        "colliding_items": 2,
        "max_items_per_sid": 2,
    }
    lv0 = rep["levels"][0]
    assert lv0["codes_used"] == 2 and lv0["utilization"] == 0.5 and lv0["entropy_bits"] == pytest.approx(1.0)
    assert lv0["normalized_entropy"] == pytest.approx(0.5)
    coh = rep["coherence"]
    assert coh["same_first_code_cosine"] > 0.95 and coh["gap"] > 0.2


def test_nan_embeddings_are_refused_with_the_row():
    x, _ = clustered(n=100)
    x[7, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ResidualKMeans(levels=2, codebook_size=4).fit(x)


def test_rqvae_trains_reconstructs_and_resolves():
    x, labels = clustered(n=500, d=24, centres=6)
    vae = RQVAE(levels=3, codebook_size=8, latent_dim=8, hidden=[32], epochs=60, batch_size=128, seed=0).fit(
        x
    )
    first, last = vae.history[0], vae.history[-1]
    assert last["recon"] < first["recon"]
    codes, last_inputs = vae.encode(x, return_residuals=True)
    assert codes.shape == (500, 3) and codes.max() < 8
    used = np.unique(codes[:, 0])
    purity = np.mean([np.bincount(labels[codes[:, 0] == c]).max() / (codes[:, 0] == c).sum() for c in used])
    assert purity > 0.8
    resolved, info = collisions.resolve(codes, "extra_level", last_inputs, vae.last_codebook)
    assert info["after"]["collision_rate"] == 0.0
    again = (
        RQVAE(levels=3, codebook_size=8, latent_dim=8, hidden=[32], epochs=60, batch_size=128, seed=0)
        .fit(x)
        .encode(x)
    )
    np.testing.assert_array_equal(codes, again)


def test_rqvae_keeps_its_codebooks_alive_on_sentence_embedding_like_inputs():
    """Unit vectors sharing one dominant direction (as sentence embeddings do) used to collapse
    the first level onto a single code: 15 distinct SIDs for 2,000 items."""
    rng = np.random.default_rng(1)
    shared = rng.normal(size=128)
    spread = rng.normal(size=(2000, 128))
    x = shared / np.linalg.norm(shared) + 0.5 * spread / np.linalg.norm(spread, axis=1, keepdims=True)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    vae = RQVAE(
        levels=2, codebook_size=32, latent_dim=16, hidden=[64], epochs=40, batch_size=256, seed=0
    ).fit(x)
    codes = vae.encode(x)
    assert [len(np.unique(codes[:, level])) for level in range(2)] == [32, 32]
    kmeans_sids = len(np.unique(ResidualKMeans(levels=2, codebook_size=32, seed=0).fit(x).encode(x), axis=0))
    assert len(np.unique(codes, axis=0)) >= 0.9 * kmeans_sids  # as spread out as residual k-means
