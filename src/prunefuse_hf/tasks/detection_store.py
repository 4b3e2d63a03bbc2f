"""People label boxes, the run side: the boxes of an object-detection run with `annotation: human`.

They live in `RUN/labeled_objects.parquet`, beside classification's `labels.parquet`: one row per labeled pool index
with its `objects` in the cppe-5 layout (`bbox`: COCO `[x, y, width, height]` pixels, `category`: class ids), the
round, the source, the time, and who answered (annotator, annotation id, number of answers, resolution). The file is
rewritten atomically, read back by `datasets.Dataset.from_parquet`, and a stored box set is only replaced on request.
[`ingest_detection_labels`] reads annotators' boxes ([`read_detection_labels`]), checks each against the image the
query showed ([`check_label_identity`], as classification's labels are) and stores them; the run trains on them.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from transformers.utils import logging

from ..annotation.edits import StoredAnswers
from ..annotation.identity import check_label_identity
from ..annotation.labels import LabelError, check_class_names, check_round, preview_values
from ..annotation.queries import open_query, query_directory, read_run_state
from ..annotation.store import AddResult, record_answered
from ..constants import LABELED_OBJECTS_NAME, POOL_INDEX
from ..utils.io import atomic_write
from .detection_data import BBOX_KEY, CATEGORY_KEY, OBJECTS_COLUMN
from .detection_exports import annotation_objects, describe_objects, same_objects
from .detection_labels import DetectionLabels, read_detection_labels

logger = logging.get_logger(__name__)

_OBJECTS_TYPE = pa.struct(
    [pa.field(BBOX_KEY, pa.list_(pa.list_(pa.float64()))), pa.field(CATEGORY_KEY, pa.list_(pa.int64()))]
)
_SCHEMA = pa.schema(
    [
        pa.field(POOL_INDEX, pa.int64()),
        pa.field(OBJECTS_COLUMN, _OBJECTS_TYPE),
        pa.field("round", pa.int32()),
        pa.field("source", pa.string()),
        pa.field("labeled_at", pa.string()),
        pa.field("annotator", pa.string()),
        pa.field("annotation_id", pa.int64()),
        pa.field("num_answers", pa.int32()),
        pa.field("resolution", pa.string()),
    ]
)
_DETAILS = ("annotator", "annotation_id", "num_answers", "resolution")


class DetectionLabelStore:
    """
    The boxes people gave in a run: `RUN/labeled_objects.parquet`, one row per labeled pool index (columns
    pool_index, objects {bbox, category}, round, source, labeled_at, annotator, annotation_id, num_answers,
    resolution), sorted by round then pool index.

    Args:
        run_dir (`str` or `os.PathLike`): The run directory (the file is created on the first write).
        class_names (`list[str]`): The run's classes; stored categories are ids into it.

    Raises:
        LabelError: an existing file is unreadable, has other columns, repeats a pool index or holds a class id
            out of range (named, with the fix).

    Example:

    ```python
    >>> store = DetectionLabelStore("runs/boxes", ["cat", "dog"])
    >>> labels = DetectionLabels([4], [{"bbox": [[1.0, 2.0, 5.0, 5.0]], "category": [1]}], source="coco.json")
    >>> store.add(labels, round=1, expected=[4]).added
    1
    >>> store.annotations([4])
    [{'bbox': [[1.0, 2.0, 5.0, 5.0]], 'category': [1]}]
    >>> datasets.Dataset.from_parquet("runs/boxes/labeled_objects.parquet")[0]["objects"]["category"]
    [1]
    ```
    """

    def __init__(self, run_dir: str | os.PathLike, class_names: list[str]):
        self.path = Path(run_dir) / LABELED_OBJECTS_NAME
        self.class_names = check_class_names(class_names)
        self._set_table(self._load() if self.path.exists() else _SCHEMA.empty_table())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, num_labeled={len(self)})"

    def __len__(self) -> int:
        return self._table.num_rows

    @property
    def labels(self) -> dict[int, dict]:
        """`{pool_index: objects}` of every stored image (a copy)."""
        return dict(self._objects)

    @property
    def labeled_indices(self) -> np.ndarray:
        """The stored pool indices, sorted (int64)."""
        return np.asarray(sorted(self._objects), dtype=np.int64)

    def table(self) -> pa.Table:
        """The stored rows as a `pyarrow.Table`."""
        return self._table

    @property
    def annotation_feature(self) -> dict:
        """The `datasets` feature of a stored annotation (the `objects` column: COCO pixel boxes, class ids)."""
        import datasets

        return {BBOX_KEY: datasets.List(datasets.List(datasets.Value("float64"))),
                CATEGORY_KEY: datasets.List(datasets.Value("int64"))}  # fmt: skip

    def annotations(self, indices) -> list[dict]:
        """
        The stored objects of each of `indices`, in that order.

        Raises:
            LabelError: an index has no stored boxes.
        """
        missing = [int(i) for i in indices if int(i) not in self._objects]
        if missing:
            raise LabelError(f"{self.path} holds no boxes for pool index {preview_values(np.asarray(missing))}: label "
                             "them (`prunefuse-hf label`) before the run trains on them.")  # fmt: skip
        return [self._objects[int(i)] for i in indices]

    def add(self, labels: DetectionLabels, *, round: int, expected=None, allow_partial: bool = False,
            overwrite: bool = False) -> AddResult:  # fmt: skip
        """
        Store the boxes of `labels` (checked as a whole first; on any refusal nothing is written).

        Args:
            labels ([`DetectionLabels`]): The boxes read ([`read_detection_labels`]).
            round (`int`): The round they belong to.
            expected (iterable of int, *optional*): The round's queried pool indices: new boxes for other images
                are refused, and so is a batch that leaves some of them unlabeled (unless `allow_partial`).
            allow_partial (`bool`, defaults to `False`): Accept boxes for part of `expected`.
            overwrite (`bool`, defaults to `False`): Replace stored boxes the batch contradicts.

        Returns:
            `AddResult`: added, unchanged and overwritten counts, and the expected indices still unlabeled.

        Raises:
            LabelError: a pool index twice, a class id out of range, an image outside `expected`, part of `expected`
                unlabeled, stored boxes contradicted without `overwrite`.
        """
        round = check_round(round)
        name, indices = labels.source, labels.pool_indices
        values, counts = np.unique(indices, return_counts=True)
        if (counts > 1).any():
            raise LabelError(f"{name}: pool index {preview_values(values[counts > 1])} appears more than once. Keep "
                             "one box set per image.")  # fmt: skip
        for index, objects in zip(indices.tolist(), labels.objects):
            bad = [c for c in objects[CATEGORY_KEY] if not 0 <= int(c) < len(self.class_names)]
            if bad:
                raise LabelError(f"{name}: pool index {index} has class id {bad} out of range for the run's "
                                 f"{len(self.class_names)} classes {self.class_names}. Fix the categories.")  # fmt: skip
        rows = [(int(i), _normalized(o)) for i, o in zip(indices.tolist(), labels.objects)]
        same = [self._objects.get(i) == o for i, o in rows]
        conflict = [i in self._objects and not s for (i, _), s in zip(rows, same)]
        new = [i not in self._objects for i, _ in rows]
        missing = np.zeros(0, dtype=np.int64)
        if expected is not None:
            expected = np.unique(np.asarray(list(expected), dtype=np.int64))
            outside = [i for (i, _), s in zip(rows, same) if not s and i not in set(expected.tolist())]
            if outside:
                raise LabelError(f"{name}: pool index {preview_values(np.asarray(outside))} is not part of round "
                                 f"{round}'s query ({len(expected)} queried images). Remove those images, or ingest "
                                 "them with the round that queried them.")  # fmt: skip
            given = set(indices.tolist()) | set(self._objects)
            missing = np.asarray([i for i in expected.tolist() if i not in given], dtype=np.int64)
        if any(conflict) and not overwrite:
            first = next(i for (i, _), c in zip(rows, conflict) if c)
            raise LabelError(f"{name}: pool index {first} already has boxes {self._objects[first]} (stored earlier) "
                             f"and this batch gives others ({sum(conflict)} images differ). Stored boxes are never "
                             "replaced silently: fix the file, or pass overwrite=True (CLI: --overwrite).")  # fmt: skip
        if missing.size and not allow_partial:
            raise LabelError(f"{name}: {missing.size} of the {len(expected)} images queried in round {round} have no "
                             f"boxes (e.g. pool index {preview_values(missing)}). Label them and ingest again (an "
                             "image without objects is an answer with no boxes), or pass allow_partial=True (CLI: "
                             "--allow_partial) to continue with the labeled ones.")  # fmt: skip
        result = AddResult(sum(new), sum(same), sum(conflict), missing)
        changed = [k for k, (n, c) in enumerate(zip(new, conflict)) if n or c]
        if not changed:
            logger.info(
                f"{name}: the boxes of all {len(labels)} images are already stored; {self.path} is unchanged."
            )
            return result
        replaced = {rows[k][0] for k in changed}
        kept = self._table.filter(
            pa.array([i not in replaced for i in self._table.column(POOL_INDEX).to_pylist()], pa.bool_())
        )
        details = labels.details or {}
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        new_rows = pa.table(
            {POOL_INDEX: [rows[k][0] for k in changed], OBJECTS_COLUMN: [rows[k][1] for k in changed],
             "round": [round] * len(changed), "source": [name] * len(changed), "labeled_at": [stamp] * len(changed),
             **{key: [details[key][k] for k in changed] if key in details else [None] * len(changed)
                for key in _DETAILS}},
            schema=_SCHEMA,
        )  # fmt: skip
        table = pa.concat_tables([kept, new_rows]).sort_by(
            [("round", "ascending"), (POOL_INDEX, "ascending")]
        )
        atomic_write(self.path, lambda f: pq.write_table(table, f), binary=True)
        self._set_table(table)
        logger.info(f"Stored the boxes of {result.added} images from {name} in {self.path} (round {round}, "
                    f"{len(self)} images labeled).")  # fmt: skip
        return result

    def _load(self) -> pa.Table:
        try:
            with open(self.path, "rb") as f:
                table = pq.read_table(f)
        except Exception as error:
            raise LabelError(f"{self.path} is not a readable parquet file ({error}). Restore it from a backup; boxes "
                             "are never rebuilt from scratch automatically.") from error  # fmt: skip
        if set(table.schema.names) != set(_SCHEMA.names):
            raise LabelError(f"{self.path} has columns {table.schema.names}, expected {_SCHEMA.names}: it was not "
                             "written by DetectionLabelStore. Move it away and ingest the boxes again.")  # fmt: skip
        table = table.select(_SCHEMA.names).cast(_SCHEMA)
        indices = table.column(POOL_INDEX).to_pylist()
        if len(set(indices)) != len(indices):
            raise LabelError(f"{self.path} repeats a pool index; it is damaged. Restore it from a backup.")
        top = max(
            (max(o[CATEGORY_KEY], default=-1) for o in table.column(OBJECTS_COLUMN).to_pylist()), default=-1
        )
        if top >= len(self.class_names):
            raise LabelError(f"{self.path} holds class id {top} but the run has {len(self.class_names)} classes "
                             f"({self.class_names[:10]}). Were these boxes stored with another class list?")  # fmt: skip
        return table

    def _set_table(self, table: pa.Table) -> None:
        self._table = table
        self._objects = dict(
            zip(table.column(POOL_INDEX).to_pylist(), table.column(OBJECTS_COLUMN).to_pylist())
        )


def _normalized(objects: dict) -> dict:
    return {BBOX_KEY: [[float(v) for v in box] for box in objects[BBOX_KEY]],
            CATEGORY_KEY: [int(c) for c in objects[CATEGORY_KEY]]}  # fmt: skip


def ingest_detection_labels(run_dir: str | os.PathLike, source, *, allow_partial: bool = False, overwrite: bool = False,
                            resolve: str | None = None, requery_skipped: bool = False, pool=None,
                            image_column: str | None = None, label_column: str | None = None,
                            index_column: str | None = None) -> AddResult:  # fmt: skip
    """
    Bring annotators' boxes for an object-detection run's open query into `RUN/labeled_objects.parquet`; the run
    trains on them when it is resumed. Classification's [`ingest_labels`] for boxes: the same checks of identity
    (each box set goes on the image its task showed), the same skips (`skipped.json`) and partial queries.

    Args:
        run_dir (`str` or `os.PathLike`): The run (it stopped after writing a query batch).
        source: What [`read_detection_labels`] reads: a COCO JSON file (the query's `annotations.json` filled in),
            a Label Studio JSON / JSON_MIN / COCO export, or an export already loaded.
        allow_partial, overwrite, requery_skipped (`bool`): As for [`ingest_labels`].
        resolve (`str`, *optional*): Several different answers for one image: `None` refuses, `"ground_truth"` or
            `"latest"` decide.
        pool (`datasets.Dataset`, *optional*): The pool as the run reads it, to check each image (default: loaded
            again as the run's recipe loads it).
        image_column (`str`, *optional*): The pool's image column (default: the run's).
        label_column, index_column: Not read for boxes (refused when given).

    Returns:
        `AddResult`: added, unchanged, overwritten, the queried images still missing, the skipped ones.

    Raises:
        LabelError: no open query; a box outside its image, an unknown category, answers that disagree, an export
            of another run's images (named by file, task and pool index, with the fix); the run directory is then
            unchanged.

    Example:

    ```python
    >>> ingest_detection_labels("runs/boxes", "runs/boxes/queries/round_1/annotations.json").added
    12
    ```
    """
    if label_column is not None or index_column is not None:
        raise LabelError(f"label_column / index_column ({label_column or index_column!r}) name columns of class-label "
                         "files; boxes are read by pool index from COCO JSON or a Label Studio export. Drop them.")  # fmt: skip
    state = read_run_state(run_dir)
    query = open_query(run_dir)
    if query is None:
        raise LabelError(f"{run_dir} has no query waiting for labels: run it (with annotation: human) until it "
                         "writes one.")  # fmt: skip
    round_, expected = query
    image_column = image_column or state["settings"].get("image_column") or "image"
    labels = read_detection_labels(source, class_names=state["class_names"], query=query_directory(run_dir, round_),
                                   dataset=pool, image_column=image_column, resolve=resolve)  # fmt: skip
    size = state["pool"]["num_examples"]
    outside = labels.pool_indices[(labels.pool_indices < 0) | (labels.pool_indices >= size)]
    if outside.size:
        raise LabelError(f"{labels.source}: pool index {preview_values(outside)} is outside the run's pool of {size} "
                         "images: are these the boxes of another run?")  # fmt: skip
    check_label_identity(run_dir, state, round_, labels, pool=pool, image_column=image_column)
    store = DetectionLabelStore(run_dir, state["class_names"])
    skipped = np.setdiff1d(np.intersect1d(labels.skipped, expected), labels.pool_indices)
    skipped = skipped[~np.isin(skipped, store.labeled_indices)]
    result = store.add(labels, round=round_, expected=np.setdiff1d(expected, skipped), allow_partial=allow_partial,
                       overwrite=overwrite)  # fmt: skip
    result.skipped = skipped
    record_answered(run_dir, round_, skipped=skipped, missing=result.missing if allow_partial else None,
                    source=labels.source, requery_skipped=requery_skipped)  # fmt: skip
    return result


# How the boxes stored from Label Studio compare with its project's annotations: `label-studio pull` and the loop
# report an image whose boxes were edited, deleted or answered anew after they were pulled (see `label_edits`).
DETECTION_ANSWERS = StoredAnswers(
    file_name=LABELED_OBJECTS_NAME,
    stored=lambda row, class_names: _normalized(row[OBJECTS_COLUMN]),
    answer=annotation_objects,
    same=same_objects,
    describe=describe_objects,
    retrain="start a new run and label its queries with the corrected boxes (seed_labels is refused for detection)",
)
