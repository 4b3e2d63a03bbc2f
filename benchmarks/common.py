"""What the benchmark scripts share: the mean and sample standard deviation over seeds, and the machine's facts."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch


def mean_std(values) -> dict:
    """`{"mean", "std", "n"}` of the values that are not `None`: the sample standard deviation over seeds (0 for one
    value), `None` for both when none is left."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std, "n": len(values)}


def cpu_name() -> str:
    """The CPU's model name (`model name` in Linux's /proc/cpuinfo, e.g. "AMD EPYC"), else `platform.processor()`,
    else `platform.machine()`, else "CPU". Float kernels, and so trained weights and accuracies, differ between kinds of CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine() or "CPU"


def machine_info(device: str) -> dict:
    """The device a benchmark ran on (the GPU's name with `device="cuda"`, else the CPU's), its cores, torch's
    threads and versions."""
    name = torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else cpu_name()
    return {"device": name, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": sys.version.split()[0]}  # fmt: skip
