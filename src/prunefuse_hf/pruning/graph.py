"""Building Torch-Pruning's dependency graph for any HF image classifier (the general pruning path).

Everything here is found by attribute and name, never by module path, so it follows the modeling code of the
installed transformers (and timm): which linear layers are split into attention heads, which parameters are not
channels (per-head or per-position tables), which modules are the classifier, and which parameters Torch-Pruning
has no pruner for (tokens, position tables, layer scales). It also holds three work-arounds for Torch-Pruning
1.6 graph bugs that HF vision models meet, applied only while the general path builds a graph.

Torch-Pruning: G. Fang, X. Ma, M. Song, M. Bi Mi, X. Wang, "DepGraph: Towards Any Structural Pruning",
CVPR 2023 (https://github.com/VainF/Torch-Pruning).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import constants as tp_constants
from torch_pruning.dependency import index_mapping as tp_index_mapping
from torch_pruning.dependency import shape_infer as tp_shape_infer

# Attributes holding an attention module's head count, and the names of its query/key/value projections.
HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads")
QKV_NAMES = ("query", "key", "value", "q_proj", "k_proj", "v_proj", "q", "k", "v", "qkv", "kv", "key_value")
# Fused projections and how many of q/k/v they hold.
FUSED_QKV = {"qkv": 3, "kv": 2, "key_value": 2}
# Attention attributes the forward reads: head dim, scale, heads x head_dim, and the residual (input) width.
HEAD_DIM_ATTRS = ("attention_head_size", "head_dim")
SCALE_ATTRS = ("scale", "scaling")
WIDTH_ATTRS = ("all_head_size", "attn_dim", "inner_dim")
RESIDUAL_ATTRS = ("embed_dim", "hidden_size")
# Parameters outside Conv/Linear/Norm modules whose last dimension is not a channel: per-head or per-position
# tables and scalars (BEiT/Swin relative position bias tables, Swin V2 logit scale, LeViT attention biases).
NON_CHANNEL_PARAMS = (
    "relative_position_bias_table",
    "logit_scale",
    "attention_biases",
    "attention_bias_idxs",
)
# Modules that turn positions into one bias per head (Swin V2's continuous position bias MLP): kept whole.
PER_HEAD_MODULES = ("continuous_position_bias_mlp", "cpb_mlp")
# Modules Torch-Pruning prunes through the module; any other parameter is "unwrapped" (channel dim = last).
WRAPPED_MODULES = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.MultiheadAttention,
    nn.PReLU,
    nn.Embedding,
)
CLASSIFIER_NAMES = ("classifier", "head", "heads", "fc")


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose outputs are the class logits (their outputs are never pruned, their inputs are)."""
    if hasattr(model, "timm_model"):
        return [model.timm_model.get_classifier()]
    layers = [
        getattr(model, name) for name in CLASSIFIER_NAMES if isinstance(getattr(model, name, None), nn.Module)
    ]
    if not layers:
        # Segmentation heads hold their per-pixel classifiers inside (`decode_head.classifier`,
        # `auxiliary_head.classifier`, `segmentation_head.classifier`).
        layers = [module for name, module in model.named_modules() if name.rsplit(".", 1)[-1] == "classifier"]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no classifier module ({', '.join(CLASSIFIER_NAMES)}), so its class "
            "outputs cannot be told apart from prunable widths; use pruning_ratio=0 for this model."
        )
    return layers


def attention_modules(model: nn.Module):
    """`(module, head count, children, first q/k/v projection)` for every attention module with linear q/k/v."""
    for module in model.modules():
        count = next(
            (getattr(module, a) for a in HEAD_COUNT_ATTRS if isinstance(getattr(module, a, None), int)), None
        )
        if not count:
            continue
        children = dict(module.named_children())
        projection = next((children[n] for n in QKV_NAMES if isinstance(children.get(n), nn.Linear)), None)
        if projection is not None:
            yield module, count, children, projection


def head_projections(model: nn.Module) -> dict[nn.Linear, int]:
    """`{q/k/v (or fused qkv) projection: head count}`; a fused qkv gets the head count, Torch-Pruning splits
    its 3 x heads x head_dim output itself."""
    heads = {}
    for _, count, children, _ in attention_modules(model):
        for name, child in children.items():
            if name in QKV_NAMES and isinstance(child, nn.Linear):
                heads[child] = count
    return heads


