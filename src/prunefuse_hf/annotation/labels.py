"""Labels as data: `LabelBatch` (pool indices and class ids from one source), `LabelError`, and the parsing
of cells into pool indices and class ids (names or ids), shared by every reader."""

from __future__ import annotations

import difflib
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..constants import (
    IMAGE_PATH,
    POOL_INDEX,
    QUERY_CSV,
    QUERY_FILE_NAME,
)

_INTEGER = re.compile(r"^[+-]?\d+$")
# Fields of a label file or export that say which image a label was given for (a Label Studio task's `image`, and
# the `file_name` and `image_path` PruneFuse writes into every query): checked against the query.
REFERENCE_FIELDS = (IMAGE_PATH, QUERY_FILE_NAME, "image")


class LabelError(ValueError):
    """Labels that cannot be used as given; the message names the file, the value and the fix."""


@dataclass
class LabelBatch:
    """
    Labels for some pool indices, from one source.

    Args:
        pool_indices (`np.ndarray` of shape `(n,)`, int64):
            Pool indices (rows of the base dataset), in the order of the source.
        labels (`np.ndarray` of shape `(n,)`, int64):
            Class ids in `[0, num_classes)`, already mapped from class names; `labels[j]` labels `pool_indices[j]`.
        source (`str`):
            Where the labels come from: the file path as given, `"oracle:<column>"` or `"dataset:<repo or dir>"`.
        details (`dict[str, list]`, *optional*):
            Per-label facts of an annotation tool, aligned with `pool_indices`: `annotator`, `annotation_id`,
            `num_answers` and `resolution` (see `ANNOTATION_COLUMNS`); stored with the labels.
        skipped (`np.ndarray`, int64, *optional*):
            Pool indices that annotators skipped (every answer cancelled), so not labeled.
        references (`list[dict]`, *optional*):
            Per label, the image references its row carries (`REFERENCE_FIELDS` found there: `image_path`,
            `file_name`, a Label Studio task's `image`), checked against the query before anything is stored.
        places (`list[str]`, *optional*):
            Per label, where it is in the source (e.g. `"line 4"`, `"Label Studio task 12 (item 3)"`).

    Example:

    ```python
    >>> batch = LabelBatch([12, 3], [1, 0], source="labels.csv")
    >>> batch.pool_indices.dtype, len(batch)
    (dtype('int64'), 2)
    ```
    """

    pool_indices: np.ndarray
    labels: np.ndarray
    source: str
    details: dict[str, list] | None = None
    skipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    references: list[dict] | None = None
    places: list[str] | None = None

    def __post_init__(self):
        self.pool_indices = np.asarray(self.pool_indices, dtype=np.int64).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.skipped = np.asarray(self.skipped, dtype=np.int64).reshape(-1)
        if len(self.pool_indices) != len(self.labels):
            raise LabelError(
                f"{self.source}: {len(self.pool_indices)} pool indices but {len(self.labels)} labels; a LabelBatch "
                "needs one label per pool index."
            )

    def __len__(self) -> int:
        return len(self.pool_indices)


@dataclass
class LabelRows:
    """Raw index and label cells of a source, before validation; `describe(j)` says where row j is."""

    indices: list
    labels: list
    describe: Callable[[int], str]
    num_rows: int
    details: dict[str, list] | None = None  # per row: annotator, annotation_id, num_answers, resolution
    skipped: list = field(default_factory=list)  # raw pool index cells of skipped tasks
    references: list[dict] | None = None  # per row: the image references it carries (REFERENCE_FIELDS)


def image_references(record: dict) -> dict:
    """The image references (`REFERENCE_FIELDS`) of one row or task data that hold a non-blank string."""
    return {
        key: record[key].strip()
        for key in REFERENCE_FIELDS
        if isinstance(record.get(key), str) and record[key].strip()
    }


