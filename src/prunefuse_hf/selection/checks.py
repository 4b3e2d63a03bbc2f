"""The checks every strategy applies to its inputs before any work: the budget, the candidates' pool indices, class
probabilities, features and precomputed per-candidate scores. Each raises a `ValueError` (or `TypeError`) naming the value and
the fix."""

from __future__ import annotations

import operator

import numpy as np
import torch

__all__ = ["check_budget", "check_features", "check_pool_indices", "check_probs", "check_scores"]

# Probabilities produced under bf16/fp16 autocast can be off by a few 1e-3 after the softmax.
_PROBS_ATOL = 1e-2


def check_budget(n: int, num_candidates: int) -> None:
    """Refuse a budget `n` that is not an integer in `[0, num_candidates]` (`TypeError` / `ValueError`)."""
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


def check_pool_indices(pool_indices) -> np.ndarray:
    """`pool_indices` as a 1-D int64 array of distinct non-negative indices; anything else is a `ValueError`."""
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


def check_probs(probs, num_candidates: int, strategy: str) -> np.ndarray:
    """`probs` as a float64 `[num_candidates, num_labels]` array of probabilities; a `ValueError` naming `strategy`
    otherwise."""
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


def check_scores(scores, num_candidates: int) -> np.ndarray:
    """Precomputed per-candidate `scores` as a float64 vector aligned with the candidates; a `ValueError` otherwise."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().double().numpy()
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != num_candidates:
        raise ValueError(
            f"scores has {len(scores)} entries but there are {num_candidates} candidates (pool_indices)."
        )
    return scores


def check_features(features, num_candidates: int) -> np.ndarray:
    """`features` as a float32 `(num_candidates, dim)` array; a `ValueError` naming the shapes otherwise."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) != num_candidates:
        raise ValueError(
            f"features must have shape (num_candidates, dim) with {num_candidates} rows (pool_indices), got "
            f"{features.shape}."
        )
    return features