def head_dim_projections(model: nn.Module) -> dict[nn.Linear, int]:
    """`{q/k/v projection: head count}` of the attention modules that store only their head dimension (RT-DETR's
    self-attention: `head_dim`, no head count), the head count being the projection's width over it."""
    heads = {}
    for module in model.modules():
        head_dim = next(
            (getattr(module, a) for a in HEAD_DIM_ATTRS if isinstance(getattr(module, a, None), int)), None
        )
        if not head_dim or any(isinstance(getattr(module, a, None), int) for a in HEAD_COUNT_ATTRS):
            continue
        for name, child in module.named_children():
            if name in QKV_NAMES and isinstance(child, nn.Linear) and child.out_features % head_dim == 0:
                heads[child] = child.out_features // head_dim
    return heads


def uncalled_embeddings(model: nn.Module, example_inputs: dict) -> set[nn.Module]:
    """`nn.Embedding`s whose forward never runs: their table is read as `.weight` (SigLIP 2 interpolates its
    position table), so Torch-Pruning must see the weight as an unwrapped parameter."""
    called = set()
    handles = [
        m.register_forward_hook(lambda m, a, o: called.add(m))
        for m in model.modules()
        if isinstance(m, nn.Embedding)
    ]
    try:
        with torch.no_grad():
            model(**example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {m for m in model.modules() if isinstance(m, nn.Embedding) and m not in called}


def unwrapped_parameters(model: nn.Module, uncalled: set) -> list[tuple[nn.Parameter, int]]:
    """Parameters Torch-Pruning has no module pruner for, each with its channel dimension (the last):
    class/register tokens, position tables, layer scales, GRN, an uncalled embedding's table."""
    found = []
    for module in model.modules():
        if isinstance(module, WRAPPED_MODULES) and module not in uncalled:
            continue
        for name, parameter in module.named_parameters(recurse=False):
            if parameter.ndim > 0 and name not in NON_CHANNEL_PARAMS:
                found.append((parameter, parameter.ndim - 1))
    return found


def non_channel_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in NON_CHANNEL_PARAMS]


def per_head_modules(model: nn.Module) -> list[nn.Module]:
    return [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in PER_HEAD_MODULES]


def attention_attributes(model: nn.Module) -> dict[int, dict]:
    """The attention attributes before pruning, so `fix_attention_attributes` knows which scale follows the
    head dim."""
    names = HEAD_DIM_ATTRS + SCALE_ATTRS + WIDTH_ATTRS + RESIDUAL_ATTRS
    return {
        id(module): {a: getattr(module, a) for a in names if hasattr(module, a)}
        for module, *_ in attention_modules(model)
    }


def fix_attention_attributes(model: nn.Module, before: dict[int, dict]) -> None:
    """After the head dimensions were pruned (head count kept), set what the forward reads from the module.

    Without this the forward of modeling code that reshapes with `view(..., -1, self.head_dim)` still runs, with
    twice the heads of mixed dimensions: silently wrong.
    """
    for module, count, children, projection in attention_modules(model):
        old = before.get(id(module), {})
        fused = next((FUSED_QKV[n] for n in FUSED_QKV if children.get(n) is projection), 1)
        width = projection.out_features // fused
        if width % count:
            raise RuntimeError(
                f"{type(module).__name__}: {width} dimensions do not split into {count} heads."
            )
        head_dim = width // count
        for attr in HEAD_DIM_ATTRS:
            if attr in old:
                setattr(module, attr, head_dim)
        for attr in WIDTH_ATTRS:
            if attr in old:
                setattr(module, attr, width)
        for attr in RESIDUAL_ATTRS:
            if attr in old and isinstance(old[attr], int):
                setattr(module, attr, projection.in_features)
        old_head_dim = next((old[a] for a in HEAD_DIM_ATTRS if a in old), None)
        for attr in SCALE_ATTRS:
            value = old.get(attr)
            # Only a 1/sqrt(head_dim) scale follows the head dim (LeViT's key_dim-based scale is left alone).
            if isinstance(value, float) and old_head_dim and math.isclose(value, old_head_dim**-0.5):
                setattr(module, attr, head_dim**-0.5)


