"""A one-channel (gray) image classifier as a pipeline-ready RGB checkpoint.

`pipeline("image-classification")` converts every image to RGB, so a model built with `num_channels: 1` (and its
processor, which normalizes one channel) fails there ("mean must have 1 elements"). The same model reads RGB
exactly when its input convolution takes three channels weighted by PIL's gray conversion (L = 0.299 R + 0.587 G +
0.114 B, weights that sum to 1) and the processor repeats its mean and std: on a gray image (R = G = B) the
widened convolution computes the gray model's numbers, and on a color image it sees the image's gray conversion,
as the run did.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification
from transformers.utils import logging

logger = logging.get_logger(__name__)

# ITU-R 601-2 luma, PIL's `convert("L")`.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def export_rgb_checkpoint(checkpoint: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """
    Write a pipeline-ready RGB copy of a one-channel image-classification checkpoint.

    Args:
        checkpoint (`str` or `os.PathLike`): A checkpoint directory with `num_channels: 1` and its processor.
        output_dir (`str` or `os.PathLike`): Where the RGB checkpoint (weights, config, processor) goes.

    Returns:
        `Path`: `output_dir`.

    Raises:
        `ValueError`: the checkpoint does not take one channel, or its input is not one convolution.

    Example:

    ```python
    >>> from transformers import pipeline
    >>> export_rgb_checkpoint("runs/gray/fused", "gray-model-rgb")
    >>> pipeline("image-classification", model="gray-model-rgb")(image)[0]["label"]
    ```
    """
    config = AutoConfig.from_pretrained(checkpoint)
    if getattr(config, "num_channels", 3) != 1:
        raise ValueError(
            f"{checkpoint} takes {getattr(config, 'num_channels', 3)} channels, not 1: it is already RGB."
        )
    gray = AutoModelForImageClassification.from_pretrained(checkpoint)
    rgb_config = copy.deepcopy(config)
    rgb_config.num_channels = 3
    rgb = type(gray)(rgb_config)  # the checkpoint's own class (a family may map to several)
    state, widened = gray.state_dict(), []
    for name, target in rgb.state_dict().items():
        source = state[name]
        if source.shape != target.shape:
            if source.dim() != 4 or source.shape[1] != 1 or target.shape[1] != 3 or widened:
                raise ValueError(
                    f"Cannot widen {name} of {checkpoint} from {tuple(source.shape)} to 3 channels."
                )
            weights = torch.tensor(GRAY_WEIGHTS, dtype=source.dtype).view(1, 3, 1, 1)
            state[name] = source * weights
            widened.append(name)
    if len(widened) != 1:
        raise ValueError(f"{checkpoint} has no single one-channel input convolution to widen.")
    rgb.load_state_dict(state)
    output_dir = Path(output_dir)
    rgb.save_pretrained(output_dir)
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    for field in ("image_mean", "image_std"):
        values = getattr(processor, field, None)
        if isinstance(values, (list, tuple)) and len(values) == 1:
            setattr(processor, field, list(values) * 3)
    processor.save_pretrained(output_dir)
    logger.info(
        f"Wrote a pipeline-ready RGB copy of {checkpoint} to {output_dir} (input {widened[0]} widened)."
    )
    return output_dir
