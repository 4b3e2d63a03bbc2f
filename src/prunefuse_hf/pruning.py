"""Structured pruning of an HF vision model into a narrow surrogate of the same family.

`prune_model` runs Torch-Pruning's group L2-magnitude pruning with the same ratio on every prunable
width, records which dense indices every pruned dimension kept (the `PruningPlan`), and rebuilds the
result as a plain model of the same class from a narrowed config, so the surrogate saves and reloads
with `save_pretrained` / `from_pretrained` like any other checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
from collections import defaultdict

import torch
import torch_pruning as tp
from torch import nn
from transformers.utils import logging

from .architectures import example_pixel_values, get_family_adapter
from .plan import PruningPlan, config_hash

logger = logging.get_logger(__name__)

IMPORTANCES = ("l2",)


def validate_pruning_ratio(pruning_ratio) -> float:
    """Return `pruning_ratio` as a float, or raise a `ValueError` saying what is allowed."""
    if isinstance(pruning_ratio, bool) or not isinstance(pruning_ratio, numbers.Real):
        raise ValueError(f"pruning_ratio must be a number in [0, 1), got {pruning_ratio!r}.")
    if not (0 <= pruning_ratio < 1) or math.isnan(pruning_ratio):
        raise ValueError(
            f"pruning_ratio must be in [0, 1), got {pruning_ratio}: it is the fraction of every prunable "
            "width that is removed (0.5 halves each width; 0 keeps the dense model as its own selector)."
        )
    return float(pruning_ratio)


def prune_model(
    model: nn.Module,
    pruning_ratio: float,
    *,
    importance: str = "l2",
    example_inputs: dict | torch.Tensor | None = None,
) -> tuple[nn.Module, PruningPlan]:
    """Prune `model` at its current weights into a narrower surrogate and record the kept indices.

    Every prunable width (channels, stage widths, stem) loses the same fraction `pruning_ratio` of its
    entries, those with the smallest L2 norm over their coupled group. The classifier's outputs are
    never pruned. The input model is left untouched.

    Args:
        model: A `*ForImageClassification` model of a supported family (see
            `prunefuse_hf.architectures.FAMILY_ADAPTERS`).
        pruning_ratio: Fraction removed from every prunable width, in [0, 1). `0` returns an identical
            copy (any family), the dense-selector baseline.
        importance: Channel importance; `"l2"` is Torch-Pruning's group magnitude with p=2.
        example_inputs: Inputs used to trace the model (`{"pixel_values": tensor}` or a tensor). By
            default a random batch shaped from the config (`num_channels`, `image_size` or 64).

    Returns:
        `(surrogate, plan)`: the surrogate (same class, narrowed config, in the input model's
        train/eval mode) and its `PruningPlan`.

    Example:
        ```python
        >>> from transformers import ResNetConfig, ResNetForImageClassification
        >>> from prunefuse_hf import prune_model
        >>> dense = ResNetForImageClassification(ResNetConfig(num_labels=10))
        >>> surrogate, plan = prune_model(dense, 0.5)
        >>> surrogate.config.hidden_sizes
        [128, 256, 512, 1024]
        ```
    """
    pruning_ratio = validate_pruning_ratio(pruning_ratio)
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {list(IMPORTANCES)}, got {importance!r}.")
    dense_state = model.state_dict()
    name_or_path = getattr(model.config, "_name_or_path", None) or None

    if pruning_ratio == 0:
        surrogate = copy.deepcopy(model)
        return surrogate, _make_plan(model, surrogate, {}, pruning_ratio, importance, name_or_path)

    adapter = get_family_adapter(model.config)
    working = copy.deepcopy(model)
    # Tracing runs a forward pass: in train mode it would move BatchNorm running statistics, and the
    # surrogate would no longer equal the dense model at the kept indices.
    working.eval()
    if example_inputs is None:
        example_inputs = {"pixel_values": example_pixel_values(working)}
    elif isinstance(example_inputs, torch.Tensor):
        example_inputs = {"pixel_values": example_inputs}

    pruner = tp.pruner.MetaPruner(
        working,
        example_inputs=example_inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=pruning_ratio,
        ignored_layers=adapter.ignored_layers(working),
        output_transform=lambda outputs: outputs.logits,
    )
    recorder = _PrunedIndexRecorder(working)
    for group in pruner.step(interactive=True):
        recorder.record(group, pruner.DG)
        group.prune()

    surrogate = _rebuild_from_config(
        model, adapter.narrowed_config(model.config, working), working, pruning_ratio
    )
    kept_indices = recorder.kept_indices(dense_state, surrogate.state_dict())
    plan = _make_plan(model, surrogate, kept_indices, pruning_ratio, importance, name_or_path)
    _verify_plan(plan, dense_state, surrogate.state_dict())
    surrogate.train(model.training)
    logger.info(
        "Pruned %s with ratio %.2f: %d -> %d parameters.",
        model.config.model_type,
        pruning_ratio,
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in surrogate.parameters()),
    )
    return surrogate, plan


class _PrunedIndexRecorder:
    """Collects, per module and per side ("out"/"in"), the positions Torch-Pruning removed.

    Positions in a group refer to the tensor as it is when that group is pruned, so removals are
    kept in order and replayed against the dense size to get kept dense indices.
    """

    def __init__(self, model: nn.Module):
        self.module_names = {module: name for name, module in model.named_modules()}
        self.removals: dict[tuple[str, str], list[list[int]]] = defaultdict(list)

    def record(self, group, dependency_graph) -> None:
        seen = set()
        for dep, idxs in group:
            name = self.module_names.get(dep.target.module)
            if name is None:  # graph-only nodes (add, reshape, ...) own no tensors
                continue
            side = "out" if dependency_graph.is_out_channel_pruning_fn(dep.handler) else "in"
            positions = sorted({int(getattr(i, "idx", i)) for i in idxs})
            key = (name, side, tuple(positions))
            if key not in seen:
                seen.add(key)
                self.removals[(name, side)].append(positions)

    def _kept(self, module_name: str, side: str, size: int) -> list[int]:
        kept = list(range(size))
        for positions in self.removals.get((module_name, side), []):
            removed = set(positions)
            kept = [index for position, index in enumerate(kept) if position not in removed]
        return kept

    def kept_indices(self, dense_state: dict, surrogate_state: dict) -> dict[str, dict[int, list[int]]]:
        kept_indices = {}
        for name, dense_tensor in dense_state.items():
            module_name = name.rpartition(".")[0]
            changed = {
                dim: size
                for dim, (dense_size, size) in enumerate(zip(dense_tensor.shape, surrogate_state[name].shape))
                if dense_size != size
            }
            per_dim = {}
            for dim, size in changed.items():
                # Weights are (out, in, ...); one-dimensional tensors (norms, biases) follow the
                # channels they scale, which Torch-Pruning prunes on either side.
                sides = ("out", "in") if dim == 0 else ("in",) if dim == 1 else ()
                candidates = [
                    self._kept(module_name, side, dense_tensor.shape[dim])
                    for side in sides
                    if (module_name, side) in self.removals
                ]
                matching = [kept for kept in candidates if len(kept) == size]
                if not matching:
                    raise RuntimeError(
                        f"Could not tell which entries of '{name}' (dim {dim}, {dense_tensor.shape[dim]} -> "
                        f"{size}) were kept. This architecture needs a dedicated rule in "
                        "prunefuse_hf/pruning.py; please report it."
                    )
                per_dim[dim] = matching[0]
            if per_dim:
                kept_indices[name] = per_dim
        return kept_indices


def _rebuild_from_config(model: nn.Module, config, pruned: nn.Module, pruning_ratio: float) -> nn.Module:
    """A fresh model of the dense class built from the narrowed config, holding the pruned weights."""
    surrogate = type(model)(config).to(device=next(model.parameters()).device)
    expected = surrogate.state_dict()
    for name, tensor in pruned.state_dict().items():
        if name not in expected or expected[name].shape != tensor.shape:
            raise ValueError(
                f"pruning_ratio={pruning_ratio} gives {config.model_type} widths that its config cannot "
                f"express (tensor '{name}': pruned {list(tensor.shape)}, config builds "
                f"{list(expected[name].shape) if name in expected else 'nothing'}). Choose a ratio that "
                "keeps divisible widths, e.g. 0.25, 0.5 or 0.75."
            )
    surrogate.load_state_dict(pruned.state_dict(), strict=True)
    return surrogate


def _make_plan(dense, surrogate, kept_indices, pruning_ratio, importance, name_or_path) -> PruningPlan:
    return PruningPlan(
        pruning_ratio=pruning_ratio,
        importance=importance,
        model_type=dense.config.model_type,
        # Through JSON, so the in-memory plan equals one read back from disk (integer keys become strings).
        dense_config=json.loads(dense.config.to_json_string()),
        surrogate_config=json.loads(surrogate.config.to_json_string()),
        dense_shapes={name: list(t.shape) for name, t in dense.state_dict().items()},
        kept_indices=kept_indices,
        dense_name_or_path=name_or_path,
        dense_config_hash=config_hash(dense.config),
    )


def _verify_plan(plan: PruningPlan, dense_state: dict, surrogate_state: dict) -> None:
    # The untrained surrogate must be exactly the dense weights at the kept indices; this is the
    # invariant fusion relies on, so a plan that breaks it is never handed out.
    with torch.no_grad():
        for name, tensor in surrogate_state.items():
            if not torch.equal(dense_state[name][plan.index(name, tensor.device)], tensor):
                raise RuntimeError(
                    f"Pruning plan does not reproduce surrogate tensor '{name}'; please report it."
                )
