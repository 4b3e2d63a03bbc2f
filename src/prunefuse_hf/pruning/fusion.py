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

    The dense model must be the architecture the plan was made from: its `config_hash` (which ignores the
    checkpoint path, the class names and what training sets) must equal the plan's `dense_config_hash`. The
    hash identifies the architecture, not the weights: a dense checkpoint of the same architecture with other
    weights (another seed) is accepted, and the result holds its weights wherever the surrogate has none.

    Args:
        dense ([`~transformers.PreTrainedModel`]): The dense model (its initial weights θ0 in a PruneFuse run,
            or a fresh init).
        surrogate ([`~transformers.PreTrainedModel`]): The (trained) surrogate that `prune_model` produced from
            `dense`'s architecture.
        plan ([`PruningPlan`]): The plan returned with the surrogate (or read with `PruningPlan.from_pretrained`).
        copy_norm_stats (`bool`, *optional*, defaults to `True`): Also copy normalization running statistics
            (BatchNorm running mean/var and batch counter). With `False` those buffers keep the dense values.

    Returns:
        [`~transformers.PreTrainedModel`]: the fused model, same class and config as `dense`.

    Raises:
        `ValueError`: `dense` is another architecture than the plan's (the message names the plan's
            `dense_name_or_path` and hash, the given model's `_name_or_path` and hash, and the fix), or a tensor of
            either model does not have the plan's shape.

    Example:

    ```python
    >>> from transformers import ResNetConfig, ResNetForImageClassification
    >>> from prunefuse_hf import fuse_into_dense, prune_model
    >>> dense = ResNetForImageClassification(ResNetConfig(hidden_sizes=[16, 32], depths=[1, 1]))
    >>> surrogate, plan = prune_model(dense, 0.5)
    >>> # ... train the surrogate ...
    >>> fused = fuse_into_dense(dense, surrogate, plan)
    >>> type(fused).__name__
    'ResNetForImageClassification'
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
