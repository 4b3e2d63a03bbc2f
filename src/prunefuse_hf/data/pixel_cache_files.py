"""The files of one pixel cache, and the lock that keeps processes from building, reading and removing it at once.

A cache `key` owns, in the cache folder: its Arrow file(s) (`pixels-<key>.arrow`, or one per building process), its
description (`pixels-<key>.json`, written last: its presence marks the cache complete), its lock (`pixels-<key>.lock`,
while a process holds it), its build folder (`pixels-<key>.partial/`, while a build writes) and a description being
written. [`owner_key`] says which key a file name belongs to, [`remove_unless_held`] removes what a key owns. The
folder as a whole (where it is, its cap, listing, eviction, clearing) is `pixel_cache.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import filelock
from transformers.utils import logging

from ..constants import PIXEL_CACHE_PREFIX, VERSION
from ..utils.io import atomic_write

logger = logging.get_logger(__name__)

_FILE_PATTERN = re.compile(rf"^{re.escape(PIXEL_CACHE_PREFIX)}([0-9a-f]+)(?:_\d{{5}}_of_\d{{5}})?\.arrow$")
# What else a cache key owns: its description, its lock, its build folder, a description being written (atomic_write).
_OWNED_PATTERN = re.compile(
    rf"^\.?{re.escape(PIXEL_CACHE_PREFIX)}([0-9a-f]+)(?:\.json|\.lock|\.partial|\.json\.[0-9a-f]{{8}}\.tmp)$"
)
# `datasets`' temporary files (tempfile.NamedTemporaryFile) that builds of versions before build folders left here.
_LOOSE_TEMPORARY = re.compile(r"^tmp[a-z0-9_]{8}$")
# A process that finds a cache's lock held waits this long before saying that it waits.
_QUIET_WAIT_SECONDS = 1.0


def owner_key(path: Path) -> str | None:
    """
    The cache key that owns the file or folder `path` of a cache folder (an Arrow file, a description, a lock, a build
    folder, a description being written), or `None` for anything else. A `datasets` temporary file that a build of a
    version before build folders left (`tmp` and 8 characters) is owned by a key of its own: its file name.
    """
    if match := _FILE_PATTERN.match(path.name) or _OWNED_PATTERN.match(path.name):
        return match.group(1)
    if _LOOSE_TEMPORARY.match(path.name) and path.is_file():
        return path.name
    return None


def is_loose_temporary(key: str) -> bool:
    """Whether `key` names a loose `datasets` temporary file (see [`owner_key`]) rather than a cache."""
    return bool(_LOOSE_TEMPORARY.match(key))


def cache_files(cache_dir: Path, key: str) -> list[Path]:
    """The Arrow file(s) of a cache (one per building process), without the description."""
    return sorted(
        path
        for path in cache_dir.glob(f"{PIXEL_CACHE_PREFIX}{key}*.arrow")
        if (match := _FILE_PATTERN.match(path.name)) and match.group(1) == key
    )


def description_path(cache_dir: Path, key: str) -> Path:
    """The description of the cache `key` (`pixels-<key>.json`), whose presence marks it complete."""
    return cache_dir / f"{PIXEL_CACHE_PREFIX}{key}.json"


def lock_path(cache_dir: Path, key: str) -> Path:
    """The file of the cache `key`'s inter-process lock (see [`CacheLock`])."""
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
    """Record that the cache `key` was just read."""
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
    >>> from prunefuse_hf.data.pixel_cache_files import CacheLock
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
        *descriptions_written(cache_dir, key),
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


def descriptions_written(cache_dir: Path, key: str) -> list[Path]:
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
        "created": utc_now().isoformat(timespec="seconds"),
        **description,
    }
    atomic_write(
        description_path(cache_dir, key), lambda f: f.write(json.dumps(description, indent=2) + "\n")
    )


def utc_now() -> datetime:
    """Now, in UTC (the time of descriptions and of `cache clear --older_than`)."""
    return datetime.fromtimestamp(time.time(), timezone.utc)
