"""Selection strategies: model outputs on the unlabeled pool ─► pool indices to label next.

Every strategy follows one contract, so that a score-direction bug cannot hide in any of them:

- a **higher score always means "pick first"** (uncertainty scores are oriented so that the most
  uncertain example has the highest score; `margin` is therefore the *negated* top-2 gap);
- ties break by the **smaller pool index**, so a selection is a pure function of its inputs (and
  of `seed` for `random`);
- the returned indices are unique, a subset of the candidates, most informative first, with their
  scores aligned and non-increasing.

| name | needs | score |
|---|---|---|
| `random` | nothing | seeded uniform draw |
| `least_confidence` | probs | 1 − max_c p_c |
| `entropy` | probs | −Σ_c p_c log p_c |
| `margin` | probs | −(p_top1 − p_top2) |
| `kcenter_greedy` | features | distance to the nearest labeled or already selected point, at the time of the pick |
| `badge` | probs, features | k-means++ seeding on last-layer gradient embeddings; score = pick order |
| `bald` | mc_probs | mutual information H(E[p]) − E[H(p)] over MC-dropout passes |

Strategies are looked up by name with [`get_strategy`]; later modules add their own with the
[`register_strategy`] decorator.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np
import torch

from .shards import ShardGroup

__all__ = [
    "STRATEGIES",
    "EntropyStrategy",
    "KCenterGreedyStrategy",
    "LeastConfidenceStrategy",
    "MarginStrategy",
    "RandomStrategy",
    "Selection",
    "SelectionStrategy",
    "UncertaintyStrategy",
    "get_strategy",
    "register_strategy",
    "top_n_by_score",
]

# Probabilities produced under bf16/fp16 autocast can be off by a few 1e-3 after the softmax.
_PROBS_ATOL = 1e-2


@dataclass
class Selection:
    """The outcome of one selection step.

    Args:
        indices (`np.ndarray` of `int64`):
            Global pool indices, most informative first, unique.
        scores (`np.ndarray` of `float64`):
            The score of each selected example, aligned with `indices` and non-increasing.
    """

    indices: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)


STRATEGIES: dict[str, type[SelectionStrategy]] = {}


def register_strategy(cls: type[SelectionStrategy]) -> type[SelectionStrategy]:
    """Class decorator that makes a strategy available to [`get_strategy`] under `cls.name`.

    Args:
        cls (`type[SelectionStrategy]`):
            A subclass of [`SelectionStrategy`] with a non-empty `name`.

    Returns:
        `type[SelectionStrategy]`: `cls`, unchanged.

    Example:

    ```python
    >>> @register_strategy
    ... class MaxProbStrategy(UncertaintyStrategy):
    ...     name = "max_prob"
    ...
    ...     def compute_scores(self, probs):
    ...         return probs.max(axis=1)
    ```
    """
    if not (isinstance(cls, type) and issubclass(cls, SelectionStrategy)):
        raise TypeError(f"register_strategy expects a SelectionStrategy subclass, got {cls!r}.")
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no `name`; set the class attribute before registering it.")
    if cls.name in STRATEGIES and STRATEGIES[cls.name] is not cls:
        raise ValueError(
            f"A selection strategy named '{cls.name}' is already registered ({STRATEGIES[cls.name]})."
        )
    STRATEGIES[cls.name] = cls
    return cls


def get_strategy(name: str, **kwargs) -> SelectionStrategy:
    """Instantiate a registered selection strategy by name.

    Args:
        name (`str`):
            One of `STRATEGIES` (`"random"`, `"least_confidence"`, `"entropy"`, `"margin"`,
            `"kcenter_greedy"`, plus any strategy added with [`register_strategy`]).
        **kwargs:
            Passed to the strategy's constructor (e.g. `chunk_size` for `kcenter_greedy`).

    Returns:
        [`SelectionStrategy`]: the strategy instance.

    Example:

    ```python
    >>> strategy = get_strategy("least_confidence")
    >>> strategy.needs
    frozenset({'probs'})
    ```
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown selection strategy '{name}'. Available: {', '.join(sorted(STRATEGIES))}.")
    return STRATEGIES[name](**kwargs)