def logits_and_leaves(model: nn.Module, inputs: dict) -> list[torch.Tensor]:
    """The forward Torch-Pruning traces: the logits plus the output of every leaf module that owns parameters.

    With the logits alone, a module that runs but does not feed them (CLIP's `post_layernorm` on the pooled
    token, SigLIP's attention-pooling head when the classifier mean-pools) is left out of the graph and keeps
    its dense width on a narrowed input. Per-head bias generators are detached, so the (batch, heads, N, N)
    score tensor's head axis is not coupled with the q/k channels.
    """
    captured = []

    def capture(module, args, output):
        captured.extend(
            t for t in tp.utils.flatten_as_list(output) if isinstance(t, torch.Tensor) and t.requires_grad
        )

    handles = [m.register_forward_hook(lambda m, a, o: o.detach()) for m in per_head_modules(model)]
    handles += [
        m.register_forward_hook(capture)
        for m in model.modules()
        if next(m.children(), None) is None and next(m.parameters(recurse=False), None) is not None
    ]
    try:
        logits = model(**inputs).logits
    finally:
        for handle in handles:
            handle.remove()
    return [logits, *captured]


def modules_feeding_split(graph) -> list[nn.Module]:
    """Conv/linear layers whose output is split or unbound (MobileViT V2's `[1, d, d]` qkv, LeViT's per-head
    q/k/v split): their outputs are not one homogeneous width, so the fallback keeps them dense."""
    found = []
    for node in graph.module2node.values():
        if node.type not in (tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.UNBIND):
            continue
        stack, seen = list(node.inputs), set()
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            if isinstance(current.module, (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)):
                found.append(current.module)
            else:
                stack.extend(current.inputs)
    return found


def pass_channels_through(node) -> None:
    """Retype a slice node as element-wise, so that it passes every channel index through (and Torch-Pruning does
    not re-install the slice's index mapping before each group)."""
    node.type = tp.ops.OPTYPE.ELEMENTWISE
    for dep in node.dependencies:
        if dep.target in node.inputs:
            dep.index_mapping[0] = None
    for source in node.inputs:
        for dep in source.dependencies:
            if dep.target is node:
                dep.index_mapping[0] = None


def unmap_channels_last_slices(graph, *, channels_last: bool = False) -> None:
    """Make spatial slices of (batch, height, width, channels) tensors leave channel indices alone.

    Torch-Pruning reads a slice of dim 1 of a 4-d tensor as a channel slice (right for NCHW); Swin's patch
    merging slices rows and columns of channels-last tensors, and its 4 x C concatenation would then be only
    partly pruned. Both pruning paths use this rule.

    Args:
        graph (`torch_pruning.DependencyGraph`): The built graph, changed in place.
        channels_last (`bool`, *optional*, defaults to `False`): The model is known to hold channels last (a
            `FamilyAdapter` says so): every slice not along the last dim is spatial. Otherwise (the general path)
            a dim-1 slice of a 4-d tensor is spatial when dim 1 differs from the producer's channel count and the
            last dim equals it (blind when height == channels).
    """
    for node in graph.module2node.values():
        if node.type != tp.ops.OPTYPE.SLICE:
            continue
        sizes = list(node.grad_fn._saved_self_sym_sizes)
        if channels_last:
            spatial = node.module.dim % len(sizes) != len(sizes) - 1
        else:
            spatial = _is_spatial_dim1_slice(graph, node, sizes)
        if spatial:
            pass_channels_through(node)


def _is_spatial_dim1_slice(graph, node, sizes: list) -> bool:
    if len(sizes) != 4 or node.module.dim % 4 != 1:
        return False
    channels = None
    for source in node.inputs:
        channels = tp_shape_infer.infer_out_channels_recursively(graph, source, [0])
        if channels is not None:
            break
    return channels is not None and int(sizes[1]) != channels and int(sizes[-1]) == channels


