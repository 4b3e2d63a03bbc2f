"""Pruning a traced model to the widths its narrowed config builds, and recording which dense indices stay.

The narrowed-config path (`prune_model` for a `FamilyAdapter`) runs Torch-Pruning's dependency graph on a working
copy of the dense model: every coupled channel group, rooted at a convolution or linear layer, loses its least
important entries (group L2 magnitude) until each layer has the width the family's narrowed config builds
(`narrowed_widths`). `PrunedIndexRecorder` follows every removal and turns them into the kept dense indices of each
tensor, which become the `PruningPlan`. The roles path (`pruning/roles.py`) uses the same two pieces on a
detector's convolutional backbone.

Torch-Pruning: G. Fang, X. Ma, M. Song, M. Bi Mi, X. Wang, "DepGraph: Towards Any Structural Pruning",
CVPR 2023 (https://github.com/VainF/Torch-Pruning).
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch_pruning as tp
from torch import nn

from .graph import WRAPPED_MODULES, head_dim_projections, head_projections, unmap_channels_last_slices


def is_conv_or_linear(module: nn.Module) -> bool:
    """Whether `module` is a convolution (of any dimension) or a linear layer."""
    return isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))


def output_width(module: nn.Module) -> int:
    """Output channels of a convolution, output features of a linear layer."""
    return module.out_channels if isinstance(module, nn.modules.conv._ConvNd) else module.out_features


def is_grouped_conv(module: nn.Module) -> bool:
    """A grouped (not depthwise) convolution: its filters read `in_channels / groups` inputs each, and every group
    loses the same positions."""
    return isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups < module.in_channels


# Fractions tried when a ratio cannot be expressed, to say which would work.
_CANDIDATE_RATIOS = (0.25, 0.5, 0.75, 0.125, 0.375, 0.625, 0.875)


def config_shapes(model_class, config) -> tuple[dict[str, torch.Size], dict[str, nn.Module]]:
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


def narrowed_widths(model: nn.Module, surrogate_config, pruning_ratio: float, adapter) -> dict[str, int]:
    """Output width of every convolution and linear layer of the surrogate that `surrogate_config` builds.

    Raises a `ValueError` naming the family, the ratio and the ratios that work when the config cannot
    express a narrower model (widths that round up, vanish or do not change).
    """
    dense_shapes = {name: t.shape for name, t in model.state_dict().items()}
    target_shapes, modules = config_shapes(type(model), surrogate_config)
    problem = _expressibility_problem(dense_shapes, target_shapes)
    if problem is not None:
        working = []
        for candidate in _CANDIDATE_RATIOS:
            try:
                shapes = config_shapes(type(model), adapter.narrowed_config(model.config, candidate))[0]
            except ValueError:
                continue
            if _expressibility_problem(dense_shapes, shapes) is None:
                working.append(candidate)
        raise ValueError(
            f"pruning_ratio={pruning_ratio} cannot be expressed for the {adapter.name} family "
            f"({model.config.model_type}): {problem}. Ratios that work for this config: "
            f"{sorted(working) or 'none of ' + str(sorted(_CANDIDATE_RATIOS))}."
        )
    return {name: output_width(module) for name, module in modules.items() if is_conv_or_linear(module)}


def prune_to_widths(
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
    checked_modules=None,
) -> None:
    """Prune every coupled channel group of `working` to the width the narrowed config builds.

    Groups come from Torch-Pruning's dependency graph, rooted at each convolution or linear layer's
    output; within a group the entries with the smallest group L2 norm go. Attention projections lose
    the same positions in every head, and grouped convolutions in every group, ranked by the importance
    summed over the heads or groups (Torch-Pruning's own rule for head dimensions). The outputs of
    `ignored_layers` keep their width (their inputs follow the groups that feed them); layers are named as
    the `recorder` names them, so `working` may be a part of the model the names refer to. Every layer of
    `checked_modules` (by default all of `working`'s) must then have its narrowed width.
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
    heads = {**head_dim_projections(working), **head_projections(working)}
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
    for module in working.modules() if checked_modules is None else checked_modules:
        name = names.get(module)
        if name in target_widths and module not in ignored_layers:
            width = output_width(module)
            if width != target_widths[name]:
                raise RuntimeError(
                    f"'{name}' was pruned to {width} channels, the narrowed config builds "
                    f"{target_widths[name]}; please report it."
                )


def logits_and_outputs(model: nn.Module, inputs: dict, output_layers: list[nn.Module]) -> list[torch.Tensor]:
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


def dead_modules(model: nn.Module, example_inputs: dict, output_layers: list[nn.Module]) -> list[nn.Module]:
    """Modules owning parameters that do not reach the logits or the class-output layers (no gradient flows back to
    them), so that the traced graph leaves them out."""
    try:
        outputs = logits_and_outputs(model, example_inputs, output_layers)
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


def narrow_dead_modules(working: nn.Module, dead: list, surrogate_config, recorder) -> None:
    """Narrow the tensors of modules that do not reach the outputs to the shapes the narrowed config builds.

    Such a module (the final `layernorm` SwinBackbone inherits from SwinModel, whose output the feature maps never
    read) is outside the traced graph, so no group prunes it; it keeps its leading entries. Any choice is exact: it
    changes no output, training leaves it as it is, and fusion writes it back where it came from.
    """
    target_shapes, _ = config_shapes(type(working), surrogate_config)
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
        if is_grouped_conv(module):
            return module.groups, False
    return 1, True


class PrunedIndexRecorder:
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
            name: module.groups for name, module in model.named_modules() if is_grouped_conv(module)
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
                        "prunefuse_hf/pruning/widths.py; please report it."
                    )
                per_dim[dim] = matching[0]
            if per_dim:
                kept_indices[name] = per_dim
        return kept_indices
