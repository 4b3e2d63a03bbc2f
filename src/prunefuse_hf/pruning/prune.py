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
from collections import defaultdict

import torch
import torch_pruning as tp
from torch import nn
from transformers.utils import logging

from ..constants import IMPORTANCES, PIXEL_VALUES, PRUNING_PATH_REPLAY
from ..utils.checks import validate_pruning_ratio
from .families import (
    ADAPTERS,
    GeneralFamily,
    example_pixel_values,
    segmentation_family,
)
from .graph import WRAPPED_MODULES, head_projections, unmap_channels_last_slices
from .plan import PruningPlan, config_hash
from .replay import kept_indices_by_replay, prune_general, trace_inputs
from .roles import backbone_modules, feature_map_consumers, kept_indices_by_roles, unfreeze_batch_norms
from .support import check_supported_model

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
    target_widths = _target_widths(model, surrogate_config, pruning_ratio, adapter)
    if adapter.coupling == "roles":
        surrogate, plan = _prune_by_roles(
            model, surrogate_config, target_widths, pruning_ratio, importance, name_or_path, example_inputs
        )
        _log_pruned(model, surrogate, pruning_ratio, "")
        return surrogate, plan
    working = copy.deepcopy(model)
    # Tracing runs a forward pass: in train mode it would move BatchNorm running statistics, and the
    # surrogate would no longer equal the dense model at the kept indices.
    working.eval()
    if example_inputs is None:
        example_inputs = {PIXEL_VALUES: example_pixel_values(working)}
    elif isinstance(example_inputs, torch.Tensor):
        example_inputs = {PIXEL_VALUES: example_inputs}

    recorder = _PrunedIndexRecorder(working)
    output_layers = adapter.ignored_layers(working)
    dead = _dead_modules(working, example_inputs, output_layers)
    _prune_to_widths(
        working,
        recorder,
        target_widths,
        example_inputs,
        forward_fn=lambda model, inputs: _logits_and_outputs(model, inputs, output_layers),
        ignored_layers=output_layers,
        ignored_parameters=adapter.ignored_parameters,
        channels_last=adapter.channels_last,
    )
    _narrow_dead_modules(working, dead, surrogate_config, recorder)

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


class _BackboneWithConsumers(nn.Module):
    """What Torch-Pruning traces of a detector: its backbone and the layers reading its feature maps."""

    def __init__(self, backbone: nn.Module, consumers: list[tuple[int, nn.Module]]):
        super().__init__()
        self.backbone = backbone
        self.levels = [level for level, _ in consumers]
        self.consumers = nn.ModuleList(module for _, module in consumers)

    def forward(self, pixel_values):
        feature_maps = self.backbone(pixel_values).feature_maps
        return [consumer(feature_maps[level]) for level, consumer in zip(self.levels, self.consumers)]


