"""DropQuery: the candidates whose prediction flips under feature dropout, one per k-means cluster, nearest its
centroid."""

import numpy as np
import pytest
import torch

from prunefuse_hf.selection.dropquery import DropQueryStrategy, dropout_disagreement
from prunefuse_hf.selection.proxy import train_linear_probe
from prunefuse_hf.selection.strategies import MarginStrategy, get_strategy

CENTERS = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)


def _blobs(size=10, seed=0):
    """Three tight clusters of `size` points around the unit axes."""
    rng = np.random.default_rng(seed)
    features = np.concatenate([center + rng.normal(0.0, 0.05, (size, 3)) for center in CENTERS])
    return features.astype(np.float32), np.repeat(np.arange(3), size)


def _passes(probs, flips):
    """`mc_probs` whose first `flips[i]` of 3 passes predict another class than `probs[i]`."""
    swapped = probs[:, ::-1]
    return np.stack([np.where((flips > k)[:, None], swapped, probs) for k in range(3)], axis=1)


def test_picks_one_uncertain_candidate_per_cluster_nearest_its_centroid():
    features, blob = _blobs()
    probs = np.tile([0.6, 0.4], (30, 1))
    # Blob 2 is certain (no flip); in blobs 0 and 1, the candidates flip 2 or 3 times out of 3; one in each flips once.
    flips = np.where(blob == 2, 0, 2 + np.arange(30) % 2)
    flips[[3, 13]] = 1
    pool = np.arange(200, 230)

    picked = DropQueryStrategy().select(2, pool_indices=pool, probs=probs, mc_probs=_passes(probs, flips),
                                        features=features, seed=0)  # fmt: skip

    # One per cluster of the uncertain (blobs 0 and 1): the uncertain member nearest their mean.
    expected = []
    for b in (0, 1):
        members = np.flatnonzero((blob == b) & (flips >= 2))
        centroid = features[members].mean(axis=0)
        expected.append(200 + members[np.linalg.norm(features[members] - centroid, axis=1).argmin()])
    assert sorted(picked.indices.tolist()) == sorted(expected)
    margin = MarginStrategy().compute_scores(probs)
    np.testing.assert_array_equal(
        picked.scores, flips[picked.indices - 200] + 0.5 * margin[picked.indices - 200]
    )
    assert (np.diff(picked.scores) <= 0).all()


def test_only_majority_disagreement_makes_a_candidate():
    features, blob = _blobs()
    probs = np.tile([0.6, 0.4], (30, 1))
    flips = np.where(blob == 0, 1, 2)  # blob 0: one flip of 3 is not a majority
    picked = get_strategy("dropquery").select(
        2, pool_indices=np.arange(30), probs=probs, mc_probs=_passes(probs, flips), features=features, seed=0
    )
    assert sorted(blob[picked.indices].tolist()) == [1, 2]


def test_fewer_uncertain_than_the_budget_takes_them_all_then_the_most_disagreeing():
    features, _ = _blobs()
    probs = np.tile([0.6, 0.4], (30, 1))
    probs[5] = [0.55, 0.45]  # the smaller margin among the one-flip candidates
    flips = np.zeros(30, dtype=int)
    flips[[7, 21]] = 3
    flips[[5, 9]] = 1
    picked = get_strategy("dropquery").select(
        4, pool_indices=np.arange(30), probs=probs, mc_probs=_passes(probs, flips), features=features, seed=0
    )
    np.testing.assert_array_equal(picked.indices, [7, 21, 5, 9])
    np.testing.assert_allclose(picked.scores, [2.9, 2.9, 0.95, 0.9])


def test_duplicate_features_still_give_n_distinct_picks():
    features = np.zeros((12, 3), dtype=np.float32)  # one point: k-means leaves one cluster
    probs = np.tile([0.6, 0.4], (12, 1))
    flips = np.full(12, 3)
    flips[:4] = 2
    picked = get_strategy("dropquery").select(
        3, pool_indices=np.arange(12), probs=probs, mc_probs=_passes(probs, flips), features=features, seed=0
    )
    assert len(set(picked.indices.tolist())) == 3
    assert set(picked.indices.tolist()) <= set(range(4, 12))  # the most disagreeing first


def test_disagreement_counts_passes_that_change_the_argmax():
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    mc = np.array(
        [[[0.5, 0.4, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]], [[0.1, 0.1, 0.8], [0.5, 0.2, 0.3], [0, 1, 0]]]
    )
    assert dropout_disagreement(probs, mc).tolist() == [2, 2]


def test_refuses_misaligned_inputs_and_missing_outputs():
    features, _ = _blobs()
    probs = np.tile([0.6, 0.4], (30, 1))
    mc = _passes(probs, np.full(30, 2))
    with pytest.raises(
        ValueError, match=r"mc_probs must have shape \(num_candidates=30, num_passes, num_classes=2\)"
    ):
        get_strategy("dropquery").select(
            2, pool_indices=np.arange(30), probs=probs, mc_probs=mc[:20], features=features
        )
    with pytest.raises(ValueError, match="with 30 rows"):
        get_strategy("dropquery").select(
            2, pool_indices=np.arange(30), probs=probs, mc_probs=mc, features=features[:5]
        )
    with pytest.raises(ValueError, match="needs features and mc_probs"):
        get_strategy("dropquery").select(2, pool_indices=np.arange(30), probs=probs)


def test_linear_probe_dropout_passes_are_seeded_and_scaled_like_torch_dropout():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    probe = train_linear_probe(x, (x[:, 0] > 0).astype(int), 2)
    passes = probe.dropout_probs(x, num_passes=4, dropout=0.5, seed=3)
    assert passes.shape == (40, 4, 2)
    torch.testing.assert_close(passes, probe.dropout_probs(x, num_passes=4, dropout=0.5, seed=3))
    assert not torch.equal(passes, probe.dropout_probs(x, num_passes=4, dropout=0.5, seed=4))
    # The first pass by hand: the same masks from the same generator, kept values scaled by 1 / (1 - p).
    normalized = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    keep = torch.rand(normalized.shape, generator=torch.Generator().manual_seed(3)) >= 0.5
    expected = torch.softmax((normalized * keep * 2.0) @ probe.weight.T + probe.bias, dim=1)
    torch.testing.assert_close(passes[:, 0], expected)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        probe.dropout_probs(x, num_passes=1, dropout=1.0)
    with pytest.raises(ValueError, match="num_passes must be an integer >= 1, got 0"):
        probe.dropout_probs(x, num_passes=0, dropout=0.5)