def top_n_by_score(
    scores: np.ndarray, pool_indices: np.ndarray, n: int, group: ShardGroup | None = None
) -> Selection:
    """Keep the `n` candidates with the highest scores, ties broken by the smaller pool index.

    Args:
        scores (`np.ndarray`):
            One score per candidate, aligned with `pool_indices`; higher means "pick first".
        pool_indices (`np.ndarray`):
            The candidates' global pool indices (any order).
        n (`int`):
            How many to keep.
        group ([`~prunefuse_hf.shards.ShardGroup`], *optional*):
            When the candidates are this process's shard: each process keeps its own best `n`, and the
            best `n` of those are the selection, the same on every process.

    Returns:
        [`Selection`]: the `n` best candidates, best first.

    Example:

    ```python
    >>> top_n_by_score(np.array([0.5, 0.9, 0.5]), np.array([7, 3, 1]), 2).indices
    array([3, 1])
    ```
    """
    scores = np.asarray(scores, dtype=np.float64)
    pool_indices = np.asarray(pool_indices, dtype=np.int64)
    if np.isnan(scores).any():
        raise ValueError("Selection scores contain NaN; check the model outputs used for scoring.")
    # np.lexsort sorts by the last key first: descending score, then ascending pool index.
    order = np.lexsort((pool_indices, -scores))[:n]
    scores, pool_indices = scores[order], pool_indices[order]
    if group is not None and group.sharded:
        # Pool indices ride along as float64 (exact below 2**53); the global best n are among the local ones.
        local = torch.from_numpy(np.stack([scores, pool_indices.astype(np.float64)], axis=1))
        everyone = group.gather_rows(local).numpy()
        scores, pool_indices = everyone[:, 0], everyone[:, 1].astype(np.int64)
        order = np.lexsort((pool_indices, -scores))[:n]
        scores, pool_indices = scores[order], pool_indices[order]
    return Selection(indices=pool_indices, scores=scores)


