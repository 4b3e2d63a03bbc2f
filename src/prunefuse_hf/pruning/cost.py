"""Parameter and MAC counts of a model, for the cost ledger and the pruning report."""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass

import torch
import torch_pruning as tp
from torch import nn

from ..constants import PIXEL_VALUES
from .tracing import example_pixel_values

# A forward pass costs 2 FLOPs per multiply-accumulate; a training step about three forward passes
# (forward, then backward through activations and through weights).
FORWARD_FLOPS_PER_MAC = 2
TRAIN_FLOPS_PER_MAC = 6


@dataclass(frozen=True)
class ModelCost:
    """Size and per-example forward cost of a model at one input size.

    Args:
        params: Number of parameters.
        macs: Multiply-accumulates of one forward pass on one example.
    """

    params: int
    macs: int

    def to_dict(self) -> dict:
        return asdict(self)


def model_cost(model: nn.Module, image_size: int | None = None) -> ModelCost:
    """Count parameters and per-example forward MACs of `model` on `image_size` inputs.

    The model's train/eval mode and BatchNorm statistics are left as they were.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs = {PIXEL_VALUES: example_pixel_values(model, image_size)}
            # Torch-Pruning prints shape warnings while counting; library code must not print.
            with contextlib.redirect_stdout(io.StringIO()):
                macs, params = tp.utils.count_ops_and_params(model, inputs)
    finally:
        model.train(was_training)
    return ModelCost(params=int(params), macs=int(macs))
