"""Structured pruning of an HF vision model into a narrow surrogate of the same family.

`prune_model` runs Torch-Pruning's group L2-magnitude pruning with the same ratio on every prunable
width, records which dense indices every pruned dimension kept (the `PruningPlan`), and rebuilds the
result as a plain model of the same class from a narrowed config, so the surrogate saves and reloads
with `save_pretrained` / `from_pretrained` like any other checkpoint.

Torch-Pruning: G. Fang, X. Ma, M. Song, M. Bi Mi, X. Wang, "DepGraph: Towards Any Structural Pruning",
CVPR 2023 (https://github.com/VainF/Torch-Pruning). Its dependency graph finds the coupled channel groups and
its `GroupMagnitudeImportance(p=2)` scores each channel by the L2 norm of all the weights the group couples.
"""

from __future__ import annotations

import copy
import json

import torch
from torch import nn
from transformers.utils import logging

from ..constants import IMPORTANCES, PIXEL_VALUES, PRUNING_PATH_REPLAY
from ..utils.checks import validate_pruning_ratio
from .families import ADAPTERS, GeneralFamily, segmentation_family
from .plan import PruningPlan, config_hash
from .replay import kept_indices_by_replay, prune_general
from .roles import backbone_modules, front_consumers, kept_indices_by_roles, unfreeze_batch_norms
from .support import check_supported_model
from .tracing import example_inputs_for, trace_inputs
from .widths import (
    PrunedIndexRecorder,
    config_shapes,
    dead_modules,
    logits_and_outputs,
    narrow_dead_modules,
    narrowed_widths,
    prune_to_widths,
)

logger = logging.get_logger(__name__)


