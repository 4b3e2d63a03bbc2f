"""The run's image processor: the pretrained model's own, or a PIL `ViTImageProcessor` built from the run's
size, channels, mean and std, so that `pipeline()` preprocesses as the run did."""

from __future__ import annotations

import os

import PIL.Image
from transformers import AutoImageProcessor, PreTrainedModel
from transformers.utils import logging

from ..utils.hub_ids import has_weights, hub_reachable, is_hub_id

logger = logging.get_logger(__name__)


def build_image_processor(model_config, image_processor=None, *, image_size: int | None = None, image=None):
    """
    The image processor of a run: `image_processor` when the model comes with one, else a
    `ViTImageProcessor` (PIL backend) that resizes to the run's size and normalizes with mean and std 0.5.

    Args:
        model_config ([`~transformers.PretrainedConfig`]):
            Config of the dense model (`num_channels`, and `image_size` when the family has one).
        image_processor ([`~transformers.BaseImageProcessor`], *optional*):
            The pretrained model's processor. Its own size wins over `image_size`.
        image_size (`int`, *optional*):
            Square size to resize to, without a pretrained processor. Defaults to `model_config.image_size`, else
            the size of `image`.
        image (`PIL.Image.Image`, *optional*):
            An example image of the pool, whose size is used when nothing else gives one.

    Returns:
        [`~transformers.BaseImageProcessor`]: a processor whose output has `model_config.num_channels` channels.

    Raises:
        `ValueError`: the processor normalizes another number of channels than the model takes, or no size can
            be determined.

    Example:

    ```python
    >>> from transformers import ResNetConfig
    >>> processor = build_image_processor(ResNetConfig(), image_size=32)
    >>> processor.size, processor.image_mean
    ({'height': 32, 'width': 32}, [0.5, 0.5, 0.5])
    ```
    """
    channels = model_num_channels(model_config)
    if image_processor is not None:
        mean = getattr(image_processor, "image_mean", None)
        if (
            getattr(image_processor, "do_normalize", False)
            and isinstance(mean, (list, tuple))
            and len(mean) != channels
        ):
            # Caught here because the processor's own error ("mean must have 1 elements") hides the cause.
            raise ValueError(
                f"The image processor normalizes {len(mean)} channels but the model expects {channels}; give it "
                "one `image_mean`/`image_std` value per model channel."
            )
        if image_size is not None:
            logger.warning(
                "`image_size` is ignored when the model has an image processor: the processor resizes."
            )
        return image_processor
    from transformers import ViTImageProcessorPil

    # Vision-language classifiers (CLIP, SigLIP) keep the image size in their vision config.
    vision_config = getattr(model_config, "vision_config", None) or model_config
    size = image_size or getattr(vision_config, "image_size", None)
    if size is None:
        if image is None:
            raise ValueError("No image size: set `image_size` (or give the model config an `image_size`).")
        width, height = image.size
    else:
        height = width = int(size)
    return ViTImageProcessorPil(
        size={"height": height, "width": width},
        resample=PIL.Image.Resampling.BILINEAR,
        image_mean=[0.5] * channels,
        image_std=[0.5] * channels,
    )


def model_num_channels(model_config) -> int:
    """Input channels of a model config (`num_channels`, 3 when the config has none); only 1 and 3 are supported."""
    channels = getattr(model_config, "num_channels", 3)
    if channels not in (1, 3):
        raise ValueError(f"Models with {channels} input channels are not supported (only 1 or 3).")
    return channels


def pretrained_image_processor(model):
    """
    The image processor saved with a pretrained checkpoint, when it has one.

    Args:
        model ([`~transformers.PreTrainedModel`], `str`, `os.PathLike` or anything else): A model (its
            `config._name_or_path` is looked up), a Hub id or a checkpoint directory.

    Returns:
        [`~transformers.BaseImageProcessor`] or `None`: the checkpoint's processor; `None` for a config, a directory
        without weights, or a checkpoint saved without a processor (the run then builds one from its settings).

    Example:

    ```python
    >>> pretrained_image_processor("microsoft/resnet-50").size
    {'shortest_edge': 224}
    ```
    """
    if isinstance(model, PreTrainedModel):
        source = getattr(model.config, "_name_or_path", None)
    elif isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        if os.path.isdir(source) and not has_weights(source):
            return None
    else:
        return None
    if not source:
        return None
    # Without the Hub, a Hub id's processor is read from the cache only (no network retries).
    local_only = is_hub_id(source) and not hub_reachable()
    try:
        return AutoImageProcessor.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as error:
        logger.info(f"No image processor with {source} ({error}); building one from the run's settings.")
        return None
