"""From images to model inputs, decoded once.

One image processor describes the whole preprocessing of a run: the pretrained model's own, or one built
from the run's settings (size, channels, mean and std 0.5). It is split in two halves:

- **geometry** (decode, channel mode, resize / crop) turns every image into `uint8` pixels of the model's
  size and channel count. It runs once per run, on every core: the pixels are stored with `datasets` (Arrow
  files, memory-mapped, keyed by the pool's fingerprint, the processor and the format: raw, or JPEG / PNG for
  large pools, see `pixel_cache.py`; built by `pixel_cache_build.py`), so every scoring pass, every training epoch
  and every evaluation reads them instead of decoding the original files again, and a second run or a resume reuses
  them. Decoding every image up front is also where damaged files are found, before any training, with the file
  named in the error. [`PixelDataset`] (`pixel_dataset.py`) reads them a batch at a time.
- **normalization** (rescale, mean / std, training augmentation) runs on tensors, on the device, batch by batch.

The two halves give exactly the processor's own output (tested), and the processor is saved with every
checkpoint, so `pipeline("image-classification", model=...)` preprocesses like the run did.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import datasets
import torch

from ..constants import PIXEL_VALUES
from .images import open_image, to_model_mode
from .pixel_cache_build import build_pixel_dataset
from .pixel_formats import JPEG_QUALITY

# Bump when the way pixels are computed changes: it is part of every cache file's key. 2: formats, descriptions.
PIXEL_CACHE_VERSION = "2"
AUGMENT_PADDING = 4


@dataclass
class ImagePreprocessor:
    """
    The run's preprocessing, split into `uint8` geometry (decode, channel mode, resize / crop: done once) and
    normalization on tensors (rescale, mean / std, augmentation: done per batch, on the device).

    Args:
        image_processor ([`~transformers.BaseImageProcessor`]):
            The processor both halves reproduce (see [`build_image_processor`]).
        num_channels (`int`):
            Channels of the model's input (1 or 3); images are converted to "L" or "RGB" first.
        image_column (`str`, *optional*, defaults to `"image"`):
            Column holding the images.
        augment (`bool`, *optional*, defaults to `False`):
            Random crop (4-pixel zero padding) and horizontal flip of training batches.
        uniform_size (`tuple[int, int]`, *optional*):
            `(width, height)` every image must have. Set when the processor's size was taken from the first image
            (nothing else gave one), so that a pool of mixed sizes is refused instead of silently resized.

    Example:

    ```python
    >>> import datasets
    >>> from PIL import Image
    >>> from transformers import ResNetConfig
    >>> from prunefuse_hf.data import ImagePreprocessor, build_image_processor
    >>> pool = datasets.Dataset.from_dict({"image": [Image.new("L", (28, 28), 255)] * 8})
    >>> preprocessor = ImagePreprocessor(build_image_processor(ResNetConfig(), image_size=32), num_channels=3)
    >>> pixels = preprocessor.pixel_dataset(pool, cache=False)  # uint8 [N, 3, 32, 32] (cached by default)
    >>> batch = pixels[:8]["pixel_values"]
    >>> batch.dtype, tuple(batch.shape)
    (torch.uint8, (8, 3, 32, 32))
    >>> preprocessor.normalize(batch).dtype                     # what the model reads
    torch.float32
    ```
    """

    image_processor: object
    num_channels: int
    image_column: str = "image"
    augment: bool = False
    uniform_size: tuple[int, int] | None = None

    def __post_init__(self):
        processor = self.image_processor
        self.rescale_factor = (
            float(processor.rescale_factor) if getattr(processor, "do_rescale", False) else None
        )
        normalize = getattr(processor, "do_normalize", False)
        mean = processor.image_mean if normalize else None
        std = processor.image_std if normalize else None
        self._mean = (
            None if mean is None else torch.tensor(_per_channel(mean, self.num_channels)).view(-1, 1, 1)
        )
        self._std = None if std is None else torch.tensor(_per_channel(std, self.num_channels)).view(-1, 1, 1)

    # ----- geometry: images -> uint8 pixels -----

    def to_pixels(self, images: list, pool_indices=None) -> torch.Tensor:
        """
        Decode `images` (as stored in a dataset column: PIL images, `{"path", "bytes"}` dicts or arrays) and apply
        the processor's geometry.

        Args:
            images (`list`): The images.
            pool_indices (`list[int]`, *optional*): Their pool indices, named in decoding errors.

        Returns:
            `torch.Tensor`: `uint8` pixels of shape `[B, C, H, W]`.

        Raises:
            [`~prunefuse_hf.data.ImageDecodeError`]: an image cannot be decoded (the file is named).
        """
        if pool_indices is None:
            pool_indices = [None] * len(images)
        mode_images = []
        for image, index in zip(images, pool_indices):
            decoded = open_image(image, pool_index=index)
            if self.uniform_size is not None and decoded.size != tuple(self.uniform_size):
                where = f" (pool index {index})" if index is not None else ""
                raise ValueError(
                    f"The images have different sizes: {decoded.size[0]}×{decoded.size[1]}{where} but the first is "
                    f"{self.uniform_size[0]}×{self.uniform_size[1]}. Set image_size to resize them all to one size."
                )
            mode_images.append(to_model_mode(decoded, self.num_channels))
        pixels = self.image_processor(mode_images, do_rescale=False, do_normalize=False, return_tensors="pt")[
            PIXEL_VALUES
        ]
        if pixels.dtype != torch.uint8:
            if not torch.equal(pixels, pixels.round()) or pixels.min() < 0 or pixels.max() > 255:
                raise ValueError(
                    f"{type(self.image_processor).__name__} resizes in floating point, so its geometry is not "
                    "uint8 pixels; use a processor with the PIL backend."
                )
            pixels = pixels.to(torch.uint8)
        return pixels

    def pixel_dataset(
        self,
        dataset: datasets.Dataset,
        *,
        cache: bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        cache_format: str = "auto",
        num_proc: int | None = None,
        validate: bool = True,
        desc: str = "Decoding images",
        max_size: int | str | None = None,
        create_cache: bool = True,
    ) -> datasets.Dataset:
        """
        `dataset` as `uint8` pixels (column `pixel_values`), row for row.

        With the cache, every image is decoded now by `num_proc` processes (which is also where a damaged file is
        found, named) and the pixels are written to Arrow files named after the dataset's fingerprint, this
        preprocessing and the format (see [`~prunefuse_hf.data.pixel_cache`]); the same dataset and preprocessing
        read them again instead of decoding, whatever `num_proc` built them. The size and the build time are
        estimated from a timed sample of decodes and logged before the build starts. Without the cache, images
        are decoded when a batch is read, and a log line says what that costs per pass. The cache folder is kept
        under `max_size`: least recently used caches are removed (and named in the log) before and after a build.

        Args:
            dataset (`datasets.Dataset`): The images.
            cache (`bool`, *optional*): Whether to store the pixels. `None` stores them when they take at most half
                of the free disk space.
            cache_dir (`str` or `os.PathLike`, *optional*): Where cache files go. Defaults to
                `$PRUNEFUSE_PIXEL_CACHE`, else `prunefuse_hf/` in the `datasets` cache.
            cache_format (`str`, *optional*, defaults to `"auto"`): `"raw"`, `"jpeg"`, `"png"` or `"auto"` (raw up
                to 10 GB, JPEG beyond; see [`~prunefuse_hf.data.pixel_cache`]). JPEG pixels differ from the
                processor's by a few levels; the others are exact.
            num_proc (`int`, *optional*): Processes that build the cache (`datasets.map`'s `num_proc`). Defaults to
                the usable cores, one per 1,024 images at most.
            validate (`bool`, *optional*, defaults to `True`): Without the cache, still decode every image once now
                (a streamed pass with a progress bar), so that a damaged file is reported before any work.
            desc (`str`, *optional*): Progress bar label.
            max_size (`int` or `str`, *optional*): The cap on the cache folder (`"50GB"`, bytes, or `"none"`).
                Defaults to `$PRUNEFUSE_PIXEL_CACHE_MAX_SIZE`, else 50 GB. With `cache` unset, a dataset whose
                pixels alone exceed it is not cached.
            create_cache (`bool`, *optional*, defaults to `True`): Whether to build a missing cache. `False` reads a
                complete cache of this dataset when one exists (the pool's, say) and otherwise decodes the images as
                batches are read, writing nothing and decoding nothing now (a one-pass `predict()`).

        Returns:
            `datasets.Dataset`: rows `{"pixel_values": uint8 [C, H, W]}`: numpy arrays from a raw cache, tensors
            otherwise (JPEG/PNG and uncached pixels are decoded by a `datasets` transform when read);
            [`PixelDataset`] reads any of them as tensors.

        Raises:
            [`~prunefuse_hf.data.ImageDecodeError`]: with the cache, an image cannot be decoded.
            `ValueError`: `cache_format` or `num_proc` is not valid.
        """
        return build_pixel_dataset(
            self,
            dataset,
            cache=cache,
            cache_dir=cache_dir,
            cache_format=cache_format,
            num_proc=num_proc,
            validate=validate,
            desc=desc,
            max_size=max_size,
            create_cache=create_cache,
        )

    def output_shape(self, images: datasets.Dataset) -> tuple[int, int, int]:
        """`(C, H, W)` of the pixels, from the processor's geometry on the first image."""
        if len(images) == 0:
            raise ValueError("The dataset has no rows.")
        return tuple(self.to_pixels([images[0][self.image_column]], [0]).shape[1:])

    def cache_key(self, dataset: datasets.Dataset, cache_format: str = "raw") -> str:
        """Key of the pixel cache of `dataset`: its fingerprint, the processor, the channel count and the format."""
        parts = [PIXEL_CACHE_VERSION, dataset._fingerprint, self.image_column, str(self.num_channels),
                 type(self.image_processor).__name__, self.image_processor.to_json_string(), cache_format,
                 JPEG_QUALITY if cache_format == "jpeg" else None]  # fmt: skip
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]

    # ----- normalization: uint8 pixels -> model inputs -----

    def normalize(self, pixel_values: torch.Tensor, train: bool = False) -> torch.Tensor:
        """
        Rescale and normalize `uint8` pixels as the processor does (and augment them when training with `augment`).

        Args:
            pixel_values (`torch.Tensor`): `uint8` `[B, C, H, W]`, on any device; float tensors are returned as
                they are (already normalized).
            train (`bool`, *optional*, defaults to `False`): Whether the batch is for training.

        Returns:
            `torch.Tensor`: float32 `[B, C, H, W]` on the same device.
        """
        if pixel_values.is_floating_point():
            return pixel_values
        values = pixel_values.float()
        if self.rescale_factor is not None:
            # Dividing by 255 (rather than multiplying by 1/255) gives exactly the processor's numbers.
            values = values.div_(1 / self.rescale_factor)
        if self._mean is not None:
            values = values.sub_(self._mean.to(values.device)).div_(self._std.to(values.device))
        if train and self.augment:
            values = random_crop_and_flip(values, padding=AUGMENT_PADDING)
        return values


def random_crop_and_flip(pixel_values: torch.Tensor, padding: int) -> torch.Tensor:
    """
    CIFAR-style augmentation of a batch, per example: zero-pad by `padding`, crop back to size at a random offset,
    flip horizontally with probability 0.5. Offsets and flips are drawn from torch's generator of the batch's
    device (`torch.manual_seed` makes them reproducible), and applied with one gather (no Python loop).

    Args:
        pixel_values (`torch.Tensor`): `[B, C, H, W]` float.
        padding (`int`): Padding on every side, in pixels.

    Returns:
        `torch.Tensor`: the augmented batch, same shape.
    """
    batch, _, height, width = pixel_values.shape
    device = pixel_values.device
    padded = torch.nn.functional.pad(pixel_values, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), device=device)
    flips = torch.rand(batch, device=device) < 0.5
    rows = offsets[:, :1] + torch.arange(height, device=device)  # [B, H]
    columns = torch.arange(width, device=device).expand(batch, width)
    columns = torch.where(flips[:, None], columns.flip(-1), columns) + offsets[:, 1:]  # [B, W]
    index = torch.arange(batch, device=device)[:, None, None]
    # [B, H, W, C] gathered from the padded [B, C, H + 2p, W + 2p] batch, then back to channels-first.
    out = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], columns[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def _per_channel(values, channels: int) -> list[float]:
    values = [values] if isinstance(values, (int, float)) else list(values)
    return values * channels if len(values) == 1 else values
