"""The pixel cache on disk: its formats, its files and their descriptions, and listing and removing old caches.

A cache holds the `uint8` geometry output of one pool under one preprocessing (see [`ImagePreprocessor`]); its key
hashes the pool's fingerprint, the processor and the format. The formats:

- **raw**: `uint8 [C, H, W]` arrays, read as zero-copy views of the memory-mapped Arrow file (no decoding at all).
  150 KB per image at 3×224×224 (196 GB for an ImageNet-sized pool of 1.28M).
- **jpeg**: the same pixels re-encoded as JPEG (quality 90, 4:2:0 chroma), decoded per batch. Lossy: pixels differ
  from the processor's by a few levels (measured in `benchmarks/scale.py --only cache`); about a tenth of raw.
  Decoding an already-resized 224 px JPEG is several times cheaper than the original file plus its resize.
- **png**: lossless (the processor's exact pixels), about half of raw for photos, decoded per batch.
- **auto**: raw when the raw pixels take at most `AUTO_RAW_MAX_BYTES` (10 GB: small or low-resolution pools keep
  exact, decode-free reads) and fit the disk rule (at most half of the free space), JPEG otherwise.

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

import contextlib
import io
import json
import os
import re
import shutil
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import datasets
import filelock
import numpy as np
import PIL.Image
from transformers.utils import logging

from ..constants import (
    DEFAULT_PIXEL_CACHE_MAX_SIZE,
    PIXEL_CACHE_DIR_ENV,
    PIXEL_CACHE_MAX_SIZE_ENV,
    PIXEL_CACHE_PREFIX,
    PIXEL_VALUES,
    VERSION,
)
from ..utils.checks import check_size
from ..utils.io import atomic_write
from .images import ImageDecodeError

logger = logging.get_logger(__name__)

JPEG_QUALITY = 90
# "auto" stores raw pixels up to this size: zero-copy reads and exact pixels, at most a tenth of an ordinary disk.
AUTO_RAW_MAX_BYTES = 10 * 10**9
_FORMAT_NAMES = {"raw": "raw uint8", "jpeg": f"JPEG q{JPEG_QUALITY}", "png": "PNG (lossless)"}
_FILE_PATTERN = re.compile(rf"^{re.escape(PIXEL_CACHE_PREFIX)}([0-9a-f]+)(?:_\d{{5}}_of_\d{{5}})?\.arrow$")
# What else a cache key owns: its description, its lock, its build folder, a description being written (atomic_write).
_OWNED_PATTERN = re.compile(
    rf"^\.?{re.escape(PIXEL_CACHE_PREFIX)}([0-9a-f]+)(?:\.json|\.lock|\.partial|\.json\.[0-9a-f]{{8}}\.tmp)$"
)
# `datasets`' temporary files (tempfile.NamedTemporaryFile) that builds of versions before build folders left here.
_LOOSE_TEMPORARY = re.compile(r"^tmp[a-z0-9_]{8}$")
# A process that finds a cache's lock held waits this long before saying that it waits.
_QUIET_WAIT_SECONDS = 1.0
_SECONDS_PER_DAY = 86400
# Images decoded (spread over the pool) to estimate the rate and the compressed size before a build.
SAMPLE_SIZE = 16
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


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, which containers and `taskset` restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def describe_format(cache_format: str) -> str:
    return _FORMAT_NAMES[cache_format]


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


def cache_files(cache_dir: Path, key: str) -> list[Path]:
    """The Arrow file(s) of a cache (one per building process), without the description."""
    return sorted(
        path
        for path in cache_dir.glob(f"{PIXEL_CACHE_PREFIX}{key}*.arrow")
        if (match := _FILE_PATTERN.match(path.name)) and match.group(1) == key
    )


def description_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{PIXEL_CACHE_PREFIX}{key}.json"


def lock_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{PIXEL_CACHE_PREFIX}{key}.lock"


def build_dir(cache_dir: Path, key: str) -> Path:
    """The folder a build of the cache `key` writes into (its files move out of it when they are complete)."""
    return cache_dir / f"{PIXEL_CACHE_PREFIX}{key}.partial"


def is_complete(cache_dir: Path, key: str) -> bool:
    """Whether the cache `key` was fully built: its description exists and every file it lists too."""
    path = description_path(cache_dir, key)
    if not path.is_file():
        return False
    try:
        files = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    return bool(files) and all((cache_dir / name).is_file() for name in files)


def mark_used(cache_dir: Path, key: str) -> None:
    # The description's modification time is the last use: `cache clear --older_than` goes by it.
    try:
        os.utime(description_path(cache_dir, key))
    except OSError:  # a read-only cache is still read
        pass


class CacheLock:
    """
    The inter-process lock of one pixel cache, held while a process builds the cache, opens it to read, or removes
    it: one process builds a missing cache, the others wait and then read it.

    Its file (`pixels-<key>.lock`) exists while the lock is held: the holder deletes it before releasing (a process
    that was waiting on the deleted file sees so once it gets it, and takes the lock again on a new file). A file
    left by a killed holder no longer locks anything; it is listed with the cache and removed with it.

    Args:
        cache_dir (`Path`): The cache folder (it must exist).
        key (`str`): The cache key.

    Example:

    ```python
    >>> from pathlib import Path
    >>> from prunefuse_hf.data.pixel_cache import CacheLock
    >>> with CacheLock(Path("."), "0123abcd"):  # builds or reads the cache 0123abcd here
    ...     pass
    ```
    """

    def __init__(self, cache_dir: Path, key: str):
        self.cache_dir = Path(cache_dir)
        self.key = key
        self.path = lock_path(self.cache_dir, key)
        self._lock = filelock.FileLock(str(self.path))

    def acquire(self, *, blocking: bool = True) -> bool:
        """
        Take the lock, waiting for another holder (said once when the wait passes a second); with `blocking=False`,
        give up at once when another process holds it.

        Returns:
            `bool`: whether the lock was taken (always `True` when blocking).

        Raises:
            `OSError`: the lock file cannot be created (a read-only or full folder).
        """
        try:
            self._lock.acquire(timeout=_QUIET_WAIT_SECONDS if blocking else 0)
            return True
        except filelock.Timeout:
            if not blocking:
                return False
        logger.warning(
            f"Waiting for another process that holds the pixel cache {self.key} in {self.cache_dir} (building it, "
            "or opening or removing it): this run reads the cache once it is done, or builds it if it is missing."
        )
        self._lock.acquire()
        return True

    def release(self, *, keep_file: bool = False) -> None:
        """Release the lock, deleting its file first (unless `keep_file`) so that the folder keeps no lock file of a
        finished build."""
        if not keep_file:
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)
        self._lock.release()

    def __enter__(self) -> CacheLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def remove_files(cache_dir: Path, key: str) -> None:
    """
    Remove a cache's files and what a build of it left (its build folder, a description being written); not its
    lock, which its holder deletes. The caller holds the cache's lock (see [`remove_unless_held`]).
    """
    if _LOOSE_TEMPORARY.match(key):
        (cache_dir / key).unlink(missing_ok=True)
        return
    # The description first: a cache half removed is incomplete, never read.
    for path in [
        description_path(cache_dir, key),
        *cache_files(cache_dir, key),
        *_descriptions_written(cache_dir, key),
    ]:
        path.unlink(missing_ok=True)
    if build_dir(cache_dir, key).exists():
        shutil.rmtree(build_dir(cache_dir, key))


def remove_unless_held(cache_dir: Path, key: str, *, dry_run: bool = False) -> bool:
    """
    Remove the cache `key` (see [`remove_files`]) unless another process holds its lock (builds it, or opens or
    removes it).

    Returns:
        `bool`: whether it was removed (or, with `dry_run`, could be).

    Raises:
        `OSError`: the folder cannot be written (a lock or a file cannot be created or removed).
    """
    if _LOOSE_TEMPORARY.match(key):  # nobody locks these
        if not dry_run:
            remove_files(cache_dir, key)
        return True
    lock = CacheLock(cache_dir, key)
    if dry_run and not lock.path.exists():  # a holder has its lock file: nobody holds this cache
        return True
    try:
        if not lock.acquire(blocking=False):
            return False
    except OSError:
        if dry_run:  # a read-only folder: what would be removed once it is writable
            return True
        raise
    try:
        if not dry_run:
            remove_files(cache_dir, key)
    finally:
        lock.release(keep_file=dry_run)  # a dry run changes nothing
    return True


def _descriptions_written(cache_dir: Path, key: str) -> list[Path]:
    """Temporary files of a description being written (`atomic_write`), left when its writer was killed."""
    return sorted(
        path
        for path in cache_dir.glob(f".{PIXEL_CACHE_PREFIX}{key}.json.*.tmp")
        if (match := _OWNED_PATTERN.match(path.name)) and match.group(1) == key
    )


def write_description(cache_dir: Path, key: str, description: dict) -> None:
    """Write the description of a complete cache (last: its presence marks the build as complete)."""
    description = {
        "version": VERSION,
        "key": key,
        "created": _now().isoformat(timespec="seconds"),
        **description,
    }
    atomic_write(
        description_path(cache_dir, key), lambda f: f.write(json.dumps(description, indent=2) + "\n")
    )


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
        if match := _FILE_PATTERN.match(path.name) or _OWNED_PATTERN.match(path.name):
            keys.add(match.group(1))
        elif _LOOSE_TEMPORARY.match(path.name) and path.is_file():
            keys.add(path.name)
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
        cutoff = _now().timestamp() - older_than_days * _SECONDS_PER_DAY
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
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError


def format_seconds(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def choose_format(cache_format: str, raw_bytes: int) -> str:
    if cache_format != "auto":
        return cache_format
    return "raw" if raw_bytes <= AUTO_RAW_MAX_BYTES else "jpeg"


def describe_processor(processor) -> str:
    size = getattr(processor, "size", None)
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    return f"{type(processor).__name__} size={dict(size) if size else None}" + (
        f" crop={dict(crop)}" if crop else ""
    )


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


def _info(directory: Path, key: str) -> PixelCacheInfo | None:
    if _LOOSE_TEMPORARY.match(key):
        paths = [directory / key]
    else:
        partial = build_dir(directory, key)
        leftovers = sorted(path for path in partial.rglob("*") if path.is_file()) if partial.is_dir() else []
        paths = [*cache_files(directory, key), description_path(directory, key), lock_path(directory, key),
                 *_descriptions_written(directory, key), *leftovers]  # fmt: skip
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
        complete=not _LOOSE_TEMPORARY.match(key) and is_complete(directory, key),
        num_images=description.get("num_images"),
        shape=tuple(description["shape"]) if "shape" in description else None,
        cache_format=description.get("format"),
        processor=description.get("processor"),
        dataset_fingerprint=description.get("dataset_fingerprint"),
        description=description,
    )


def _now() -> datetime:
    return datetime.fromtimestamp(time.time(), timezone.utc)
