"""Reading annotators' label files into a `LabelBatch` (pool index -> class id).

`read_labels` takes what annotators bring back: a CSV/TSV, JSON/JSONL or parquet file, a Label Studio export
(JSON, JSON_MIN, CSV, TSV), a saved dataset folder, a dataset object or a Hub dataset id. Each source becomes
raw index and label cells (`LabelRows`), which one path turns into ids: class names or ids through `ClassLookup`,
pool indices through `parse_pool_index`. Every refusal is a `LabelError` that names the file, the row, the
value and the fix. Storing labels is `prunefuse_hf.annotation`'s concern (`LabelStore`).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import datasets
import pyarrow.parquet as pq
from transformers.utils import logging

from ..constants import POOL_INDEX
from ..utils.hub_ids import is_hub_id
from .label_studio import is_label_studio_tasks, rows_from_flat_annotations, rows_from_label_studio
from .labels import (
    REFERENCE_FIELDS,
    LabelBatch,
    LabelError,
    LabelRows,
    check_class_names,
    image_references,
    rows_to_batch,
)

logger = logging.get_logger(__name__)

# Label columns recognised without `label_column`, in order of preference.
LABEL_COLUMNS = ("label", "labels", "class", "choice", "class_name", "annotation")
LABEL_FILE_EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".parquet")


# ----- reading label files -----


def read_labels(
    source,
    class_names: list[str],
    *,
    pool_size: int | None = None,
    label_column: str | None = None,
    index_column: str | None = None,
    resolve: str | None = None,
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
        resolve (`str`, *optional*):
            How a Label Studio task answered differently by several annotators gets its label: `"ground_truth"`
            (the annotation marked ground truth), `"majority"` (the most common answer; a tie is decided by ground
            truth or refused) or `"latest"`. Defaults to refusing such tasks, naming them and their answers.

    Returns:
        `LabelBatch`: the labeled rows, in source order.

    Raises:
        LabelError: the file is missing or of an unknown kind; no index or label column is found; a class name
            is unknown or a class id out of range; a pool index is negative, not an integer, or `>= pool_size`;
            a pool index appears twice; a Label Studio annotation holds more than one choice, or a result that
            is not a class (naming its tag); annotators disagree and `resolve` does not decide.

    Example:

    ```python
    >>> from prunefuse_hf.annotation import read_labels
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
        rows, name = _rows_from_path(source, label_column, index_column, resolve)
    batch = rows_to_batch(rows, class_names, name, pool_size)
    skipped = rows.num_rows - len(batch)
    logger.info(
        f"Read {len(batch)} labels from {name}"
        + (f" ({skipped} rows without a label skipped)." if skipped else ".")
    )
    if batch.skipped.size:
        logger.info(f"{name}: annotators skipped {batch.skipped.size} tasks.")
    if len(batch) == 0 and not batch.skipped.size:
        logger.warning(f"{name} holds no labels: every row's label cell is empty.")
    return batch


def _rows_from_path(source, label_column, index_column, resolve=None) -> tuple[LabelRows, str]:
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
                path, shown, "\t" if extension == ".tsv" else ",", label_column, index_column, resolve
            ), shown
        if extension == ".json":
            return _rows_from_json(path, shown, label_column, index_column, resolve), shown
        if extension in (".jsonl", ".ndjson"):
            return _rows_from_jsonl(path, shown, label_column, index_column, resolve), shown
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


def _rows_from_dataset(dataset: datasets.Dataset, name: str, label_column, index_column) -> LabelRows:
    index_column, label_column = _pick_columns(dataset.column_names, name, label_column, index_column)
    extra = _reference_columns(dataset.features, (index_column, label_column))
    table = dataset.select_columns([index_column, label_column, *extra]).with_format("arrow")[:]
    labels = table.column(label_column).to_pylist()
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        # Map through the dataset's own names, so that a class list in another order still matches by name;
        # -1 is the datasets convention for "no label".
        labels = [None if value is None or value < 0 else feature.int2str(value) for value in labels]
    return LabelRows(table.column(index_column).to_pylist(), labels, lambda j: f"row {j}", table.num_rows,
                 references=_table_references(table, extra))  # fmt: skip


def _reference_columns(types, taken) -> list[str]:
    """The string columns of a table that say which image a row is for (`REFERENCE_FIELDS`)."""
    return [
        column
        for column in REFERENCE_FIELDS
        if column in types
        and column not in taken
        and str(getattr(types[column], "dtype", types[column])) in ("string", "large_string")
    ]


def _table_references(table, columns: list[str]) -> list[dict] | None:
    if not columns:
        return None
    values = {column: table.column(column).to_pylist() for column in columns}
    return [image_references({c: values[c][j] for c in columns}) for j in range(table.num_rows)]


def _rows_from_parquet(path: Path, name: str, label_column, index_column) -> LabelRows:
    try:
        columns = pq.read_schema(path).names
    except Exception as error:
        raise LabelError(f"{name} is not a readable parquet file ({error}). Write it again.") from error
    index_column, label_column = _pick_columns(columns, name, label_column, index_column)
    schema = pq.read_schema(path)
    extra = _reference_columns({f.name: f.type for f in schema}, (index_column, label_column))
    table = pq.read_table(path, columns=[index_column, label_column, *extra])
    return LabelRows(
        table.column(index_column).to_pylist(),
        table.column(label_column).to_pylist(),
        lambda j: f"row {j}",
        table.num_rows,
        references=_table_references(table, extra),
    )


def _rows_from_csv(
    path: Path, name: str, delimiter: str, label_column, index_column, resolve=None
) -> LabelRows:
    # Every cell stays a string: "007" or "1" must not be guessed into numbers before the class-name lookup.
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets save a BOM
        reader = csv.DictReader(f, delimiter=delimiter)
        records = list(reader)
        columns = list(reader.fieldnames or [])
    # Header is line 1, so data row j is on line j + 2 (multi-line quoted cells aside).
    return _rows_from_records(
        records, columns, name, lambda j: f"line {j + 2}", label_column, index_column, resolve
    )


def _rows_from_jsonl(path: Path, name: str, label_column, index_column, resolve=None) -> LabelRows:
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
    if records and is_label_studio_tasks(records):
        return rows_from_label_studio(records, name, label_column, index_column, resolve)
    return _rows_from_records(
        records,
        _keys(records),
        name,
        lambda j: f"line {line_numbers[j]}",
        label_column,
        index_column,
        resolve,
    )


def _rows_from_json(path: Path, name: str, label_column, index_column, resolve=None) -> LabelRows:
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
    if data and is_label_studio_tasks(data):
        return rows_from_label_studio(data, name, label_column, index_column, resolve)
    return _rows_from_records(
        data, _keys(data), name, lambda j: f"item {j}", label_column, index_column, resolve
    )


def _keys(records: list[dict]) -> list[str]:
    return list(dict.fromkeys(key for record in records for key in record))


def _rows_from_records(
    records: list[dict], columns, name, describe, label_column, index_column, resolve=None
) -> LabelRows:
    index_column, label_column = _pick_columns(columns, name, label_column, index_column)
    if "annotation_id" in columns:  # a Label Studio JSON_MIN/CSV export: one record per annotation
        return rows_from_flat_annotations(records, name, describe, label_column, index_column, resolve)
    positions = range(len(records))
    return LabelRows(
        [records[j].get(index_column) for j in positions],
        [records[j].get(label_column) for j in positions],
        lambda k: describe(positions[k]),
        len(records),
        references=[image_references(records[j]) for j in positions],
    )


# ----- cells to ids -----
