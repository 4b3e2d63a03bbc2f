"""How a pixel cache stores pixels: the formats (raw, JPEG, PNG; "auto" picks), encoding to them, the `datasets`
transform that decodes a JPEG/PNG cache when read, and the timed sample of decodes that estimates a build's size and
time (and what a pool that is not cached costs per pass). The formats are described in `pixel_cache.py`.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import datasets
import numpy as np
import PIL.Image

from ..constants import PIXEL_VALUES
from .images import ImageDecodeError
from .pixel_cache import format_bytes, format_seconds

JPEG_QUALITY = 90
# "auto" stores raw pixels up to this size: zero-copy reads and exact pixels, at most a tenth of an ordinary disk.
AUTO_RAW_MAX_BYTES = 10 * 10**9
_FORMAT_NAMES = {"raw": "raw uint8", "jpeg": f"JPEG q{JPEG_QUALITY}", "png": "PNG (lossless)"}
# Images decoded (spread over the pool) to estimate the rate and the compressed size before a build.
SAMPLE_SIZE = 16


def describe_format(cache_format: str) -> str:
    """The format as messages name it (`"jpeg"` -> `"JPEG q90"`)."""
    return _FORMAT_NAMES[cache_format]


def choose_format(cache_format: str, raw_bytes: int) -> str:
    """The stored format of `cache_format`: itself, or for `"auto"` raw up to `AUTO_RAW_MAX_BYTES` of raw pixels and
    JPEG beyond."""
    if cache_format != "auto":
        return cache_format
    return "raw" if raw_bytes <= AUTO_RAW_MAX_BYTES else "jpeg"


def encode_pixels(pixels: np.ndarray, cache_format: str) -> list[bytes]:
    """
    `uint8 [B, C, H, W]` pixels as one JPEG or PNG file each (`C` = 1 gives gray, `C` = 3 RGB images).

    Args:
        pixels (`np.ndarray`): The geometry's output.
        cache_format (`str`): `"jpeg"` or `"png"`.

    Returns:
        `list[bytes]`: one encoded image per row.
    """
    encoded = []
    for array in pixels:
        image = PIL.Image.fromarray(
            array[0] if array.shape[0] == 1 else np.ascontiguousarray(array.transpose(1, 2, 0))
        )
        buffer = io.BytesIO()
        if cache_format == "jpeg":
            # 4:2:0 chroma, as photos are stored: a third smaller than 4:4:4 for about the same pixels.
            image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0")
        else:
            # Level 1: nearly the size of level 6 for photos at a fraction of the encoding time.
            image.save(buffer, format="PNG", compress_level=1)
        encoded.append(buffer.getvalue())
    return encoded


class CompactPixels:
    """
    The `datasets` transform of a JPEG/PNG cache: a batch of encoded images to `uint8 [B, C, H, W]`.

    A module-level class (not a closure) so that DataLoader workers can pickle it.

    Args:
        cache_file (`str`): The cache's Arrow file, named when its bytes do not decode.
        key (`str`): The cache key, for the fix (`prunefuse-hf cache clear KEY`).
    """

    def __init__(self, cache_file: str, key: str):
        self.cache_file = cache_file
        self.key = key

    def __call__(self, batch: dict) -> dict:
        import torch  # here, not at the top: `prunefuse-hf cache list|clear` never imports torch

        arrays = []
        for data in batch[PIXEL_VALUES]:
            try:
                with PIL.Image.open(io.BytesIO(data)) as image:
                    array = np.asarray(image)
            except Exception as error:
                raise ImageDecodeError(
                    f"The pixel cache {self.cache_file} holds bytes that do not decode ({error}): remove it with "
                    f"`prunefuse-hf cache clear {self.key}` and run again (it is rebuilt)."
                ) from None
            arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
        return {PIXEL_VALUES: torch.from_numpy(np.stack(arrays))}


@dataclass
class DecodeSample:
    """A timed decode of a few images: the per-process rate of a build and the encoded size per format."""

    count: int
    decode_seconds: float
    raw_bytes: int
    encoded: dict  # format -> (mean bytes per image, seconds to encode the sample)

    @classmethod
    def measure(cls, to_pixels, images: datasets.Dataset, column: str, formats) -> DecodeSample:
        """Decode (and encode) a few images spread over the pool with `to_pixels`, timed."""
        rows = np.unique(np.linspace(0, len(images) - 1, min(len(images), SAMPLE_SIZE)).astype(int)).tolist()
        values = images[rows][column]
        started = time.perf_counter()
        pixels = to_pixels(values, rows).numpy()
        decode_seconds = time.perf_counter() - started
        encoded = {}
        # JPEG always: the message of an uncached pool quotes its size.
        for stored_format in sorted(set(formats) - {"raw"} | {"jpeg"}):
            started = time.perf_counter()
            sizes = [len(data) for data in encode_pixels(pixels, stored_format)]
            encoded[stored_format] = (float(np.mean(sizes)), time.perf_counter() - started)
        return cls(len(rows), decode_seconds, int(pixels[0].size), encoded)

    def images_per_second(self, stored_format: str) -> float:
        seconds = self.decode_seconds + (
            self.encoded[stored_format][1] if stored_format in self.encoded else 0.0
        )
        return self.count / max(seconds, 1e-9)

    def estimated_bytes(self, stored_format: str, num_images: int) -> int:
        per_image = self.raw_bytes if stored_format == "raw" else self.encoded[stored_format][0]
        return int(per_image * num_images)


def not_cached_message(num_images: int, sample: DecodeSample, reason: str) -> str:
    """What a pool that is not cached costs per pass, and how to cache it."""
    rate = sample.images_per_second("raw")
    return (
        f"Not caching decoded pixels ({reason}): every scoring pass and epoch decodes {num_images:,} images again, "
        f"~{format_seconds(num_images / rate)} per pass on one core (measured {rate:,.0f} images/s on a sample of "
        f"{sample.count}; DataLoader workers, dataloader_num_workers, divide it). Set cache_pixels: true and "
        f"pixel_cache_format: jpeg (~{format_bytes(sample.estimated_bytes('jpeg', num_images))}) to cache."
    )
