"""Diversity strategies on the surrogate's features: core-set k-center greedy (Sener and Savarese, ICLR 2018) and
BADGE (Ash et al., ICLR 2020). Both select from each process's shard and reduce across processes to the
single-process selection; importing this module registers them (`prunefuse_hf.selection` does so)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .shards import ShardGroup
from .strategies import Selection, SelectionStrategy, _check_probs, register_strategy


@register_strategy
class KCenterGreedyStrategy(SelectionStrategy):
    """Core-set selection by greedy k-center (Sener & Savarese, 2018) on penultimate features.

    Each candidate keeps its Euclidean distance to the nearest labeled or already selected point; the
    candidate with the largest such distance is picked next, and the distances are updated with the
    new center. Its score is that distance at the time of the pick, so scores are non-increasing.
    With no labeled points the first pick is the candidate farthest from the candidates' mean, with
    score `inf` (it has no point to be near).

    Memory stays bounded by blocks of `chunk_size` rows: no candidates × labeled (or candidates ×
    candidates) matrix is ever built. Distances to the labeled set go through a float64 matmul (exact
    for small integer-valued features); each greedy update is one pass of direct float32 differences,
    free of the cancellation of the `|x|² − 2x·y + |y|²` expansion. Tensors stay on their device, so
    CUDA features are processed on the GPU.

    Args:
        chunk_size (`int`, *optional*, defaults to 2048):
            Rows per block in the distance computations; a block holds at most `chunk_size × chunk_size`
            float64 distances (32 MiB by default).

    Example:

    ```python
    >>> features = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    >>> get_strategy("kcenter_greedy").select(
    ...     1, pool_indices=np.array([0, 1, 2]), features=features, labeled_features=np.zeros((1, 2))
    ... ).indices
    array([2])
    ```
    """

    name = "kcenter_greedy"
    needs = frozenset({"features"})
    uses_labeled_features = True
    shardable = True

    def __init__(self, chunk_size: int = 2048):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
        self.chunk_size = chunk_size

    @torch.no_grad()
    def _select(
        self, n, *, pool_indices, probs, features, labeled_features, seed, mc_probs=None, group=None
    ) -> Selection:
        group = group or ShardGroup()
        features = group.with_common_row_shape(_as_float32_matrix(features, "features"))
        if features.shape[0] != len(pool_indices):
            raise ValueError(
                f"features has {features.shape[0]} rows but there are {len(pool_indices)} candidates "
                "(pool_indices); they must be aligned."
            )
        if labeled_features is None:
            labeled_features = features.new_zeros((0, features.shape[1]))
        labeled_features = _as_float32_matrix(labeled_features, "labeled_features").to(features.device)
        if labeled_features.shape[1] != features.shape[1]:
            raise ValueError(
                f"labeled_features has dimension {labeled_features.shape[1]} but features has "
                f"{features.shape[1]}; both must come from the same layer."
            )

        # Work in pool-index order: torch.argmax returns the first maximum, i.e. the smallest pool index.
        order = np.argsort(pool_indices, kind="stable")
        pool_indices = pool_indices[order]
        features = features[torch.from_numpy(order).to(features.device)]

        # Each process keeps its shard's distances; a pick is the largest distance over all processes,
        # and its features reach every process to update their shards.
        min_sq_dist = self._min_sq_distances(features, labeled_features)
        picked, scores = [], []
        for _ in range(n):
            value, index, owner, row = self._farthest(min_sq_dist, pool_indices, group)
            if math.isinf(value):
                # Nothing labeled or picked yet, so every candidate is infinitely far from the set: start
                # from the one farthest from the candidates' mean, which is deterministic and off-center.
                sums = torch.cat(
                    [features.double().sum(dim=0), features.new_tensor([len(features)]).double()]
                )
                total = group.sum(sums)
                mean = total[:-1] / total[-1]
                _, index, owner, row = self._farthest(
                    self._sq_distances_to(features, mean), pool_indices, group
                )
            picked.append(index)
            scores.append(math.sqrt(max(value, 0.0)))
            center = features[row] if owner == group.rank else features.new_zeros(features.shape[1])
            center = group.broadcast(center, owner)
            torch.minimum(min_sq_dist, self._sq_distances_to(features, center), out=min_sq_dist)
            if owner == group.rank:
                # Taken rows drop below every distance, so duplicates of a center can't be picked twice.
                min_sq_dist[row] = -1.0
        return Selection(
            indices=np.asarray(picked, dtype=np.int64), scores=np.asarray(scores, dtype=np.float64)
        )

    @staticmethod
    def _farthest(sq_dist: torch.Tensor, pool_indices: np.ndarray, group: ShardGroup):
        """`(value, pool_index, owner rank, local row or None)` of the largest distance over all shards."""
        row = int(torch.argmax(sq_dist)) if len(sq_dist) else None
        value, index, owner = group.argmax(
            float(sq_dist[row]) if row is not None else float("-inf"),
            int(pool_indices[row]) if row is not None else None,
        )
        return value, index, owner, row if owner == group.rank else None

    def _min_sq_distances(self, features: torch.Tensor, labeled_features: torch.Tensor) -> torch.Tensor:
        """Squared distance of every candidate to its nearest labeled point (`inf` when there is none)."""
        min_sq_dist = torch.full((len(features),), float("inf"), dtype=torch.float64, device=features.device)
        labeled = labeled_features.double()
        labeled_sq_norms = labeled.square().sum(dim=1)
        for start in range(0, len(features), self.chunk_size):
            block = features[start : start + self.chunk_size].double()
            block_sq_norms = block.square().sum(dim=1, keepdim=True)
            for l_start in range(0, len(labeled), self.chunk_size):
                l_block = labeled[l_start : l_start + self.chunk_size]
                # float64 keeps the expansion |x|² − 2x·y + |y|² accurate; float32 products are exact in it.
                sq_dist = torch.addmm(
                    labeled_sq_norms[l_start : l_start + self.chunk_size], block, l_block.T, alpha=-2
                )
                sq_dist.add_(block_sq_norms).clamp_min_(0)
                block_min = min_sq_dist[start : start + self.chunk_size]
                torch.minimum(block_min, sq_dist.amin(dim=1), out=block_min)
        return min_sq_dist

    def _sq_distances_to(self, features: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        """Squared distance of every candidate to one point, as float64, in blocks of rows."""
        sq_dist = torch.empty(len(features), dtype=torch.float64, device=features.device)
        for start in range(0, len(features), self.chunk_size):
            block = features[start : start + self.chunk_size]
            sq_dist[start : start + self.chunk_size] = (block - center).square_().sum(dim=1)
        return sq_dist


@register_strategy
class BadgeStrategy(SelectionStrategy):
    """BADGE (Ash et al., 2020): k-means++ seeding on the gradient embeddings of the last layer.

    The embedding of a candidate is `(p − onehot(argmax p)) ⊗ h` (class probabilities `p`, penultimate
    features `h`): its norm measures uncertainty, its direction diversity. It is never built: squared
    distances factor as `|a_i|²|h_i|² + |a_c|²|h_c|² − 2 (a_i·a_c)(h_i·h_c)`, so memory stays
    `O(N·(C + D))` instead of `O(N·C·D)`. The first pick is the largest embedding (ties: smaller pool
    index); later picks are drawn with probability proportional to the squared distance to the nearest
    pick, by an exponential race on uniform numbers hashed from `(seed, step, pool index)`: the draw is
    the same however the pool is sharded across processes. Since picks are drawn, not ranked, a pick's
    score is its order (`n` for the first, `1` for the last).
    """

    name = "badge"
    needs = frozenset({"probs", "features"})
    shardable = True

    @torch.no_grad()
    def _select(
        self, n, *, pool_indices, probs, features, labeled_features, seed, mc_probs=None, group=None
    ) -> Selection:
        group = group or ShardGroup()
        probs = torch.from_numpy(_check_probs(probs, len(pool_indices), self.name))
        features = group.with_common_row_shape(_as_float32_matrix(features, "features").double().cpu())
        if features.shape[0] != len(pool_indices):
            raise ValueError(
                f"features has {features.shape[0]} rows but there are {len(pool_indices)} candidates."
            )
        order = np.argsort(pool_indices, kind="stable")
        pool_indices, probs, features = pool_indices[order], probs[order], features[torch.from_numpy(order)]

        residual = probs.clone()
        residual[torch.arange(len(residual)), probs.argmax(dim=1)] -= 1.0
        squared_norms = residual.square().sum(1) * features.square().sum(1)
        seed = 0 if seed is None else seed
        taken = torch.zeros(len(pool_indices), dtype=torch.bool)
        nearest = torch.full_like(squared_norms, float("inf"))
        picked = []
        keys = squared_norms  # the first pick: the largest embedding
        for step in range(n):
            index, owner, row = _best_over_shards(keys, taken, pool_indices, group)
            picked.append(index)
            if step == n - 1:
                break
            # The pick's embedding factors reach every process, which updates its shard's distances.
            center = torch.zeros(1 + residual.shape[1] + features.shape[1], dtype=torch.float64)
            if owner == group.rank:
                taken[row] = True
                center = torch.cat([squared_norms[row : row + 1], residual[row], features[row]])
            center = group.broadcast(center, owner)
            center_norm, center_residual = center[0], center[1 : 1 + residual.shape[1]]
            center_features = center[1 + residual.shape[1] :]
            distance = (
                squared_norms + center_norm - 2 * (residual @ center_residual) * (features @ center_features)
            )
            nearest = torch.minimum(nearest, distance.clamp_min(0.0))
            # The next pick is drawn with probability ∝ nearest: the smallest Exp(1) / nearest wins (an
            # exponential race). The Exp(1) draws hash (seed, step, pool index), so they do not depend on
            # how the pool is sharded. Candidates at distance 0 coincide with a pick: they rank last (-inf)
            # and are taken by pool index once nothing else is left.
            exponential = torch.from_numpy(-np.log(_uniform_hash(seed, step, pool_indices)))
            keys = torch.where(nearest > 0, -exponential / nearest, float("-inf"))
        return Selection(
            indices=np.asarray(picked, dtype=np.int64), scores=np.arange(n, 0, -1, dtype=np.float64)
        )


def _best_over_shards(keys: torch.Tensor, taken: torch.Tensor, pool_indices: np.ndarray, group: ShardGroup):
    """`(pool_index, owner rank, local row or None)` of the largest key not taken yet, over all shards."""
    rows = torch.nonzero(~taken).flatten()
    # argmax returns the first of equal keys: rows are in pool-index order, so the smallest pool index.
    row = int(rows[torch.argmax(keys[rows])]) if len(rows) else None
    _, index, owner = group.argmax(
        float(keys[row]) if row is not None else float("-inf"),
        int(pool_indices[row]) if row is not None else None,
    )
    return index, owner, row if owner == group.rank else None


def _uniform_hash(seed: int, step: int, pool_indices: np.ndarray) -> np.ndarray:
    """Uniform numbers in (0, 1), one per pool index, a pure function of (seed, step, pool index) (splitmix64)."""
    with np.errstate(over="ignore"):
        x = pool_indices.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x ^= np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0xBF58476D1CE4E5B9) + np.uint64(step)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) / float(2**53)


def _as_float32_matrix(values, name: str) -> torch.Tensor:
    values = torch.as_tensor(values).detach()
    if values.ndim != 2:
        raise ValueError(f"{name} must have shape (num_rows, hidden_size), got {tuple(values.shape)}.")
    values = values.float().contiguous()
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or inf values.")
    return values
