import numpy as np
import pytest
import torch

from prunefuse_hf.selection import typicality, typiclust_select


def blobs(sizes=(40, 30, 20), spread=0.3, seed=0):
    """Well-separated Gaussian blobs in 3-D; blob b's points have pool indices 100*b + i."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    points = np.concatenate([rng.normal(centers[b], spread, (size, 3)) for b, size in enumerate(sizes)])
    indices = np.concatenate([100 * b + np.arange(size) for b, size in enumerate(sizes)])
    return points, indices


def brute_force_typicality(points, k):
    """1 / mean distance to the k nearest other points, by a double loop."""
    result = []
    for i, p in enumerate(points):
        distances = sorted(np.linalg.norm(points[j] - p) for j in range(len(points)) if j != i)
        result.append(1.0 / np.mean(distances[:k]))
    return np.array(result)


def test_typicality_is_the_inverse_mean_distance_to_the_k_nearest_neighbours():
    assert typicality(np.array([[0.0], [1.0], [2.0]]), k=2) == pytest.approx([1 / 1.5, 1.0, 1 / 1.5])
    points, _ = blobs(sizes=(25,))
    assert typicality(points, k=20) == pytest.approx(brute_force_typicality(points, 20))
    # k is capped at the cluster's size minus one; a lone point is infinitely typical.
    assert typicality(points[:5], k=20) == pytest.approx(brute_force_typicality(points[:5], 4))
    assert typicality(points[:1]).tolist() == [np.inf]


def test_one_pick_per_cluster_and_it_is_the_clusters_most_typical_point():
    points, indices = blobs()
    selection = typiclust_select(3, pool_indices=indices, features=points, seed=0)
    # Clusters are served largest first: blob 0 (40 points), blob 1 (30), blob 2 (20).
    assert [int(i) // 100 for i in selection.indices] == [0, 1, 2]
    for pick, blob in zip(selection.indices, range(3)):
        members = indices // 100 == blob
        expected = indices[members][np.argmax(brute_force_typicality(points[members], 20))]
        assert pick == expected
    assert selection.scores.tolist() == [3.0, 2.0, 1.0]


def test_the_same_seed_gives_the_same_picks_and_torch_features_are_accepted():
    points, indices = blobs(sizes=(30, 30, 30), spread=2.0)  # overlapping: k-means depends on the seed
    first = typiclust_select(6, pool_indices=indices, features=points, seed=3)
    again = typiclust_select(6, pool_indices=indices, features=torch.from_numpy(points).float(), seed=3)
    assert first.indices.tolist() == again.indices.tolist()
    assert len(set(first.indices.tolist())) == 6


def test_clusters_holding_a_labeled_point_are_served_last():
    points, indices = blobs()
    labeled = points[indices // 100 == 0][:1]  # a labeled point in the largest blob
    selection = typiclust_select(2, pool_indices=indices, features=points, labeled_features=labeled, seed=0)
    assert sorted(int(i) // 100 for i in selection.indices) == [1, 2]


def test_bad_inputs_name_the_problem():
    points, indices = blobs()
    with pytest.raises(ValueError, match=r"features has 90 rows but there are 89 candidates"):
        typiclust_select(2, pool_indices=indices[:-1], features=points)
    with pytest.raises(ValueError, match=r"Cannot select n=91: budget larger than the unlabeled pool \(90"):
        typiclust_select(91, pool_indices=indices, features=points)
    with pytest.raises(ValueError, match=r"features must be a 2-D array"):
        typiclust_select(2, pool_indices=indices, features=points[:, 0])
