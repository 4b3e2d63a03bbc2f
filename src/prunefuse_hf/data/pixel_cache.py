"""The pixel cache on disk: its formats, its files and their descriptions, and listing and removing old caches.

This module holds the cache folder: where it is, its cap, and listing, eviction and clearing. One cache's files and
its lock are in `pixel_cache_files.py`, the formats in `pixel_formats.py`, the build in `pixel_cache_build.py`.

A cache holds the `uint8` geometry output of one pool under one preprocessing (see [`ImagePreprocessor`]); its key
hashes the pool's fingerprint, the processor and the format. The formats:

- **raw**: `uint8 [C, H, W]` arrays, read as zero-copy views of the memory-mapped Arrow file (no decoding at all).
  150 KB per image at 3×224×224 (196 GB for an ImageNet-sized pool of 1.28M).
- **jpeg**: the same pixels re-encoded as JPEG (quality 90, 4:2:0 chroma), decoded per batch. Lossy: pixels differ
  from the processor's by a few levels (measured in `benchmarks/scale.py --only cache`); about a tenth of raw.
  Decoding an already-resized 224 px JPEG is several times cheaper than the original file plus its resize.
- **png**: lossless (the processor's exact pixels), about half of raw for photos, decoded per batch.
- **auto**: raw when the raw pixels take at most `pixel_formats.AUTO_RAW_MAX_BYTES` (10 GB: small or low-resolution
  pools keep exact, decode-free reads) and fit the disk rule (at most half of the free space), JPEG otherwise.

Each complete cache has a JSON description beside its Arrow file(s) (`pixels-<key>.json`: images, shape, format,
processor, pool fingerprint, creation time; its modification time is the last use), which
[`list_pixel_caches`] reads and [`clear_pixel_caches`] (`prunefuse-hf cache list|clear`) uses.

The folder has a size cap (`pixel_cache_max_size`, else `$PRUNEFUSE_PIXEL_CACHE_MAX_SIZE`, else 50 GB): before and
after a build, [`evict_least_recently_used`] removes caches, least recently used first, until the folder fits, and
logs what it removed. The caches this process is reading, and those another process holds, are never removed by it.

Any number of runs and processes may share one folder. Each cache has an inter-process lock (`pixels-<key>.lock`,
held while a process builds the cache, opens it to read, or removes it, and deleted when released): the first
process builds, the others wait for it (said once, naming the cache) and then read. A build writes into its own
folder (`pixels-<key>.partial/`, `datasets`' temporary files included) and moves the finished files into place before
the description, so a build that was killed leaves only files named after its key: [`list_pixel_caches`] lists them
as an incomplete cache, [`clear_pixel_caches`] removes them, and the next run that needs the cache builds it again.
"""

from __future__ import annotations

import json
import os
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import datasets
from transformers.utils import logging

from ..constants import (
    DEFAULT_PIXEL_CACHE_MAX_SIZE,
    PIXEL_CACHE_DIR_ENV,
    PIXEL_CACHE_MAX_SIZE_ENV,
)
from ..utils.checks import check_size
from .pixel_cache_files import (
    build_dir,
    cache_files,
    description_path,
    descriptions_written,
    is_complete,
    is_loose_temporary,
    lock_path,
    owner_key,
    remove_unless_held,
    utc_now,
)

logger = logging.get_logger(__name__)

_SECONDS_PER_DAY = 86400
# (folder, key) -> the datasets this process reads from that cache: while one is alive, its eviction keeps the cache.
_READERS: dict[tuple[str, str], weakref.WeakSet] = {}


