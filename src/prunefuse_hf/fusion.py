"""Fusion: write a trained surrogate back into the dense model at the kept indices."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .plan import PruningPlan


def fuse_into_dense(
    dense: nn.Module,
    surrogate: nn.Module,
    plan: PruningPlan,
    *,
    copy_norm_stats: bool = True,
) -> nn.Module:
    """Return a copy of `dense` whose entries at the plan's kept indices hold the surrogate's values.

    θF = θ0, then every parameter and buffer S*[w] of the surrogate is written to
    θF[w][kept indices]. Entries the surrogate does not cover keep the dense value, so fusing an
    untrained surrogate returns the dense weights exactly. Neither input is modified.

    Args:
        dense: The dense model (its initial weights θ0 in the PruneFuse loop, or a fresh init).
        surrogate: The (trained) surrogate that `prune_model` produced from `dense`'s architecture.
        plan: The `PruningPlan` returned with the surrogate.
        copy_norm_stats: Also copy normalization running statistics (BatchNorm running mean/var and
            batch counter). With `False` those buffers keep the dense values.

    Returns:
        The fused model, same class and config as `dense`.

    Example:
        ```python
        >>> surrogate, plan = prune_model(dense, 0.5)
        >>> # ... train the surrogate ...
        >>> fused = fuse_into_dense(dense, surrogate, plan)
        ```
    """
    plan.check_models(dense, surrogate)
    skipped = set() if copy_norm_stats else _norm_statistic_names(surrogate)
    fused = copy.deepcopy(dense)
    fused_state = fused.state_dict()  # shares storage with the fused model's tensors
    with torch.no_grad():
        for name, value in surrogate.state_dict().items():
            if name in skipped:
                continue
            target = fused_state[name]
            target[plan.index(name, target.device)] = value.to(device=target.device, dtype=target.dtype)
    return fused


def _norm_statistic_names(model: nn.Module) -> set[str]:
    """Names of the running-statistic buffers of normalization layers (BatchNorm, InstanceNorm)."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            prefix = f"{module_name}." if module_name else ""
            names.update(prefix + buffer_name for buffer_name, _ in module.named_buffers(recurse=False))
    return names
