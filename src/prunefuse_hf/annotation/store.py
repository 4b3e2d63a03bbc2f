"""Human annotation: query batches go out to annotators, labels come back in.

A round in human-annotation mode writes its query batch (`write_query_batch`: a self-contained dataset of
the selected images, a `labels.csv` template and a Label Studio import file) and stops. The user brings the
labels back in a file, `read_labels` (`prunefuse_hf.annotation.readers`) turns that file into a `LabelBatch` (pool
index -> class id), and `LabelStore.add` validates the batch against the round's query and the labels
already stored before it writes anything. Simulated runs build their `LabelBatch` with `oracle_labels` and
go through the same `LabelStore.add`, so both modes share one ingest path.

Labels are data: they live in one file, `RUN/labels.parquet`, rewritten atomically (temporary file in the
same directory, fsync, `os.replace`). A refusal leaves the run directory byte-identical, and a stored label
is only replaced when the caller asks for it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from transformers.utils import logging

from ..constants import (
    ANNOTATION_COLUMNS,
    LABELS_NAME,
    POOL_INDEX,
    QUERY_PARTIAL,
    QUERY_SKIPPED,
)
from ..utils.io import atomic_write
from .identity import check_label_identity
from .labels import (
    LabelBatch,
    LabelError,
    check_class_names,
    check_round,
    preview_values,
)
from .queries import open_query, query_directory, read_run_state
from .readers import read_labels

logger = logging.get_logger(__name__)


_BASE_SCHEMA = pa.schema(
    [
        pa.field(POOL_INDEX, pa.int64()),
        pa.field("label", pa.int64()),
        pa.field("round", pa.int32()),
        pa.field("source", pa.string()),
        pa.field("labeled_at", pa.string()),
    ]
)
# Who answered and how several answers became the label (empty for the oracle and plain label files). Files
# written before these columns existed load with them empty.
_STORE_SCHEMA = pa.schema(
    list(_BASE_SCHEMA)
    + [
        pa.field("annotator", pa.string()),
        pa.field("annotation_id", pa.int64()),
        pa.field("num_answers", pa.int32()),
        pa.field("resolution", pa.string()),
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
        skipped (`np.ndarray`, int64): Queried pool indices that annotators skipped (set by `ingest_labels`).
    """

    added: int
    unchanged: int
    overwritten: int
    missing: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    skipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), compare=False)


# ----- the run's labels -----


