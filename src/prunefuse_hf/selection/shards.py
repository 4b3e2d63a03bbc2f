"""Reductions across the processes that each hold a shard of the pool's candidates.

Shard-local selection keeps every process's memory at its own shard (features of N / num_processes
candidates, not N): strategies compute on their shard and agree through these few collectives. Every
reduction breaks ties by the smaller pool index, like the single-process strategies, so a selection
does not depend on how the pool was sharded. Without an accelerator (or with one process) every
method is the identity and nothing is communicated.
"""

from __future__ import annotations

import torch

# Pool indices travel as float64 next to the values they belong to: exact up to 2**53.
_NO_INDEX = float(2**53)


class ShardGroup:
    """The processes of an `accelerate.Accelerator`, each holding a shard of the candidates.

    Args:
        accelerator: An `accelerate.Accelerator`, or `None` for a single process.
    """

    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.num_processes = accelerator.num_processes if accelerator is not None else 1
        self.rank = accelerator.process_index if accelerator is not None else 0

    @property
    def sharded(self) -> bool:
        return self.num_processes > 1

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over the processes (returned on `tensor`'s device)."""
        if not self.sharded:
            return tensor
        from accelerate.utils import reduce

        return reduce(tensor.to(self.accelerator.device), reduction="sum").to(tensor.device)

    def argmax(self, value: float, pool_index: int | None) -> tuple[float, int, int]:
        """The largest of every process's `value` (ties: smaller `pool_index`).

        A process with no candidate passes `pool_index=None`.

        Returns:
            `(value, pool_index, owner)`: the winning value, its pool index and the rank holding it.
        """
        if pool_index is None:
            value, pool_index = float("-inf"), _NO_INDEX
        if not self.sharded:
            return value, int(pool_index), 0
        mine = torch.tensor([[value, float(pool_index)]], dtype=torch.float64, device=self.accelerator.device)
        everyone = self.accelerator.gather(mine).cpu()
        # Highest value first, then the smaller pool index (rows are in rank order).
        best = min(range(len(everyone)), key=lambda r: (-everyone[r, 0].item(), everyone[r, 1].item()))
        return everyone[best, 0].item(), int(everyone[best, 1].item()), best

    def broadcast(self, tensor: torch.Tensor, owner: int) -> torch.Tensor:
        """`owner`'s `tensor` on every process (the others pass a tensor of the same shape and dtype)."""
        if not self.sharded:
            return tensor
        from accelerate.utils import broadcast

        return broadcast(tensor.contiguous().to(self.accelerator.device), from_process=owner).to(
            tensor.device
        )

    def with_common_row_shape(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor`, or for an empty shard an empty tensor with the row shape the other processes have."""
        if not self.sharded:
            return tensor
        return _sizes_and_common_row_shape(self.accelerator, tensor)[1]

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's rows, concatenated in rank order; row counts may differ and may be zero."""
        if not self.sharded:
            return tensor
        return gather_variable_rows(self.accelerator, tensor)


def gather_variable_rows(accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """All-gather tensors whose first dimension differs between processes, without padding rows."""
    sizes, tensor = _sizes_and_common_row_shape(accelerator, tensor)
    padded = accelerator.pad_across_processes(tensor.to(accelerator.device), dim=0)
    gathered = accelerator.gather(padded).cpu()
    chunk = gathered.shape[0] // len(sizes)
    return torch.cat([gathered[i * chunk : i * chunk + size] for i, size in enumerate(sizes)])


def _sizes_and_common_row_shape(accelerator, tensor: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """Every process's row count, and `tensor` with a row shape all processes share.

    A process that holds nothing does not know the row shape (scoring nothing gives `(0, 0)`): it takes
    the shape of one that does.
    """
    from accelerate.utils import gather_object

    shapes = gather_object([(tensor.shape[0], tuple(tensor.shape[1:]))])
    sizes = [size for size, _ in shapes]
    full_shape = next((shape for size, shape in shapes if size), shapes[0][1])
    return sizes, tensor if tensor.shape[0] else tensor.new_zeros((0, *full_shape))
