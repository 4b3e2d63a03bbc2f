"""A pool's pixels, cached or not: building a pixel cache (the format and processes chosen from a timed sample, room
made under the cap, one process building under the cache's lock while the others wait, the files written in a build
folder and moved into place), opening a complete one, and going on without one when it is turned off, over the disk
rule, or unusable (a read-only, full or damaged folder: said once). [`ImagePreprocessor.pixel_dataset`] is the door;
the cache's folder, files and formats are `pixel_cache.py`, `pixel_cache_files.py` and `pixel_formats.py`.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import pyarrow as pa
import torch
from datasets.utils import are_progress_bars_disabled
from tqdm.auto import tqdm
from transformers.utils import logging

from ..constants import PIXEL_CACHE_FORMATS, PIXEL_CACHE_MAX_SIZE_ENV, PIXEL_CACHE_PREFIX, PIXEL_VALUES
from ..utils.checks import check_choice, check_integer
from .pixel_cache import (
    evict_least_recently_used,
    format_bytes,
    format_seconds,
    mark_in_use,
    resolve_cache_dir,
    resolve_max_size,
)
from .pixel_cache_files import CacheLock, build_dir, is_complete, mark_used, remove_files, write_description
from .pixel_formats import (
    CompactPixels,
    DecodeSample,
    choose_format,
    describe_format,
    encode_pixels,
    not_cached_message,
)

if TYPE_CHECKING:
    from .preprocessing import ImagePreprocessor

logger = logging.get_logger(__name__)

# With `cache_pixels` unset, a pool is cached when its pixels take at most this share of the free disk space.
AUTO_CACHE_DISK_SHARE = 0.5
_MAP_BATCH_SIZE = 256
# Starting a process costs about a second: smaller pools are built by fewer processes.
_MIN_IMAGES_PER_PROCESS = 1024


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, which containers and `taskset` restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def build_pixel_dataset(
    preprocessor: ImagePreprocessor,
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
    `dataset` as `uint8` pixels through `preprocessor`'s geometry, from its cache (built when missing) or decoded when
    read: what [`ImagePreprocessor.pixel_dataset`] returns, with the same arguments (documented there).
    """
    check_choice("pixel_cache_format", cache_format, PIXEL_CACHE_FORMATS)
    if num_proc is not None:
        num_proc = check_integer("dataset_num_proc", num_proc, minimum=1)
    images = _undecoded(dataset, preprocessor.image_column)
    cache_dir = resolve_cache_dir(cache_dir)
    cap = resolve_max_size(max_size)
    shape = preprocessor.output_shape(images)
    formats = ("raw", "jpeg", "png") if cache_format == "auto" else (cache_format,)
    unusable = None  # why the cache directory cannot be used (read-only, full, damaged), once found
    for stored_format in formats if cache is not False else ():
        key = preprocessor.cache_key(dataset, stored_format)
        if is_complete(cache_dir, key):
            try:
                cached, unusable = _cached_or_reason(
                    preprocessor, images, cache_dir, key, stored_format, shape, num_proc=None, desc=desc,
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
        return images.with_transform(partial(_decode_on_read, preprocessor), output_all_columns=False)

    sample = DecodeSample.measure(preprocessor.to_pixels, images, preprocessor.image_column, formats)
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
        return _uncached(preprocessor, images, sample, reason, validate=validate, loud=loud, desc=desc)

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
    key = preprocessor.cache_key(dataset, stored_format)
    if cap is not None:
        # Room for the build first, so that the cap also holds while it writes.
        evict_least_recently_used(cache_dir, cap, reserve=size)
    cached, reason = _cached_or_reason(
        preprocessor, images, cache_dir, key, stored_format, shape, num_proc=num_proc, desc=desc,
        fingerprint=dataset._fingerprint, cap=cap,
    )  # fmt: skip
    if cached is not None:
        return cached
    return _uncached(preprocessor, images, sample, reason, validate=validate, loud=False, desc=desc)


def _uncached(
    preprocessor: ImagePreprocessor, images, sample, reason: str, *, validate: bool, loud: bool, desc: str
):
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
            preprocessor.to_pixels(images[rows][preprocessor.image_column], rows)
    return images.with_transform(partial(_decode_on_read, preprocessor), output_all_columns=False)


def _cached_or_reason(preprocessor: ImagePreprocessor, images, cache_dir: Path, key: str, *args, **kwargs):
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
        return _cached(preprocessor, images, cache_dir, key, *args, **kwargs), None
    except (OSError, pa.ArrowException) as error:
        if lock is not None:
            try:
                remove_files(cache_dir, key)  # what a failed build or a damaged cache left
            except OSError:
                pass
        if reading and not _is_storage_error(error):
            raise _DamagedCache(f"{type(error).__name__}: {error}") from error  # a complete cache, unreadable
        return None, _cache_unusable(cache_dir, error)
    finally:
        if lock is not None:
            lock.release()


def _cached(
    preprocessor: ImagePreprocessor,
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
        folder = build_dir(cache_dir, key)
        folder.mkdir()
        started = time.perf_counter()
        built = images.map(
            partial(_map_batch, preprocessor),
            cache_file_name=str(folder / cache_file.name),
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
            os.replace(folder / name, cache_dir / name)
        shutil.rmtree(folder)
        processor = preprocessor.image_processor
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
        logger.info(f"Reading the cached pixels of {len(images):,} images ({stored_format}) from {cache_dir}")
    # Opened from where they are now (the Arrow files are memory-mapped: a reader keeps reading them even if
    # another process removes the cache later).
    pixels = images.map(
        partial(_map_batch, preprocessor),
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


def _map_batch(
    preprocessor: ImagePreprocessor,
    batch: dict,
    indices: list[int],
    cache_format: str = "raw",
    one_thread: bool = False,
):
    # The `datasets.map` function of a build: a batch of images to their pixels in the cache's format.
    if one_thread and torch.get_num_threads() != 1:
        # One building process per core: torch's own threads would only compete with the other processes.
        torch.set_num_threads(1)
    pixels = preprocessor.to_pixels(batch[preprocessor.image_column], indices).numpy()
    return {PIXEL_VALUES: pixels if cache_format == "raw" else encode_pixels(pixels, cache_format)}


def _decode_on_read(preprocessor: ImagePreprocessor, batch: dict) -> dict:
    # Read lazily (no cache, no validation): a damaged file fails here, named, when a pass first reads it.
    return {PIXEL_VALUES: preprocessor.to_pixels(batch[preprocessor.image_column])}


def describe_processor(processor) -> str:
    """The image processor as a cache's description names it: its class, size and crop."""
    size = getattr(processor, "size", None)
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    return f"{type(processor).__name__} size={dict(size) if size else None}" + (
        f" crop={dict(crop)}" if crop else ""
    )


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