class LabelStore:
    """
    The run's labels: one parquet file `RUN/labels.parquet` with columns pool_index (int64), label (int64),
    round (int32), source (string), labeled_at (string, ISO 8601 UTC), and, for labels from an annotation tool,
    annotator (string), annotation_id (int64), num_answers (int32: how many annotators answered) and resolution
    (string: `single`, `agreed`, or the policy that chose among disagreeing answers); empty otherwise.

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
        round = check_round(round)
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
                    f"{name}: pool index {preview_values(indices[outside])} is not part of round {round}'s query "
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
                f"(e.g. {preview_values(missing)}). Label them and ingest again, or pass allow_partial=True (CLI: "
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
        details = batch.details or {}
        picked = np.flatnonzero(changed)
        new_rows = pa.table(
            {
                POOL_INDEX: pa.array(indices[changed], pa.int64()),
                "label": pa.array(labels[changed], pa.int64()),
                "round": pa.array(np.full(count, round, dtype=np.int32), pa.int32()),
                "source": pa.array([name] * count, pa.string()),
                "labeled_at": pa.array([labeled_at] * count, pa.string()),
                **{
                    column.name: pa.array(
                        [details[column.name][j] for j in picked]
                        if column.name in details
                        else [None] * count,
                        column.type,
                    )
                    for column in _STORE_SCHEMA
                    if column.name in ANNOTATION_COLUMNS
                },
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
        if found == {f.name: f.type for f in _BASE_SCHEMA}:  # written before the annotation columns existed
            table = table.select(_BASE_SCHEMA.names)
            for column in _STORE_SCHEMA:
                if column.name not in found:
                    table = table.append_column(column, pa.nulls(table.num_rows, column.type))
            found = {f.name: f.type for f in table.schema}
        if found != wanted:
            raise LabelError(
                f"{self.path} has columns {found}, expected {wanted}. It was not written by LabelStore; move it "
                "away (it may hold labels you need) and ingest the labels again."
            )
        table = table.select(_STORE_SCHEMA.names).cast(_STORE_SCHEMA)
        if any(table.column(name).null_count for name in _BASE_SCHEMA.names):
            raise LabelError(
                f"{self.path} has empty cells; every stored label needs {', '.join(_BASE_SCHEMA.names)}."
            )
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
            raise LabelError(f"{name}: pool index {preview_values(indices[indices < 0])} is negative.")
        bad = (labels < 0) | (labels >= len(self.class_names))
        if bad.any():
            raise LabelError(
                f"{name}: class id {preview_values(labels[bad])} is out of range; the run has {len(self.class_names)} "
                "classes. Fix the labels."
            )
        values, counts = np.unique(indices, return_counts=True)
        if (counts > 1).any():
            raise LabelError(
                f"{name}: pool index {preview_values(values[counts > 1])} appears more than once. Keep one label per "
                "pool index."
            )


# ----- a run's open query -----


def ingest_labels(
    run_dir: str | os.PathLike,
    source,
    *,
    allow_partial: bool = False,
    overwrite: bool = False,
    label_column: str | None = None,
    index_column: str | None = None,
    resolve: str | None = None,
    requery_skipped: bool = False,
    pool=None,
    image_column: str | None = None,
) -> AddResult:
    """
    Bring annotators' labels for a run's open query into its `labels.parquet`; the run continues with them when
    it is resumed (`prunefuse-hf run ... --resume`, or `trainer.train(resume_from_checkpoint=True)`).

    Tasks that annotators skipped (a Label Studio JSON export's cancelled annotations) are recorded in the
    query's `skipped.json`: they are not labeled, go back to the pool, and are not queried again (unless
    `requery_skipped`). A query whose every image is labeled or skipped is complete.

    Args:
        run_dir (`str` or `os.PathLike`): The run directory (it stopped after writing a query batch).
        source: Labels in any form [`read_labels`] reads (CSV, JSON/JSONL, parquet, a Label Studio export, a
            dataset folder, a `datasets.Dataset` or a Hub dataset id), with pool indices and class names or ids.
        allow_partial (`bool`, *optional*, defaults to `False`): Continue with the labeled part of the query;
            the rest stays in the pool, unlabeled.
        overwrite (`bool`, *optional*, defaults to `False`): Replace stored labels the file contradicts.
        label_column, index_column (`str`, *optional*): Column names, when they are not the usual ones.
        resolve (`str`, *optional*): How disagreeing answers become one label (`"ground_truth"`, `"majority"`,
            `"latest"`); by default such tasks are refused, named with their answers.
        requery_skipped (`bool`, *optional*, defaults to `False`): Let later rounds query the skipped images again.
        pool (`datasets.Dataset`, *optional*): The pool as the run will read it, to check that each labeled row is
            the image annotators were shown; default: loaded again as the run's recipe loads it (only the labeled
            rows are decoded).
        image_column (`str`, *optional*): The pool's image column (default: the run's).

    Returns:
        `AddResult`: how many labels were added, unchanged or overwritten, the queried indices still missing,
        and the skipped ones.

    Raises:
        LabelError: the run has no open query; the labels are refused (see [`LabelStore.add`]); a labeled pool
            index holds another image now than the one annotators were shown, or a row of the file refers to
            another image (`image_path`, `file_name`, a Label Studio task's image) than the query (named, with the
            fix). The run directory is then unchanged.

    Example:

    ```python
    >>> ingest_labels("runs/unlabeled", "label_studio_export.json", resolve="majority").skipped.size
    3
    ```
    """
    state = read_run_state(run_dir)
    query = open_query(run_dir)
    if query is None:
        raise LabelError(
            f"{run_dir} has no query waiting for labels: run it (with annotation: human) until it writes one."
        )
    round, expected = query
    class_names = state["class_names"]
    batch = read_labels(source, class_names, pool_size=state["pool"]["num_examples"], label_column=label_column,
                        index_column=index_column, resolve=resolve)  # fmt: skip
    check_label_identity(run_dir, state, round, batch, pool=pool, image_column=image_column)
    store = LabelStore(run_dir, class_names)
    # A skip counts only for a queried image that nobody labeled (another annotator may have answered it).
    skipped = np.setdiff1d(np.intersect1d(batch.skipped, expected), batch.pool_indices)
    skipped = skipped[~np.isin(skipped, np.fromiter(store.labels, dtype=np.int64, count=len(store)))]
    result = store.add(
        batch,
        round=round,
        expected=np.setdiff1d(expected, skipped),
        allow_partial=allow_partial,
        overwrite=overwrite,
    )
    result.skipped = skipped
    record_answered(run_dir, round, skipped=skipped, missing=result.missing if allow_partial else None,
                    source=batch.source, requery_skipped=requery_skipped)  # fmt: skip
    return result


def record_answered(run_dir: str | os.PathLike, round: int, *, skipped: np.ndarray, missing: np.ndarray | None,
                    source: str, requery_skipped: bool = False) -> None:  # fmt: skip
    """
    Record, beside a round's query, what its ingest left unlabeled: the images annotators skipped
    (`skipped.json`: not labeled, not queried again unless `requery_skipped`) and, when the user continues with
    part of the query (`missing` given and not empty), the images that go back to the pool (`partial.json`).
    Every task's ingest calls it after storing its labels.
    """
    directory = query_directory(run_dir, round)
    if skipped.size:
        record = {POOL_INDEX: skipped.tolist(), "source": source, "requery": requery_skipped}
        atomic_write(directory / QUERY_SKIPPED, lambda f: f.write(json.dumps(record) + "\n"))
        logger.info(
            f"{skipped.size} images of round {round} were skipped by annotators; they are not labeled."
        )
    if missing is not None and missing.size:
        # The run continues with the labeled part; the others go back to the pool.
        partial = {"missing": missing.tolist(), "source": source}
        atomic_write(directory / QUERY_PARTIAL, lambda f: f.write(json.dumps(partial) + "\n"))


def query_is_complete(
    run_dir: str | os.PathLike, round: int, expected: np.ndarray, store: LabelStore
) -> bool:
    """Whether every queried index has a label or was skipped, or the user chose to continue with the labeled
    part."""
    labeled = np.isin(expected, np.fromiter(store.labels, dtype=np.int64, count=len(store)))
    directory = query_directory(run_dir, round)
    if (directory / QUERY_SKIPPED).is_file():  # skipped images count as answered
        skipped = json.loads((directory / QUERY_SKIPPED).read_text(encoding="utf-8"))[POOL_INDEX]
        labeled |= np.isin(expected, np.asarray(skipped, dtype=np.int64))
    return bool(labeled.all() or (labeled.any() and (directory / QUERY_PARTIAL).is_file()))