@dataclass
class PixelCacheInfo:
    """
    One pixel cache on disk, as [`list_pixel_caches`] finds it.

    Args:
        key (`str`): The cache key (hash of the pool's fingerprint, the processor and the format).
        files (`list[Path]`): Its Arrow file(s) and description, and what a build left: its lock while a process holds
            it (or after its holder was killed), the files in its build folder (`datasets`' temporary files included).
        size_bytes (`int`): Bytes on disk, all files together.
        created (`datetime`): When the build finished (the newest file's time for a cache without description).
        last_used (`datetime`): When a run last read it.
        complete (`bool`): Whether the build finished (a cache without description is a build under way or an
            interrupted one, or was written by a version before descriptions: nothing reads it again).
        num_images (`int`, *optional*), shape (`tuple`, *optional*), cache_format (`str`, *optional*),
        processor (`str`, *optional*), dataset_fingerprint (`str`, *optional*): From the description.
        description (`dict`): The whole description (`pixels-<key>.json`; empty without one), e.g. the image
            processor's settings under `"image_processor"` and the build's `"num_proc"` and `"build_seconds"`.

    Example:

    ```python
    >>> from prunefuse_hf.data import list_pixel_caches
    >>> [(info.key, info.cache_format, info.size_bytes) for info in list_pixel_caches("empty_dir")]
    []
    ```
    """

    key: str
    files: list[Path]
    size_bytes: int
    created: datetime
    last_used: datetime
    complete: bool
    num_images: int | None = None
    shape: tuple | None = None
    cache_format: str | None = None
    processor: str | None = None
    dataset_fingerprint: str | None = None
    description: dict = field(default_factory=dict, repr=False)


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else `$PRUNEFUSE_PIXEL_CACHE`, else `prunefuse_hf/` in the `datasets` cache."""
    return Path(
        cache_dir
        or os.environ.get(PIXEL_CACHE_DIR_ENV)
        or Path(datasets.config.HF_DATASETS_CACHE) / "prunefuse_hf"
    )


def resolve_max_size(max_size: int | str | None = None) -> int | None:
    """The cap on the cache folder, in bytes: `max_size`, else `$PRUNEFUSE_PIXEL_CACHE_MAX_SIZE`, else 50 GB (`None`:
    no cap, from `"none"`)."""
    if max_size is not None:
        return check_size("pixel_cache_max_size", max_size)
    from_env = os.environ.get(PIXEL_CACHE_MAX_SIZE_ENV)
    if from_env:
        return check_size(f"${PIXEL_CACHE_MAX_SIZE_ENV}", from_env)
    return check_size("pixel_cache_max_size", DEFAULT_PIXEL_CACHE_MAX_SIZE)


def mark_in_use(cache_dir: Path, key: str, reader: datasets.Dataset) -> None:
    """Record that `reader` reads the cache `key`: while it is alive, this process's eviction leaves the cache alone
    (a run's evaluation set is cached after its pool: building it must not remove the pool's)."""
    _READERS.setdefault((str(Path(cache_dir).resolve()), key), weakref.WeakSet()).add(reader)


def _in_use(directory: Path) -> set[str]:
    folder = str(directory.resolve())
    return {key for (where, key), readers in _READERS.items() if where == folder and len(readers)}


def evict_least_recently_used(
    cache_dir: str | os.PathLike | None = None,
    max_size: int | str | None = None,
    *,
    reserve: int = 0,
) -> list[PixelCacheInfo]:
    """
    Keep the pixel cache folder under its cap: remove complete caches, least recently used first, until the folder
    holds at most `max_size - reserve` bytes, and say so in the log (which caches, how much, what remains).

    The caches this process is reading (a dataset it returned is alive), and those whose lock another process holds
    (it builds them, or opens or removes them), are never removed; the log names those kept. An incomplete cache that
    no process holds is what a killed build left, and goes first when it is the least recently written. A run whose
    cache was removed builds it again when it next needs it; a process already reading it goes on reading its open
    files.

    Args:
        cache_dir (`str` or `os.PathLike`, *optional*): As in [`list_pixel_caches`].
        max_size (`int` or `str`, *optional*): The cap: bytes, or a size such as `"50GB"` or `"2GiB"`. Defaults to
            `$PRUNEFUSE_PIXEL_CACHE_MAX_SIZE`, else 50 GB; `"none"` removes nothing.
        reserve (`int`, *optional*, defaults to 0): Bytes to leave free under the cap (a build about to start).

    Returns:
        `list[PixelCacheInfo]`: the caches removed.

    Example:

    ```python
    >>> from prunefuse_hf.data import evict_least_recently_used
    >>> [info.key for info in evict_least_recently_used("empty_dir", "1GB")]
    []
    ```
    """
    cap = resolve_max_size(max_size)
    directory = resolve_cache_dir(cache_dir)
    if cap is None:
        return []
    try:
        caches = list_pixel_caches(directory)
    except OSError as error:
        logger.warning(
            f"Cannot read the pixel cache folder {directory} to keep it under its cap ({type(error).__name__}: "
            f"{error}); nothing removed. Make it readable, or point ${PIXEL_CACHE_DIR_ENV} at another folder."
        )
        return []
    total = sum(info.size_bytes for info in caches)
    limit = max(cap - reserve, 0)
    if total <= limit:
        return []
    in_use = _in_use(directory)
    removed, held, failed = [], [], []
    for info in reversed(caches):  # least recently used first
        if total <= limit:
            break
        if info.key in in_use:
            continue
        try:
            if not remove_unless_held(directory, info.key):
                held.append(info.key)  # another process builds, reads or removes it
                continue
        except OSError as error:
            failed.append(f"{info.key} ({type(error).__name__}: {error})")
            continue
        removed.append(info)
        total -= info.size_bytes
    kept_over = (
        f"; still {format_bytes(total)}: the rest is in use by this run"
        + (f" or held by another process ({', '.join(held)}: being built or read)" if held else "")
        if total > limit
        else ""
    )
    if failed:
        logger.warning(
            f"Could not remove pixel cache{'s' if len(failed) > 1 else ''} {', '.join(failed)} from {directory} to "
            "keep it under its cap: make the folder writable, or point "
            f"${PIXEL_CACHE_DIR_ENV} at another folder."
        )
    if removed:
        listed = ", ".join(
            f"{info.key} ({info.num_images or 0:,} images, {info.cache_format}, {format_bytes(info.size_bytes)}, "
            f"last used {info.last_used:%Y-%m-%d %H:%M})"
            if info.complete
            else f"{info.key} (an interrupted build, {format_bytes(info.size_bytes)}, last written "
            f"{info.last_used:%Y-%m-%d %H:%M})"
            for info in removed
        )
        logger.warning(
            f"The pixel cache folder {directory} is over its cap of {format_bytes(cap)}"
            f"{f' with {format_bytes(reserve)} to be built' if reserve else ''} (pixel_cache_max_size or "
            f"${PIXEL_CACHE_MAX_SIZE_ENV}): removed the {len(removed)} least recently used "
            f"cache{'s' if len(removed) > 1 else ''}, {format_bytes(sum(info.size_bytes for info in removed))}: "
            f"{listed}{kept_over}. A run that needs one builds it again."
        )
    elif kept_over:
        logger.warning(
            f"The pixel cache folder {directory} holds {format_bytes(total)}"
            f"{f' with {format_bytes(reserve)} to be built' if reserve else ''}, over its cap of {format_bytes(cap)} "
            f"(pixel_cache_max_size or ${PIXEL_CACHE_MAX_SIZE_ENV}), but every cache in it is in use by this run"
            + (f" or held by another process ({', '.join(held)}: being built or read)" if held else "")
            + ": nothing removed."
        )
    return removed


def list_pixel_caches(cache_dir: str | os.PathLike | None = None) -> list[PixelCacheInfo]:
    """
    The pixel caches in `cache_dir`, most recently used first.

    Args:
        cache_dir (`str` or `os.PathLike`, *optional*): Defaults to `$PRUNEFUSE_PIXEL_CACHE`, else `prunefuse_hf/`
            in the `datasets` cache (where runs write them).

    Raises:
        `OSError`: the folder cannot be read (the message names it and the fix).

    Returns:
        `list[PixelCacheInfo]`: one per cache key, including incomplete ones (`complete=False`: a build under way or
        an interrupted one, or a cache written before descriptions existed). `datasets`' temporary files that builds
        of earlier versions left in the folder (`tmp` and 8 characters) are listed each as an incomplete cache whose
        key is the file name.

    Example:

    ```python
    >>> from prunefuse_hf.data import list_pixel_caches
    >>> for info in list_pixel_caches():
    ...     print(info.key, info.cache_format, info.num_images, info.size_bytes, info.last_used)
    ```
    """
    directory = resolve_cache_dir(cache_dir)
    if not directory.is_dir():
        return []
    keys = set()
    try:
        names = list(directory.iterdir())
    except OSError as error:
        raise OSError(
            f"Cannot read the pixel cache folder {directory} ({type(error).__name__}: {error}): make it readable, or "
            f"point ${PIXEL_CACHE_DIR_ENV} (`--cache_dir` on the command line) at another folder."
        ) from None
    for path in names:
        if (key := owner_key(path)) is not None:
            keys.add(key)
    # Another process may remove a cache while this one lists it: a cache with no file left is not listed.
    infos = [info for key in sorted(keys) if (info := _info(directory, key)) is not None]
    return sorted(infos, key=lambda info: info.last_used, reverse=True)


def clear_pixel_caches(
    cache_dir: str | os.PathLike | None = None,
    *,
    older_than_days: float | None = None,
    keys: list[str] | None = None,
    clear_all: bool = False,
    dry_run: bool = False,
) -> list[PixelCacheInfo]:
    """
    Remove pixel caches: those not used for `older_than_days`, those of `keys`, or all of them.

    A run whose cache is removed builds it again when it next needs it; nothing else depends on the files. A cache
    whose lock another process holds (it builds it, or opens or removes it) is kept, and the log says so.

    Args:
        cache_dir (`str` or `os.PathLike`, *optional*): As in [`list_pixel_caches`].
        older_than_days (`float`, *optional*): Remove the caches last used more than this many days ago.
        keys (`list[str]`, *optional*): Remove these caches (keys as `list_pixel_caches` gives them, or unique
            prefixes of at least 6 characters).
        clear_all (`bool`, *optional*, defaults to `False`): Remove every cache.
        dry_run (`bool`, *optional*, defaults to `False`): Only return what would be removed.

    Returns:
        `list[PixelCacheInfo]`: the caches removed (or that would be).

    Raises:
        `ValueError`: no selector, `older_than_days` negative, or a key that matches no cache or several.
        `OSError`: a cache cannot be removed (a read-only folder): the message names it and the fix.

    Example:

    ```python
    >>> from prunefuse_hf.data import clear_pixel_caches
    >>> removed = clear_pixel_caches(older_than_days=30, dry_run=True)
    >>> sum(info.size_bytes for info in removed)  # bytes that clearing would free
    0
    ```
    """
    if older_than_days is None and not keys and not clear_all:
        raise ValueError(
            "Say which pixel caches to remove: older_than_days (e.g. 30), keys (from list_pixel_caches / "
            "`prunefuse-hf cache list`), or clear_all=True (`--older_than DAYS`, `KEY ...` or `--all` on the command "
            "line)."
        )
    if older_than_days is not None and (isinstance(older_than_days, bool) or not older_than_days >= 0):
        raise ValueError(f"older_than_days must be a number >= 0, got {older_than_days!r}.")
    directory = resolve_cache_dir(cache_dir)
    caches = list_pixel_caches(directory)
    selected = {info.key for info in caches} if clear_all else set()
    for wanted in keys or []:
        matches = (
            [info.key for info in caches if info.key.startswith(wanted.lower())] if len(wanted) >= 6 else []
        )
        if len(matches) != 1:
            reason = "matches no cache" if not matches else f"matches {len(matches)} caches"
            raise ValueError(
                f"Key {wanted!r} {reason} in {directory}: give a full key or a unique prefix of at least 6 "
                "characters, as `prunefuse-hf cache list` shows them."
            )
        selected.add(matches[0])
    if older_than_days is not None:
        cutoff = utc_now().timestamp() - older_than_days * _SECONDS_PER_DAY
        selected |= {info.key for info in caches if info.last_used.timestamp() < cutoff}
    removed = []
    for info in caches:
        if info.key not in selected:
            continue
        try:
            removable = remove_unless_held(directory, info.key, dry_run=dry_run)
        except OSError as error:
            raise OSError(
                f"Cannot remove the pixel cache {info.key} from {directory} ({type(error).__name__}: {error}): make "
                "the folder writable (or run as its owner) and clear it again."
            ) from None
        if not removable:
            logger.warning(
                f"Kept the pixel cache {info.key} in {directory}: another process holds it (building it, or opening "
                "or removing it). Clear it again once that process is done."
            )
            continue
        removed.append(info)
        if not dry_run:
            logger.info(f"Removed pixel cache {info.key} ({info.size_bytes:,} bytes)")
    return removed


def format_bytes(size: float) -> str:
    """A size in bytes as messages show it, in decimal units (`1.5 GB`)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError


