"""Cluster-margin: uncertainty, then diversity among the uncertain (Citovsky et al., "Batch Active Learning at Scale",
NeurIPS 2021), with the candidates clustered by k-means as DropQuery does (Gupte et al., "Revisiting Active Learning
in the Era of Vision Foundation Models", TMLR 2024).

The `candidate_factor × n` candidates of smallest margin (top-2 probability gap) are clustered into `n` k-means
clusters on their pooled features, and each cluster gives its smallest-margin member: a batch as uncertain as margin
allows, with no two picks from the same region of feature space. Plain margin on a fine-tuned model's features tends
to pick near-duplicates along one decision boundary, which is how a margin batch can end up below a random one.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .checks import check_features, check_probs, check_scores
from .shards import ShardGroup
from .strategies import (
    MarginStrategy,
    Selection,
    SelectionStrategy,
    register_strategy,
    top_n_by_score,
)

__all__ = [
    "CLUSTER_MARGIN_CANDIDATES",
    "ClusterMarginStrategy",
    "gather_candidate_features",
    "kmeans_clusters",
]

# Candidates per pick (Citovsky et al. draw from 10x the batch in their ImageNet-scale runs).
CLUSTER_MARGIN_CANDIDATES = 10


def gather_candidate_features(features, pool_indices, candidate_indices, group: ShardGroup) -> np.ndarray:
    """The feature rows of `candidate_indices` (global pool indices), in that order, on every process.

    Args:
        features (`np.ndarray` of shape `(len(pool_indices), dim)`): This process's candidates' features.
        pool_indices (`np.ndarray`): This process's candidates (its shard, or the whole pool).
        candidate_indices (`np.ndarray`): The chosen candidates over every process, each held by one of them.
        group ([`ShardGroup`]): The processes; only the chosen candidates' rows travel between them.

    Returns:
        `np.ndarray` of shape `(len(candidate_indices), dim)`.
    """
    held = np.flatnonzero(np.isin(pool_indices, candidate_indices))
    indices = group.gather_rows(torch.from_numpy(np.ascontiguousarray(pool_indices[held]))).numpy()
    rows = group.gather_rows(group.with_common_row_shape(torch.from_numpy(features[held]))).numpy()
    by_index = dict(zip(indices.tolist(), rows))
    return np.stack([by_index[int(index)] for index in candidate_indices])


def kmeans_clusters(
    features: np.ndarray, n: int, seed: int | None, n_init: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's k-means of `features` into `n` clusters: k-means++ seeding as Arthur & Vassilvitskii define it
    ("k-means++: the advantages of careful seeding", SODA 2007: one sampled candidate per centre,
    `kmeans_plusplus(n_local_trials=1)`), then Lloyd's iterations (`KMeans`); the lowest-inertia of `n_init` such
    runs, seeded with `seed` (`None` means 0).

    scikit-learn's default seeding tries 2 + ln(n) candidates per centre; on the candidates of a 300-image query (3,000
    rows of 512 features, 2 CPU cores) that seeding alone took 0.8 s, and `MiniBatchKMeans` with three such starts
    5-8 s, where this takes 0.5 s and ends at a lower inertia.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: each row's cluster id, and its distance to that cluster's centroid. With
        fewer distinct rows than `n`, fewer than `n` clusters are non-empty.
    """
    from sklearn.cluster import KMeans, kmeans_plusplus
    from sklearn.exceptions import ConvergenceWarning

    rng = np.random.RandomState(0 if seed is None else seed)
    best = None
    with warnings.catch_warnings():  # fewer distinct points than clusters: the callers fill the rest
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(n_init):
            centers, _ = kmeans_plusplus(features, n, random_state=rng, n_local_trials=1)
            kmeans = KMeans(n_clusters=n, init=centers, n_init=1, random_state=rng).fit(features)
            if best is None or kmeans.inertia_ < best.inertia_:
                best = kmeans
    assignment = best.labels_
    distances = best.transform(features)[np.arange(len(features)), assignment]
    return assignment, distances


