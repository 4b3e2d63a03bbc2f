"""Diversity strategies on the surrogate's features: core-set k-center greedy (Sener and Savarese, ICLR 2018) and
BADGE (Ash et al., ICLR 2020). Both select from each process's shard and reduce across processes to the
single-process selection; importing this module registers them (`prunefuse_hf.selection` does so)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .checks import check_probs
from .shards import ShardGroup
from .strategies import Selection, SelectionStrategy, register_strategy

# k-center's run ahead looks at this many of the farthest candidates per distance column it may compute.
CANDIDATES_PER_COLUMN = 4


@register_strategy
class KCenterGreedyStrategy(SelectionStrategy):
    """Core-set selection by greedy k-center (Sener & Savarese, 2018) on penultimate features.

    Each candidate keeps its Euclidean distance to the nearest labeled or already selected point; the
    candidate with the largest such distance is picked next (ties: the smaller pool index), and the
    distances are updated with the new center. Its score is that distance at the time of the pick, so
    scores are non-increasing. With no labeled points the first pick is the candidate farthest from the
    candidates' mean, with score `inf` (it has no point to be near).

    Squared distances are `|x|² − 2x·c + |c|²` in float32, computed by matrix products in blocks of
    `chunk_size` rows on the features' device (CUDA features stay on the GPU). One pick alone would
    read the whole feature matrix (a matrix-vector product, bound by memory bandwidth), so distances
    are computed ahead for up to `lookahead` next centers at once (one matrix-matrix product): the
    picks greedy k-center makes when run on the few thousand candidates currently farthest from the
    set, as far as those picks are certain to be the whole pool's. While the picks land among them, a
    pick costs one pass over a vector of distances; when one does not, the lookahead is refreshed from
    the new distances. The result is the same as picking one at a time, only the order of the arithmetic
    changes. Memory beyond the features is `lookahead + 3` floats per candidate (at most a fifth of
    the feature matrix by default) plus one block: no candidates × labeled matrix is ever built.

    Args:
        chunk_size (`int`, *optional*, defaults to 2048):
            Rows per block in the distance computations; a block holds `chunk_size × chunk_size` float32
            distances to labeled points (16 MiB by default).
        lookahead (`int`, *optional*):
            Centers whose distances are computed ahead in one product. Defaults to a fifth of the
            feature width (at most 256), which keeps the extra memory within 0.25× the feature matrix.

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
    per_image_outputs = frozenset({"features"})
    uses_labeled_features = True
    shardable = True

    def __init__(self, chunk_size: int = 2048, lookahead: int | None = None):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
        if lookahead is not None and lookahead < 1:
            raise ValueError(f"lookahead must be >= 1 (or None for automatic), got {lookahead}.")
        self.chunk_size = chunk_size
        self.lookahead = lookahead
        # How the last selection went: picks found in the lookahead and lookahead refreshes.
        self.last_stats = {"picks": 0, "refreshes": 0, "columns": 0}

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
        width = self.lookahead or max(1, min(256, features.shape[1] // 5))
        indices = torch.as_tensor(np.asarray(pool_indices), dtype=torch.int64, device=features.device)
        in_order = bool((indices[1:] > indices[:-1]).all())
        sq_norms = torch.cat(
            [_sq_norms(block) for block in self._blocks(features)] or [features.new_zeros(0)]
        )
        # Each process keeps its shard's distances; a pick is the largest distance over all processes,
        # and its features reach every process to update their shards.
        min_sq_dist = self._min_sq_distances(features, sq_norms, labeled_features)
        ahead, ahead_columns = torch.empty((0, len(features)), device=features.device), {}
        picked, scores = [], []
        self.last_stats = {"picks": n, "refreshes": 0, "columns": 0}
        for _ in range(n):
            value, index, owner, row = _farthest(min_sq_dist, indices, group, in_order)
            if math.isinf(value):
                # Nothing labeled or picked yet, so every candidate is infinitely far from the set: start
                # from the one farthest from the candidates' mean, which is deterministic and off-center.
                sums = features.new_zeros(features.shape[1] + 1, dtype=torch.float64)
                for _, block in self._float64_blocks(features):  # a float64 copy would double the memory
                    sums[:-1] += block.sum(dim=0)
                sums[-1] = len(features)
                total = group.sum(sums)
                _, index, owner, row = _farthest(
                    self._sq_distances_to_mean(features, total[:-1] / total[-1]), indices, group, in_order
                )
            picked.append(index)
            scores.append(math.sqrt(max(value, 0.0)))
            if owner == group.rank:
                # Taken rows drop below every distance, so duplicates of a center can't be picked twice.
                min_sq_dist[row] = -1.0
            if index not in ahead_columns:
                center = features[row] if owner == group.rank else features.new_zeros(features.shape[1])
                ahead = None  # freed before its successor is allocated: one lookahead in memory at a time
                ahead, ahead_columns = self._look_ahead(
                    features,
                    sq_norms,
                    min_sq_dist,
                    indices,
                    group.broadcast(center, owner),
                    index,
                    width,
                    group,
                )
                self.last_stats["refreshes"] += 1
            torch.minimum(min_sq_dist, ahead[ahead_columns[index]], out=min_sq_dist)
        return Selection(
            indices=np.asarray(picked, dtype=np.int64), scores=np.asarray(scores, dtype=np.float64)
        )

    def _blocks(self, features: torch.Tensor):
        return (
            features[start : start + self.chunk_size] for start in range(0, len(features), self.chunk_size)
        )

    def _float64_blocks(self, features: torch.Tensor):
        """`(start, block)` of float64 copies of the rows, all written into one buffer. A new temporary per block,
        interleaved with the small results kept, would fragment the heap: the allocator then keeps every
        block's pages (measured: 2× the feature matrix in resident memory at 100k × 1,024)."""
        buffer = features.new_empty(
            (min(self.chunk_size, len(features)), features.shape[1]), dtype=torch.float64
        )
        for start, block in zip(range(0, len(features), self.chunk_size), self._blocks(features)):
            yield start, buffer[: len(block)].copy_(block)

    def _look_ahead(self, features, sq_norms, min_sq_dist, indices, center, index, width, group):
        """Squared distances of every candidate to `center` and to at most `width − 1` next picks that greedy
        k-center run ahead on the candidates farthest from the set predicts ([`_predicted_picks`]), as rows of a
        `(columns, N)` matrix, and the pool index → row map."""
        centers, center_indices = center[None], [index]
        if width > 1:
            predicted = self._predicted_picks(features, min_sq_dist, indices, center, width - 1, group)
            centers = torch.cat([centers, predicted[:, 1:].to(features)])
            center_indices += [int(i) for i in predicted[:, 0].tolist()]
        self.last_stats["columns"] += len(centers)
        center_sq_norms = _sq_norms(centers)
        ahead = features.new_empty((len(centers), len(features)))
        for start, block in zip(range(0, len(features), self.chunk_size), self._blocks(features)):
            sq_dist = torch.addmm(center_sq_norms, block, centers.T, alpha=-2)
            sq_dist.add_(sq_norms[start : start + len(block), None]).clamp_min_(0)
            # Stored as (centers, rows), so that a pick's distances are one contiguous row.
            ahead[:, start : start + len(block)] = sq_dist.T
        return ahead, {center_index: column for column, center_index in enumerate(center_indices)}

    def _predicted_picks(self, features, min_sq_dist, indices, center, count, group) -> torch.Tensor:
        """
        Rows `[pool_index, features...]` (float64) of the picks greedy k-center makes after `center`, run on the
        `CANDIDATES_PER_COLUMN × count` candidates farthest from the set (over all processes) only. A candidate
        outside them is at most as far as the farthest of them was (distances only shrink), so the run is stopped
        where its farthest falls to that bound: up to there its picks are those of the whole pool, up to rounding
        (the caller checks each pick against the real distances and runs ahead again where one differs). Distances
        are computed for the predicted picks only, not for candidates that one of them would cover.
        """
        size = min(CANDIDATES_PER_COLUMN * count + 1, len(features))
        values, rows = torch.topk(min_sq_dist, size) if size else (min_sq_dist[:0], indices[:0])
        local = torch.cat(
            [values.double()[:, None], indices[rows].double()[:, None], features[rows].double()], 1
        )
        everyone = group.gather_rows(local.cpu())
        order = sorted(range(len(everyone)), key=lambda r: (-everyone[r, 0].item(), everyone[r, 1].item()))
        everyone = everyone[order]
        candidates, outside = (
            everyone[: CANDIDATES_PER_COLUMN * count],
            everyone[CANDIDATES_PER_COLUMN * count :],
        )
        bound = float(outside[0, 0]) if len(outside) else -math.inf
        sq_dist, pool_indices, points = candidates[:, 0].clone(), candidates[:, 1], candidates[:, 2:]
        # Taken rows (−1), duplicates of a center (0) and candidates not yet near anything (inf, before the first
        # center) are not predicted; with an infinite bound nothing is certain.
        sq_dist[~((sq_dist > 0) & torch.isfinite(sq_dist))] = -math.inf
        picks = []
        point = center.double().cpu()
        while len(picks) < count and math.isfinite(bound):
            torch.minimum(sq_dist, (points - point).square_().sum(dim=1), out=sq_dist)
            row = _first_largest(sq_dist, pool_indices)
            if row is None or not sq_dist[row] > bound:
                break
            picks.append(row)
            sq_dist[row] = -math.inf
            point = points[row]
        return candidates[picks, 1:] if picks else candidates.new_zeros((0, candidates.shape[1] - 1))

    def _min_sq_distances(self, features, sq_norms, labeled_features) -> torch.Tensor:
        """Squared distance of every candidate to its nearest labeled point (`inf` when there is none)."""
        min_sq_dist = torch.full((len(features),), float("inf"), device=features.device)
        labeled_sq_norms = _sq_norms(labeled_features)
        for start, block in zip(range(0, len(features), self.chunk_size), self._blocks(features)):
            block_min = min_sq_dist[start : start + len(block)]
            for l_start in range(0, len(labeled_features), self.chunk_size):
                l_block = labeled_features[l_start : l_start + self.chunk_size]
                sq_dist = torch.addmm(
                    labeled_sq_norms[l_start : l_start + self.chunk_size], block, l_block.T, alpha=-2
                )
                sq_dist.add_(sq_norms[start : start + len(block), None]).clamp_min_(0)
                torch.minimum(block_min, sq_dist.amin(dim=1), out=block_min)
        return min_sq_dist

    def _sq_distances_to_mean(self, features: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Squared distance of every candidate to the float64 mean, by direct differences in blocks."""
        sq_dist = mean.new_empty(len(features))
        for start, block in self._float64_blocks(features):
            torch.sum(block.sub_(mean).square_(), dim=1, out=sq_dist[start : start + len(block)])
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

    Object detection and semantic segmentation pass the embeddings themselves (`embeddings`, one row per image: the
    last layer's gradient summed over the image's queries or pixels, see
    `prunefuse_hf.selection.gradient_embedding`), which no longer factor into two vectors: squared distances are
    `|g_i|² + |g_c|² − 2 g_i·g_c`, one matrix-vector product per pick over the embeddings, in their precision.
    Memory is then the embeddings, `N × C·D` floats over all processes (each holds its shard), plus `O(N)`.
    """

    name = "badge"
    needs = frozenset({"probs", "features"})
    per_image_outputs = frozenset({"embeddings"})
    shardable = True

    @torch.no_grad()
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
        embeddings=None,
    ) -> Selection:
        group = group or ShardGroup()
        given = features if embeddings is None else embeddings
        # float32 features stay float32 (a float64 copy would double their memory); float64 stay exact.
        given = torch.as_tensor(given).detach().cpu()
        name = "features" if embeddings is None else "embeddings"
        features = group.with_common_row_shape(
            given if given.dtype == torch.float64 else _as_float32_matrix(given, name)
        )
        if features.shape[0] != len(pool_indices):
            raise ValueError(
                f"{name} has {features.shape[0]} rows but there are {len(pool_indices)} candidates."
            )
        indices = torch.as_tensor(np.asarray(pool_indices), dtype=torch.int64)
        in_order = bool((indices[1:] > indices[:-1]).all())

        if embeddings is None:
            probs = torch.from_numpy(check_probs(probs, len(pool_indices), self.name))
            residual = probs.clone()
            residual[torch.arange(len(residual)), probs.argmax(dim=1)] -= 1.0
        else:  # the embedding is given whole: a residual of one 1 per row leaves it as it is
            residual = torch.ones(len(features), 1, dtype=torch.float64)
        feature_sq_norms = torch.cat(
            [_sq_norms(features[start : start + 4096]).double() for start in range(0, len(features), 4096)]
            or [residual.new_zeros(0)]
        )
        squared_norms = residual.square().sum(1) * feature_sq_norms
        seed = 0 if seed is None else seed
        taken = torch.zeros(len(pool_indices), dtype=torch.bool)
        nearest = torch.full_like(squared_norms, float("inf"))
        picked = []
        keys = squared_norms  # the first pick: the largest embedding
        for step in range(n):
            index, owner, row = _best_over_shards(keys, taken, indices, group, in_order)
            picked.append(index)
            if step == n - 1:
                break
            # The pick's embedding factors reach every process, which updates its shard's distances.
            center = torch.zeros(1 + residual.shape[1] + features.shape[1], dtype=torch.float64)
            if owner == group.rank:
                taken[row] = True
                center = torch.cat([squared_norms[row : row + 1], residual[row], features[row].double()])
            center = group.broadcast(center, owner)
            center_norm, center_residual = center[0], center[1 : 1 + residual.shape[1]]
            center_features = center[1 + residual.shape[1] :].to(features.dtype)
            # One matrix-vector product over the features, in their precision; the rest in float64.
            distance = (
                squared_norms
                + center_norm
                - 2 * (residual @ center_residual) * (features @ center_features).double()
            )
            nearest = torch.minimum(nearest, distance.clamp_min(0.0))
            # The next pick is drawn with probability ∝ nearest: the smallest Exp(1) / nearest wins (an
            # exponential race). The Exp(1) draws hash (seed, step, pool index), so they do not depend on
            # how the pool is sharded. Candidates at distance 0 coincide with a pick: they rank last (-inf)
            # and are taken by pool index once nothing else is left.
            exponential = torch.from_numpy(-np.log(_uniform_hash(seed, step, np.asarray(pool_indices))))
            keys = torch.where(nearest > 0, -exponential / nearest, float("-inf"))
        return Selection(
            indices=np.asarray(picked, dtype=np.int64), scores=np.arange(n, 0, -1, dtype=np.float64)
        )


def _sq_norms(matrix: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,ij->i", matrix, matrix)


def _farthest(sq_dist: torch.Tensor, indices: torch.Tensor, group: ShardGroup, sorted_indices: bool = False):
    """`(value, pool_index, owner rank, local row or None)` of the largest distance over all shards
    (ties: the smaller pool index)."""
    row = _first_largest(sq_dist, indices, sorted_indices=sorted_indices)
    value, index, owner = group.argmax(
        float(sq_dist[row]) if row is not None else float("-inf"),
        int(indices[row]) if row is not None else None,
    )
    return value, index, owner, row if owner == group.rank else None


def _first_largest(values, indices, valid=None, sorted_indices=False):
    """The row of the largest of `values` (among the `valid` rows), the smallest pool index among equals;
    `None` when there is no row. `sorted_indices` says `indices` increase, so the first largest is the one."""
    if valid is not None:
        if not bool(valid.any()):
            return None
        values = torch.where(valid, values, float("-inf"))
    elif not len(values):
        return None
    if sorted_indices:
        row = int(torch.argmax(values))  # the first of equal values has the smallest pool index
        if valid is None or bool(valid[row]):  # (a taken row wins only when every key is -inf)
            return row
    tied = values == values.max()
    tied = torch.nonzero(tied if valid is None else tied & valid).flatten()
    return int(tied[torch.argmin(indices[tied])])


def _best_over_shards(keys, taken, indices: torch.Tensor, group: ShardGroup, sorted_indices: bool = False):
    """`(pool_index, owner rank, local row or None)` of the largest key not taken yet, over all shards
    (ties: the smaller pool index)."""
    row = _first_largest(keys, indices, ~taken, sorted_indices)
    _, index, owner = group.argmax(
        float(keys[row]) if row is not None else float("-inf"),
        int(indices[row]) if row is not None else None,
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
    # Checked in blocks of rows: a mask of the whole matrix would cost a quarter of its memory.
    rows = max(1, 2**22 // max(values.shape[1], 1))
    if not all(
        bool(torch.isfinite(values[start : start + rows]).all()) for start in range(0, len(values), rows)
    ):
        raise ValueError(f"{name} contains NaN or inf values.")
    return values
