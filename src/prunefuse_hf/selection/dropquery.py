"""DropQuery: uncertainty by dropout on the features, then one pick per k-means cluster of the uncertain (Gupte et al.,
"Revisiting Active Learning in the Era of Vision Foundation Models", TMLR 2024; their reference code is
`sanketx/AL-foundation-models`, `query_strategies/dropout.py`).

A classifier on frozen features predicts each candidate once as it is and `M` times with dropout on its input
features. A candidate whose prediction changes in more than half of the dropout passes is uncertain; the uncertain
candidates are clustered into `n` k-means clusters on their features and each cluster gives the member nearest its
centroid. The paper's settings are 3 passes at dropout rate 0.75 on the input of a linear head.
"""

from __future__ import annotations

import numpy as np
import torch

from .checks import check_features
from .cluster_margin import gather_candidate_features, kmeans_clusters
from .shards import ShardGroup
from .strategies import (
    MarginStrategy,
    Selection,
    SelectionStrategy,
    check_probs,
    register_strategy,
    top_n_by_score,
)

__all__ = ["DROPQUERY_DROPOUT", "DROPQUERY_PASSES", "DropQueryStrategy", "dropout_disagreement"]

# The reference code's settings: a linear head with dropout 0.75 on its input, 3 dropout passes.
DROPQUERY_DROPOUT = 0.75
DROPQUERY_PASSES = 3


def dropout_disagreement(probs: np.ndarray, mc_probs: np.ndarray) -> np.ndarray:
    """How many dropout passes predict another class than the clean prediction, per candidate.

    Args:
        probs (`np.ndarray` of shape `(n, num_classes)`): Clean class probabilities.
        mc_probs (`np.ndarray` of shape `(n, num_passes, num_classes)`): Class probabilities under dropout.

    Returns:
        `np.ndarray` of `int64`, shape `(n,)`: counts in `[0, num_passes]`.

    Example:

    ```python
    >>> probs = np.array([[0.9, 0.1], [0.6, 0.4]])
    >>> mc_probs = np.array([[[0.8, 0.2], [0.7, 0.3], [0.6, 0.4]], [[0.4, 0.6], [0.3, 0.7], [0.6, 0.4]]])
    >>> dropout_disagreement(probs, mc_probs).tolist()
    [0, 2]
    ```
    """
    clean = np.asarray(probs).argmax(axis=1)
    return (np.asarray(mc_probs).argmax(axis=2) != clean[:, None]).sum(axis=1).astype(np.int64)


@register_strategy
class DropQueryStrategy(SelectionStrategy):
    """DropQuery: the candidates whose prediction flips in more than half of the dropout passes are clustered into `n`
    k-means clusters on their features, and each cluster gives the candidate nearest its centroid.

    `mc_probs` are the classifier's probabilities with dropout on its input features (a linear probe's come from
    [`~prunefuse_hf.selection.LinearProbe.dropout_probs`]; the run makes `mc_samples` passes at `dropquery_dropout`).
    A candidate's score is its number of disagreeing passes plus half its margin score (`−(p_top1 − p_top2)` of the
    clean prediction, in `[−0.5, 0]`): disagreement first, the smaller margin among equals. Picks are ordered by
    score, highest first, so scores are non-increasing; ties break by the smaller pool index. With at most `n`
    uncertain candidates the selection is the `n` highest scores (every uncertain candidate, then the next most
    disagreeing). Clusters that coincide (duplicate features) may leave fewer than `n` distinct picks: the rest are the
    next highest-scoring uncertain candidates. k-means is scikit-learn's (`kmeans_clusters`: k-means++ seeding,
    Lloyd's iterations), seeded with `seed`. With several processes (`accelerator=`), each holds its shard:
    the uncertain candidates are counted and ranked across processes and only their features are gathered, so every
    process makes the single-process selection.

    Raises:
        `ValueError`: at `select`, probabilities, dropout probabilities or features not aligned with the candidates.

    Example:

    ```python
    >>> rng = np.random.default_rng(0)
    >>> features = np.concatenate([rng.normal(0.0, 0.1, (10, 2)) + [1, 0], rng.normal(0.0, 0.1, (10, 2)) + [0, 1]])
    >>> probs = np.tile([0.6, 0.4], (20, 1))
    >>> mc_probs = np.tile([0.4, 0.6], (20, 3, 1))  # every prediction flips under dropout: all uncertain
    >>> picked = DropQueryStrategy().select(2, pool_indices=np.arange(20), probs=probs, mc_probs=mc_probs,
    ...                                     features=features, seed=0)
    >>> sorted(int(i) // 10 for i in picked.indices)  # one from each cluster
    [0, 1]
    ```
    """

    name = "dropquery"
    needs = frozenset({"probs", "mc_probs", "features"})
    shardable = True

    def _select(
        self, n, *, pool_indices, probs, features, labeled_features, seed, mc_probs=None, group=None
    ) -> Selection:
        group = group or ShardGroup()
        probs = check_probs(probs, len(pool_indices), self.name)
        if isinstance(mc_probs, torch.Tensor):
            mc_probs = mc_probs.detach().cpu().double().numpy()
        mc_probs = np.asarray(mc_probs, dtype=np.float64)
        if (
            mc_probs.ndim != 3
            or mc_probs.shape[0] != len(pool_indices)
            or mc_probs.shape[2] != probs.shape[1]
        ):
            raise ValueError(
                f"mc_probs must have shape (num_candidates={len(pool_indices)}, num_passes, "
                f"num_classes={probs.shape[1]}), got {mc_probs.shape}."
            )
        features = check_features(features, len(pool_indices))
        disagreement = dropout_disagreement(probs, mc_probs)
        scores = disagreement + 0.5 * MarginStrategy().compute_scores(probs)
        uncertain = disagreement > mc_probs.shape[1] // 2
        num_uncertain = int(group.sum(torch.tensor([int(uncertain.sum())])))
        if num_uncertain <= n:
            return top_n_by_score(scores, pool_indices, n, group)
        # The uncertain candidates are exactly the highest scores: their scores exceed every other candidate's.
        candidates = top_n_by_score(scores, pool_indices, num_uncertain, group)
        candidate_features = gather_candidate_features(features, pool_indices, candidates.indices, group)
        # One k-means++ start, as the reference code's: the uncertain can be most of a large pool.
        assignment, distances = kmeans_clusters(candidate_features, n, seed)
        # Per cluster, the member nearest its centroid (ties: the higher score, then the smaller pool index, which is
        # the candidates' order).
        order = np.lexsort((np.arange(len(assignment)), distances, assignment))
        first = order[np.r_[True, assignment[order][1:] != assignment[order][:-1]]]
        chosen = np.zeros(len(assignment), dtype=bool)
        chosen[first] = True
        if chosen.sum() < n:
            chosen[np.flatnonzero(~chosen)[: n - int(chosen.sum())]] = True
        picked = np.flatnonzero(chosen)  # the candidates' order: score, highest first
        return Selection(indices=candidates.indices[picked], scores=candidates.scores[picked])
