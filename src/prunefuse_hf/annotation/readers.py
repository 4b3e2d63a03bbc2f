"""Reading annotators' label files into a `LabelBatch` (pool index -> class id).

`read_labels` takes what annotators bring back: a CSV/TSV, JSON/JSONL or parquet file, a Label Studio export
(JSON, JSON_MIN, CSV, TSV), a saved dataset folder, a dataset object or a Hub dataset id. Each source becomes
raw index and label cells (`_Rows`), which one path turns into ids: class names or ids through `ClassLookup`,
pool indices through `parse_pool_index`. Every refusal is a `LabelError` that names the file, the row, the
value and the fix. Storing labels is `prunefuse_hf.annotation`'s concern (`LabelStore`).
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
from transformers.utils import logging

from ..constants import LABEL_STUDIO_TASKS, POOL_INDEX, QUERY_CSV
from ..utils.hub_ids import is_hub_id

logger = logging.get_logger(__name__)

# Label columns recognised without `label_column`, in order of preference.
LABEL_COLUMNS = ("label", "labels", "class", "choice", "class_name", "annotation")
LABEL_FILE_EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".parquet")

_INTEGER = re.compile(r"^[+-]?\d+$")


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

    def __post_init__(self):
        self.pool_indices = np.asarray(self.pool_indices, dtype=np.int64).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.pool_indices) != len(self.labels):
            raise LabelError(
                f"{self.source}: {len(self.pool_indices)} pool indices but {len(self.labels)} labels; a LabelBatch "
                "needs one label per pool index."
            )

    def __len__(self) -> int:
        return len(self.pool_indices)


# ----- reading label files -----


def read_labels(
    source,
    class_names: list[str],
    *,
    pool_size: int | None = None,
    label_column: str | None = None,
    index_column: str | None = None,
) -> LabelBatch:
    """
    Read labels brought back by annotators into a `LabelBatch`.

    Rows without a label (empty cell, null, empty string, a Label Studio task without a non-cancelled
    annotation) are skipped, so a partly filled `labels.csv` template reads fine. Labels may be class names
    (matched exactly, then case-insensitively when that is unambiguous) or integer class ids.

    Args:
        source (`str`, `os.PathLike`, `datasets.Dataset` or `datasets.DatasetDict`):
            One of: a `.csv`, `.tsv`, `.json` (a list of objects, or a Label Studio "JSON" or "JSON_MIN"
            export), `.jsonl`/`.ndjson` or `.parquet` file (Label Studio "CSV"/"TSV" exports are CSV/TSV files);
            a directory written by `save_to_disk` (a `Dataset`, or a `DatasetDict` with one split); a dataset
            object; or a Hub dataset id (its `train` split).
        class_names (`list[str]`):
            The run's class names; class id `k` is `class_names[k]`.
        pool_size (`int`, *optional*):
            Number of examples in the pool; pool indices must be below it.
        label_column (`str`, *optional*):
            Column (or Label Studio `from_name`) holding the labels. Defaults to the first present of
            `label`, `labels`, `class`, `choice`, `class_name`, `annotation`.
        index_column (`str`, *optional*):
            Column (or Label Studio `data` field) holding the pool index. Defaults to `pool_index`.

    Returns:
        `LabelBatch`: the labeled rows, in source order.

    Raises:
        LabelError: the file is missing or of an unknown kind; no index or label column is found; a class name
            is unknown or a class id out of range; a pool index is negative, not an integer, or `>= pool_size`;
            a pool index appears twice; a Label Studio annotation holds more than one choice.

    Example:

    ```python
    >>> from prunefuse_hf.label_files import read_labels
    >>> _ = open("labels.csv", "w").write("pool_index,file_name,label\\n12,12.png,cat\\n40,40.png,\\n7,7.png,1\\n")
    >>> batch = read_labels("labels.csv", ["cat", "dog"], pool_size=100)
    >>> batch.pool_indices.tolist(), batch.labels.tolist()
    ([12, 7], [0, 1])
    ```
    """
    class_names = check_class_names(class_names)
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        name = f"dataset:{_dataset_name(source)}"
        rows = _rows_from_dataset(_single_split(source, name), name, label_column, index_column)
    else:
        rows, name = _rows_from_path(source, label_column, index_column)
    batch = _to_batch(rows, class_names, name, pool_size)
    skipped = rows.num_rows - len(batch)
    logger.info(
        f"Read {len(batch)} labels from {name}"
        + (f" ({skipped} rows without a label skipped)." if skipped else ".")
    )
    if len(batch) == 0:
        logger.warning(f"{name} holds no labels: every row's label cell is empty.")
    return batch


@dataclass
class _Rows:
    """Raw index and label cells of a source, before validation; `describe(j)` says where row j is."""

    indices: list
    labels: list
    describe: Callable[[int], str]
    num_rows: int


def _rows_from_path(source, label_column, index_column) -> tuple[_Rows, str]:
    shown = os.fspath(source)
    path = Path(shown).expanduser()
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as error:  # load_from_disk raises FileNotFoundError or others for a plain folder
            raise LabelError(
                f"{shown} is a directory but not a dataset written by `save_to_disk` ({error}). Pass a label file "
                f"({', '.join(LABEL_FILE_EXTENSIONS)}) or a saved dataset directory."
            ) from error
        name = f"dataset:{shown}"
        return _rows_from_dataset(_single_split(loaded, name), name, label_column, index_column), name
    if path.is_file():
        extension = path.suffix.lower()
        if extension in (".csv", ".tsv"):
            return _rows_from_csv(
                path, shown, "\t" if extension == ".tsv" else ",", label_column, index_column
            ), shown
        if extension == ".json":
            return _rows_from_json(path, shown, label_column, index_column), shown
        if extension in (".jsonl", ".ndjson"):
            return _rows_from_jsonl(path, shown, label_column, index_column), shown
        if extension == ".parquet":
            return _rows_from_parquet(path, shown, label_column, index_column), shown
        raise LabelError(
            f"{shown}: unknown label file extension {path.suffix!r}. Save the labels as one of "
            f"{', '.join(LABEL_FILE_EXTENSIONS)}, or as a dataset directory (`save_to_disk`)."
        )
    # A Hub dataset id ("name" or "owner/name"); anything else that does not exist is a missing file.
    if not (
        isinstance(source, str) and is_hub_id(source) and path.suffix.lower() not in LABEL_FILE_EXTENSIONS
    ):
        raise LabelError(
            f"Label file {shown} not found. Check the path (relative paths start at {os.getcwd()})."
        )
    name = f"dataset:{source}"
    try:
        loaded = datasets.load_dataset(source, split="train")
    except Exception as error:
        raise LabelError(
            f"{source!r} is neither a file nor a directory here, and loading it as a Hub dataset failed "
            f"({type(error).__name__}: {error}). Check the path or the dataset id."
        ) from error
    return _rows_from_dataset(loaded, name, label_column, index_column), name


def _single_split(dataset, name: str) -> datasets.Dataset:
    if isinstance(dataset, datasets.DatasetDict):
        if len(dataset) != 1:
            raise LabelError(
                f"{name} holds {len(dataset)} splits ({', '.join(dataset)}); labels are read from a dataset with "
                "one split. Save only the split with the labels."
            )
        dataset = next(iter(dataset.values()))
    return dataset


def _dataset_name(dataset) -> str:
    dataset = (
        next(iter(dataset.values())) if isinstance(dataset, datasets.DatasetDict) and dataset else dataset
    )
    cache_files = getattr(dataset, "cache_files", None)
    if cache_files:
        return str(Path(cache_files[0]["filename"]).parent)
    return getattr(dataset.info, "dataset_name", None) or "in-memory"


def _pick_columns(columns: Sequence[str], name: str, label_column, index_column) -> tuple[str, str]:
    columns = list(columns)
    index_column = _pick_column(columns, name, index_column, "index_column", "pool index", (POOL_INDEX,))
    label_column = _pick_column(columns, name, label_column, "label_column", "label", LABEL_COLUMNS)
    return index_column, label_column


def _pick_column(
    columns: list[str], name: str, given, option: str, what: str, accepted: Sequence[str]
) -> str:
    """`given` when it is a column, else the first of the `accepted` names that is one."""
    if given is not None:
        if given not in columns:
            raise LabelError(f"{name}: {option} {given!r} is not a column. Columns found: {columns}.")
        return given
    found = next((column for column in accepted if column in columns), None)
    if found is None:
        rule = (
            f"the {what} column must be named {accepted[0]!r}"
            if len(accepted) == 1
            else f"accepted {what} column names: {list(accepted)}"
        )
        raise LabelError(
            f"{name}: no {what} column. Columns found: {columns}; {rule}. Rename it, or pass {option}=<its name> (CLI: --{option})."
        )
    return found


def _rows_from_dataset(dataset: datasets.Dataset, name: str, label_column, index_column) -> _Rows:
    index_column, label_column = _pick_columns(dataset.column_names, name, label_column, index_column)
    table = dataset.select_columns([index_column, label_column]).with_format("arrow")[:]
    labels = table.column(label_column).to_pylist()
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        # Map through the dataset's own names, so that a class list in another order still matches by name;
        # -1 is the datasets convention for "no label".
        labels = [None if value is None or value < 0 else feature.int2str(value) for value in labels]
    return _Rows(table.column(index_column).to_pylist(), labels, lambda j: f"row {j}", table.num_rows)


def _rows_from_parquet(path: Path, name: str, label_column, index_column) -> _Rows:
    try:
        columns = pq.read_schema(path).names
    except Exception as error:
        raise LabelError(f"{name} is not a readable parquet file ({error}). Write it again.") from error
    index_column, label_column = _pick_columns(columns, name, label_column, index_column)
    table = pq.read_table(path, columns=[index_column, label_column])
    return _Rows(
        table.column(index_column).to_pylist(),
        table.column(label_column).to_pylist(),
        lambda j: f"row {j}",
        table.num_rows,
    )


def _rows_from_csv(path: Path, name: str, delimiter: str, label_column, index_column) -> _Rows:
    # Every cell stays a string: "007" or "1" must not be guessed into numbers before the class-name lookup.
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets save a BOM
        reader = csv.DictReader(f, delimiter=delimiter)
        records = list(reader)
        columns = list(reader.fieldnames or [])
    # Header is line 1, so data row j is on line j + 2 (multi-line quoted cells aside).
    return _rows_from_records(records, columns, name, lambda j: f"line {j + 2}", label_column, index_column)


def _rows_from_jsonl(path: Path, name: str, label_column, index_column) -> _Rows:
    records, line_numbers = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise LabelError(
                    f"{name}, line {number}: not valid JSON ({error}). Fix that line."
                ) from error
            if not isinstance(record, dict):
                raise LabelError(f"{name}, line {number}: expected a JSON object per line, got {record!r}.")
            records.append(record)
            line_numbers.append(number)
    if records and _is_label_studio_tasks(records):
        return _rows_from_label_studio(records, name, label_column, index_column)
    return _rows_from_records(
        records, _keys(records), name, lambda j: f"line {line_numbers[j]}", label_column, index_column
    )


def _rows_from_json(path: Path, name: str, label_column, index_column) -> _Rows:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise LabelError(f"{name}: not valid JSON ({error}). Fix the file or export it again.") from error
    if isinstance(data, dict) and isinstance(data.get("data"), dict):
        data = [data]  # one Label Studio task
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise LabelError(
            f"{name}: expected a JSON list of objects (one per labeled example, or a Label Studio export), got "
            f"{type(data).__name__}. Write it as [{{{POOL_INDEX!r}: 3, 'label': 'cat'}}, ...]."
        )
    if data and _is_label_studio_tasks(data):
        return _rows_from_label_studio(data, name, label_column, index_column)
    return _rows_from_records(data, _keys(data), name, lambda j: f"item {j}", label_column, index_column)


def _keys(records: list[dict]) -> list[str]:
    return list(dict.fromkeys(key for record in records for key in record))


def _rows_from_records(records: list[dict], columns, name, describe, label_column, index_column) -> _Rows:
    index_column, label_column = _pick_columns(columns, name, label_column, index_column)
    positions = range(len(records))
    if "annotation_id" in columns:
        positions = _latest_flat_annotations(records, index_column)
    return _Rows(
        [records[j].get(index_column) for j in positions],
        [records[j].get(label_column) for j in positions],
        lambda k: describe(positions[k]),
        len(records),
    )


def _latest_flat_annotations(records: list[dict], index_column: str) -> list[int]:
    """Positions of the rows to keep in a Label Studio JSON_MIN/CSV export: one row per annotation there, so
    keep, per task, the most recent annotation that was not cancelled (the last one on a tie)."""
    latest: dict[str, tuple[str, int]] = {}
    for j, record in enumerate(records):
        if _truthy(record.get("was_cancelled")):
            continue
        key = str(record.get(index_column)).strip()
        stamp = str(record.get("updated_at") or record.get("created_at") or "")
        if key not in latest or (stamp, j) >= latest[key]:
            latest[key] = (stamp, j)
    return sorted(j for _, j in latest.values())


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return (
        bool(value) if value is not None and not (isinstance(value, float) and math.isnan(value)) else False
    )


def _is_label_studio_tasks(items: list[dict]) -> bool:
    return all(isinstance(item.get("data"), dict) for item in items)


def _rows_from_label_studio(tasks: list[dict], name: str, label_column, index_column) -> _Rows:
    index_key = index_column or POOL_INDEX
    indices, labels, positions = [], [], []

    def describe_task(j: int) -> str:
        task_id = tasks[j].get("id")
        return (
            f"Label Studio task {task_id} (item {j})"
            if task_id is not None
            else f"Label Studio task at item {j}"
        )

    for j, task in enumerate(tasks):
        data = task["data"]
        if index_key not in data:
            raise LabelError(
                f"{name}: {describe_task(j)} has no data.{index_key}; data fields found: {list(data)}. Import the "
                f"tasks from PruneFuse's {LABEL_STUDIO_TASKS} (its data carries {POOL_INDEX!r}), or pass "
                "index_column=<the data field that holds the pool index> (CLI: --index_column)."
            )
        annotation = _latest_annotation(task.get("annotations", task.get("completions")) or [])
        if annotation is None:
            continue
        results = [
            result
            for result in annotation.get("result") or []
            if result.get("type") == "choices" and label_column in (None, result.get("from_name"))
        ]
        if not results:
            continue
        if len(results) > 1:
            from_names = [result.get("from_name") for result in results]
            raise LabelError(
                f"{name}: {describe_task(j)} holds several Choices results ({from_names}). Pass "
                "label_column=<the from_name of the class choice>."
            )
        choices = (results[0].get("value") or {}).get("choices") or []
        if len(choices) > 1:
            raise LabelError(
                f"{name}: {describe_task(j)}, annotation {annotation.get('id')}: more than one choice {choices}. "
                'Keep one class per image (choice="single" in the labeling config) and export again.'
            )
        if not choices:
            continue
        indices.append(data[index_key])
        labels.append(choices[0])
        positions.append(j)
    return _Rows(indices, labels, lambda k: describe_task(positions[k]), len(tasks))


def _latest_annotation(annotations: list[dict]) -> dict | None:
    """The most recent annotation that was not cancelled (by updated_at, then created_at, then list order)."""
    kept = [
        (str(a.get("updated_at") or a.get("created_at") or ""), j, a)
        for j, a in enumerate(annotations)
        if not (_truthy(a.get("was_cancelled")) or _truthy(a.get("skipped")))
    ]
    return max(kept, key=lambda item: item[:2])[2] if kept else None


# ----- cells to ids -----


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
        if isinstance(value, dict):  # Label Studio JSON_MIN/CSV: {"choices": [...]} when several were picked
            if "choices" not in value:
                raise LabelError(f"{where}: label {value!r} is not a class name or id.")
            value = value["choices"]
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


def _to_batch(rows: _Rows, class_names: list[str], name: str, pool_size: int | None) -> LabelBatch:
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
    batch = LabelBatch(np.array(indices, dtype=np.int64), np.array(labels, dtype=np.int64), name)
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
