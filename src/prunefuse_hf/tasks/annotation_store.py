"""People's annotations, the run side, shared by the tasks that store them themselves (object detection's boxes,
semantic segmentation's masks): [`AnnotationStore`], one parquet file in the run with a row per labeled pool index
(its annotation, the round, the source, the time, and who answered), and [`ingest_task_labels`], which brings
annotators' answers for a run's open query into it.

A task's store says only what its annotation is (the value column, how a value is stored, checked and read back);
the rules are the same for every task and for classification's `LabelStore`: a batch is checked as a whole before
anything is written, the file is rewritten atomically, a stored annotation is only replaced on request, images
annotators skipped are recorded (`skipped.json`), and each answer is checked against the image its query showed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from transformers.utils import logging

from ..annotation.identity import check_label_identity
from ..annotation.labels import LabelError, check_class_names, check_round, preview_values
from ..annotation.queries import open_query, query_directory, read_run_state
from ..annotation.store import AddResult, record_answered
from ..constants import POOL_INDEX
from ..utils.io import atomic_write

logger = logging.get_logger(__name__)

ANSWER_DETAILS = ("annotator", "annotation_id", "num_answers", "resolution")


class AnnotationStore:
    """
    The annotations people gave in a run, for a task that stores them itself: `RUN/<file_name>`, one row per labeled
    pool index (columns pool_index, the task's `value_column`, round, source, labeled_at, annotator, annotation_id,
    num_answers, resolution), sorted by round then pool index. A task's store sets the class attributes and the
    hooks below; see [`DetectionLabelStore`] and [`SegmentationLabelStore`].

    Class attributes:
        file_name (`str`): The parquet file in the run directory.
        value_column (`str`), value_type (`pyarrow.DataType`): The column holding each image's stored annotation.
        what, a_what (`str`): The annotation in messages (`"boxes"`, `"mask"`; `"boxes"`, `"a mask"`).
        missing_hint (`str`): Said when queried images have none (how to answer an image with nothing to mark).
        prepare_options (`dict`): The task's `prepare` options that read a stored annotation as it is stored (boxes
            are COCO pixels, masks class ids), whatever the pool's own layout.

    Args:
        run_dir (`str` or `os.PathLike`): The run directory (the file is created on the first write).
        class_names (`list[str]`): The run's classes; stored class ids index into it.

    Raises:
        LabelError: an existing file is unreadable, has other columns, repeats a pool index or holds a class id out
            of range (named, with the fix).
    """

    file_name = ""
    value_column = ""
    value_type: pa.DataType = pa.null()
    what = a_what = "annotations"
    missing_hint = ""
    prepare_options: dict = {}

    def __init__(self, run_dir: str | os.PathLike, class_names: list[str]):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / self.file_name
        self.class_names = check_class_names(class_names)
        self.schema = pa.schema(
            [pa.field(POOL_INDEX, pa.int64()), pa.field(self.value_column, self.value_type),
             pa.field("round", pa.int32()), pa.field("source", pa.string()), pa.field("labeled_at", pa.string()),
             pa.field("annotator", pa.string()), pa.field("annotation_id", pa.int64()),
             pa.field("num_answers", pa.int32()), pa.field("resolution", pa.string())]
        )  # fmt: skip
        self._set_table(self._load() if self.path.exists() else self.schema.empty_table())

    # ----- what a task's store says -----

    def given(self, labels) -> list:
        """The annotations of a batch read from annotators (`labels.objects`, `labels.masks`), in its order."""
        raise NotImplementedError

    def to_stored(self, pool_index: int, value):
        """The value the table holds for `value` (equal values mean equal annotations)."""
        raise NotImplementedError

    def check(self, pool_index: int, value, source: str) -> None:
        """Refuse (`LabelError`) an annotation whose class ids are not the run's."""

    def check_loaded(self, table: pa.Table) -> None:
        """Refuse (`LabelError`) a stored file that does not fit the run's classes."""

    def write_payload(self, rows: list[tuple[int, object, object]]) -> None:
        """Write what the table refers to for the new `(pool_index, value, stored)` rows, before the table."""

    def after_write(self) -> None:
        """Tidy up once the table is written (files no row refers to any more)."""

    def annotation(self, pool_index: int, stored):
        """What `labels` and `annotations` give for a stored value (in the task's `annotation_feature`)."""
        return stored

    @property
    def annotation_feature(self):
        """The `datasets` feature of an annotation as `annotations` gives it."""
        raise NotImplementedError

    # ----- the shared rules -----

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, num_labeled={len(self)})"

    def __len__(self) -> int:
        return self._table.num_rows

    @property
    def labels(self) -> dict:
        """`{pool_index: annotation}` of every stored image."""
        return {i: self.annotation(i, stored) for i, stored in self._stored.items()}

    @property
    def labeled_indices(self) -> np.ndarray:
        """The stored pool indices, sorted (int64)."""
        return np.asarray(sorted(self._stored), dtype=np.int64)

    def table(self) -> pa.Table:
        """The stored rows as a `pyarrow.Table`."""
        return self._table

    def annotations(self, indices) -> list:
        """
        The stored annotation of each of `indices`, in that order.

        Raises:
            LabelError: an index has none stored.
        """
        missing = [int(i) for i in indices if int(i) not in self._stored]
        if missing:
            raise LabelError(f"{self.path} holds no {self.what} for pool index {preview_values(np.asarray(missing))}: "
                             "label them (`prunefuse-hf label`) before the run trains on them.")  # fmt: skip
        return [self.annotation(int(i), self._stored[int(i)]) for i in indices]

    def add(self, labels, *, round: int, expected=None, allow_partial: bool = False,
            overwrite: bool = False) -> AddResult:  # fmt: skip
        """
        Store the annotations of `labels` (checked as a whole first; on any refusal nothing is written).

        Args:
            labels: What the task's reader gives (`DetectionLabels`, `SegmentationLabels`).
            round (`int`): The round they belong to.
            expected (iterable of int, *optional*): The round's queried pool indices: new annotations of other
                images are refused, and so is a batch that leaves some of them unlabeled (unless `allow_partial`).
            allow_partial (`bool`, defaults to `False`): Accept annotations for part of `expected`.
            overwrite (`bool`, defaults to `False`): Replace stored annotations the batch contradicts.

        Returns:
            `AddResult`: added, unchanged and overwritten counts, and the expected indices still unlabeled.

        Raises:
            LabelError: a pool index twice, a class id out of range, an image outside `expected`, part of `expected`
                unlabeled, stored annotations contradicted without `overwrite`.
        """
        round = check_round(round)
        name, indices = labels.source, labels.pool_indices
        values, counts = np.unique(indices, return_counts=True)
        if (counts > 1).any():
            raise LabelError(f"{name}: pool index {preview_values(values[counts > 1])} appears more than once. Keep "
                             f"one answer ({self.a_what}) per image.")  # fmt: skip
        given = self.given(labels)
        for index, value in zip(indices.tolist(), given):
            self.check(int(index), value, name)
        rows = [(int(i), v, self.to_stored(int(i), v)) for i, v in zip(indices.tolist(), given)]
        same = [i in self._stored and self._stored[i] == s for i, _, s in rows]
        conflict = [i in self._stored and not s for (i, _, _), s in zip(rows, same)]
        new = [i not in self._stored for i, _, _ in rows]
        missing = np.zeros(0, dtype=np.int64)
        if expected is not None:
            expected = np.unique(np.asarray(list(expected), dtype=np.int64))
            queried = set(expected.tolist())
            outside = [i for (i, _, _), s in zip(rows, same) if not s and i not in queried]
            if outside:
                raise LabelError(f"{name}: pool index {preview_values(np.asarray(outside))} is not part of round "
                                 f"{round}'s query ({len(expected)} queried images). Remove those images, or ingest "
                                 "them with the round that queried them.")  # fmt: skip
            answered = set(indices.tolist()) | set(self._stored)
            missing = np.asarray([i for i in expected.tolist() if i not in answered], dtype=np.int64)
        if any(conflict) and not overwrite:
            first = next(i for (i, _, _), c in zip(rows, conflict) if c)
            raise LabelError(f"{name}: pool index {first} already has {self.a_what} "
                             f"{self.describe(first, self._stored[first])} (stored earlier) and this batch gives "
                             f"another ({sum(conflict)} images differ). Stored {self.what} are never replaced "
                             "silently: fix the file, or pass overwrite=True (CLI: --overwrite).")  # fmt: skip
        if missing.size and not allow_partial:
            raise LabelError(f"{name}: {missing.size} of the {len(expected)} images queried in round {round} have no "
                             f"{self.what} (e.g. pool index {preview_values(missing)}). Label them and ingest again"
                             f"{self.missing_hint}, or pass allow_partial=True (CLI: --allow_partial) to continue with the labeled "
                             "ones.")  # fmt: skip
        result = AddResult(sum(new), sum(same), sum(conflict), missing)
        changed = [k for k, (n, c) in enumerate(zip(new, conflict)) if n or c]
        if not changed:
            logger.info(f"{name}: the {self.what} of all {len(labels)} images are already stored; {self.path} is "
                        "unchanged.")  # fmt: skip
            return result
        self.write_payload([rows[k] for k in changed])
        replaced = {rows[k][0] for k in changed}
        kept = self._table.filter(
            pa.array([i not in replaced for i in self._table.column(POOL_INDEX).to_pylist()], pa.bool_())
        )
        details = labels.details or {}
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        new_rows = pa.table(
            {POOL_INDEX: [rows[k][0] for k in changed], self.value_column: [rows[k][2] for k in changed],
             "round": [round] * len(changed), "source": [name] * len(changed), "labeled_at": [stamp] * len(changed),
             **{key: [details[key][k] for k in changed] if key in details else [None] * len(changed)
                for key in ANSWER_DETAILS}},
            schema=self.schema,
        )  # fmt: skip
        table = pa.concat_tables([kept, new_rows]).sort_by(
            [("round", "ascending"), (POOL_INDEX, "ascending")]
        )
        atomic_write(self.path, lambda f: pq.write_table(table, f), binary=True)
        self._set_table(table)
        self.after_write()
        logger.info(f"Stored the {self.what} of {result.added + result.overwritten} images from {name} in "
                    f"{self.path} (round {round}, {len(self)} images labeled).")  # fmt: skip
        return result

    def describe(self, pool_index: int, stored) -> str:
        """A stored value, as a refusal names it."""
        return str(stored)

    def _load(self) -> pa.Table:
        try:
            with open(self.path, "rb") as f:
                table = pq.read_table(f)
        except Exception as error:
            raise LabelError(f"{self.path} is not a readable parquet file ({error}). Restore it from a backup; "
                             f"{self.what} are never rebuilt from scratch automatically.") from error  # fmt: skip
        if set(table.schema.names) != set(self.schema.names):
            raise LabelError(f"{self.path} has columns {table.schema.names}, expected {self.schema.names}: it was not "
                             f"written by {type(self).__name__}. Move it away and ingest the {self.what} "
                             "again.")  # fmt: skip
        table = table.select(self.schema.names).cast(self.schema)
        indices = table.column(POOL_INDEX).to_pylist()
        if len(set(indices)) != len(indices):
            raise LabelError(f"{self.path} repeats a pool index; it is damaged. Restore it from a backup.")
        self.check_loaded(table)
        return table

    def _set_table(self, table: pa.Table) -> None:
        self._table = table
        self._stored = dict(
            zip(table.column(POOL_INDEX).to_pylist(), table.column(self.value_column).to_pylist())
        )