def format_seconds(seconds: float) -> str:
    """A duration as messages show it (`4.2 s`, `12 min`, `1.5 h`)."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _info(directory: Path, key: str) -> PixelCacheInfo | None:
    if is_loose_temporary(key):
        paths = [directory / key]
    else:
        partial = build_dir(directory, key)
        leftovers = sorted(path for path in partial.rglob("*") if path.is_file()) if partial.is_dir() else []
        paths = [*cache_files(directory, key), description_path(directory, key), lock_path(directory, key),
                 *descriptions_written(directory, key), *leftovers]  # fmt: skip
    stats = {}
    for path in paths:
        try:
            stats[path] = path.stat()
        except OSError:  # not there, or removed meanwhile by another process
            continue
    if not stats:
        return None
    description_file = description_path(directory, key)
    description = {}
    if description_file in stats:
        try:
            description = json.loads(description_file.read_text())
        except (OSError, ValueError):
            description = {}
    mtimes = [stat.st_mtime for stat in stats.values()]
    last_used = stats[description_file].st_mtime if description else max(mtimes)
    created = description.get("created")
    return PixelCacheInfo(
        key=key,
        files=list(stats),
        size_bytes=sum(stat.st_size for stat in stats.values()),
        created=datetime.fromisoformat(created)
        if created
        else datetime.fromtimestamp(max(mtimes), timezone.utc),
        last_used=datetime.fromtimestamp(last_used, timezone.utc),
        complete=not is_loose_temporary(key) and is_complete(directory, key),
        num_images=description.get("num_images"),
        shape=tuple(description["shape"]) if "shape" in description else None,
        cache_format=description.get("format"),
        processor=description.get("processor"),
        dataset_fingerprint=description.get("dataset_fingerprint"),
        description=description,
    )
