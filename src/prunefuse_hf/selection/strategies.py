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
| `cluster_margin` | probs, features | margin's score; one pick per k-means cluster of the 10·n smallest-margin candidates |
| `dropquery` | probs, mc_probs, features | dropout passes that flip the prediction (+ margin / 2); one pick per k-means cluster of the uncertain, nearest its centroid |
| `bald` | mc_probs | mutual information H(E[p]) − E[H(p)] over MC-dropout passes |

Strategies are looked up by name with [`get_strategy`]; later modules add their own with the
[`register_strategy`] decorator.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch

from .checks import check_budget, check_pool_indices, check_probs, check_scores
from .shards import ShardGroup

__all__ = [
    "BaldStrategy",
    "EntropyStrategy",
    "LeastConfidenceStrategy",
    "MarginStrategy",
    "RandomStrategy",
    "STRATEGIES",
    "Selection",
    "SelectionStrategy",
    "UncertaintyStrategy",
    "check_budget",
    "check_pool_indices",
    "check_probs",
    "check_scores",
    "get_strategy",
    "register_strategy",
    "top_n_by_score",
]


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
        group ([`~prunefuse_hf.selection.ShardGroup`], *optional*):
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
    # What the strategy ranks when an example holds many predictions (an image's detections or pixels): the task
    # reduces them per image while the pool is scored, into `scores` (with `measure`, the per-prediction uncertainty),
    # `mc_scores` (the same over MC-dropout passes), pooled `features`, or BADGE's gradient `embeddings`.
    per_image_outputs: frozenset[str] = frozenset()
    measure: str | None = None
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
        scores: np.ndarray | torch.Tensor | None = None,
        embeddings: np.ndarray | torch.Tensor | None = None,
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
            scores (`np.ndarray` or `torch.Tensor` of shape `(num_candidates,)`, *optional*):
                The uncertainty strategies' per-candidate scores, already computed (higher = pick first): a task
                whose examples are not one class distribution each (object detection) computes them itself with
                the strategy's measure (e.g. `tasks.detection_image_scores`); they replace `probs` (`mc_probs` for
                `bald`: then they are the per-image mutual information). Strategies with `scores` or `mc_scores` in
                their `per_image_outputs` take them.
            embeddings (`np.ndarray` or `torch.Tensor` of shape `(num_candidates, embedding_dim)`, *optional*):
                `badge`'s gradient embeddings, already computed (e.g. `tasks.segmentation_gradient_embeddings`,
                summed over an image's pixels); they replace `probs` and `features`.

        Returns:
            [`Selection`]: `n` unique pool indices, most informative first, with their scores.

        Example:

        ```python
        >>> probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]])
        >>> get_strategy("least_confidence").select(2, pool_indices=np.array([10, 11, 12]), probs=probs).indices
        array([11, 12])
        ```
        """
        pool_indices = check_pool_indices(pool_indices)
        group = ShardGroup(accelerator)
        if group.sharded and not self.shardable:
            raise ValueError(
                f"Strategy '{self.name}' does not select from shards: gather the candidates' scores on every "
                "process (score_pool(..., gather=True)) and call select without accelerator."
            )
        check_budget(n, int(group.sum(torch.tensor([len(pool_indices)]))))
        for value, kinds, what in ((scores, {"scores", "mc_scores"}, "precomputed scores"),
                                   (embeddings, {"embeddings"}, "precomputed gradient embeddings")):  # fmt: skip
            if value is not None and not kinds & self.per_image_outputs:
                takers = sorted(n for n, c in STRATEGIES.items() if kinds & c.per_image_outputs)
                raise ValueError(
                    f"Strategy '{self.name}' does not rank {what}; the strategies that do: {', '.join(takers)}."
                )
        given = {"probs": probs, "features": features, "mc_probs": mc_probs}
        if scores is not None:  # per-image scores stand for what they were computed from
            given.update({need: scores for need in self.needs - {"features"}})
        if embeddings is not None:
            given.update({need: embeddings for need in self.needs})
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
            **({"scores": scores} if scores is not None else {}),
            **({"embeddings": embeddings} if embeddings is not None else {}),
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
    per_image_outputs = frozenset({"scores"})
    shardable = True

    @property
    def measure(self) -> str:
        """An image's score aggregates this strategy's own per-prediction score."""
        return self.name

    def compute_scores(self, probs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

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
        if scores is not None:
            return _rank_scores(scores, pool_indices, n, group)
        probs = check_probs(probs, len(pool_indices), self.name)
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
class BaldStrategy(SelectionStrategy):
    """BALD (Houlsby et al., 2011) with MC dropout: mutual information between the prediction and the weights,
    `H(mean_t p_t) − mean_t H(p_t)` over `num_samples` stochastic forward passes (`mc_probs`).

    Scoring produces `mc_probs` only for models with active dropout; a model without any refuses with an error
    naming it (see `prunefuse_hf.selection.score_pool`).
    """

    name = "bald"
    needs = frozenset({"mc_probs"})
    per_image_outputs = frozenset({"mc_scores"})
    measure = "bald"
    shardable = True

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
        if scores is not None:  # a task's per-image mutual information (e.g. aggregated over pixels)
            return _rank_scores(scores, pool_indices, n, group)
        if isinstance(mc_probs, torch.Tensor):
            mc_probs = mc_probs.detach().cpu().double().numpy()
        mc_probs = np.asarray(mc_probs, dtype=np.float64)
        if mc_probs.ndim != 3 or mc_probs.shape[0] != len(pool_indices):
            raise ValueError(
                f"mc_probs must have shape (num_candidates={len(pool_indices)}, num_samples, num_classes), "
                f"got {mc_probs.shape}."
            )
        flat = check_probs(
            mc_probs.reshape(-1, mc_probs.shape[-1]), mc_probs.shape[0] * mc_probs.shape[1], self.name
        )
        mc_probs = flat.reshape(mc_probs.shape)
        scores = _entropy(mc_probs.mean(axis=1)) - _entropy(mc_probs).mean(axis=1)
        return top_n_by_score(scores, pool_indices, n, group)


def _rank_scores(scores, pool_indices: np.ndarray, n: int, group) -> Selection:
    scores = check_scores(scores, len(pool_indices))
    return top_n_by_score(scores, pool_indices, n, group)


def _entropy(probs: np.ndarray) -> np.ndarray:
    # Summing in sorted order makes rows that are permutations of each other score bit-identically, so
    # their tie breaks by pool index rather than by rounding noise.
    terms = np.where(probs > 0, -probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0)
    return np.sort(terms, axis=-1).sum(axis=-1)
