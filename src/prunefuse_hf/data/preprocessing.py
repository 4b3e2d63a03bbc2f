"""From images to model inputs, decoded once.

One image processor describes the whole preprocessing of a run: the pretrained model's own, or one built
from the run's settings (size, channels, mean and std 0.5). It is split in two halves:

- **geometry** (decode, channel mode, resize / crop) turns every image into `uint8` pixels of the model's
  size and channel count. It runs once per run, on every core: the pixels are stored with `datasets` (Arrow
  files, memory-mapped, keyed by the pool's fingerprint, the processor and the format: raw, or JPEG / PNG for
  large pools, see `pixel_cache.py`), so every scoring pass, every training epoch and every evaluation reads
  them instead of decoding the original files again, and a second run or a resume reuses them. Decoding every
  image up front is also where damaged files are found, before any training, with the file named in the error.
- **normalization** (rescale, mean / std, training augmentation) runs on tensors, on the device, batch by batch.

The two halves give exactly the processor's own output (tested), and the processor is saved with every
checkpoint, so `pipeline("image-classification", model=...)` preprocesses like the run did.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets.utils import are_progress_bars_disabled
from tqdm.auto import tqdm
from transformers.utils import logging

from ..constants import (
    LABELS,
    PIXEL_CACHE_FORMATS,
    PIXEL_CACHE_MAX_SIZE_ENV,
    PIXEL_CACHE_PREFIX,
    PIXEL_VALUES,
)
from ..utils.checks import check_choice, check_integer
from .images import open_image, to_model_mode
from .pixel_cache import (
    JPEG_QUALITY,
    CacheLock,
    CompactPixels,
    DecodeSample,
    build_dir,
    choose_format,
    describe_format,
    describe_processor,
    encode_pixels,
    evict_least_recently_used,
    format_bytes,
    format_seconds,
    is_complete,
    mark_in_use,
    mark_used,
    not_cached_message,
    remove_files,
    resolve_cache_dir,
    resolve_max_size,
    usable_cores,
    write_description,
)

logger = logging.get_logger(__name__)

# Bump when the way pixels are computed changes: it is part of every cache file's key. 2: formats, descriptions.
PIXEL_CACHE_VERSION = "2"
# With `cache_pixels` unset, a pool is cached when its pixels take at most this share of the free disk space.
AUTO_CACHE_DISK_SHARE = 0.5
AUGMENT_PADDING = 4
_MAP_BATCH_SIZE = 256
# Starting a process costs about a second: smaller pools are built by fewer processes.
_MIN_IMAGES_PER_PROCESS = 1024


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
        check_choice("pixel_cache_format", cache_format, PIXEL_CACHE_FORMATS)
        if num_proc is not None:
            num_proc = check_integer("dataset_num_proc", num_proc, minimum=1)
        images = _undecoded(dataset, self.image_column)
        cache_dir = resolve_cache_dir(cache_dir)
        cap = resolve_max_size(max_size)
        shape = self.output_shape(images)
        formats = ("raw", "jpeg", "png") if cache_format == "auto" else (cache_format,)
        unusable = None  # why the cache directory cannot be used (read-only, full, damaged), once found
        for stored_format in formats if cache is not False else ():
            key = self.cache_key(dataset, stored_format)
            if is_complete(cache_dir, key):
                try:
                    cached, unusable = self._cached_or_reason(
                        images, cache_dir, key, stored_format, shape, num_proc=None, desc=desc,
                        fingerprint=dataset._fingerprint, cap=cap,
                    )  # fmt: skip
                except _DamagedCache as damaged:  # its files are removed: built again below
                    logger.warning(
                        f"The pixel cache {key} in {cache_dir} is damaged ({damaged}); building it again."
                    )
                    break
                if cached is not None:
                    return cached
                break  # unusable, or removed by another process meanwhile: built again below
        if not create_cache:
            return images.with_transform(self._transform, output_all_columns=False)

        sample = DecodeSample.measure(self.to_pixels, images, self.image_column, formats)
        stored_format = choose_format(cache_format, len(dataset) * math.prod(shape))
        size = sample.estimated_bytes(stored_format, len(dataset))
        reason = "cache_pixels is false" if cache is False else unusable
        if cache is None and reason is None:
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
                free = shutil.disk_usage(cache_dir).free
            except OSError as error:
                reason = unusable = _cache_unusable(cache_dir, error)
        if cache is None and reason is None:
            limit = min(AUTO_CACHE_DISK_SHARE * free, cap if cap is not None else math.inf)
            if cache_format == "auto" and stored_format == "raw" and size > limit:
                stored_format, size = "jpeg", sample.estimated_bytes("jpeg", len(dataset))
            if size > AUTO_CACHE_DISK_SHARE * free:
                reason = (
                    f"~{format_bytes(size)} needed as {describe_format(stored_format)}, {format_bytes(free)} free in "
                    f"{cache_dir} (the cache takes at most half of the free space)"
                )
            elif size > limit:
                reason = (
                    f"~{format_bytes(size)} needed as {describe_format(stored_format)}, over the pixel cache's cap of "
                    f"{format_bytes(cap)} (pixel_cache_max_size or ${PIXEL_CACHE_MAX_SIZE_ENV})"
                )
        if reason is not None:
            # The cache's own problem was said once already (`_cache_unusable`).
            loud = cache is None and reason is not unusable
            return self._uncached(images, sample, reason, validate=validate, loud=loud, desc=desc)

        if num_proc is None:
            num_proc = max(1, min(usable_cores(), len(dataset) // _MIN_IMAGES_PER_PROCESS))
        num_proc = min(num_proc, len(dataset))
        seconds = len(dataset) / (sample.images_per_second(stored_format) * num_proc)
        message = (
            f"Caching {len(dataset):,} images at {'×'.join(map(str, shape))} as {describe_format(stored_format)} "
            f"(~{format_bytes(size)} est.) in {cache_dir} with {num_proc} process{'es' if num_proc > 1 else ''}: "
            f"~{format_seconds(seconds)} (measured {sample.images_per_second(stored_format):,.0f} images/s per "
            f"process on a sample of {sample.count})"
        )
        # A build of more than a minute is worth seeing at the default verbosity.
        (logger.warning if seconds > 60 else logger.info)(message)
        key = self.cache_key(dataset, stored_format)
        if cap is not None:
            # Room for the build first, so that the cap also holds while it writes.
            evict_least_recently_used(cache_dir, cap, reserve=size)
        cached, reason = self._cached_or_reason(
            images, cache_dir, key, stored_format, shape, num_proc=num_proc, desc=desc,
            fingerprint=dataset._fingerprint, cap=cap,
        )  # fmt: skip
        if cached is not None:
            return cached
        return self._uncached(images, sample, reason, validate=validate, loud=False, desc=desc)

    def _uncached(self, images, sample, reason: str, *, validate: bool, loud: bool, desc: str):
        """The images decoded when a batch is read; with `validate`, every image is decoded once now."""
        per_pass = len(images) / sample.images_per_second("raw")
        # Said loudly when it costs: a pass of over a minute, or a cache the disk rule turned off.
        (logger.warning if loud or per_pass > 60 else logger.info)(
            not_cached_message(len(images), sample, reason)
        )
        if validate:
            # Shown when `datasets`' own bars are (a run hides both unless disable_tqdm is false).
            batches = range(0, len(images), _MAP_BATCH_SIZE)
            for start in tqdm(batches, desc=desc, unit="batch", disable=are_progress_bars_disabled()):
                rows = list(range(start, min(start + _MAP_BATCH_SIZE, len(images))))
                self.to_pixels(images[rows][self.image_column], rows)
        return images.with_transform(self._transform, output_all_columns=False)

    def _cached_or_reason(self, images, cache_dir: Path, key: str, *args, **kwargs):
        """`_cached` under the cache's inter-process lock (one process builds, the others wait, then read), or
        `(None, why)` when the cache directory cannot be written or read (read-only, full, damaged): a run goes on
        without the cache rather than stopping on a storage error. `(None, None)`: reading (`num_proc=None`), the
        cache was found removed by another process once its lock was taken."""
        reading = kwargs.get("num_proc") is None
        lock = None
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            lock = CacheLock(cache_dir, key)
            lock.acquire()
        except OSError as error:
            if not (reading and _is_storage_error(error)):
                return None, _cache_unusable(cache_dir, error)
            lock = None  # a read-only folder: nobody removes the cache there either, read it as it is
        try:
            return self._cached(images, cache_dir, key, *args, **kwargs), None
        except (OSError, pa.ArrowException) as error:
            if lock is not None:
                try:
                    remove_files(cache_dir, key)  # what a failed build or a damaged cache left
                except OSError:
                    pass
            if reading and not _is_storage_error(error):
                raise _DamagedCache(
                    f"{type(error).__name__}: {error}"
                ) from error  # a complete cache, unreadable
            return None, _cache_unusable(cache_dir, error)
        finally:
            if lock is not None:
                lock.release()

    def _cached(
        self,
        images,
        cache_dir: Path,
        key: str,
        stored_format: str,
        shape,
        *,
        num_proc,
        desc,
        fingerprint,
        cap,
    ):
        """Build the cache `key` (or read it when complete) and return it in the format `PixelDataset` reads; `None`
        when reading (`num_proc=None`) and the cache is not complete. The caller holds the cache's lock."""
        building = not is_complete(cache_dir, key)
        if building and num_proc is None:
            return None
        if stored_format == "raw":
            feature = datasets.Array3D(shape=shape, dtype="uint8")
        else:
            feature = datasets.Value("binary")
        map_kwargs = dict(
            batched=True,
            batch_size=_MAP_BATCH_SIZE,
            with_indices=True,
            remove_columns=images.column_names,
            features=datasets.Features({PIXEL_VALUES: feature}),
            fn_kwargs={"cache_format": stored_format, "one_thread": bool(num_proc and num_proc > 1)},
            new_fingerprint=key,
        )
        cache_file = cache_dir / f"{PIXEL_CACHE_PREFIX}{key}.arrow"
        if building:
            remove_files(cache_dir, key)  # what an interrupted build left
            # Written in a folder of its own (datasets' temporary files too): a killed build leaves only files
            # that `cache list` / `cache clear` find by its key.
            partial = build_dir(cache_dir, key)
            partial.mkdir()
            started = time.perf_counter()
            built = images.map(
                self._map_batch,
                cache_file_name=str(partial / cache_file.name),
                load_from_cache_file=False,
                num_proc=num_proc if num_proc > 1 else None,
                desc=desc,
                **map_kwargs,
            )
            seconds = time.perf_counter() - started
            files = [Path(entry["filename"]).name for entry in built.cache_files]
            num_images = len(built)
            del built
            for name in files:
                os.replace(partial / name, cache_dir / name)
            shutil.rmtree(partial)
            processor = self.image_processor
            # Last: the description marks the cache as complete.
            write_description(cache_dir, key, {
                "files": files, "num_images": num_images, "shape": list(shape),
                "format": stored_format, "dataset_fingerprint": fingerprint, "num_proc": num_proc or 1,
                "build_seconds": round(seconds, 3), "processor": describe_processor(processor),
                "image_processor": processor.to_dict(),
            })  # fmt: skip
            logger.info(
                f"Cached {num_images:,} images in {format_seconds(seconds)} ({num_images / seconds:,.0f} images/s): "
                f"{format_bytes(sum((cache_dir / name).stat().st_size for name in files))} in {cache_dir} (key {key})"
            )
        else:
            mark_used(cache_dir, key)
            logger.info(
                f"Reading the cached pixels of {len(images):,} images ({stored_format}) from {cache_dir}"
            )
        # Opened from where they are now (the Arrow files are memory-mapped: a reader keeps reading them even if
        # another process removes the cache later).
        pixels = images.map(
            self._map_batch,
            cache_file_name=str(cache_file),
            load_from_cache_file=True,
            desc=desc,
            **map_kwargs,
        )
        files = [Path(entry["filename"]) for entry in pixels.cache_files]
        if stored_format == "raw":
            pixels = pixels.with_format("numpy")
        else:
            pixels = pixels.with_transform(CompactPixels(str(files[0]), key))
        mark_in_use(cache_dir, key, pixels)
        if building and cap is not None:  # the estimate may have been short
            evict_least_recently_used(cache_dir, cap)
        return pixels

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

    def _map_batch(
        self, batch: dict, indices: list[int], cache_format: str = "raw", one_thread: bool = False
    ):
        if one_thread and torch.get_num_threads() != 1:
            # One building process per core: torch's own threads would only compete with the other processes.
            torch.set_num_threads(1)
        pixels = self.to_pixels(batch[self.image_column], indices).numpy()
        return {PIXEL_VALUES: pixels if cache_format == "raw" else encode_pixels(pixels, cache_format)}

    def _transform(self, batch: dict) -> dict:
        # Read lazily (no cache, no validation): a damaged file fails here, named, when a pass first reads it.
        return {PIXEL_VALUES: self.to_pixels(batch[self.image_column])}

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


