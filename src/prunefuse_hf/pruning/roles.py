"""Coupled width groups by role, for models Torch-Pruning cannot trace whole (DETR-style detectors, YOLOS).

Torch-Pruning's tracer fails on DETR (Torch-Pruning #307), and a trace would not help anyway where a width is
rebuilt from the config rather than carried by a tensor (the sine position embeddings). For such families the
narrowed config says which dimension of which tensor gets narrower (its shape against the dense one), and the
roles below say which of those dimensions share kept indices:

- the convolutional backbone (a transformers `*Backbone`), the modules a family names as traced with it (RT-DETR's
  hybrid encoder) and the inputs of the layers that read their outputs are traced by Torch-Pruning as for image
  classifiers (`widths.py`, run by `prune.py`): those dimensions arrive here already planned;
- in every attention module (found by attribute: an integer `head_dim` / `attention_head_size` and linear
  children), the outputs of its projections and the input of its output projection are one group, split into heads:
  every head keeps the same positions, so the head count stays;
- in every multi-scale deformable attention (Deformable DETR, RT-DETR: an integer `n_heads`, `value_proj` and
  `output_proj`), the value projection's outputs and the output projection's inputs are one group split into heads;
  the sampling offsets and attention weights (per head, level and point) keep their outputs;
- in every MLP (`fc1`/`fc2`, `intermediate.dense`/`output.dense`, or a prediction head's `layers`), each inner width
  is one group;
- every other narrowed dimension has the residual width (`d_model`, `hidden_size`) and belongs to one residual
  group (embeddings, tokens, norms, input projections); a tensor of `CONCATENATED_RESIDUALS` holds several residual
  widths side by side, each keeping the residual's positions (Deformable DETR's query embedding: position, target).

Within a group an entry's importance is the sum of the squared weights the group couples at that entry (the group
L2 magnitude that `GroupMagnitudeImportance(p=2)` ranks by); the least important entries go.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .graph import HEAD_DIM_ATTRS
from .widths import is_conv_or_linear

OUTPUT_PROJECTION_NAMES = ("o_proj", "out_proj")
RESIDUAL = "residual"
# Tensors (by name suffix) whose dimension holds whole residual widths side by side: Deformable DETR splits its
# query embedding (num_queries, 2 x d_model) into the query position and the target.
CONCATENATED_RESIDUALS = ("query_position_embeddings.weight",)


@dataclass
class WidthGroup:
    """Dimensions of tensors that keep the same entries.

    Args:
        members: `(tensor name, dim)` pairs.
        heads: The number of heads the width splits into (1 outside attention).
        copies: Members whose dimension holds several group widths side by side (`CONCATENATED_RESIDUALS`), with
            how many.
    """

    members: list[tuple[str, int]] = field(default_factory=list)
    heads: int = 1
    copies: dict[tuple[str, int], int] = field(default_factory=dict)

    def member_indices(self, member: tuple[str, int], kept: list[int], width: int) -> list[int]:
        """A member's kept indices: `kept`, once per residual width the member holds side by side."""
        return [copy * width + i for copy in range(self.copies.get(member, 1)) for i in kept]


def backbone_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """`(name, module)` of the outermost transformers backbones (`*Backbone`, a `BackboneMixin`) inside `model`."""
    try:
        from transformers.backbone_utils import BackboneMixin
    except ImportError:  # transformers 4
        from transformers.utils.backbone_utils import BackboneMixin

    found = []
    for name, module in model.named_modules():
        if isinstance(module, BackboneMixin) and not any(name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name, module))
    return found