def truthy(value) -> bool:
    """Whether a cell of an export means yes: `True`, a non-zero number, or 'true'/'1'/'yes' (NaN and `None` are no)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return (
        bool(value) if value is not None and not (isinstance(value, float) and math.isnan(value)) else False
    )


class ClassLookup:
    """
    Class ids from label cells: class names (exact, then case-insensitive when that is unambiguous) or integer ids.

    Args:
        class_names (`list[str]`): The run's class names, checked by [`check_class_names`]; id `k` is
            `class_names[k]`.

    Example:

    ```python
    >>> lookup = ClassLookup(["cat", "dog"])
    >>> lookup.parse("Dog", "labels.csv, line 2"), lookup.parse("0", "labels.csv, line 3"), lookup.parse("", "x")
    (1, 0, None)
    ```
    """

    def __init__(self, class_names: list[str]):
        self.names = class_names
        self.exact = {name: k for k, name in enumerate(class_names)}
        self.folded: dict[str, list[int]] = {}
        for k, name in enumerate(class_names):
            self.folded.setdefault(name.casefold(), []).append(k)

    def describe_names(self, limit: int = 100) -> str:
        shown = ", ".join(repr(name) for name in self.names[:limit])
        more = f", ... ({len(self.names)} in all)" if len(self.names) > limit else ""
        return f"[{shown}{more}] (or their ids 0..{len(self.names) - 1})"

    def check_id(self, value: int, where: str) -> int:
        if not 0 <= value < len(self.names):
            raise LabelError(
                f"{where}: class id {value} is out of range; the run has {len(self.names)} classes, so ids go from "
                f"0 to {len(self.names) - 1}. Fix the label, or write the class name: {self.describe_names(20)}."
            )
        return value

    def from_text(self, text: str, where: str) -> int:
        if text in self.exact:
            return self.exact[text]
        folded = self.folded.get(text.casefold(), [])
        if len(folded) == 1:
            return folded[0]
        if len(folded) > 1:
            raise LabelError(
                f"{where}: class name {text!r} matches {[self.names[k] for k in folded]} when case is ignored. Write "
                "the name with its exact case."
            )
        if _INTEGER.match(text):
            return self.check_id(int(text), where)
        close = difflib.get_close_matches(text, self.names, n=3)
        hint = f" Did you mean {' or '.join(repr(name) for name in close)}?" if close else ""
        raise LabelError(f"{where}: unknown class name {text!r}.{hint} Valid names: {self.describe_names()}.")

    def parse(self, value, where: str) -> int | None:
        """Class id of one label cell, or None when the cell holds no label."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if isinstance(
            value, dict
        ):  # Label Studio JSON_MIN/CSV: {"choices": [...]}, {"taxonomy": [[...]]}, ...
            kind = next((key for key in ("choices", "taxonomy", "labels") if key in value), None)
            if kind is None:
                raise LabelError(
                    f"{where}: label {value!r} is not a class name or id; PruneFuse reads Choices, single-level "
                    "Taxonomy and Labels answers."
                )
            value = value[kind]
            if kind == "taxonomy":
                if any(len(path) != 1 for path in value):
                    raise LabelError(
                        f"{where}: Taxonomy answer {value} is not single-level; use a flat Taxonomy or Choices."
                    )
                value = [path[0] for path in value]
        if isinstance(value, list):  # Label Studio: several results or choices
            if len(value) > 1:
                raise LabelError(
                    f"{where}: more than one choice {value}. Keep one class per image and export again."
                )
            return self.parse(value[0], where) if value else None
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            if text[0] in "[{":  # a Label Studio CSV cell holding JSON
                try:
                    return self.parse(json.loads(text), where)
                except json.JSONDecodeError:
                    pass
            return self.from_text(text, where)
        if isinstance(value, (bool, np.bool_)):
            raise LabelError(f"{where}: label {value!r} is a boolean, not a class name or id.")
        if isinstance(value, (int, np.integer)):
            return self.check_id(int(value), where)
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return self.check_id(int(value), where)  # integer ids in a float column (pandas with NaNs)
        raise LabelError(f"{where}: label {value!r} is not a class name or an integer class id.")


