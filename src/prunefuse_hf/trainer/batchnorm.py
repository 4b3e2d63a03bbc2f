"""BatchNorm over the global batch when several processes train: N processes train like one.

With `split_batches` each process holds 1/N of every batch; plain BatchNorm would normalize each share with its
own statistics, so N processes would train another model than one. `synced_batchnorm` swaps every BatchNorm
layer for one that normalizes with the statistics of the whole batch for the duration of a training, then puts
plain layers back (same parameters and buffers, so checkpoints stay plain HF models). On GPUs it uses torch's
`SyncBatchNorm`; torch refuses CPU tensors there, so on CPU (gloo) the same computation is done with a
differentiable all-reduce of the per-channel sums.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """
    BatchNorm whose training statistics are those of the batch across all processes of the default process group
    (the per-channel count, sum and sum of squares are all-reduced with autograd, so gradients flow across
    processes as they do in `torch.nn.SyncBatchNorm`). In eval mode, or with one process, it is plain BatchNorm.

    Args:
        num_features (`int`): Channels.
        eps, momentum, affine, track_running_stats: As in `torch.nn.BatchNorm2d`.

    Example:

    ```python
    >>> layer = GlobalBatchNorm(16)
    >>> layer(torch.randn(8, 16, 4, 4)).shape
    torch.Size([8, 16, 4, 4])
    ```
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (
            self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        ):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        count = torch.full((1,), input.numel() / input.shape[1], dtype=input.dtype, device=input.device)
        totals = _AllReduceSum.apply(torch.cat([input.sum(dims), (input * input).sum(dims), count]))
        channels = input.shape[1]
        total_count = totals[-1]
        mean = totals[:channels] / total_count
        var = (totals[channels : 2 * channels] / total_count - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (
                    self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                )
                unbiased = var * total_count / (total_count - 1).clamp_min(1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.detach())
        shape = [1, channels] + [1] * (input.dim() - 2)
        output = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        return output


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is the sum of the processes' gradients (every process's loss depends on
    every process's statistics)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


@contextlib.contextmanager
def synced_batchnorm(model: nn.Module, enabled: bool = True):
    """
    Within the block, every BatchNorm layer of `model` normalizes over the batch of all processes (torch's
    `SyncBatchNorm` on GPU, [`GlobalBatchNorm`] on CPU); the plain layers, holding the trained values, are put
    back afterwards. Nothing changes with one process or `enabled=False`.

    Args:
        model (`nn.Module`): The model about to train (modified in place, restored on exit).
        enabled (`bool`, *optional*, defaults to `True`): Whether to synchronize.

    Example:

    ```python
    >>> with synced_batchnorm(model):
    ...     trainer.train()
    ```
    """
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if not enabled or world == 1:
        yield model
        return
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
                synced = _synced_copy(child)
                setattr(parent, name, synced)
                swapped.append((parent, name, child, synced))
    try:
        yield model
    finally:
        for parent, name, original, synced in swapped:
            # The trained values go back into the original layer (same names, same tensors' shapes).
            original.load_state_dict(synced.state_dict())
            setattr(parent, name, original)


def _synced_copy(layer: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    on_gpu = layer.weight is not None and layer.weight.device.type == "cuda"
    cls = nn.SyncBatchNorm if on_gpu else GlobalBatchNorm
    synced = cls(layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats)
    tensors = [*layer.parameters(), *layer.buffers()]
    if tensors:
        synced.to(device=tensors[0].device)
    synced.load_state_dict(layer.state_dict())
    synced.train(layer.training)
    return synced


__all__ = ["GlobalBatchNorm", "synced_batchnorm"]
