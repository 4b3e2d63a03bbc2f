"""Human annotation: query batches go out to annotators, labels come back in.

A round in human-annotation mode writes its query batch (`write_query_batch`: a self-contained dataset of
the selected images, a `labels.csv` template and a Label Studio import file) and stops. The user brings the
labels back in a file, `read_labels` (`prunefuse_hf.label_files`) turns that file into a `LabelBatch` (pool
index -> class id), and `LabelStore.add` validates the batch against the round's query and the labels
already stored before it writes anything. Simulated runs build their `LabelBatch` with `oracle_labels` and
go through the same `LabelStore.add`, so both modes share one ingest path.

Labels are data: they live in one file, `RUN/labels.parquet`, rewritten atomically (temporary file in the
same directory, fsync, `os.replace`). A refusal leaves the run directory byte-identical, and a stored label
is only replaced when the caller asks for it.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from xml.sax.saxutils import quoteattr

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from transformers.utils import logging

from ..constants import (
    LABEL_STUDIO_CONFIG,
    LABEL_STUDIO_TASKS,
    LABELS_NAME,
    POOL_INDEX,
    QUERIES_DIR,
    QUERY_CSV,
    QUERY_DATASET_DIR,
    STATE_NAME,
)
from ..utils.run_directory import RunDirectory, atomic_write, fsync_directory, step_name
from .readers import (
    LABEL_COLUMNS,
    ClassLookup,
    LabelBatch,
    LabelError,
    check_class_names,
    parse_pool_index,
    read_labels,
)

logger = logging.get_logger(__name__)

FILE_NAME = "file_name"
SCORE = "score"

_STORE_SCHEMA = pa.schema(
    [
        pa.field(POOL_INDEX, pa.int64()),
        pa.field("label", pa.int64()),
        pa.field("round", pa.int32()),
        pa.field("source", pa.string()),
        pa.field("labeled_at", pa.string()),
    ]
)


@dataclass
class AddResult:
    """
    What `LabelStore.add` did.

    Args:
        added (`int`): Pool indices labeled for the first time.
        unchanged (`int`): Pool indices already stored with the same label (nothing written for them).
        overwritten (`int`): Stored labels replaced (only with `overwrite=True`).
        missing (`np.ndarray`, int64): Expected (queried) pool indices that still have no label, sorted.
    """

    added: int
    unchanged: int
    overwritten: int
    missing: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


# ----- simulation -----


def oracle_labels(
    dataset: datasets.Dataset, label_column: str, pool_indices, class_names: list[str]
) -> LabelBatch:
    """
    Labels of a simulated run: reveal the pool's own label column at the queried indices.

    Args:
        dataset (`datasets.Dataset`):
            The pool (pool index = row).
        label_column (`str`):
            Column holding the true labels (class ids, e.g. a `ClassLabel`, or class names).
        pool_indices (array-like of int):
            The queried pool indices.
        class_names (`list[str]`):
            The run's class names.

    Returns:
        `LabelBatch`: the labels in the order of `pool_indices`, with source `"oracle:<label_column>"`.

    Raises:
        LabelError: `label_column` is missing; a pool index is out of range; the column has no label (None or a
            negative id) or an out-of-range id at a queried pool index.

    Example:

    ```python
    >>> import datasets
    >>> pool_dataset = datasets.Dataset.from_dict({"label": [0, 1, 1, 0]})
    >>> batch = oracle_labels(pool_dataset, "label", [2, 3], class_names=["cat", "dog"])
    >>> batch.source, batch.labels.tolist()
    ('oracle:label', [1, 0])
    ```
    """
    lookup = ClassLookup(check_class_names(class_names))
    name = f"oracle:{label_column}"
    indices = np.asarray(pool_indices, dtype=np.int64).reshape(-1)
    if label_column not in dataset.column_names:
        raise LabelError(
            f"{name}: the pool has no column {label_column!r} (columns: {dataset.column_names}). Name the column "
            "that holds the true labels, or use human annotation."
        )
    _check_in_pool(indices, len(dataset), name)
    column = (
        dataset.select_columns([label_column]).select(indices).with_format("arrow")[:].column(label_column)
    )
    if pa.types.is_integer(column.type):
        labels = column.fill_null(-1).to_numpy().astype(np.int64)
        missing = column.is_null().to_numpy(zero_copy_only=False) | (labels < 0)
    elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        values = column.to_pylist()
        missing = np.array([value is None or not value.strip() for value in values], dtype=bool)
        labels = np.array(
            [-1 if gone else lookup.from_text(value.strip(), f"{name}, pool index {i}")
             for i, value, gone in zip(indices.tolist(), values, missing)],
            dtype=np.int64,
        )  # fmt: skip
    else:
        raise LabelError(
            f"{name}: column {label_column!r} has type {column.type}; expected class ids or class names."
        )
    if missing.any():
        raise LabelError(
            f"{name}: the pool's label column has no label for pool index {_preview(indices[missing])}. An oracle "
            "can only reveal labels that exist: remove these examples from the pool, or use human annotation."
        )
    out_of_range = labels >= len(lookup.names)
    if out_of_range.any():
        j = int(np.flatnonzero(out_of_range)[0])
        lookup.check_id(int(labels[j]), f"{name}, pool index {indices[j]}")
    return LabelBatch(indices, labels, name)


# ----- the run's labels -----


class LabelStore:
    """
    The run's labels: one parquet file `RUN/labels.parquet` with columns pool_index (int64), label (int64),
    round (int32), source (string), labeled_at (string, ISO 8601 UTC).

    One row per labeled pool index. `add` checks a whole batch before it writes, writes atomically, and
    writes nothing when the batch brings nothing new; a stored label is replaced only with `overwrite=True`.

    Args:
        run_dir (`str` or `os.PathLike`):
            The run directory. It is created on the first write, not before.
        class_names (`list[str]`):
            The run's class names; stored labels must be ids into it.

    Raises:
        LabelError: an existing `labels.parquet` is unreadable, has another schema, repeats a pool index, or
            holds an id outside `[0, len(class_names))`.

    Example:

    ```python
    >>> import numpy as np
    >>> store = LabelStore("runs/demo", class_names=["cat", "dog"])
    >>> batch = LabelBatch(np.array([3, 1]), np.array([0, 1]), source="labels.csv")
    >>> store.add(batch, round=2, expected=[1, 3]).added
    2
    >>> store.add(batch, round=2).unchanged  # the same labels again: nothing is written
    2
    >>> store.as_array(pool_size=5).tolist()
    [-1, 1, -1, 0, -1]
    ```
    """

    def __init__(self, run_dir: str | os.PathLike, class_names: list[str]):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LABELS_NAME
        self.class_names = check_class_names(class_names)
        self._set_table(self._load() if self.path.exists() else _STORE_SCHEMA.empty_table())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, num_labeled={len(self)})"

    def __len__(self) -> int:
        return self._table.num_rows

    def __contains__(self, pool_index) -> bool:
        return self._position(pool_index) is not None

    @property
    def labels(self) -> dict[int, int]:
        """`{pool_index: label}` of every stored label (a copy)."""
        return dict(zip(self._indices.tolist(), self._labels.tolist()))

    def as_array(self, pool_size: int) -> np.ndarray:
        """
        Labels indexed by pool index.

        Args:
            pool_size (`int`): Number of examples in the pool.

        Returns:
            `np.ndarray` of shape `(pool_size,)`, int64: the class id of each pool index, -1 where unlabeled.

        Raises:
            LabelError: a stored pool index is `>= pool_size` (the labels belong to another pool).
        """
        if len(self) and self._indices.max() >= pool_size:
            raise LabelError(
                f"{self.path} holds pool index {int(self._indices.max())} but the pool has {pool_size} examples. "
                "Were these labels written for another dataset?"
            )
        array = np.full(pool_size, -1, dtype=np.int64)
        array[self._indices] = self._labels
        return array

    def table(self) -> pa.Table:
        """The stored rows as a `pyarrow.Table`, sorted by round then pool index."""
        return self._table

    def add(
        self,
        batch: LabelBatch,
        *,
        round: int,
        expected: Iterable[int] | None = None,
        allow_partial: bool = False,
        overwrite: bool = False,
    ) -> AddResult:
        """
        Store a batch of labels (validated as a whole first; on any refusal nothing is written).

        Args:
            batch (`LabelBatch`):
                The labels, from `read_labels` or `oracle_labels`.
            round (`int`):
                The round these labels belong to (recorded with each new label).
            expected (iterable of int, *optional*):
                The pool indices queried in that round. When given, a new label for a pool index outside it is
                refused, and so is a batch that leaves part of it unlabeled (unless `allow_partial`). Pool indices
                already stored with the same label are accepted anywhere, so a cumulative labels file works.
            allow_partial (`bool`, defaults to `False`):
                Accept a batch that labels only part of `expected`.
            overwrite (`bool`, defaults to `False`):
                Replace stored labels that the batch contradicts (otherwise refused).

        Returns:
            `AddResult`: counts of added, unchanged and overwritten labels, and the expected pool indices that
            are still unlabeled. A batch with nothing new leaves the file untouched (same bytes, same mtime).

        Raises:
            LabelError: the batch repeats a pool index or holds an invalid id or index; a new label is for a pool
                index outside `expected`; part of `expected` is unlabeled and `allow_partial` is False; a label
                contradicts a stored one and `overwrite` is False.
        """
        round = _check_round(round)
        indices, labels, name = batch.pool_indices, batch.labels, batch.source
        self._check_batch(batch)
        positions = self._positions(indices)
        stored = positions >= 0
        stored_labels = np.where(stored, self._labels[np.maximum(positions, 0)] if len(self) else -1, -1)
        same = stored & (stored_labels == labels)
        conflict = stored & ~same
        new = ~stored

        missing = np.zeros(0, dtype=np.int64)
        if expected is not None:
            expected = np.unique(np.fromiter((int(i) for i in expected), dtype=np.int64))
            outside = ~np.isin(indices, expected) & ~same
            if outside.any():
                raise LabelError(
                    f"{name}: pool index {_preview(indices[outside])} is not part of round {round}'s query "
                    f"({len(expected)} queried pool indices). Remove those rows, or ingest them with the round "
                    "that queried them."
                )
            missing = expected[~np.isin(expected, indices) & ~np.isin(expected, self._indices)]
        if conflict.any() and not overwrite:
            j = int(np.flatnonzero(conflict)[0])
            row = int(positions[j])
            others = int(conflict.sum()) - 1
            raise LabelError(
                f"{name}: pool index {indices[j]} is already labeled {self.class_names[stored_labels[j]]!r} "
                f"(round {self._table.column('round')[row].as_py()}, from "
                f"{self._table.column('source')[row].as_py()}) and this batch labels it "
                f"{self.class_names[labels[j]]!r}"
                + (f"; {others} more labels differ too" if others else "")
                + ". Stored labels are never replaced silently: fix the file, or pass overwrite=True (CLI: --overwrite) to "
                "replace them."
            )
        if missing.size and not allow_partial:
            raise LabelError(
                f"{name}: {missing.size} of the {len(expected)} pool indices queried in round {round} have no label "
                f"(e.g. {_preview(missing)}). Label them and ingest again, or pass allow_partial=True (CLI: "
                f"--allow_partial) to continue with the {len(expected) - missing.size} labeled ones."
            )

        result = AddResult(int(new.sum()), int(same.sum()), int(conflict.sum()), missing)
        if not (new.any() or conflict.any()):
            logger.info(f"{name}: all {len(batch)} labels are already stored; {self.path} is unchanged.")
            return result
        changed = new | conflict
        kept = np.ones(len(self), dtype=bool)
        kept[positions[conflict]] = False
        for j in np.flatnonzero(conflict):
            logger.warning(
                f"Pool index {indices[j]}: replacing label {self.class_names[stored_labels[j]]!r} by "
                f"{self.class_names[labels[j]]!r} (from {name}, overwrite=True)."
            )
        labeled_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        count = int(changed.sum())
        new_rows = pa.table(
            {
                POOL_INDEX: pa.array(indices[changed], pa.int64()),
                "label": pa.array(labels[changed], pa.int64()),
                "round": pa.array(np.full(count, round, dtype=np.int32), pa.int32()),
                "source": pa.array([name] * count, pa.string()),
                "labeled_at": pa.array([labeled_at] * count, pa.string()),
            },
            schema=_STORE_SCHEMA,
        )
        table = pa.concat_tables([self._table.filter(pa.array(kept)), new_rows])
        table = table.sort_by([("round", "ascending"), (POOL_INDEX, "ascending")])
        atomic_write(self.path, lambda f: pq.write_table(table, f), binary=True)
        self._set_table(table)  # only once the file holds it: an interrupted write keeps the old state
        logger.info(
            f"Stored {result.added} new labels from {name} in {self.path} (round {round}, {len(self)} labeled)"
            + (f"; {missing.size} queried pool indices still unlabeled." if missing.size else ".")
        )
        return result

    # ----- internals -----

    def _load(self) -> pa.Table:
        try:
            # Read through one open handle: a concurrent atomic replace cannot swap the file mid-read.
            with open(self.path, "rb") as f:
                table = pq.read_table(f)
        except Exception as error:
            raise LabelError(
                f"{self.path} is not a readable parquet file ({error}). Restore it from a backup; labels are never "
                "rebuilt from scratch automatically."
            ) from error
        found = {f.name: f.type for f in table.schema}
        wanted = {f.name: f.type for f in _STORE_SCHEMA}
        if found != wanted:
            raise LabelError(
                f"{self.path} has columns {found}, expected {wanted}. It was not written by LabelStore; move it "
                "away (it may hold labels you need) and ingest the labels again."
            )
        table = table.select(_STORE_SCHEMA.names).cast(_STORE_SCHEMA)
        if any(table.column(name).null_count for name in _STORE_SCHEMA.names):
            raise LabelError(f"{self.path} has empty cells; every stored label needs all five columns.")
        indices = table.column(POOL_INDEX).to_numpy()
        labels = table.column("label").to_numpy()
        if len(np.unique(indices)) != len(indices) or (indices < 0).any():
            raise LabelError(f"{self.path} repeats a pool index or holds a negative one; it is damaged.")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise LabelError(
                f"{self.path} holds class id {int(labels.max())} but the run has {len(self.class_names)} classes "
                f"({self.class_names[:10]}). Were these labels written with another class list?"
            )
        return table.sort_by([("round", "ascending"), (POOL_INDEX, "ascending")])

    def _set_table(self, table: pa.Table) -> None:
        self._table = table
        self._indices = table.column(POOL_INDEX).to_numpy().astype(np.int64)
        self._labels = table.column("label").to_numpy().astype(np.int64)
        self._order = np.argsort(self._indices, kind="stable")
        self._sorted = self._indices[self._order]

    def _positions(self, indices: np.ndarray) -> np.ndarray:
        """Row of each pool index in the table, -1 when not stored."""
        if not len(self):
            return np.full(len(indices), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted, indices), len(self._sorted) - 1)
        return np.where(self._sorted[at] == indices, self._order[at], -1)

    def _position(self, pool_index) -> int | None:
        try:
            index = int(pool_index)
        except (TypeError, ValueError):
            return None
        position = int(self._positions(np.array([index], dtype=np.int64))[0])
        return position if position >= 0 else None

    def _check_batch(self, batch: LabelBatch) -> None:
        indices, labels, name = batch.pool_indices, batch.labels, batch.source
        if (indices < 0).any():
            raise LabelError(f"{name}: pool index {_preview(indices[indices < 0])} is negative.")
        bad = (labels < 0) | (labels >= len(self.class_names))
        if bad.any():
            raise LabelError(
                f"{name}: class id {_preview(labels[bad])} is out of range; the run has {len(self.class_names)} "
                "classes. Fix the labels."
            )
        values, counts = np.unique(indices, return_counts=True)
        if (counts > 1).any():
            raise LabelError(
                f"{name}: pool index {_preview(values[counts > 1])} appears more than once. Keep one label per "
                "pool index."
            )


# ----- query batches -----


def write_query_batch(
    directory: str | os.PathLike,
    dataset: datasets.Dataset,
    pool_indices,
    *,
    image_column: str = "image",
    class_names: list[str] | None = None,
    round: int,
    scores=None,
) -> Path:
    """
    Write one round's query batch for annotators, as a whole (built beside `directory`, then renamed).

    The directory holds:
    - `dataset/`: the queried rows (`save_to_disk`, images embedded so the folder is self-contained) with
      columns `pool_index`, `file_name`, the image column, the other non-label columns, and `score` when
      `scores` is given; label columns (`ClassLabel` features and the usual label names) are left out;
    - `labels.csv`: the template to fill, header `pool_index,file_name,label`, one row per query, empty labels;
    - `label_studio_tasks.json`: a Label Studio import file, one task per query whose `data` holds `image` (a
      `data:` URI of the image bytes, or its path when the dataset stores only a path), `pool_index`,
      `file_name` and `round`;
    - `label_studio_config.xml` (when `class_names` is given): an image-classification labeling config whose
      single-choice `<Choices name="label">` lists the class names, so exports carry a `label` field.

    `file_name` is the basename of the image's path when the dataset stores one (prefixed with the pool index
    when two queried images share a basename), else `<pool_index>.png`.

    Args:
        directory (`str` or `os.PathLike`):
            Where to write, e.g. `RUN/queries/round_3`. Must not exist, unless it already holds this exact
            query (then it is kept as it is: annotators may be filling its `labels.csv`).
        dataset (`datasets.Dataset`):
            The pool (pool index = row), with an `Image` feature in `image_column`.
        pool_indices (array-like of int):
            The queried pool indices, in the order annotators should see them.
        image_column (`str`, defaults to `"image"`):
            The image column.
        class_names (`list[str]`, *optional*):
            The run's class names, for the Label Studio config.
        round (`int`):
            The round that made this query.
        scores (array-like of float, *optional*):
            The selection score of each queried example, stored as a `score` column in `dataset/`.

    Returns:
        `Path`: `directory`.

    Raises:
        LabelError: a pool index repeats or is out of range; `image_column` is not an `Image` feature; `scores`
            has another length; `directory` exists and holds a different query.

    Example:

    ```python
    >>> from prunefuse_hf.annotation import write_query_batch, read_query_indices
    >>> path = write_query_batch("run/queries/round_2", pool, [31, 4, 17], class_names=["cat", "dog"], round=2)
    >>> read_query_indices(path).tolist()
    [31, 4, 17]
    ```
    """
    directory = Path(directory)
    round = _check_round(round)
    indices = np.asarray(pool_indices, dtype=np.int64).reshape(-1)
    where = f"query of round {round} ({directory})"
    _check_in_pool(indices, len(dataset), where)
    values, counts = np.unique(indices, return_counts=True)
    if (counts > 1).any():
        raise LabelError(f"{where}: pool index {_preview(values[counts > 1])} is queried more than once.")
    if not isinstance(dataset.features.get(image_column), datasets.Image):
        raise LabelError(
            f"{where}: column {image_column!r} is not an Image feature (features: {dataset.features}). Pass the "
            "image column as image_column."
        )
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(indices):
            raise LabelError(f"{where}: {len(scores)} scores for {len(indices)} queried pool indices.")
    if class_names is not None:
        class_names = check_class_names(class_names)
    if directory.exists():
        if np.array_equal(read_query_indices(directory), indices):
            logger.info(f"{directory} already holds the query of round {round}; keeping it as it is.")
            return directory
        raise LabelError(
            f"{directory} already holds a different query. It may hold annotators' work: move it away (or ingest its "
            "labels first), then write the query again."
        )

    query = dataset.select(indices)
    dropped = [
        column
        for column in query.column_names
        if column != image_column
        and (column in LABEL_COLUMNS or column in (POOL_INDEX, FILE_NAME, SCORE)
             or isinstance(query.features[column], datasets.ClassLabel))
    ]  # fmt: skip
    query = query.remove_columns(dropped)
    storage = (
        query.cast_column(image_column, datasets.Image(decode=False))
        .with_format("arrow")[:]
        .column(image_column)
    )
    image_bytes = storage.combine_chunks().field("bytes").to_pylist() if len(indices) else []
    image_paths = storage.combine_chunks().field("path").to_pylist() if len(indices) else []
    file_names = _file_names(indices.tolist(), image_paths)
    others = [column for column in query.column_names if column != image_column]
    query = query.add_column(POOL_INDEX, indices.tolist()).add_column(FILE_NAME, file_names)
    if scores is not None:
        query = query.add_column(SCORE, scores.tolist())
    query = query.select_columns(
        [POOL_INDEX, FILE_NAME, image_column, *others] + ([SCORE] if scores is not None else [])
    )

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = directory.with_name(f".{directory.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp_dir.mkdir()
        query.save_to_disk(str(tmp_dir / QUERY_DATASET_DIR))  # embeds local image files (self-contained)
        with open(tmp_dir / QUERY_CSV, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow([POOL_INDEX, FILE_NAME, "label"])
            writer.writerows([index, file_name, ""] for index, file_name in zip(indices.tolist(), file_names))
        tasks = [
            {
                "data": {
                    "image": _image_reference(data, path),
                    POOL_INDEX: index,
                    FILE_NAME: file_name,
                    "round": round,
                }
            }
            for index, file_name, data, path in zip(indices.tolist(), file_names, image_bytes, image_paths)
        ]
        with open(tmp_dir / LABEL_STUDIO_TASKS, "w", encoding="utf-8") as f:
            json.dump(tasks, f, indent=1)
        if class_names is not None:
            (tmp_dir / LABEL_STUDIO_CONFIG).write_text(label_studio_config(class_names), encoding="utf-8")
        _fsync_tree(tmp_dir)
        os.replace(tmp_dir, directory)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    fsync_directory(directory.parent)
    logger.info(f"Wrote the query of round {round} ({len(indices)} examples) to {directory}.")
    return directory


def read_query_indices(directory: str | os.PathLike) -> np.ndarray:
    """
    The pool indices of a query batch, read back from its `labels.csv`.

    Args:
        directory (`str` or `os.PathLike`): A directory written by `write_query_batch`.

    Returns:
        `np.ndarray`, int64: the queried pool indices, in file order.

    Raises:
        LabelError: `labels.csv` is missing, has no `pool_index` column, or holds a cell that is not a
            non-negative integer.
    """
    path = Path(directory) / QUERY_CSV
    if not path.is_file():
        raise LabelError(
            f"{path} not found: {directory} is not a query directory written by write_query_batch."
        )
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if POOL_INDEX not in (reader.fieldnames or []):
            raise LabelError(f"{path} has no {POOL_INDEX!r} column (columns: {reader.fieldnames}).")
        indices = [parse_pool_index(row[POOL_INDEX], f"{path}, line {j + 2}") for j, row in enumerate(reader)]
    return np.array(indices, dtype=np.int64)


def label_studio_config(class_names: list[str]) -> str:
    """
    A Label Studio labeling config for single-label image classification.

    Args:
        class_names (`list[str]`): The class names, in id order.

    Returns:
        `str`: the XML; its `<Choices name="label">` makes exports carry the class name in a `label` field.

    Example:

    ```python
    >>> print(label_studio_config(["cat", "dog"]))  # doctest: +NORMALIZE_WHITESPACE
    <View>
      <Image name="image" value="$image"/>
      <Choices name="label" toName="image" choice="single" showInLine="true">
        <Choice value="cat"/>
        <Choice value="dog"/>
      </Choices>
    </View>
    ```
    """
    choices = "".join(f"    <Choice value={quoteattr(name)}/>\n" for name in class_names)
    return (
        "<View>\n"
        '  <Image name="image" value="$image"/>\n'
        '  <Choices name="label" toName="image" choice="single" showInLine="true">\n'
        f"{choices}"
        "  </Choices>\n"
        "</View>\n"
    )


def _file_names(indices: list[int], paths: list[str | None]) -> list[str]:
    basenames = [os.path.basename(path) if path else None for path in paths]
    counts: dict[str, int] = {}
    for name in basenames:
        if name:
            counts[name] = counts.get(name, 0) + 1
    # Image folders repeat basenames across class folders; annotators need one name per image.
    return [
        f"{index}.png" if not name else (f"{index}_{name}" if counts[name] > 1 else name)
        for index, name in zip(indices, basenames)
    ]


def _image_reference(data: bytes | None, path: str | None) -> str:
    if data is None:
        return path or ""
    from PIL import Image as PILImage

    try:
        mime = PILImage.MIME.get(PILImage.open(io.BytesIO(data)).format, "image/png")
    except Exception:  # undecodable bytes still travel; Label Studio will say what is wrong
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_directory(Path(folder))


# ----- small checks -----


def _check_round(value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise LabelError(f"round must be a non-negative integer, got {value!r}.")
    return int(value)


def _check_in_pool(indices: np.ndarray, pool_size: int, where: str) -> None:
    bad = indices[(indices < 0) | (indices >= pool_size)]
    if bad.size:
        raise LabelError(
            f"{where}: pool index {_preview(bad)} is out of range for a pool of {pool_size} examples."
        )


def _preview(values, limit: int = 5) -> str:
    values = [int(v) for v in np.asarray(values).reshape(-1)]
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


# ----- a run's open query -----

PARTIAL_NAME = "partial.json"


def query_directory(run_dir: str | os.PathLike, round: int) -> Path:
    """Where a run writes the query batch of `round` (the round its examples are labeled in)."""
    return Path(run_dir) / QUERIES_DIR / f"round_{round}"


def open_query(run_dir: str | os.PathLike) -> tuple[int, np.ndarray] | None:
    """
    The query of a run that waits for labels, from its `state.json`.

    Args:
        run_dir (`str` or `os.PathLike`): The run directory.

    Returns:
        `(round, pool_indices)` of the query whose labeling step has not finished, or `None`.

    Raises:
        LabelError: `run_dir` holds no run.
    """
    state = _read_state(run_dir)
    waiting = [
        int(k) for k in state.get("queries", {}) if step_name("label", int(k)) not in state["completed"]
    ]
    if not waiting:
        return None
    round = min(waiting)
    return round, np.asarray(state["queries"][str(round)]["pool_indices"], dtype=np.int64)


def ingest_labels(
    run_dir: str | os.PathLike,
    source,
    *,
    allow_partial: bool = False,
    overwrite: bool = False,
    label_column: str | None = None,
    index_column: str | None = None,
) -> AddResult:
    """
    Bring annotators' labels for a run's open query into its `labels.parquet`; the run continues with them when
    it is resumed (`prunefuse-hf run ... --resume`, or `trainer.train(resume_from_checkpoint=True)`).

    Args:
        run_dir (`str` or `os.PathLike`): The run directory (it stopped after writing a query batch).
        source: Labels in any form [`read_labels`] reads (CSV, JSON/JSONL, parquet, a Label Studio export, a
            dataset folder, a `datasets.Dataset` or a Hub dataset id), with pool indices and class names or ids.
        allow_partial (`bool`, *optional*, defaults to `False`): Continue with the labeled part of the query;
            the rest stays in the pool, unlabeled.
        overwrite (`bool`, *optional*, defaults to `False`): Replace stored labels the file contradicts.
        label_column, index_column (`str`, *optional*): Column names, when they are not the usual ones.

    Returns:
        `AddResult`: how many labels were added, unchanged or overwritten, and the queried indices still missing.

    Raises:
        LabelError: the run has no open query, or the labels are refused (see [`LabelStore.add`]); the run
            directory is then unchanged.

    Example:

    ```python
    >>> ingest_labels("runs/unlabeled", "labels.csv").added
    1000
    ```
    """
    state = _read_state(run_dir)
    query = open_query(run_dir)
    if query is None:
        raise LabelError(
            f"{run_dir} has no query waiting for labels: run it (with annotation: human) until it writes one."
        )
    round, expected = query
    class_names = state["class_names"]
    batch = read_labels(source, class_names, pool_size=state["pool"]["num_examples"], label_column=label_column,
                        index_column=index_column)  # fmt: skip
    result = LabelStore(run_dir, class_names).add(
        batch, round=round, expected=expected, allow_partial=allow_partial, overwrite=overwrite
    )
    if allow_partial and result.missing.size:
        # The run continues with the labeled part; the others go back to the pool.
        partial = {"missing": result.missing.tolist(), "source": batch.source}
        atomic_write(
            query_directory(run_dir, round) / PARTIAL_NAME, lambda f: f.write(json.dumps(partial) + "\n")
        )
    return result


def query_is_complete(
    run_dir: str | os.PathLike, round: int, expected: np.ndarray, store: LabelStore
) -> bool:
    """Whether every queried index has a label, or the user chose to continue with the labeled part."""
    labeled = np.isin(expected, np.fromiter(store.labels, dtype=np.int64, count=len(store)))
    return bool(
        labeled.all() or (labeled.any() and (query_directory(run_dir, round) / PARTIAL_NAME).is_file())
    )


def _read_state(run_dir) -> dict:
    run = RunDirectory(run_dir)
    if not run.state_path.is_file():
        raise LabelError(f"{run_dir} holds no PruneFuse run ({STATE_NAME} is missing).")
    return run.read_state()