class SelectionStrategy:
    """Base class of all selection strategies.

    Subclasses set `name` and `needs` and implement `_select`; [`~SelectionStrategy.select`] validates
    the inputs shared by every strategy before calling it.

    Attributes:
        name (`str`):
            The key under which the strategy is registered.
        needs (`frozenset[str]`):
            The model outputs the strategy needs from scoring, a subset of `{"probs", "features", "mc_probs"}`.
    """

    name: str = ""
    needs: frozenset[str] = frozenset()
    # Whether `select` uses the features of the already-labeled examples (scoring them costs a pass).
    uses_labeled_features: bool = False
    # Whether `select` accepts this process's shard of the candidates (with `accelerator=`) and reduces
    # across processes, so that no process needs the whole pool's scores.
    shardable: bool = False

    def select(
        self,
        n: int,
        *,
        pool_indices: np.ndarray,
        probs: np.ndarray | torch.Tensor | None = None,
        features: np.ndarray | torch.Tensor | None = None,
        labeled_features: np.ndarray | torch.Tensor | None = None,
        seed: int | None = None,
        mc_probs: np.ndarray | torch.Tensor | None = None,
        accelerator=None,
    ) -> Selection:
        """Pick the `n` most informative candidates.

        Args:
            n (`int`):
                The budget: how many candidates to select (1 ≤ n ≤ number of candidates).
            pool_indices (`np.ndarray`):
                The candidates' global pool indices, aligned with the rows of `probs` / `features`.
                They may be in any order but must be unique.
            probs (`np.ndarray` or `torch.Tensor` of shape `(num_candidates, num_classes)`, *optional*):
                Class probabilities (after softmax); needed by the uncertainty strategies.
            features (`np.ndarray` or `torch.Tensor` of shape `(num_candidates, hidden_size)`, *optional*):
                Penultimate (pooled) features of the candidates; needed by `kcenter_greedy`.
            labeled_features (`np.ndarray` or `torch.Tensor` of shape `(num_labeled, hidden_size)`, *optional*):
                Penultimate features of the already-labeled examples (`kcenter_greedy`); may be empty.
            seed (`int`, *optional*):
                Seed of the strategies that draw random numbers.
            mc_probs (`np.ndarray` or `torch.Tensor` of shape `(num_candidates, num_samples, num_classes)`, *optional*):
                Class probabilities of several stochastic (MC-dropout) forward passes; needed by `bald`.
            accelerator (`accelerate.Accelerator`, *optional*):
                With several processes, the candidates (`pool_indices` and their outputs) are this process's
                shard, e.g. from `score_pool(..., gather=False)`; `labeled_features` are all of them. The
                processes reduce their shards' results and all return the same selection, the one a single
                process would make from the whole pool. Only strategies with `shardable = True` accept shards.

        Returns:
            [`Selection`]: `n` unique pool indices, most informative first, with their scores.

        Example:

        ```python
        >>> probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]])
        >>> get_strategy("least_confidence").select(2, pool_indices=np.array([10, 11, 12]), probs=probs).indices
        array([11, 12])
        ```
        """
        pool_indices = _check_pool_indices(pool_indices)
        group = ShardGroup(accelerator)
        if group.sharded and not self.shardable:
            raise ValueError(
                f"Strategy '{self.name}' does not select from shards: gather the candidates' scores on every "
                "process (score_pool(..., gather=True)) and call select without accelerator."
            )
        _check_budget(n, int(group.sum(torch.tensor([len(pool_indices)]))))
        given = {"probs": probs, "features": features, "mc_probs": mc_probs}
        missing = sorted(need for need in self.needs if given.get(need) is None)
        if missing:
            raise ValueError(
                f"Strategy '{self.name}' needs {' and '.join(missing)}; score the pool with "
                f"{', '.join(sorted(self.needs))} enabled and pass them to `select`."
            )
        return self._select(
            operator.index(n),
            pool_indices=pool_indices,
            probs=probs,
            features=features,
            labeled_features=labeled_features,
            seed=seed,
            mc_probs=mc_probs,
            **({"group": group} if self.shardable else {}),
        )

    def _select(
        self, n, *, pool_indices, probs, features, labeled_features, seed, mc_probs=None
    ) -> Selection:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class UncertaintyStrategy(SelectionStrategy):
    """Base class of the strategies that score each candidate from its class probabilities alone.

    Subclasses implement `compute_scores(probs) -> np.ndarray`, oriented so that higher means more
    uncertain.
    """

    needs = frozenset({"probs"})
    shardable = True

    def compute_scores(self, probs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _select(
        self, n, *, pool_indices, probs, features, labeled_features, seed, mc_probs=None, group=None
    ) -> Selection:
        probs = _check_probs(probs, len(pool_indices), self.name)
        return top_n_by_score(self.compute_scores(probs), pool_indices, n, group)


@register_strategy
class RandomStrategy(SelectionStrategy):
    """Uniformly random selection (the baseline): scores are a seeded uniform draw.

    The draw is made in pool-index order, so the selection depends only on the set of candidates
    and the seed (`None` means 0), not on the order in which the candidates are given.
    """

    name = "random"
    needs = frozenset()

    def _select(
        self, n, *, pool_indices, probs, features, labeled_features, seed, mc_probs=None
    ) -> Selection:
        rng = np.random.default_rng(0 if seed is None else seed)
        scores = np.empty(len(pool_indices), dtype=np.float64)
        scores[np.argsort(pool_indices, kind="stable")] = rng.random(len(pool_indices))
        return top_n_by_score(scores, pool_indices, n)


@register_strategy
class LeastConfidenceStrategy(UncertaintyStrategy):
    """Least confidence: score = 1 − max_c P(c|x)."""

    name = "least_confidence"

    def compute_scores(self, probs: np.ndarray) -> np.ndarray:
        return 1.0 - probs.max(axis=1)


@register_strategy
class EntropyStrategy(UncertaintyStrategy):
    """Predictive entropy: score = −Σ_c P(c|x) log P(c|x), with 0 · log 0 = 0."""

    name = "entropy"

    def compute_scores(self, probs: np.ndarray) -> np.ndarray:
        return _entropy(probs)


@register_strategy
class MarginStrategy(UncertaintyStrategy):
    """Smallest margin: score = −(P(top1|x) − P(top2|x)), negated so that a small gap is picked first."""

    name = "margin"

    def compute_scores(self, probs: np.ndarray) -> np.ndarray:
        if probs.shape[1] < 2:
            raise ValueError(f"Strategy 'margin' needs at least 2 classes, got probs of shape {probs.shape}.")
        top2 = np.partition(probs, -2, axis=1)[:, -2:]
        # Written as p_top2 − p_top1 (the same value) so that a zero margin scores +0.0, not −0.0.
        return top2[:, 0] - top2[:, 1]


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


@register_strategy
class BaldStrategy(SelectionStrategy):
    """BALD (Houlsby et al., 2011) with MC dropout: mutual information between the prediction and the weights,
    `H(mean_t p_t) − mean_t H(p_t)` over `num_samples` stochastic forward passes (`mc_probs`).

    Scoring produces `mc_probs` only for models with active dropout; a model without any refuses with an error
    naming it (see `prunefuse_hf.scoring.score_pool`).
    """

    name = "bald"
    needs = frozenset({"mc_probs"})
    shardable = True

    def _select(
        self, n, *, pool_indices, probs, features, labeled_features, seed, mc_probs=None, group=None
    ) -> Selection:
        if isinstance(mc_probs, torch.Tensor):
            mc_probs = mc_probs.detach().cpu().double().numpy()
        mc_probs = np.asarray(mc_probs, dtype=np.float64)
        if mc_probs.ndim != 3 or mc_probs.shape[0] != len(pool_indices):
            raise ValueError(
                f"mc_probs must have shape (num_candidates={len(pool_indices)}, num_samples, num_classes), "
                f"got {mc_probs.shape}."
            )
        flat = _check_probs(
            mc_probs.reshape(-1, mc_probs.shape[-1]), mc_probs.shape[0] * mc_probs.shape[1], self.name
        )
        mc_probs = flat.reshape(mc_probs.shape)
        scores = _entropy(mc_probs.mean(axis=1)) - _entropy(mc_probs).mean(axis=1)
        return top_n_by_score(scores, pool_indices, n, group)


def _entropy(probs: np.ndarray) -> np.ndarray:
    # Summing in sorted order makes rows that are permutations of each other score bit-identically, so
    # their tie breaks by pool index rather than by rounding noise.
    terms = np.where(probs > 0, -probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0)
    return np.sort(terms, axis=-1).sum(axis=-1)


def _check_budget(n: int, num_candidates: int) -> None:
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n must be an integer, got {n!r}.") from None
    if n < 1:
        raise ValueError(f"n must be >= 1 (the number of examples to select), got n={n}.")
    if n > num_candidates:
        raise ValueError(
            f"Cannot select n={n}: budget larger than the unlabeled pool ({num_candidates} candidates)."
        )


def _check_pool_indices(pool_indices) -> np.ndarray:
    if isinstance(pool_indices, torch.Tensor):
        pool_indices = pool_indices.detach().cpu().numpy()
    pool_indices = np.asarray(pool_indices)
    if pool_indices.ndim != 1 or not (
        pool_indices.size == 0 or np.issubdtype(pool_indices.dtype, np.integer)
    ):
        raise ValueError(
            f"pool_indices must be a 1-D array of integers, got shape {pool_indices.shape} and dtype "
            f"{pool_indices.dtype}."
        )
    pool_indices = pool_indices.astype(np.int64)
    if len(np.unique(pool_indices)) != len(pool_indices):
        raise ValueError("pool_indices contains duplicates; each candidate must appear once.")
    return pool_indices


def _check_probs(probs, num_candidates: int, strategy: str) -> np.ndarray:
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().cpu().double().numpy()
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must have shape (num_candidates, num_classes), got {probs.shape}.")
    if probs.shape[0] != num_candidates:
        raise ValueError(
            f"probs has {probs.shape[0]} rows but there are {num_candidates} candidates (pool_indices); "
            "they must be aligned."
        )
    # Logits passed by mistake would silently reverse or scramble the ranking, so refuse them.
    if (
        not np.isfinite(probs).all()
        or (probs < -_PROBS_ATOL).any()
        or not np.allclose(probs.sum(axis=1), 1.0, atol=_PROBS_ATOL)
    ):
        raise ValueError(
            f"Strategy '{strategy}' expects probabilities (rows in [0, 1] summing to 1); got values that are "
            "not. Apply a softmax to the logits first."
        )
    return probs.clip(0.0, 1.0)


def _as_float32_matrix(values, name: str) -> torch.Tensor:
    values = torch.as_tensor(values).detach()
    if values.ndim != 2:
        raise ValueError(f"{name} must have shape (num_rows, hidden_size), got {tuple(values.shape)}.")
    values = values.float().contiguous()
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or inf values.")
    return values