def parse_pool_index(value, where: str) -> int:
    """
    One pool index cell as an `int`.

    Args:
        value: The cell: an integer, an integral float, or a string of digits.
        where (`str`): Where the cell is, for the error (e.g. `"labels.csv, line 4"`).

    Returns:
        `int`: the pool index, `>= 0`.

    Raises:
        LabelError: the cell is empty, a boolean, not an integer, or negative.

    Example:

    ```python
    >>> parse_pool_index(" 12 ", "labels.csv, line 2"), parse_pool_index(7.0, "labels.parquet, row 0")
    (12, 7)
    ```
    """
    if isinstance(value, (bool, np.bool_)):
        index = None
    elif isinstance(value, (int, np.integer)):
        index = int(value)
    elif isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        index = int(value)
    elif isinstance(value, str) and _INTEGER.match(value.strip()):
        index = int(value.strip())
    else:
        index = None
    if index is None:
        shown = (
            "an empty cell"
            if value is None or (isinstance(value, str) and not value.strip())
            else repr(value)
        )
        raise LabelError(
            f"{where}: pool index is {shown}, not a non-negative integer. Write the row's {POOL_INDEX} as it was "
            f"in the query's {QUERY_CSV}."
        )
    if index < 0:
        raise LabelError(
            f"{where}: pool index {index} is negative. Write the row's {POOL_INDEX} as it was queried."
        )
    return index


def rows_to_batch(rows: LabelRows, class_names: list[str], name: str, pool_size: int | None) -> LabelBatch:
    """Validate raw rows into a `LabelBatch`: class names or ids through `ClassLookup`, pool indices in range."""
    lookup = ClassLookup(class_names)
    indices, labels, kept = [], [], []
    for j, (raw_index, raw_label) in enumerate(zip(rows.indices, rows.labels)):
        where = f"{name}, {rows.describe(j)}"
        label = lookup.parse(raw_label, where)
        if label is None:
            continue
        index = parse_pool_index(raw_index, where)
        if pool_size is not None and index >= pool_size:
            raise LabelError(
                f"{where}: pool index {index} is out of range; the pool has {pool_size} examples (indices 0 to "
                f"{pool_size - 1}). Are these the labels of another dataset?"
            )
        indices.append(index)
        labels.append(label)
        kept.append(j)
    details = (
        {key: [values[j] for j in kept] for key, values in rows.details.items()} if rows.details else None
    )
    skipped = [parse_pool_index(value, f"{name}, a skipped task") for value in rows.skipped]
    references = [rows.references[j] for j in kept] if rows.references is not None else None
    batch = LabelBatch(np.array(indices, dtype=np.int64), np.array(labels, dtype=np.int64), name, details,
                       skipped, references, [rows.describe(j) for j in kept])  # fmt: skip
    values, counts = np.unique(batch.pool_indices, return_counts=True)
    if (counts > 1).any():
        duplicate = int(values[counts > 1][0])
        a, b = np.flatnonzero(batch.pool_indices == duplicate)[:2]
        others = int((counts > 1).sum()) - 1
        raise LabelError(
            f"{name}: pool index {duplicate} appears twice ({rows.describe(kept[a])}: "
            f"{class_names[batch.labels[a]]!r}, {rows.describe(kept[b])}: {class_names[batch.labels[b]]!r})"
            + (f", and {others} more pool indices repeat" if others else "")
            + ". Keep one row per pool index."
        )
    return batch


def check_class_names(class_names) -> list[str]:
    """
    The run's class names as a list, checked: a non-empty list of distinct strings.

    Args:
        class_names (iterable of `str`): The class names, in id order.

    Returns:
        `list[str]`: the names.

    Raises:
        LabelError: `class_names` is empty, holds something other than strings, or repeats a name.
    """
    names = list(class_names or [])
    if not names or not all(isinstance(name, str) for name in names):
        raise LabelError(f"class_names must be a non-empty list of strings, got {class_names!r}.")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise LabelError(f"class_names repeats {repeated}; each class needs its own name.")
    return names


def check_round(value) -> int:
    """`value` as an `int` round number, or a `LabelError` when it is not a non-negative integer."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise LabelError(f"round must be a non-negative integer, got {value!r}.")
    return int(value)


def check_in_pool(indices: np.ndarray, pool_size: int, where: str) -> None:
    """Raise a `LabelError` naming `where` when an index falls outside a pool of `pool_size` examples."""
    bad = indices[(indices < 0) | (indices >= pool_size)]
    if bad.size:
        raise LabelError(
            f"{where}: pool index {preview_values(bad)} is out of range for a pool of {pool_size} examples."
        )


def preview_values(values, limit: int = 5) -> str:
    """The first `limit` values of an index array for an error message, and how many more there are."""
    values = [int(v) for v in np.asarray(values).reshape(-1)]
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")
