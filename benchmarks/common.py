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


def cpu_name(cpuinfo: str | None = None) -> str:
    """The kind of CPU, as precisely as float kernels need: the model name (`model name` in Linux's /proc/cpuinfo, else
    `platform.processor()`, else `platform.machine()`), with its family and model numbers where /proc/cpuinfo has them
    and the vector instructions torch dispatches to (`torch.backends.cpu.get_cpu_capability()`), e.g.
    "AMD EPYC (family 25, model 1, AVX2)". A virtual machine's model name alone can be one string for several
    generations ("AMD EPYC"), whose float kernels, and so trained weights and accuracies, differ.

    Args:
        cpuinfo (`str`, *optional*): the text of /proc/cpuinfo, read when `None` ("" where there is none).

    Returns:
        `str`: the model name, then the family and model numbers and torch's CPU capability in parentheses.

    Example:
        >>> cpu_name("model name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 1\n")  # doctest: +SKIP
        'AMD EPYC (family 25, model 1, AVX2)'
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine() or "CPU"
    parts = [
        f"{label} {fields[key]}"
        for key, label in (("cpu family", "family"), ("model", "model"))
        if fields.get(key)
    ]
    return f"{name} ({', '.join([*parts, torch.backends.cpu.get_cpu_capability()])})"


def machine_info(device: str) -> dict:
    """The device a benchmark ran on (the GPU's name with `device="cuda"`, else the CPU's), its cores, torch's
    threads and versions."""
    name = torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else cpu_name()
    return {"device": name, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": sys.version.split()[0]}  # fmt: skip
