"""A linear probe as a selector: multinomial logistic regression on frozen features (the selection-via-proxy idea of
Coleman et al., "Selection via Proxy: Efficient Data Selection for Deep Learning", ICLR 2020, with the cheapest proxy a
pretrained model offers: a linear head on its frozen pooled features, as in linear-probe active learning).

The features are L2-normalized (pooled features of different images differ mostly in scale, which a linear head on
few labels would overfit to); the head is fitted full-batch by L-BFGS from zeros, so it is deterministic and takes
well under a second for thousands of labels. Its probabilities on the unlabeled pool feed every probability strategy,
and its normalized features the feature strategies (`kcenter_greedy`, `badge` on the head's gradient embeddings);
its predictions with dropout on its input features feed `dropquery`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["LinearProbe", "normalize_features", "train_linear_probe"]

PROBE_WEIGHT_DECAY = 1e-3
PROBE_MAX_ITERATIONS = 100


def normalize_features(features) -> torch.Tensor:
    """Rows scaled to unit L2 norm (float32; zero rows stay zero)."""
    features = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    return torch.nn.functional.normalize(features.float(), dim=1)


@dataclass
class LinearProbe:
    """A fitted linear head: `probs = softmax(normalize(x) @ weight.T + bias)`.

    Args:
        weight (`torch.Tensor` of shape `(num_classes, dim)`), bias (`torch.Tensor` of shape `(num_classes,)`).
        iterations (`int`): L-BFGS function evaluations the fit took (for the cost ledger).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    iterations: int = 0

    def probs(self, features) -> torch.Tensor:
        """Class probabilities `(n, num_classes)` of raw (unnormalized) `features` `(n, dim)`."""
        with torch.no_grad():
            return torch.softmax(normalize_features(features) @ self.weight.T + self.bias, dim=1)

    def dropout_probs(self, features, num_passes: int, dropout: float, seed: int = 0) -> torch.Tensor:
        """Class probabilities `(n, num_passes, num_classes)` with dropout on the head's input: each pass zeroes
        every normalized feature value with probability `dropout` and scales the rest by `1 / (1 − dropout)`, as
        `torch.nn.Dropout` does in training (DropQuery's passes, Gupte et al., TMLR 2024).

        Args:
            features (`np.ndarray` or `torch.Tensor` of shape `(n, dim)`): Raw (unnormalized) features.
            num_passes (`int`): Dropout passes per example.
            dropout (`float`): Probability of zeroing a feature value, in `[0, 1)`.
            seed (`int`, *optional*, defaults to 0): Seed of the dropout masks (same seed, same masks).

        Returns:
            `torch.Tensor` of shape `(n, num_passes, num_classes)`.

        Raises:
            `ValueError`: `num_passes` below 1 or `dropout` outside `[0, 1)`.
        """
        if int(num_passes) != num_passes or num_passes < 1:
            raise ValueError(f"num_passes must be an integer >= 1, got {num_passes!r}.")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        x = normalize_features(features)
        generator = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            passes = []
            for _ in range(int(num_passes)):
                keep = torch.rand(x.shape, generator=generator) >= dropout
                passes.append(torch.softmax((x * keep / (1 - dropout)) @ self.weight.T + self.bias, dim=1))
        return torch.stack(passes, dim=1)

    def flops(self, num_examples: int) -> float:
        """Multiply-adds ×2 of applying the head to `num_examples` examples."""
        return 2.0 * self.weight.numel() * num_examples


def train_linear_probe(
    features,
    labels,
    num_classes: int,
    *,
    weight_decay: float = PROBE_WEIGHT_DECAY,
    max_iterations: int = PROBE_MAX_ITERATIONS,
    class_balanced: bool = False,
) -> LinearProbe:
    """Fit multinomial logistic regression (cross-entropy + `weight_decay`/2 · |W|²) on L2-normalized `features`.

    Args:
        features (`np.ndarray` or `torch.Tensor` of shape `(n, dim)`): Features of the labeled examples.
        labels (array of shape `(n,)`): Their class ids in `[0, num_classes)`.
        num_classes (`int`): Number of classes (classes without a labeled example get probability from the bias).
        weight_decay (`float`, *optional*, defaults to 1e-3): L2 penalty of the weights.
        max_iterations (`int`, *optional*, defaults to 100): L-BFGS iterations.
        class_balanced (`bool`, *optional*, defaults to `False`): Weight each class's examples by `n / (C · n_c)`.

    Returns:
        [`LinearProbe`]: the fitted head (same inputs, same head: the fit starts from zeros, full batch).

    Raises:
        `ValueError`: features and labels of different lengths, no examples, or a label out of range.

    Example:

    ```python
    >>> probe = train_linear_probe(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), 2)
    >>> probe.probs(np.array([[2.0, 0.1]])).argmax(dim=1).tolist()
    [0]
    ```
    """
    x = normalize_features(features).double()
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"Need as many labels as feature rows (at least one), got {len(y)} and {len(x)}.")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"labels must be in [0, {num_classes}), got values from {int(y.min())} to {int(y.max())}."
        )
    sample_weight = torch.ones(len(y), dtype=torch.float64)
    if class_balanced:
        counts = torch.bincount(y, minlength=num_classes).double()
        sample_weight = len(y) / (num_classes * counts[y])
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iterations, line_search_fn="strong_wolfe")
    evaluations = 0

    def closure():
        nonlocal evaluations
        evaluations += 1
        optimizer.zero_grad()
        losses = torch.nn.functional.cross_entropy(x @ weight.T + bias, y, reduction="none")
        loss = (sample_weight * losses).sum() / sample_weight.sum() + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(weight.detach().float(), bias.detach().float(), iterations=evaluations)