class PixelDataset(torch.utils.data.Dataset):
    """
    Rows of a pixel dataset with their class ids, read a whole batch at a time.

    Args:
        pixels (`datasets.Dataset`): From [`ImagePreprocessor.pixel_dataset`].
        rows (`np.ndarray`): The rows (pool indices) this dataset exposes, in order.
        labels (`np.ndarray`, *optional*): Class id of each row of `rows`; without them only pixels are returned.
    """

    def __init__(self, pixels: datasets.Dataset, rows, labels=None):
        self.pixels = pixels
        # The cached pixels as numpy views of the memory-mapped Arrow file: a batch is one fancy-indexing copy,
        # where datasets' own row formatting would spend more time than a small model's forward pass.
        self._views = _uint8_views(pixels)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = None if labels is None else torch.tensor(np.asarray(labels, dtype=np.int64))
        if self.labels is not None and len(self.labels) != len(self.rows):
            raise ValueError(f"Got {len(self.labels)} labels for {len(self.rows)} rows.")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        # One Arrow read for the whole batch; the examples are views of it.
        pixel_values = self.batch(indices)
        if self.labels is None:
            return [{PIXEL_VALUES: p} for p in pixel_values]
        return [{PIXEL_VALUES: p, LABELS: y} for p, y in zip(pixel_values, self.labels[indices])]

    def select(self, positions) -> PixelDataset:
        """The examples at `positions` (of this dataset) as a new `PixelDataset` over the same pixels."""
        subset = copy.copy(self)
        positions = np.asarray(list(positions) if isinstance(positions, range) else positions, dtype=np.int64)
        subset.rows = self.rows[positions]
        subset.labels = None if self.labels is None else self.labels[torch.from_numpy(positions)]
        return subset

    @property
    def decodes_per_batch(self) -> bool:
        """Whether reading a batch decodes images (no cache, or a JPEG/PNG one) rather than copying raw pixels."""
        return self._views is None

    def batch(self, indices) -> torch.Tensor:
        """The `uint8` pixels of `indices` as one `[B, C, H, W]` tensor."""
        if self._views is not None:
            return torch.from_numpy(self._views.take(self.rows[np.asarray(indices, dtype=np.int64)]))
        pixel_values = self.pixels[self.rows[indices].tolist()][PIXEL_VALUES]
        if isinstance(pixel_values, torch.Tensor):
            return pixel_values
        return torch.from_numpy(np.ascontiguousarray(pixel_values, dtype=np.uint8))


