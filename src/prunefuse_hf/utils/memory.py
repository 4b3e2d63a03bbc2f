"""The process's memory allocator, tuned for batch after batch of same-sized tensors."""

from __future__ import annotations

import ctypes

# glibc serves large allocations with mmap and returns them to the OS when freed (mallopt(3): M_MMAP_THRESHOLD,
# which adapts as the program runs, and M_TRIM_THRESHOLD), so a batch loop can fault its multi-MB inputs and
# activations back in at every batch: score_pool measured 0.69-0.94x a bare forward pass with glibc's defaults and
# 0.96-0.99x with both thresholds fixed at 256 MiB (benchmarks/scoring.py, 2-core CPU). Setting them is what the
# MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ environment variables do at start-up.
KEEP_FREED_BYTES = 256 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(limit: int = KEEP_FREED_BYTES) -> bool:
    """
    Let glibc keep up to `limit` bytes of freed memory for reuse instead of returning it to the OS after every batch.

    The command line does this for its own process; a Python program can call it once at start (or set the
    `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` environment variables before Python starts).

    Args:
        limit (`int`, *optional*, defaults to 256 MiB): Allocations below this size come from the heap, and the
            heap keeps up to this much freed memory.

    Returns:
        `bool`: whether the allocator was tuned (`False` off glibc, e.g. on macOS or musl, where nothing changes).

    Example:

    ```python
    >>> from prunefuse_hf import keep_freed_memory
    >>> keep_freed_memory() in (True, False)
    True
    ```
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, limit))
    except (OSError, AttributeError):
        return False