def ingest_task_labels(run_dir: str | os.PathLike, source, *, read: Callable, store: Callable, what: str,
                       allow_partial: bool = False, overwrite: bool = False, resolve: str | None = None,
                       requery_skipped: bool = False, pool=None, image_column: str | None = None,
                       label_column: str | None = None, index_column: str | None = None) -> AddResult:  # fmt: skip
    """
    Bring annotators' answers for a run's open query into the task's store; the run trains on them when it is
    resumed. Classification's [`ingest_labels`] for a task that stores its annotations itself: the same checks of
    identity (each answer goes on the image its task showed), the same skips (`skipped.json`) and partial queries.

    Args:
        run_dir (`str` or `os.PathLike`): The run (it stopped after writing a query batch).
        source: What `read` reads.
        read (`Callable`): `read(source, class_names=, query=, dataset=, image_column=, resolve=)`: the task's reader
            ([`read_detection_labels`], [`read_segmentation_labels`]).
        store (`Callable`): `store(run_dir, class_names)`: the task's [`AnnotationStore`].
        what (`str`): The annotations in messages (`"boxes"`, `"masks"`).
        allow_partial, overwrite, requery_skipped (`bool`): As for [`ingest_labels`].
        resolve (`str`, *optional*): Several different answers for one image: `None` refuses, `"ground_truth"` or
            `"latest"` decide.
        pool (`datasets.Dataset`, *optional*): The pool as the run reads it, to check each image (default: loaded
            again as the run's recipe loads it).
        image_column (`str`, *optional*): The pool's image column (default: the run's).
        label_column, index_column: Not read here (refused when given).

    Returns:
        `AddResult`: added, unchanged, overwritten, the queried images still missing, the skipped ones.

    Raises:
        LabelError: no open query; what the reader or the store refuses; an answer for an image outside the pool or
            of another run's images (named by file, task and pool index, with the fix); the run directory is then
            unchanged.
    """
    if label_column is not None or index_column is not None:
        raise LabelError(f"label_column / index_column ({label_column or index_column!r}) name columns of class-label "
                         f"files; {what} are read by pool index. Drop them.")  # fmt: skip
    state = read_run_state(run_dir)
    query = open_query(run_dir)
    if query is None:
        raise LabelError(f"{run_dir} has no query waiting for labels: run it (with annotation: human) until it "
                         "writes one.")  # fmt: skip
    round_, expected = query
    image_column = image_column or state["settings"].get("image_column") or "image"
    labels = read(source, class_names=state["class_names"], query=query_directory(run_dir, round_), dataset=pool,
                  image_column=image_column, resolve=resolve)  # fmt: skip
    size = state["pool"]["num_examples"]
    outside = labels.pool_indices[(labels.pool_indices < 0) | (labels.pool_indices >= size)]
    if outside.size:
        raise LabelError(f"{labels.source}: pool index {preview_values(outside)} is outside the run's pool of {size} "
                         f"images: are these the {what} of another run?")  # fmt: skip
    check_label_identity(run_dir, state, round_, labels, pool=pool, image_column=image_column)
    stored = store(run_dir, state["class_names"])
    skipped = np.setdiff1d(np.intersect1d(labels.skipped, expected), labels.pool_indices)
    skipped = skipped[~np.isin(skipped, stored.labeled_indices)]
    result = stored.add(labels, round=round_, expected=np.setdiff1d(expected, skipped), allow_partial=allow_partial,
                        overwrite=overwrite)  # fmt: skip
    result.skipped = skipped
    record_answered(run_dir, round_, skipped=skipped, missing=result.missing if allow_partial else None,
                    source=labels.source, requery_skipped=requery_skipped)  # fmt: skip
    return result