class _ChunkViews:
    """Zero-copy numpy views `[n_i, C, H, W]` of the chunks of a fixed-shape uint8 Arrow column."""

    def __init__(self, views: list[np.ndarray]):
        self.views = views
        self.starts = np.cumsum([0] + [len(v) for v in views])

    def take(self, rows: np.ndarray) -> np.ndarray:
        if len(self.views) == 1:
            return self.views[0][rows]
        out = np.empty((len(rows), *self.views[0].shape[1:]), dtype=np.uint8)
        chunk = np.searchsorted(self.starts, rows, side="right") - 1
        for c in np.unique(chunk):
            mask = chunk == c
            out[mask] = self.views[c][rows[mask] - self.starts[c]]
        return out


def _uint8_views(pixels) -> _ChunkViews | None:
    """Views of a cached pixel dataset's column, or `None` when it is not plain cached uint8 Arrow data."""
    if (
        not isinstance(pixels, datasets.Dataset)
        or pixels._indices is not None
        or pixels.format["type"] != "numpy"
    ):
        return None
    feature = pixels.features.get(PIXEL_VALUES)
    if not isinstance(feature, datasets.Array3D) or feature.dtype != "uint8":
        return None
    shape = tuple(feature.shape)
    column = pixels.data.table.column(PIXEL_VALUES)
    # One cast and three flattens of the whole column in Arrow (per-chunk Python access would deserialize the
    # extension type of each chunk: 0.3 s for the 4,000 chunks of a 1M-image cache).
    storage = column.cast(column.type.storage_type) if isinstance(column.type, pa.ExtensionType) else column
    values = storage
    for _ in shape:
        values = pc.list_flatten(values)
    if values.num_chunks != storage.num_chunks:
        return None
    views = []
    for chunk, flat in zip(storage.chunks, values.chunks):
        if len(flat) != len(chunk) * int(np.prod(shape)):
            return None
        views.append(flat.to_numpy(zero_copy_only=True).reshape(len(chunk), *shape))
    return _ChunkViews(views) if views else None


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