def prune_model(
    model: nn.Module,
    pruning_ratio: float,
    *,
    importance: str = "l2",
    example_inputs: dict | torch.Tensor | None = None,
) -> tuple[nn.Module, PruningPlan]:
    """Prune `model` at its current weights into a narrower surrogate and record the kept indices.

    Every prunable width (channels, stage widths, stem, hidden size, MLP width, head dimension) loses
    the same fraction `pruning_ratio` of its entries, those with the smallest L2 norm over their
    coupled group: Torch-Pruning's group L2-magnitude importance (`GroupMagnitudeImportance(p=2)`,
    Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023). Exact widths are those of the
    family's narrowed config (e.g. head dimensions, group widths and `make_divisible` rounding), so the
    surrogate is a regular checkpoint of the same class. The classifier's outputs are never pruned. The
    input model is left untouched.

    Args:
        model ([`~transformers.PreTrainedModel`]): The image classifier of a supported family (see
            `prunefuse_hf.pruning.families.SUPPORTED_FAMILIES`; other classes of those families are refused by
            `check_supported_model`).
        pruning_ratio (`float`): Fraction removed from every prunable width, in [0, 1). `0` returns an
            identical copy (any image classifier), the dense-selector baseline.
        importance (`str`, *optional*, defaults to `"l2"`): Channel importance; `"l2"` is Torch-Pruning's
            group magnitude with p=2.
        example_inputs (`dict` or `torch.Tensor`, *optional*): Inputs used to trace the model
            (`{"pixel_values": tensor}` or a tensor). By default a random batch shaped from the config
            (`num_channels`, `image_size` or 64).

    Returns:
        `tuple[PreTrainedModel, PruningPlan]`: the surrogate (same class, narrowed config, in the input
        model's train/eval mode) and its `PruningPlan` (with `dense_config_hash`, which fusion checks).

    Raises:
        `ValueError`: a ratio outside [0, 1), an unknown importance, a ratio the family's config cannot
            express (the message lists the ratios that work), or a model class that is not its family's image
            classifier (e.g. `ViTModel`, `DeiTForImageClassificationWithTeacher`).
        `NotImplementedError`: the family has no pruning support (and `pruning_ratio` > 0).

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
    check_supported_model(model, pruning_ratio=pruning_ratio)
    dense_state = model.state_dict()
    name_or_path = getattr(model.config, "_name_or_path", None) or None

    if pruning_ratio == 0:
        surrogate = copy.deepcopy(model)
        return surrogate, _make_plan(model, surrogate, {}, pruning_ratio, importance, name_or_path)

    adapter = segmentation_family(model) or ADAPTERS.get(model.config.model_type)
    if adapter is None or isinstance(adapter, GeneralFamily):
        return _prune_general_path(model, pruning_ratio, importance, name_or_path, dense_state)
    surrogate_config = adapter.narrowed_config(model.config, pruning_ratio)
    target_widths = narrowed_widths(model, surrogate_config, pruning_ratio, adapter)
    if adapter.coupling == "roles":
        surrogate, plan = _prune_by_roles(
            model,
            adapter,
            surrogate_config,
            target_widths,
            pruning_ratio,
            importance,
            name_or_path,
            example_inputs,
        )
        _log_pruned(model, surrogate, pruning_ratio, "")
        return surrogate, plan
    working = copy.deepcopy(model)
    # Tracing runs a forward pass: in train mode it would move BatchNorm running statistics, and the
    # surrogate would no longer equal the dense model at the kept indices.
    working.eval()
    example_inputs = example_inputs_for(working, example_inputs)

    recorder = PrunedIndexRecorder(working)
    output_layers = adapter.ignored_layers(working)
    dead = dead_modules(working, example_inputs, output_layers)
    prune_to_widths(
        working,
        recorder,
        target_widths,
        example_inputs,
        forward_fn=lambda model, inputs: logits_and_outputs(model, inputs, output_layers),
        ignored_layers=output_layers,
        ignored_parameters=adapter.ignored_parameters,
        channels_last=adapter.channels_last,
    )
    narrow_dead_modules(working, dead, surrogate_config, recorder)

    surrogate = _rebuild_from_config(model, surrogate_config, working, pruning_ratio)
    kept_indices = recorder.kept_indices(dense_state, surrogate.state_dict())
    plan = _make_plan(model, surrogate, kept_indices, pruning_ratio, importance, name_or_path)
    _verify_plan(plan, dense_state, surrogate.state_dict())
    surrogate.train(model.training)
    _log_pruned(model, surrogate, pruning_ratio, "")
    return surrogate, plan


def _log_pruned(model, surrogate, pruning_ratio, how: str) -> None:
    logger.info(
        "Pruned %s with ratio %.2f%s: %d -> %d parameters.",
        model.config.model_type,
        pruning_ratio,
        how,
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in surrogate.parameters()),
    )


class _FrontDone(Exception):
    """Raised by a hook once every consumer of the traced front has run: the rest of the forward is not traced."""


class _FrontWithConsumers(nn.Module):
    """What Torch-Pruning traces of a detector: the model's own forward from the pixels up to the layers reading the
    front's outputs (the backbone, and what the family traces with it), whose outputs it returns."""

    def __init__(self, model: nn.Module, consumers: list[nn.Module]):
        super().__init__()
        self.model = model
        self.consumers = consumers

    def forward(self, pixel_values):
        outputs = {}

        def keep(module, args, output):
            outputs[module] = output
            if len(outputs) == len(self.consumers):
                raise _FrontDone

        handles = [consumer.register_forward_hook(keep) for consumer in self.consumers]
        try:
            self.model(pixel_values=pixel_values)
        except _FrontDone:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return [outputs[consumer] for consumer in self.consumers]


