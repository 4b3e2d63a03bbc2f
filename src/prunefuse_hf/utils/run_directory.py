"""The run directory: its layout, atomic writes, and the checks before a run may use it.

Every file is written to a temporary name and renamed into place, so a crash or Ctrl-C leaves either
the previous version or the new one, never half of one. Checkpoint directories are swapped the same
way (the old one is removed only once the new one is complete).
"""

from __future__ import annotations

import enum
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import IO

from ..constants import FUSED_DIR, METRICS_NAME, REPORT_NAME, SELECTION_NAME, STATE_NAME, SURROGATE_DIR

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


def step_name(kind: str, round_: int = 0) -> str:
    """The name a run's state records for a finished step: `kind` (init, report) or `kind:round` (e.g. `label:2`)."""
    return f"{kind}:{round_}" if round_ else kind


class RunDirectoryError(ValueError):
    """The run directory cannot be used as asked (exists without --resume/--overwrite, or no run to resume)."""


class RunDirectory:
    """Paths and atomic writes for one run's `output_dir`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def state_path(self) -> Path:
        return self.path / STATE_NAME

    @property
    def selection_path(self) -> Path:
        return self.path / SELECTION_NAME

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_NAME

    @property
    def report_path(self) -> Path:
        return self.path / REPORT_NAME

    @property
    def surrogate_dir(self) -> Path:
        return self.path / SURROGATE_DIR

    @property
    def fused_dir(self) -> Path:
        return self.path / FUSED_DIR

    def has_run(self) -> bool:
        return self.state_path.is_file()

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Check the directory may be used, before anything is written.

        Raises:
            RunDirectoryError: the directory holds files and neither `resume` nor `overwrite` is set, or
                `resume` is set but there is no run to resume.
        """
        occupied = self.path.exists() and any(self.path.iterdir())
        if resume:
            if not self.has_run():
                raise RunDirectoryError(
                    f"--resume was given but {self.path} holds no run ({STATE_NAME} is missing). Start a new run "
                    "without --resume, or point --output_dir at the run to continue."
                )
            return
        if occupied and not overwrite:
            what = "a PruneFuse run" if self.has_run() else "files"
            raise RunDirectoryError(
                f"output_dir {self.path} already holds {what}. Pass --resume to continue it, --overwrite to "
                "replace it, or choose another --output_dir."
            )
        if occupied and overwrite:
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    def read_state(self) -> dict:
        with open(self.state_path) as f:
            return json.load(f)

    def write_json(self, name: str | Path, data) -> Path:
        return self.write_text(name, json.dumps(data, indent=2, sort_keys=False, default=json_default))

    def write_text(self, name: str | Path, text: str) -> Path:
        return atomic_write(self.path / name, lambda f: f.write(text))

    def save_dir(self, name: str, save: Callable[[Path], None]) -> Path:
        """Run `save(tmp_dir)` then swap the result in as `name` (the old version survives a crash)."""
        target = self.path / name
        tmp_dir = self.path / f".{name}.tmp"
        old_dir = self.path / f".{name}.old"
        if old_dir.exists() and not target.exists():
            # A crash between the two renames below: the previous version is the only one, put it back first.
            os.replace(old_dir, target)
        for leftover in (tmp_dir, old_dir):
            if leftover.exists():
                shutil.rmtree(leftover)
        save(tmp_dir)
        if target.exists():
            os.replace(target, old_dir)
        os.replace(tmp_dir, target)
        if old_dir.exists():
            shutil.rmtree(old_dir)
        return target


def redact_secrets(value):
    """A copy of `value` (nested dicts and lists) without the keys that may hold credentials (`*token*`, ...)."""
    if isinstance(value, dict):
        return {k: redact_secrets(v) for k, v in value.items() if not SECRET_KEY.search(str(k))}
    if isinstance(value, (list, tuple)):
        return [redact_secrets(v) for v in value]
    return value


def run_data_arguments(recipe: dict | None) -> dict | None:
    """The run's data arguments (recipe values over `DataArguments` defaults), or `None` without a recipe."""
    from ..arguments import DataArguments

    if recipe is None:
        return None
    return {f.name: recipe.get(f.name, f.default) for f in fields(DataArguments)}


def json_default(value):
    """`json.dumps(default=...)` for run records: numpy scalars and arrays as numbers and lists, enums as values."""
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
