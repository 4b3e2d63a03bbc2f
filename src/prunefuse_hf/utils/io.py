"""Writing files that survive a crash (atomic replace, fsync of the folder) and the JSON conventions of run
records (numpy values, no secrets)."""

from __future__ import annotations

import enum
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

# Keys that may hold credentials: never written to a card, a repo or the run directory.
SECRET_KEY = re.compile(r"token|password|secret|api_key", re.IGNORECASE)


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = False) -> Path:
    """
    Write a file so that readers see the old version or the new one, never part of one (Ctrl-C included).

    `write(f)` fills a temporary file next to `path`, which is flushed to disk and renamed over `path`; the rename
    is made durable too. A failed write leaves no temporary file behind.

    Args:
        path (`str` or `os.PathLike`): The file to (re)write; its parent folder is created.
        write (`Callable[[IO], None]`): Writes the content to the open file.
        binary (`bool`, *optional*, defaults to `False`): Open the file in binary mode (text is UTF-8).

    Returns:
        `Path`: `path`.

    Example:

    ```python
    >>> atomic_write("state.json", lambda f: f.write('{"completed": []}'))
    PosixPath('state.json')
    ```
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp_path, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def fsync_directory(path: Path) -> None:
    """Make a rename in `path` durable (not possible on every platform, where the rename is still atomic)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def redact_secrets(value):
    """A copy of `value` (nested dicts and lists) without the keys that may hold credentials (`*token*`, ...)."""
    if isinstance(value, dict):
        return {k: redact_secrets(v) for k, v in value.items() if not SECRET_KEY.search(str(k))}
    if isinstance(value, (list, tuple)):
        return [redact_secrets(v) for v in value]
    return value


def json_default(value):
    """`json.dumps(default=...)` for run records: numpy scalars and arrays as numbers and lists, enums as values."""
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
