"""TypiClust, a cold-start query (Hacohen, Dekel and Weinshall, "Active Learning on a Budget: Opposite Strategies Suit
High and Low Budgets", ICML 2022): cluster the pool's features into as many clusters as there will be labeled
examples, and from each cluster that holds no labeled example yet take its most typical point.

The typicality of a point is the inverse of its mean Euclidean distance to its `k` nearest neighbours in its own
cluster (`k = min(20, cluster size − 1)`, the paper's setting). Clusters are visited by decreasing size, so when the
budget is smaller than the number of uncovered clusters the largest ones are served first. k-means is scikit-learn's
(`KMeans`, or `MiniBatchKMeans` above 50 clusters as in the authors' code).
"""

from __future__ import annotations

import numpy as np
import torch

from .checks import check_budget, check_pool_indices
from .strategies import Selection

__all__ = ["TYPICLUST_NEIGHBORS", "typicality", "typiclust_select"]

TYPICLUST_NEIGHBORS = 20
# Above this many clusters, mini-batch k-means (the authors' choice: full k-means gets slow and gains little).
_MINIBATCH_ABOVE = 50


def typicality(features: np.ndarray, k: int = TYPICLUST_NEIGHBORS) -> np.ndarray:
    """Inverse mean distance of every point to its `min(k, n − 1)` nearest neighbours among `features`.

    Args:
        features (`np.ndarray` of shape `(n, d)`): The points of one cluster.
        k (`int`, *optional*, defaults to 20): Neighbours per point.

    Returns:
        `np.ndarray` of shape `(n,)`: float64 typicality, higher = more typical; a lone point gets `inf`.

    Example:

    ```python
    >>> typicality(np.array([[0.0], [1.0], [2.0]]), k=2).round(3)
    array([0.667, 1.   , 0.667])
    ```
    """
    features = torch.as_tensor(np.asarray(features, dtype=np.float64))
    n = len(features)
    k = min(k, n - 1)
    if k < 1:
        return np.full(n, np.inf)
    distances = torch.cdist(features, features)
    # The k smallest distances besides the point itself (its own distance, 0, is the smallest of its row).
    nearest = torch.topk(distances, k + 1, dim=1, largest=False).values[:, 1:]
    return (1.0 / (nearest.mean(dim=1) + 1e-12)).numpy()


def typiclust_select(
    n: int,
    *,
    pool_indices: np.ndarray,
    features,
    labeled_features=None,
    seed: int = 0,
    k: int = TYPICLUST_NEIGHBORS,
) -> Selection:
    """Pick `n` typical points of uncovered k-means clusters (TypiClust).

    The candidates and the labeled points are clustered together into `n + num_labeled` clusters; clusters that hold
    a labeled point are covered. From each uncovered cluster, largest first (ties: the smaller cluster id), the most
    typical candidate is picked (ties: the smaller pool index) until `n` are picked; should fewer uncovered clusters
    than `n` exist, the rounds continue over the clusters with what remains.

    Args:
        n (`int`): How many candidates to select.
        pool_indices (`np.ndarray`): The candidates' global pool indices, aligned with `features`.
        features (`np.ndarray` or `torch.Tensor` of shape `(num_candidates, d)`): Their features (e.g. the pretrained
            model's pooled features).
        labeled_features (`np.ndarray` or `torch.Tensor` of shape `(num_labeled, d)`, *optional*): Features of the
            already-labeled examples (seed labels); their clusters are not picked from first.
        seed (`int`, *optional*, defaults to 0): Seed of k-means.
        k (`int`, *optional*, defaults to 20): Neighbours of the typicality.

    Returns:
        [`~prunefuse_hf.selection.Selection`]: `n` pool indices in pick order; the score of a pick is its typicality
        rank order (`n − position`), so scores are non-increasing.

    Raises:
        `ValueError`: `n` out of range, or features not aligned with the candidates.

    Example:

    ```python
    >>> blobs = np.concatenate([np.random.default_rng(0).normal(c, 0.1, (30, 2)) for c in (0.0, 5.0)])
    >>> picked = typiclust_select(2, pool_indices=np.arange(60), features=blobs, seed=0).indices
    >>> sorted(int(i) // 30 for i in picked)
    [0, 1]
    ```
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    pool_indices = check_pool_indices(pool_indices)
    check_budget(n, len(pool_indices))
    features = _as_float_matrix(features)
    if len(features) != len(pool_indices):
        raise ValueError(
            f"features has {len(features)} rows but there are {len(pool_indices)} candidates (pool_indices); "
            "they must be aligned."
        )
    labeled = (
        np.zeros((0, features.shape[1])) if labeled_features is None else _as_float_matrix(labeled_features)
    )
    everything = np.concatenate([features, labeled]) if len(labeled) else features
    num_clusters = min(n + len(labeled), len(everything))
    if num_clusters > _MINIBATCH_ABOVE:
        kmeans = MiniBatchKMeans(n_clusters=num_clusters, random_state=seed, batch_size=4096, n_init=3)
    else:
        kmeans = KMeans(n_clusters=num_clusters, random_state=seed, n_init=3)
    assignment = kmeans.fit_predict(everything.astype(np.float32))
    candidate_cluster, labeled_cluster = assignment[: len(features)], assignment[len(features) :]
    sizes = np.bincount(assignment, minlength=num_clusters)
    covered = np.zeros(num_clusters, dtype=bool)
    covered[labeled_cluster] = True
    # Per cluster, its candidates ordered by typicality (ties: smaller pool index).
    ranked = {}
    for cluster in np.unique(candidate_cluster):
        members = np.flatnonzero(candidate_cluster == cluster)
        scores = typicality(features[members], k)
        ranked[int(cluster)] = list(members[np.lexsort((pool_indices[members], -scores))])
    # Uncovered clusters first, then larger ones, then the smaller id.
    order = sorted(ranked, key=lambda c: (covered[c], -sizes[c], c))
    picked: list[int] = []
    while len(picked) < n:
        for cluster in order:
            if ranked[cluster] and len(picked) < n:
                picked.append(ranked[cluster].pop(0))
    indices = pool_indices[np.asarray(picked, dtype=np.int64)]
    return Selection(indices=indices, scores=np.arange(n, 0, -1, dtype=np.float64))


def _as_float_matrix(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"features must be a 2-D array (num_examples, dim), got shape {values.shape}.")
    return values