def _prune_by_roles(
    model, surrogate_config, target_widths, pruning_ratio, importance, name_or_path, example_inputs
):
    """Plan a family whose coupled groups are found by role (`pruning/roles.py`), then build its surrogate.

    The convolutional backbone and the inputs of the layers reading its feature maps are pruned by Torch-Pruning
    on a working copy, only to record their kept indices; the transformer's widths are grouped by role. The
    surrogate is the narrowed config's model holding the dense weights at the kept indices.
    """
    dense_state = model.state_dict()
    target_shapes, _ = _config_shapes(type(model), surrogate_config)
    working = copy.deepcopy(model).eval()
    # Torch-Pruning follows the autograd graph: a frozen stem (DETR freezes the backbone's first stages) would
    # leave it out.
    working.requires_grad_(True)
    if example_inputs is None:
        example_inputs = {PIXEL_VALUES: example_pixel_values(working)}
    elif isinstance(example_inputs, torch.Tensor):
        example_inputs = {PIXEL_VALUES: example_inputs}
    planned = {}
    for backbone_name, backbone in backbone_modules(working):
        consumers = feature_map_consumers(working, backbone, example_inputs)
        unfreeze_batch_norms(backbone)
        recorder = _PrunedIndexRecorder(working)
        _prune_to_widths(
            _BackboneWithConsumers(backbone, consumers),
            recorder,
            target_widths,
            {PIXEL_VALUES: example_inputs[PIXEL_VALUES]},
            output_transform=None,
            ignored_layers=[consumer for _, consumer in consumers],
        )
        # The backbone's tensors narrow as the config builds them; a consumer's weight here only on its input side
        # (its output width is the transformer's, grouped by role).
        shapes = {name: target_shapes[name] for name in dense_state if name.startswith(f"{backbone_name}.")}
        for _, consumer in consumers:
            name = f"{recorder.names[consumer]}.weight"
            shapes[name] = (dense_state[name].shape[0], *target_shapes[name][1:])
        planned.update(
            recorder.kept_indices(
                {name: dense_state[name] for name in shapes},
                {name: torch.empty(shape, device="meta") for name, shape in shapes.items()},
            )
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


# Fractions tried when a ratio cannot be expressed, to say which would work.
_CANDIDATE_RATIOS = (0.25, 0.5, 0.75, 0.125, 0.375, 0.625, 0.875)


def _config_shapes(model_class, config) -> tuple[dict[str, torch.Size], dict[str, nn.Module]]:
    """Tensor shapes and modules of `model_class(config)`, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        template = model_class(config)
    return {name: t.shape for name, t in template.state_dict().items()}, dict(template.named_modules())


def _expressibility_problem(dense_shapes: dict, target_shapes: dict) -> str | None:
    if set(dense_shapes) != set(target_shapes):
        return "the narrowed config builds different tensors"
    grown = [n for n in dense_shapes if any(t > d for t, d in zip(target_shapes[n], dense_shapes[n]))]
    if grown:
        return f"the narrowed config widens '{grown[0]}' (its width rounding goes up)"
    if any(0 in shape for shape in target_shapes.values()):
        return "a width rounds to zero"
    if all(target_shapes[n] == dense_shapes[n] for n in dense_shapes):
        return "every width rounds back to the dense width"
    return None


def _target_widths(model: nn.Module, surrogate_config, pruning_ratio: float, adapter) -> dict[str, int]:
    """Output width of every convolution and linear layer of the surrogate that `surrogate_config` builds.

    Raises a `ValueError` naming the family, the ratio and the ratios that work when the config cannot
    express a narrower model (widths that round up, vanish or do not change).
    """
    dense_shapes = {name: t.shape for name, t in model.state_dict().items()}
    target_shapes, modules = _config_shapes(type(model), surrogate_config)
    problem = _expressibility_problem(dense_shapes, target_shapes)
    if problem is not None:
        working = []
        for candidate in _CANDIDATE_RATIOS:
            try:
                shapes = _config_shapes(type(model), adapter.narrowed_config(model.config, candidate))[0]
            except ValueError:
                continue
            if _expressibility_problem(dense_shapes, shapes) is None:
                working.append(candidate)
        raise ValueError(
            f"pruning_ratio={pruning_ratio} cannot be expressed for the {adapter.name} family "
            f"({model.config.model_type}): {problem}. Ratios that work for this config: "
            f"{sorted(working) or 'none of ' + str(sorted(_CANDIDATE_RATIOS))}."
        )
    widths = {}
    for name, module in modules.items():
        if isinstance(module, nn.modules.conv._ConvNd):
            widths[name] = module.out_channels
        elif isinstance(module, nn.Linear):
            widths[name] = module.out_features
    return widths


def _prune_to_widths(
    working: nn.Module,
    recorder,
    target_widths: dict,
    example_inputs,
    *,
    ignored_layers,
    forward_fn=None,
    output_transform=None,
    ignored_parameters=(),
    channels_last=False,
) -> None:
    """Prune every coupled channel group of `working` to the width the narrowed config builds.

    Groups come from Torch-Pruning's dependency graph, rooted at each convolution or linear layer's
    output; within a group the entries with the smallest group L2 norm go. Attention projections lose
    the same positions in every head, and grouped convolutions in every group, ranked by the importance
    summed over the heads or groups (Torch-Pruning's own rule for head dimensions). The outputs of
    `ignored_layers` keep their width (their inputs follow the groups that feed them); layers are named as
    the `recorder` names them, so `working` may be a part of the model the names refer to.
    """
    ignored_params = [
        p for name, p in working.named_parameters() if name.endswith(ignored_parameters or ("\0",))
    ]
    unwrapped = []
    for module in working.modules():
        if isinstance(module, WRAPPED_MODULES):
            continue
        for parameter in module.parameters(recurse=False):
            if not any(parameter is p for p in ignored_params) and parameter.ndim > 0:
                unwrapped.append((parameter, parameter.ndim - 1))
    graph = tp.DependencyGraph().build_dependency(
        working,
        example_inputs=example_inputs,
        forward_fn=forward_fn,
        output_transform=output_transform,
        unwrapped_parameters=unwrapped,
        ignored_params=ignored_params,
        verbose=False,
    )
    if channels_last:
        unmap_channels_last_slices(graph, channels_last=True)
    ignored_layers = [m for layer in ignored_layers for m in layer.modules()]
    heads = head_projections(working)
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    names = recorder.names
    for group in graph.get_all_groups(
        ignored_layers=ignored_layers, root_module_types=(nn.Conv2d, nn.Linear)
    ):
        root = group[0].dep.target.module
        name = names[root]
        current, target = graph.get_out_channels(root), target_widths[name]
        if current == target:
            continue
        num_splits, per_split = _channel_splits(group, graph, heads)
        if current % num_splits or target % num_splits:
            raise RuntimeError(
                f"'{name}' has {current} channels in {num_splits} heads/groups but the narrowed config "
                f"asks for {target}; please report it."
            )
        scores = importance(group)
        if scores is None:
            raise RuntimeError(f"No importance for the channel group of '{name}'; please report it.")
        scores = scores.view(num_splits, current // num_splits)
        remove = (current - target) // num_splits
        if per_split:
            # Each split drops its own least important entries (only for a single split today).
            local = torch.argsort(scores, dim=1, stable=True)[:, :remove]
        else:
            # Same positions in every group, ranked by their importance summed over the groups.
            local = torch.argsort(scores.sum(0), stable=True)[:remove].expand(num_splits, -1)
        offsets = torch.arange(num_splits, device=local.device).unsqueeze(1) * (current // num_splits)
        indices = sorted((local + offsets).flatten().tolist())
        group = graph.get_pruning_group(root, group[0].dep.handler, indices)
        recorder.record(group, graph)
        group.prune()
    for module in working.modules():
        name = names.get(module)
        if name in target_widths and module not in ignored_layers:
            width = (
                module.out_channels if isinstance(module, nn.modules.conv._ConvNd) else module.out_features
            )
            if width != target_widths[name]:
                raise RuntimeError(
                    f"'{name}' was pruned to {width} channels, the narrowed config builds "
                    f"{target_widths[name]}; please report it."
                )


def _logits_and_outputs(model: nn.Module, inputs: dict, output_layers: list[nn.Module]) -> list[torch.Tensor]:
    """The logits plus the output of every class-output layer: a head that feeds only the loss (UperNet's auxiliary
    head) must be in the traced graph too, or its input would keep the dense width on a narrowed backbone."""
    captured = []
    handles = [layer.register_forward_hook(lambda m, a, out: captured.append(out)) for layer in output_layers]
    try:
        logits = model(**inputs).logits
    finally:
        for handle in handles:
            handle.remove()
    return [logits, *(t for t in captured if t is not logits)]


def _dead_modules(model: nn.Module, example_inputs: dict, output_layers: list[nn.Module]) -> list[nn.Module]:
    """Modules owning parameters that do not reach the logits or the class-output layers (no gradient flows back to
    them), so that the traced graph leaves them out."""
    try:
        outputs = _logits_and_outputs(model, example_inputs, output_layers)
        torch.autograd.backward([t.sum() for t in outputs])
        dead = [
            m
            for m in model.modules()
            if next(m.parameters(recurse=False), None) is not None
            and all(p.grad is None for p in m.parameters(recurse=False))
        ]
    finally:
        model.zero_grad(set_to_none=True)
    return dead


def _narrow_dead_modules(working: nn.Module, dead: list, surrogate_config, recorder) -> None:
    """Narrow the tensors of modules that do not reach the outputs to the shapes the narrowed config builds.

    Such a module (the final `layernorm` SwinBackbone inherits from SwinModel, whose output the feature maps never
    read) is outside the traced graph, so no group prunes it; it keeps its leading entries. Any choice is exact: it
    changes no output, training leaves it as it is, and fusion writes it back where it came from.
    """
    target_shapes, _ = _config_shapes(type(working), surrogate_config)
    for module_name, module in working.named_modules():
        if not any(module is m for m in dead):
            continue
        tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        for tensor_name, tensor in tensors:
            target = target_shapes.get(f"{module_name}.{tensor_name}" if module_name else tensor_name)
            if target is None or tensor.shape == target:
                continue
            index = tuple(slice(0, size) for size in target)
            for dim, (size, kept) in enumerate(zip(tensor.shape, target)):
                if size != kept and dim < 2:
                    side = "out" if dim == 0 else "in"
                    if list(range(kept, size)) not in recorder.removals[(module_name, side)]:
                        recorder.removals[(module_name, side)].append(list(range(kept, size)))
            narrowed = tensor.detach()[index].clone()
            if isinstance(tensor, nn.Parameter):
                setattr(module, tensor_name, nn.Parameter(narrowed, requires_grad=tensor.requires_grad))
            else:
                setattr(module, tensor_name, narrowed)


def _channel_splits(group, graph, heads) -> tuple[int, bool]:
    """How a group's channels are split: `(number of heads or conv groups, each chooses its own)`."""
    for dep, _ in group:
        module = dep.target.module
        if module in heads and graph.is_out_channel_pruning_fn(dep.handler):
            # Same positions in every head, ranked by their importance summed over the heads: Torch-Pruning's
            # rule for head dimensions, which the general path uses, so both paths write the same kind of plan.
            return heads[module], False
    for dep, _ in group:
        module = dep.target.module
        if isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups < module.in_channels:
            return module.groups, False
    return 1, True


class _PrunedIndexRecorder:
    """Collects the positions Torch-Pruning removed, per module and side ("out"/"in"), and per unwrapped
    parameter ("param": its pruned last dimension).

    Positions in a group refer to the tensor as it is when that group is pruned, so removals are
    kept in order and replayed against the dense size to get kept dense indices.
    """

    def __init__(self, model: nn.Module):
        self.names = {module: name for name, module in model.named_modules()}
        self.names.update({parameter: name for name, parameter in model.named_parameters()})
        # Grouped (not depthwise) convolutions store in_channels / groups input channels per filter.
        self.conv_groups = {
            name: module.groups
            for name, module in model.named_modules()
            if isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups < module.in_channels
        }
        self.removals: dict[tuple[str, str], list[list[int]]] = defaultdict(list)

    def record(self, group, dependency_graph) -> None:
        seen = set()
        for dep, idxs in group:
            target = dep.target.module
            name = self.names.get(target)
            if name is None:  # graph-only nodes (add, reshape, ...) own no tensors
                continue
            if isinstance(target, nn.Parameter):
                side = "param"
            else:
                side = "out" if dependency_graph.is_out_channel_pruning_fn(dep.handler) else "in"
            positions = sorted({int(getattr(i, "idx", i)) for i in idxs})
            key = (name, side, tuple(positions))
            if key not in seen:
                seen.add(key)
                self.removals[(name, side)].append(positions)

    def _kept(self, key: tuple[str, str], size: int) -> list[int]:
        kept = list(range(size))
        for positions in self.removals.get(key, []):
            removed = set(positions)
            kept = [index for position, index in enumerate(kept) if position not in removed]
        return kept

    def _candidates(self, name: str, dim: int, dense_shape) -> list[list[int]]:
        module_name = name.rpartition(".")[0]
        size = dense_shape[dim]
        if (name, "param") in self.removals and dim == len(dense_shape) - 1:
            return [self._kept((name, "param"), size)]
        if dim == 1 and module_name in self.conv_groups:
            # A grouped convolution's weight holds the inputs of one group; every group lost the same
            # positions, so group 0's kept inputs are the kept positions along this dimension.
            groups = self.conv_groups[module_name]
            return [[i for i in self._kept((module_name, "in"), size * groups) if i < size]]
        # Weights are (out, in, ...); one-dimensional tensors (norms, biases) follow the channels they
        # scale, which Torch-Pruning prunes on either side.
        sides = ("out", "in") if dim == 0 else ("in",) if dim == 1 else ()
        return [
            self._kept((module_name, side), size) for side in sides if (module_name, side) in self.removals
        ]

    def kept_indices(self, dense_state: dict, surrogate_state: dict) -> dict[str, dict[int, list[int]]]:
        kept_indices = {}
        for name, dense_tensor in dense_state.items():
            changed = {
                dim: size
                for dim, (dense_size, size) in enumerate(zip(dense_tensor.shape, surrogate_state[name].shape))
                if dense_size != size
            }
            per_dim = {}
            for dim, size in changed.items():
                matching = [k for k in self._candidates(name, dim, dense_tensor.shape) if len(k) == size]
                if not matching:
                    raise RuntimeError(
                        f"Could not tell which entries of '{name}' (dim {dim}, {dense_tensor.shape[dim]} -> "
                        f"{size}) were kept. This architecture needs a dedicated rule in "
                        "prunefuse_hf/pruning/prune.py; please report it."
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
