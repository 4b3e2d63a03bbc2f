"""The run directory: its layout, atomic writes, and the checks before a run may use it.

Every file is written to a temporary name and renamed into place, so a crash or Ctrl-C leaves either
the previous version or the new one, never half of one. Checkpoint directories are swapped the same
way (the old one is removed only once the new one is complete).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..constants import (
    FUSED_DIR,
    METRICS_NAME,
    POOL_ARRAYS,
    POOL_ARRAYS_PREFIX,
    REPORT_NAME,
    ROW_DIGESTS,
    SELECTION_NAME,
    STATE_NAME,
    SURROGATE_DIR,
)
from .io import atomic_write, json_default

# What the arrays file holds: the pool's arrays, and the labeled rows' pixel digests when the run keeps them.
_PER_IMAGE = (*POOL_ARRAYS, ROW_DIGESTS)


def step_name(kind: str, round_: int = 0) -> str:
    """The name a run's state records for a finished step: `kind` (init, report) or `kind:round` (e.g. `label:2`)."""
    return f"{kind}:{round_}" if round_ else kind


class RunDirectoryError(ValueError):
    """The run directory cannot be used as asked (exists without --resume/--overwrite, or no run to resume)."""


class RunDirectory:
    """Paths and atomic writes for one run's `output_dir`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        # (file name, arrays) of the pool arrays last written or read, to write them again only when they change.
        self._written_arrays: tuple[str, dict] | None = None

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
        """The run's state; the pool's per-image arrays, kept beside it, are put back in `state["pool"]` (numpy
        arrays). A state whose arrays are inline (state version 2) reads back as it was written."""
        with open(self.state_path) as f:
            state = json.load(f)
        pool = state.get("pool")
        if isinstance(pool, dict) and pool.get("arrays_file"):
            with np.load(self.path / pool["arrays_file"]) as arrays:
                pool.update(_dense_arrays(arrays, pool["num_examples"]))
            self._written_arrays = (
                pool["arrays_file"],
                {name: pool[name].copy() for name in _arrays_of(pool)},
            )
        return state

    def pool_arrays_changed(self, state: dict) -> bool:
        """Whether `state["pool"]`'s per-image arrays differ from the ones last written or read."""
        pool = state.get("pool") or {}
        written = self._written_arrays
        names = _arrays_of(pool)
        return (
            written is None
            or set(written[1]) != set(names)
            or any(not _same(written[1][name], pool[name]) for name in names)
        )

    def write_state(self, state: dict) -> Path:
        """
        Write `state.json`, with the pool's per-image arrays (`state["pool"]`'s rounds, labels and scores, numpy
        arrays from `DataPool.state_dict(as_arrays=True)`, and the labeled rows' pixel digests when given) in an
        `.npz` file beside it, written only when they changed: a step that labels nothing rewrites only the small
        JSON, whatever the pool's size. The file holds only the rows that differ from an untouched row (unlabeled,
        no score, no digest), so its size grows with the labeled set, not with the pool.

        Each arrays file has a new name and the old one is removed only after `state.json` points to the new
        one, so a crash at any point leaves a state and the arrays it names.
        """
        pool = state.get("pool")
        if not isinstance(pool, dict) or not all(isinstance(pool.get(n), np.ndarray) for n in POOL_ARRAYS):
            return self.write_json(STATE_NAME, state)
        if self.pool_arrays_changed(state):
            previous = self._written_arrays
            revision = int(previous[0].rsplit("-", 1)[1].split(".")[0]) + 1 if previous else 1
            name = f"{POOL_ARRAYS_PREFIX}-{revision}.npz"
            arrays = {n: pool[n].copy() for n in _arrays_of(pool)}
            sparse = _sparse_arrays(arrays)
            atomic_write(self.path / name, lambda f: np.savez(f, **sparse), binary=True)
            self._written_arrays = (name, arrays)
        name = self._written_arrays[0]
        light = {
            **state,
            "pool": {**{k: v for k, v in pool.items() if k not in _PER_IMAGE}, "arrays_file": name},
        }
        path = self.write_json(STATE_NAME, light)
        for stale in self.path.glob(f"{POOL_ARRAYS_PREFIX}-*.npz"):
            if stale.name != name:
                stale.unlink()
        return path

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


# The value of each per-image array in a row the run has not touched: the arrays file leaves those rows out.
_UNTOUCHED = {"rounds": 0, "labels": -1, "scores": np.nan, ROW_DIGESTS: 0}
_SPARSE_ROWS = "rows"


def _sparse_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The rows where any array differs from `_UNTOUCHED`, and each array at those rows."""
    touched = np.zeros(len(arrays["rounds"]), dtype=bool)
    for name, values in arrays.items():
        untouched = _UNTOUCHED[name]
        touched |= ~np.isnan(values) if untouched is np.nan else values != untouched
    rows = np.flatnonzero(touched)
    return {_SPARSE_ROWS: rows, **{name: values[rows] for name, values in arrays.items()}}


def _dense_arrays(stored, num_examples: int) -> dict[str, np.ndarray]:
    """The per-image arrays of a file written by `_sparse_arrays` (or, from state version 3, whole)."""
    if _SPARSE_ROWS not in stored.files:
        return {name: stored[name] for name in stored.files}
    rows = stored[_SPARSE_ROWS]
    arrays = {}
    for name in stored.files:
        if name != _SPARSE_ROWS:
            values = stored[name]
            arrays[name] = np.full(num_examples, _UNTOUCHED[name], dtype=values.dtype)
            arrays[name][rows] = values
    return arrays


def _arrays_of(pool: dict) -> list[str]:
    """The per-image arrays `pool` holds (the digests are optional)."""
    return [name for name in _PER_IMAGE if isinstance(pool.get(name), np.ndarray)]


def _same(old: np.ndarray, new) -> bool:
    """Equal arrays, NaN scores included (`==` never finds NaN equal to itself)."""
    new = np.asarray(new)
    return np.array_equal(old, new, equal_nan=old.dtype.kind == "f" and new.dtype.kind == "f")
