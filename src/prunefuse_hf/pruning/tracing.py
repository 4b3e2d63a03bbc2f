"""The inputs a model is traced with: the size it is built for, a random `pixel_values` batch for the narrowed-config
path and the cost counts, and the JSON spec (shapes and integer values) the general path stores in its plan so that
a replay traces the same shapes.

Both pruning paths and `model_cost` take their input size from here, so they agree on it. This module needs only
torch (no Torch-Pruning), so the commands that only read an input size stay light.
"""

from __future__ import annotations

import torch
from torch import nn

from ..constants import PIXEL_VALUES

# Input size used to trace a model whose config has no `image_size` (large enough for every
# downsampling stage of the supported families to keep a spatial extent).
DEFAULT_TRACE_IMAGE_SIZE = 64
# Batch size of the inputs the general path traces with (stored in its plan with their shapes).
TRACE_BATCH_SIZE = 2


def _vision_config(model: nn.Module):
    # CLIP and SigLIP keep the image fields in a vision sub-config.
    return getattr(model.config, "vision_config", None) or model.config


def model_image_size(model: nn.Module) -> int | tuple[int, int] | None:
    """The input size a model is built for: its config's `image_size` (the vision config's for CLIP and SigLIP), or
    for a timm model the size its patch embedding was built for, else its pretrained config's; `None` when none."""
    size = getattr(_vision_config(model), "image_size", None)
    timm_model = getattr(model, "timm_model", None)
    if size is None and timm_model is not None:
        size = getattr(getattr(timm_model, "patch_embed", None), "img_size", None)
        size = size or (getattr(timm_model, "pretrained_cfg", None) or {}).get("input_size", (None,))[-1]
    return tuple(size) if isinstance(size, (list, tuple)) else size


def _default_trace_size(model: nn.Module) -> int:
    """`DEFAULT_TRACE_IMAGE_SIZE`, or for a detector that keeps its `num_queries` best encoder positions (RT-DETR: one
    per position of its `feat_strides` maps) the smallest multiple of its largest stride, from that size up, with as
    many positions: a smaller image has fewer positions than queries and its forward fails."""
    strides, queries = getattr(model.config, "feat_strides", None), getattr(model.config, "num_queries", None)
    size = DEFAULT_TRACE_IMAGE_SIZE
    if not strides or not isinstance(queries, int):
        return size
    size += -size % max(strides)
    while sum((size // stride) ** 2 for stride in strides) < queries:
        size += max(strides)
    return size


def trace_image_size(model: nn.Module, image_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
    """`(height, width)` a model is traced at: `image_size` when given, else the size it is built for
    (`model_image_size`), else `DEFAULT_TRACE_IMAGE_SIZE` (for RT-DETR large enough for its queries)."""
    if image_size is None:
        image_size = model_image_size(model) or _default_trace_size(model)
    if isinstance(image_size, (list, tuple)):
        height, width = image_size
        return height, width
    return int(image_size), int(image_size)


def example_pixel_values(
    model: nn.Module, image_size: int | None = None, batch_size: int = 1
) -> torch.Tensor:
    """A random `pixel_values` batch shaped for `model` (channels from its config), on its device."""
    height, width = trace_image_size(model, image_size)
    num_channels = getattr(_vision_config(model), "num_channels", 3)
    parameter = next(model.parameters())
    return torch.randn(
        batch_size, num_channels, height, width, device=parameter.device, dtype=parameter.dtype
    )


def example_inputs_for(model: nn.Module, example_inputs: dict | torch.Tensor | None = None) -> dict:
    """The keyword inputs to trace `model` with: `example_inputs` as given (a tensor becomes `pixel_values`), or
    a random batch of one from `example_pixel_values`."""
    if example_inputs is None:
        return {PIXEL_VALUES: example_pixel_values(model)}
    if isinstance(example_inputs, torch.Tensor):
        return {PIXEL_VALUES: example_inputs}
    return example_inputs


def trace_inputs(model: nn.Module) -> dict:
    """The shapes (and integer values) of the inputs the general path traces `model` with, as JSON.

    The replay must trace the same shapes (SigLIP 2's NaFlex grid included), so they are stored in the plan.
    """
    config = model.config
    vision = _vision_config(model)
    height, width = trace_image_size(model)
    channels = getattr(vision, "num_channels", 3)
    if config.model_type == "siglip2":
        # NaFlex: pixel_values are patches (batch, patches, channels * patch * patch), with a mask and the grid.
        patch = vision.patch_size
        grid = (height // patch, width // patch)
        return {
            PIXEL_VALUES: {"shape": [TRACE_BATCH_SIZE, grid[0] * grid[1], channels * patch * patch]},
            "pixel_attention_mask": {"values": [[1] * (grid[0] * grid[1])] * TRACE_BATCH_SIZE},
            "spatial_shapes": {"values": [list(grid)] * TRACE_BATCH_SIZE},
        }
    return {PIXEL_VALUES: {"shape": [TRACE_BATCH_SIZE, channels, int(height), int(width)]}}


def materialize_inputs(spec: dict, like: nn.Module, dtype: torch.dtype | None = None) -> dict:
    """Tensors for a `trace_inputs` spec, on `like`'s device (random floats: the graph depends on shapes only)."""
    parameter = next(like.parameters())
    generator = torch.Generator().manual_seed(0)
    inputs = {}
    for name, entry in spec.items():
        if "values" in entry:
            inputs[name] = torch.tensor(entry["values"], device=parameter.device)
        else:
            inputs[name] = torch.randn(entry["shape"], generator=generator).to(
                device=parameter.device, dtype=dtype or parameter.dtype
            )
    return inputs