def _update_concat_index_mapping(graph, cat_node) -> None:
    """Torch-Pruning's concat index mapping, with two fixes.

    Torch-Pruning maps only the first dependency between the concat and each input (a `break`), and turns the
    mapping off for every concat downstream of a 3-d unwrapped parameter (to protect the token concat
    `cat([cls, patches], dim=1)`). Both break DINOv2's classifier input `cat([cls, patch_mean], dim=-1)`, which
    then loses channels of one half only. Here every matching dependency is mapped and the flag is ignored; the
    size check (output width = sum of the inputs) already skips the token concat.
    """
    if cat_node.type != tp.ops.OPTYPE.CONCAT:
        return
    dim = getattr(cat_node.grad_fn, "_saved_dim", 1)
    if dim != 1 and dim < tp_constants.MAX_VALID_DIM:
        return
    if cat_node.module.concat_sizes is not None:
        sizes = cat_node.module.concat_sizes
    else:
        sizes = [tp_shape_infer.infer_channels_between(graph, n, cat_node) for n in cat_node.inputs]
        cat_node.module.concat_sizes = sizes
    out_size = tp_shape_infer.infer_in_channels_recursively(graph, cat_node, recursive_depth=[0])
    if out_size is not None and out_size != sum(s or 0 for s in sizes):
        return
    offsets = [0]
    for size in sizes:
        if size is None:
            return
        offsets.append(offsets[-1] + size)
    cat_node.module.offsets = offsets
    for i, in_node in enumerate(cat_node.inputs):
        for dep in cat_node.dependencies:
            if dep.target == in_node:
                dep.index_mapping[1] = tp_index_mapping._ConcatIndexMapping(
                    offset=offsets[i : i + 2], reverse=True
                )
        for dep in in_node.dependencies:
            if dep.target == cat_node:
                dep.index_mapping[1] = tp_index_mapping._ConcatIndexMapping(
                    offset=offsets[i : i + 2], reverse=False
                )


@contextlib.contextmanager
def patched_torch_pruning():
    """Use the fixed concat index mapping while the general path builds and prunes a graph (restored after)."""
    original = tp_index_mapping.update_concat_index_mapping
    tp_index_mapping.update_concat_index_mapping = _update_concat_index_mapping
    try:
        yield
    finally:
        tp_index_mapping.update_concat_index_mapping = original


def build_pruner(model: nn.Module, example_inputs: dict, ratio: float, *, attention_outputs_dense: bool):
    """Torch-Pruning's `BasePruner` for `model`, set up the same way for pruning and for every replay.

    Group L2 magnitude (`GroupMagnitudeImportance(p=2)`), the same ratio for every group, head dimensions
    pruned with the head count kept (every head loses the same positions), the classifier's outputs and the
    non-channel tables kept. With `attention_outputs_dense` the attention projections' outputs and every layer
    whose output is split stay dense (the fallback for attention Torch-Pruning cannot split into heads).
    Must be called inside `patched_torch_pruning()`.
    """
    heads = head_projections(model)
    ignored = [m for layer in classifier_layers(model) for m in layer.modules()]
    ignored += [sub for m in per_head_modules(model) for sub in m.modules()]
    uncalled = uncalled_embeddings(model, example_inputs)
    if attention_outputs_dense:
        graph = tp.DependencyGraph().build_dependency(
            model,
            example_inputs,
            forward_fn=logits_and_leaves,
            unwrapped_parameters=unwrapped_parameters(model, uncalled),
            verbose=False,
        )
        ignored += list(heads) + modules_feeding_split(graph)
        heads = {}
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs=example_inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        global_pruning=False,
        # Parameters in ignored_layers become the graph's ignored parameters (BasePruner has no other way).
        ignored_layers=ignored + non_channel_parameters(model),
        num_heads=heads,
        prune_num_heads=False,
        prune_head_dims=True,
        unwrapped_parameters=unwrapped_parameters(model, uncalled),
        forward_fn=logits_and_leaves,
    )
    unmap_channels_last_slices(pruner.DG)
    # Torch-Pruning names only the unwrapped parameters it found itself; `group.prune()` needs every name.
    for name, parameter in model.named_parameters():
        pruner.DG._param_to_name.setdefault(parameter, name)
    return pruner