@register_strategy
class ClusterMarginStrategy(SelectionStrategy):
    """Cluster-margin: the `n` picks come from `n` k-means clusters of the `candidate_factor × n` smallest-margin
    candidates, one per cluster, its smallest-margin member.

    A pick's score is its margin score (`−(p_top1 − p_top2)`, as `margin` gives), picks ordered most uncertain
    first, so scores are non-increasing. Object detection and semantic segmentation give per-image margin scores
    instead (`scores`: the task's aggregate of its detections' or pixels' `1 − (p_top1 − p_top2)`) with their pooled
    features; the rest is the same. Clusters that coincide (duplicate features) may leave fewer distinct
    members than `n`; the rest are the next smallest-margin candidates. Ties break by the smaller pool index.
    k-means is scikit-learn's (`kmeans_clusters`: k-means++ seeding, Lloyd's iterations), seeded with `seed`. With several
    processes (`accelerator=`), each holds its shard: the smallest margins are reduced across processes and only the
    candidates' features are gathered, so every process makes the single-process selection.

    Args:
        candidate_factor (`int`, *optional*, defaults to 10): Candidates per pick; `1` is plain `margin`.

    Raises:
        `ValueError`: `candidate_factor` below 1; at `select`, probabilities or features not aligned with the
            candidates.

    Example:

    ```python
    >>> rng = np.random.default_rng(0)
    >>> features = np.concatenate([rng.normal(0.0, 0.1, (10, 2)), rng.normal(5.0, 0.1, (10, 2))])
    >>> probs = np.full((20, 2), 0.5)  # every candidate equally uncertain
    >>> picked = ClusterMarginStrategy().select(2, pool_indices=np.arange(20), probs=probs, features=features, seed=0)
    >>> sorted(int(i) // 10 for i in picked.indices)  # one from each cluster, where margin alone takes 0 and 1
    [0, 1]
    ```
    """

    name = "cluster_margin"
    needs = frozenset({"probs", "features"})
    per_image_outputs = frozenset({"scores", "features"})
    measure = "margin"
    shardable = True

    def __init__(self, candidate_factor: int = CLUSTER_MARGIN_CANDIDATES):
        if int(candidate_factor) != candidate_factor or candidate_factor < 1:
            raise ValueError(f"candidate_factor must be an integer >= 1, got {candidate_factor!r}.")
        self.candidate_factor = int(candidate_factor)

    def _select(
        self,
        n,
        *,
        pool_indices,
        probs,
        features,
        labeled_features,
        seed,
        mc_probs=None,
        group=None,
        scores=None,
    ) -> Selection:
        group = group or ShardGroup()
        # A task's per-image margin scores (e.g. aggregated over an image's detections), else the class margins.
        if scores is not None:
            margins = check_scores(scores, len(pool_indices))
        else:
            margins = MarginStrategy().compute_scores(check_probs(probs, len(pool_indices), self.name))
        features = check_features(features, len(pool_indices))
        # The smallest margins over every process's shard, most uncertain first (ties: the smaller pool index).
        total = int(group.sum(torch.tensor([len(pool_indices)])))
        candidates = top_n_by_score(margins, pool_indices, min(total, self.candidate_factor * n), group)
        candidate_features = gather_candidate_features(features, pool_indices, candidates.indices, group)
        picked = np.arange(len(candidates.indices))
        if len(picked) > n:
            assignment, _ = kmeans_clusters(candidate_features, n, seed)
            # The candidates are in uncertainty order: each cluster's first member is its most uncertain.
            _, first = np.unique(assignment, return_index=True)
            chosen = np.zeros(len(picked), dtype=bool)
            chosen[first] = True
            if chosen.sum() < n:
                chosen[np.flatnonzero(~chosen)[: n - int(chosen.sum())]] = True
            picked = picked[chosen]
        return Selection(indices=candidates.indices[picked], scores=candidates.scores[picked])
