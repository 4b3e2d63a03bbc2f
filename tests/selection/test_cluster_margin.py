"""Cluster-margin: the smallest-margin candidates, one per k-means cluster of their features."""

import numpy as np
import pytest

from prunefuse_hf.selection.cluster_margin import ClusterMarginStrategy
from prunefuse_hf.selection.strategies import MarginStrategy, get_strategy


def _blobs(sizes=(10, 10, 10), seed=0):
    rng = np.random.default_rng(seed)
    features = np.concatenate([rng.normal(5.0 * i, 0.1, (size, 4)) for i, size in enumerate(sizes)])
    return features.astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


def _probs(top, num_classes=3):
    """Two-class-leaning probabilities with top-1 probability `top` (margin grows with it)."""
    top = np.asarray(top, dtype=np.float64)
    second = (1 - top) * 0.8
    rest = (1 - top - second) / (num_classes - 2)
    return np.stack([top, second, *[rest] * (num_classes - 2)], axis=1)


def test_each_pick_is_the_most_uncertain_member_of_its_cluster():
    features, blob = _blobs()
    rng = np.random.default_rng(1)
    probs = _probs(rng.uniform(0.4, 0.95, len(features)))
    # The 20 most uncertain candidates all lie in blobs 0 and 1 but blob 2 is far: margin takes from 0 and 1 only.
    probs[blob == 2] = _probs(np.full(10, 0.97))
    pool = np.arange(100, 130)
    margins = MarginStrategy().compute_scores(probs)

    picked = ClusterMarginStrategy(candidate_factor=10).select(3, pool_indices=pool, probs=probs, features=features,
                                                               seed=0)  # fmt: skip

    assert sorted(blob[picked.indices - 100]) == [0, 1, 2]  # one per cluster
    for index in picked.indices:
        members = blob == blob[index - 100]
        assert margins[index - 100] == margins[members].max()  # the cluster's smallest margin
    np.testing.assert_array_equal(picked.scores, margins[picked.indices - 100])
    assert (np.diff(picked.scores) <= 0).all()
    # Plain margin: the three most uncertain, none from the far cluster.
    assert 2 not in blob[get_strategy("margin").select(3, pool_indices=pool, probs=probs).indices - 100]


def test_candidates_are_the_smallest_margins_only():
    features, _ = _blobs()
    probs = _probs(np.linspace(0.4, 0.95, len(features)))
    pool = np.arange(len(features))
    picked = ClusterMarginStrategy(candidate_factor=2).select(4, pool_indices=pool, probs=probs, features=features,
                                                              seed=0)  # fmt: skip
    margin_top8 = get_strategy("margin").select(8, pool_indices=pool, probs=probs).indices
    assert set(picked.indices) <= set(margin_top8)


def test_one_candidate_per_pick_is_margin():
    features, _ = _blobs()
    probs = _probs(np.random.default_rng(3).uniform(0.4, 0.95, len(features)))
    pool = np.random.default_rng(4).permutation(1000)[: len(features)]
    one = ClusterMarginStrategy(candidate_factor=1).select(
        5, pool_indices=pool, probs=probs, features=features
    )
    margin = get_strategy("margin").select(5, pool_indices=pool, probs=probs)
    np.testing.assert_array_equal(one.indices, margin.indices)
    np.testing.assert_array_equal(one.scores, margin.scores)


def test_duplicate_features_still_give_n_distinct_picks():
    features = np.zeros((12, 3), dtype=np.float32)  # every candidate at the same point: one cluster
    probs = _probs(np.linspace(0.6, 0.95, 12))
    picked = get_strategy("cluster_margin").select(
        4, pool_indices=np.arange(12), probs=probs, features=features
    )
    np.testing.assert_array_equal(picked.indices, [0, 1, 2, 3])  # then the next smallest margins


@pytest.mark.parametrize("factor", [0, -1, 1.5])
def test_candidate_factor_must_be_a_positive_integer(factor):
    with pytest.raises(ValueError, match="candidate_factor must be an integer >= 1"):
        ClusterMarginStrategy(candidate_factor=factor)


def test_features_must_be_aligned_with_the_candidates():
    features, _ = _blobs()
    with pytest.raises(ValueError, match="with 30 rows"):
        get_strategy("cluster_margin").select(2, pool_indices=np.arange(30), probs=_probs(np.full(30, 0.5)),
                                              features=features[:20])  # fmt: skip
    with pytest.raises(ValueError, match="needs features"):
        get_strategy("cluster_margin").select(2, pool_indices=np.arange(30), probs=_probs(np.full(30, 0.5)))