def _tensors(value) -> list[torch.Tensor]:
    """The tensors in a module's output (a tensor, a tuple or list of them, a `ModelOutput`)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def front_consumers(model: nn.Module, front: list[nn.Module], example_inputs: dict) -> list[nn.Module]:
    """Every convolution or linear layer outside the `front` modules (the backbone and what a family traces with it)
    whose input is an output of a module inside them (DETR's `input_projection`, RT-DETR's `decoder_input_proj`
    convolutions), in the order the forward runs them, found by running the forward once."""
    produced: list[torch.Tensor] = []
    consumers: list[nn.Module] = []
    inside = {m for module in front for m in module.modules()}
    # Only the front modules' own outputs are kept (a list of modules runs as its members), not every inner layer's
    # activations, which at a real image size would take gigabytes.
    producers = [
        child
        for module in front
        for child in (module.children() if isinstance(module, (nn.ModuleList, nn.ModuleDict)) else [module])
    ]

    def keep_outputs(module, args, output):
        produced.extend(_tensors(output))

    def find_reader(module, args):
        if args and isinstance(args[0], torch.Tensor) and module not in consumers:
            if any(args[0] is tensor for tensor in produced):
                consumers.append(module)

    handles = [m.register_forward_hook(keep_outputs) for m in producers]
    handles += [
        m.register_forward_pre_hook(find_reader)
        for m in model.modules()
        if is_conv_or_linear(m) and m not in inside
    ]
    try:
        with torch.no_grad():
            model(**example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return consumers


def unfreeze_batch_norms(module: nn.Module) -> None:
    """Replace, in place, every frozen BatchNorm (a module whose `weight`, `bias`, `running_mean` and `running_var`
    are buffers: DETR's `DetrFrozenBatchNorm2d`) by an `nn.BatchNorm2d` in eval mode with the same values and output,
    whose channels Torch-Pruning knows how to prune."""
    for name, child in module.named_children():
        buffers = dict(child.named_buffers(recurse=False))
        if (
            not isinstance(child, nn.BatchNorm2d)
            and {"weight", "bias", "running_mean", "running_var"} <= set(buffers)
            and next(child.parameters(recurse=False), None) is None
        ):
            norm = nn.BatchNorm2d(buffers["weight"].numel(), eps=1e-5).to(buffers["weight"].device).eval()
            with torch.no_grad():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(norm, key).copy_(buffers[key])
            setattr(module, name, norm)
        else:
            unfreeze_batch_norms(child)


def _attention_roles(model: nn.Module) -> dict[tuple[str, int], tuple[str, int]]:
    """`{(tensor, dim): (group key, heads)}` for the inner width of every attention module."""
    modules = dict(model.named_modules())
    roles = {}
    for name, module in modules.items():
        head_dim = next(
            (getattr(module, a) for a in HEAD_DIM_ATTRS if isinstance(getattr(module, a, None), int)), None
        )
        children = {n: c for n, c in module.named_children() if isinstance(c, nn.Linear)}
        output_name = next((n for n in OUTPUT_PROJECTION_NAMES if n in children), None)
        projections = {n: c for n, c in children.items() if n != output_name}
        if not head_dim or not projections:
            continue
        prefix = f"{name}." if name else ""
        if output_name is not None:
            output = f"{prefix}{output_name}"
        else:
            # ViT-style layers keep the output projection beside the attention module (`attention.output.dense`).
            parent = name.rpartition(".")[0]
            output = (
                f"{parent}.output.dense"
                if isinstance(modules.get(f"{parent}.output.dense"), nn.Linear)
                else None
            )
        heads = next(iter(projections.values())).out_features // head_dim
        key = f"attention:{name}"
        for child_name in projections:
            roles[(f"{prefix}{child_name}.weight", 0)] = (key, heads)
            roles[(f"{prefix}{child_name}.bias", 0)] = (key, heads)
        if output is not None:
            roles[(f"{output}.weight", 1)] = (key, heads)
    return roles


def _deformable_attention_roles(model: nn.Module) -> dict[tuple[str, int], tuple[str, int]]:
    """`{(tensor, dim): (group key, heads)}` for the value width of every multi-scale deformable attention."""
    roles = {}
    for name, module in model.named_modules():
        heads = getattr(module, "n_heads", None)
        value, output = getattr(module, "value_proj", None), getattr(module, "output_proj", None)
        if not (isinstance(heads, int) and isinstance(value, nn.Linear) and isinstance(output, nn.Linear)):
            continue
        key = f"deformable_attention:{name}"
        roles[(f"{name}.value_proj.weight", 0)] = (key, heads)
        roles[(f"{name}.value_proj.bias", 0)] = (key, heads)
        roles[(f"{name}.output_proj.weight", 1)] = (key, heads)
    return roles


def _mlp_roles(model: nn.Module) -> dict[tuple[str, int], tuple[str, int]]:
    """`{(tensor, dim): (group key, 1)}` for the inner width of every transformer MLP."""
    modules = dict(model.named_modules())
    roles = {}
    for name, module in modules.items():
        prefix = f"{name}." if name else ""
        if isinstance(getattr(module, "fc1", None), nn.Linear) and isinstance(
            getattr(module, "fc2", None), nn.Linear
        ):
            first, second = f"{prefix}fc1", f"{prefix}fc2"
        elif isinstance(modules.get(f"{prefix}intermediate.dense"), nn.Linear) and isinstance(
            modules.get(f"{prefix}output.dense"), nn.Linear
        ):
            first, second = f"{prefix}intermediate.dense", f"{prefix}output.dense"
        else:
            continue
        key = f"mlp:{name}"
        roles[(f"{first}.weight", 0)] = (key, 1)
        roles[(f"{first}.bias", 0)] = (key, 1)
        roles[(f"{second}.weight", 1)] = (key, 1)
    # Prediction heads (DETR's box head, RT-DETR's query position head): a `layers` list of linear layers, each
    # hidden width its own group.
    for name, module in modules.items():
        layers = getattr(module, "layers", None)
        if not isinstance(layers, nn.ModuleList) or not all(isinstance(layer, nn.Linear) for layer in layers):
            continue
        for i in range(len(layers) - 1):
            first, second = f"{name}.layers.{i}", f"{name}.layers.{i + 1}"
            key = f"mlp:{first}"
            roles[(f"{first}.weight", 0)] = (key, 1)
            roles[(f"{first}.bias", 0)] = (key, 1)
            roles[(f"{second}.weight", 1)] = (key, 1)
    return roles


def width_groups(model: nn.Module, narrowed: list[tuple[str, int]]) -> dict[str, WidthGroup]:
    """Group the narrowed `(tensor, dim)` pairs of `model` by role (see the module docstring).

    Raises:
        `RuntimeError`: a narrowed dimension that has no role and not the residual width (naming it).
    """
    roles = {**_mlp_roles(model), **_attention_roles(model), **_deformable_attention_roles(model)}
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    residual_width = getattr(model.config, "d_model", None) or getattr(model.config, "hidden_size", None)
    groups: dict[str, WidthGroup] = {}
    for name, dim in narrowed:
        key, heads = roles.get((name, dim), (RESIDUAL, 1))
        copies = 1
        if (
            key == RESIDUAL
            and name.endswith(CONCATENATED_RESIDUALS)
            and shapes[name][dim] % residual_width == 0
        ):
            copies = shapes[name][dim] // residual_width
        if key == RESIDUAL and shapes[name][dim] != copies * residual_width:
            raise RuntimeError(
                f"'{name}' (dim {dim}, width {shapes[name][dim]}) narrows but is neither an attention or MLP inner "
                f"width nor the residual width {residual_width}; this architecture needs a rule in "
                "prunefuse_hf/pruning/roles.py, please report it."
            )
        group = groups.setdefault(key, WidthGroup(heads=heads))
        group.members.append((name, dim))
        if copies > 1:
            group.copies[(name, dim)] = copies
    return groups


def kept_by_magnitude(group: WidthGroup, dense_state: dict, target_shapes: dict) -> list[int]:
    """The entries a group keeps: within each head, the positions with the largest group L2 magnitude summed over
    the heads (every head keeps the same positions), as many as the narrowed config builds. A member holding several
    group widths side by side adds each copy's magnitude to the same entries."""
    name, dim = group.members[0]
    copies = group.copies.get((name, dim), 1)
    size, target = dense_state[name].shape[dim] // copies, target_shapes[name][dim] // copies
    for other, other_dim in group.members:
        other_copies = group.copies.get((other, other_dim), 1)
        sizes = (
            dense_state[other].shape[other_dim] // other_copies,
            target_shapes[other][other_dim] // other_copies,
        )
        if sizes != (size, target):
            raise RuntimeError(
                f"'{other}' (dim {other_dim}) narrows {dense_state[other].shape[other_dim]} -> "
                f"{target_shapes[other][other_dim]}, its group '{name}' {size} -> {target}; please report it."
            )
    scores = torch.zeros(size, dtype=torch.float64)
    for member, member_dim in group.members:
        tensor = dense_state[member].detach().to("cpu", torch.float64).movedim(member_dim, 0)
        member_copies = group.copies.get((member, member_dim), 1)
        scores += tensor.reshape(member_copies, size, -1).square().sum((0, 2))
    heads = group.heads
    if size % heads or target % heads:
        raise RuntimeError(
            f"'{name}': {size} -> {target} entries do not split into {heads} heads; please report it."
        )
    per_head = size // heads
    remove = (size - target) // heads
    removed = set(torch.argsort(scores.view(heads, per_head).sum(0), stable=True)[:remove].tolist())
    return [head * per_head + i for head in range(heads) for i in range(per_head) if i not in removed]


def kept_indices_by_roles(
    model: nn.Module, target_shapes: dict, planned: dict[str, dict[int, list[int]]]
) -> dict[str, dict[int, list[int]]]:
    """Kept dense indices of every narrowed dimension of `model`'s tensors that `planned` does not already hold.

    Args:
        model (`nn.Module`): The dense model.
        target_shapes (`dict[str, torch.Size]`): Shape of every tensor in the model the narrowed config builds.
        planned (`dict`): `{tensor: {dim: kept indices}}` already decided (the traced backbone).

    Returns:
        `dict[str, dict[int, list[int]]]`: `planned` completed with every other narrowed dimension.
    """
    dense_state = model.state_dict()
    narrowed = [
        (name, dim)
        for name, tensor in dense_state.items()
        for dim, (dense_size, size) in enumerate(zip(tensor.shape, target_shapes[name]))
        if dense_size != size and dim not in planned.get(name, {})
    ]
    kept = {name: dict(dims) for name, dims in planned.items()}
    for group in width_groups(model, narrowed).values():
        indices = kept_by_magnitude(group, dense_state, target_shapes)
        (first, first_dim), *_ = group.members
        width = dense_state[first].shape[first_dim] // group.copies.get((first, first_dim), 1)
        for member in group.members:
            name, dim = member
            kept.setdefault(name, {})[dim] = group.member_indices(member, indices, width)
    return kept