class _DamagedCache(Exception):
    """A complete cache whose files cannot be read (not a storage problem of its directory)."""


def _is_storage_error(error: Exception) -> bool:
    """A read-only or full directory (as opposed to a damaged file)."""
    return isinstance(error, OSError) and getattr(error, "errno", None) in (
        errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
    )  # fmt: skip


_SAID_UNUSABLE: set[str] = set()  # cache directories whose problem was already said (once per process)


def _cache_unusable(cache_dir: Path, error: Exception) -> str:
    """Why the pixel cache in `cache_dir` cannot be used, and the fix; logged as a warning once per directory."""
    reason = (
        f"the pixel cache in {cache_dir} cannot be used ({type(error).__name__}: {error}); free space there or make "
        "it writable (`prunefuse-hf cache clear` removes old caches), or point PRUNEFUSE_PIXEL_CACHE at another "
        "folder; cache_pixels: false runs without it and silences this"
    )
    if str(cache_dir) not in _SAID_UNUSABLE:
        _SAID_UNUSABLE.add(str(cache_dir))
        logger.warning(f"Going on without the pixel cache: {reason}.")
    return reason


def _undecoded(dataset: datasets.Dataset, image_column: str) -> datasets.Dataset:
    # Files are opened by `open_image`, which names the file when decoding fails (datasets' decoder does not).
    images = dataset.select_columns([image_column])
    if isinstance(images.features[image_column], datasets.Image):
        images = images.cast_column(image_column, datasets.Image(decode=False))
    return images


def _per_channel(values, channels: int) -> list[float]:
    values = [values] if isinstance(values, (int, float)) else list(values)
    return values * channels if len(values) == 1 else values
