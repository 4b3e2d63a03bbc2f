"""What pruning needs to know about each supported model family.

Torch-Pruning finds the coupled channel groups by tracing; what it cannot know is how a narrower
model is written down as a config of the same family. Each `FamilyAdapter` answers that (plus which
layers must keep their width), so the surrogate is a plain HF checkpoint that reloads with
`from_pretrained`. Families without an adapter are refused with an error naming them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# Input size used to trace a model whose config has no `image_size` (large enough for every
# downsampling stage of the supported families to keep a spatial extent).
DEFAULT_TRACE_IMAGE_SIZE = 64


@dataclass(frozen=True)
class FamilyAdapter:
    """How to prune one family.

    Args:
        model_type: The config's `model_type`.
        narrowed_config: Builds the surrogate's config from the dense config and the pruned model.
        ignored_layers: Modules whose widths must not change (at least the classifier's outputs).
    """

    model_type: str
    narrowed_config: Callable[[object, nn.Module], object]
    ignored_layers: Callable[[nn.Module], list[nn.Module]]


def _resnet_narrowed_config(dense_config, pruned: nn.Module):
    config = copy.deepcopy(dense_config)
    backbone = pruned.resnet
    config.embedding_size = backbone.embedder.embedder.convolution.out_channels
    # A stage's width is the output width of its last layer (basic and bottleneck layers alike); a
    # bottleneck's inner width is derived by the config (out // reduction), and Torch-Pruning's
    # floor(width * (1 - p)) keeps that relation, so the narrowed config reproduces every shape.
    config.hidden_sizes = [
        stage.layers[-1].layer[-1].convolution.out_channels for stage in backbone.encoder.stages
    ]
    return config


def _classifier_layers(model: nn.Module) -> list[nn.Module]:
    return [model.classifier]


FAMILY_ADAPTERS: dict[str, FamilyAdapter] = {
    "resnet": FamilyAdapter("resnet", _resnet_narrowed_config, _classifier_layers),
}


def get_family_adapter(config) -> FamilyAdapter:
    """The adapter for a config's family, or a `NotImplementedError` naming the family."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILY_ADAPTERS:
        raise NotImplementedError(
            f"Pruning the '{model_type}' family ({type(config).__name__}) is not supported yet. Supported "
            f"families: {sorted(FAMILY_ADAPTERS)}. Use a model of a supported family, or add a "
            "`FamilyAdapter` for this one in prunefuse_hf/architectures.py."
        )
    return FAMILY_ADAPTERS[model_type]


def example_pixel_values(
    model: nn.Module, image_size: int | None = None, batch_size: int = 1
) -> torch.Tensor:
    """A random `pixel_values` batch shaped for `model` (channels from its config), on its device."""
    config = model.config
    if image_size is None:
        image_size = getattr(config, "image_size", None) or DEFAULT_TRACE_IMAGE_SIZE
    if isinstance(image_size, (list, tuple)):
        height, width = image_size
    else:
        height = width = int(image_size)
    num_channels = getattr(config, "num_channels", 3)
    parameter = next(model.parameters())
    return torch.randn(
        batch_size, num_channels, height, width, device=parameter.device, dtype=parameter.dtype
    )