def _prune_by_roles(
    model, adapter, surrogate_config, target_widths, pruning_ratio, importance, name_or_path, example_inputs
):
    """Plan a family whose coupled groups are found by role (`pruning/roles.py`), then build its surrogate.

    The convolutional backbone, the modules the family traces with it (`FamilyAdapter.traced_modules`) and the inputs
    of the layers reading their outputs are pruned by Torch-Pruning on a working copy, only to record their kept
    indices; the transformer's widths are grouped by role. The surrogate is the narrowed config's model holding the
    dense weights at the kept indices.
    """
    dense_state = model.state_dict()
    target_shapes, _ = config_shapes(type(model), surrogate_config)
    working = copy.deepcopy(model).eval()
    # Torch-Pruning follows the autograd graph: a frozen stem (DETR freezes the backbone's first stages) would
    # leave it out.
    working.requires_grad_(True)
    example_inputs = example_inputs_for(working, example_inputs)
    modules = dict(working.named_modules())
    front = [*backbone_modules(working), *((path, modules[path]) for path in adapter.traced_modules)]
    consumers = front_consumers(working, [module for _, module in front], example_inputs)
    for _, module in front:
        unfreeze_batch_norms(module)
    recorder = PrunedIndexRecorder(working)
    prune_to_widths(
        _FrontWithConsumers(working, consumers),
        recorder,
        target_widths,
        {PIXEL_VALUES: example_inputs[PIXEL_VALUES]},
        output_transform=None,
        ignored_layers=consumers,
        checked_modules=[m for _, module in front for m in module.modules()],
    )
    # The front's tensors narrow as the config builds them; a consumer's weight here only on its input side (its
    # output width is the transformer's, grouped by role).
    shapes = {
        name: target_shapes[name]
        for name in dense_state
        if any(name.startswith(f"{prefix}.") for prefix, _ in front)
    }
    for consumer in consumers:
        name = f"{recorder.names[consumer]}.weight"
        shapes[name] = (dense_state[name].shape[0], *target_shapes[name][1:])
    planned = recorder.kept_indices(
        {name: dense_state[name] for name in shapes},
        {name: torch.empty(shape, device="meta") for name, shape in shapes.items()},
    )
    kept_indices = kept_indices_by_roles(model, target_shapes, planned)
    surrogate = type(model)(surrogate_config).to(device=next(model.parameters()).device)
    plan = _make_plan(model, surrogate, kept_indices, pruning_ratio, importance, name_or_path)
    with torch.no_grad():
        surrogate.load_state_dict(
            {name: t[plan.index(name, t.device)] for name, t in dense_state.items()}, strict=True
        )
    _verify_plan(plan, dense_state, surrogate.state_dict())
    surrogate.train(model.training)
    return surrogate, plan


def _rebuild_from_config(model: nn.Module, config, pruned: nn.Module, pruning_ratio: float) -> nn.Module:
    """A fresh model of the dense class built from the narrowed config, holding the pruned weights."""
    surrogate = type(model)(config).to(device=next(model.parameters()).device)
    expected = surrogate.state_dict()
    for name, tensor in pruned.state_dict().items():
        if name not in expected or expected[name].shape != tensor.shape:
            raise RuntimeError(
                f"pruning_ratio={pruning_ratio} gave {config.model_type} widths that its narrowed config "
                f"does not build (tensor '{name}': pruned {list(tensor.shape)}, config builds "
                f"{list(expected[name].shape) if name in expected else 'nothing'}); please report it."
            )
    surrogate.load_state_dict(pruned.state_dict(), strict=True)
    return surrogate


def _prune_general_path(model, pruning_ratio, importance, name_or_path, dense_state):
    """Prune a family without a narrowed config: Torch-Pruning in place, the history kept in the plan."""
    spec = trace_inputs(model)
    surrogate, history, attention_outputs_dense = prune_general(model, pruning_ratio, spec)
    kept_indices = kept_indices_by_replay(model, history, spec, attention_outputs_dense)
    plan = _make_plan(model, surrogate, kept_indices, pruning_ratio, importance, name_or_path)
    plan.pruning_path = PRUNING_PATH_REPLAY
    plan.pruning_history = history
    plan.trace_inputs = spec
    plan.attention_outputs_dense = attention_outputs_dense
    _verify_plan(plan, dense_state, surrogate.state_dict())
    surrogate.train(model.training)
    _log_pruned(
        model,
        surrogate,
        pruning_ratio,
        " by the general path" + (" (attention outputs kept dense)" if attention_outputs_dense else ""),
    )
    return surrogate, plan


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
        model_class=type(dense).__name__,
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
