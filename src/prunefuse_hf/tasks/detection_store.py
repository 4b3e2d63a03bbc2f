"""People label boxes, the run side: the boxes of an object-detection run with `annotation: human`.

They live in `RUN/labeled_objects.parquet`, beside classification's `labels.parquet`: one row per labeled pool index
with its `objects` in the cppe-5 layout (`bbox`: COCO `[x, y, width, height]` pixels, `category`: class ids), the
round, the source, the time, and who answered (annotator, annotation id, number of answers, resolution). The file is
rewritten atomically, read back by `datasets.Dataset.from_parquet`, and a stored box set is only replaced on request.
[`ingest_detection_labels`] reads annotators' boxes ([`read_detection_labels`]), checks each against the image the
query showed ([`check_label_identity`], as classification's labels are) and stores them; the run trains on them. The
rules of the store and of the ingest are shared with segmentation's masks (`annotation_store.py`).
"""

from __future__ import annotations

import os

import pyarrow as pa

from ..annotation.edits import StoredAnswers
from ..annotation.labels import LabelError
from ..annotation.store import AddResult
from ..constants import LABELED_OBJECTS_NAME
from .annotation_store import AnnotationStore, ingest_task_labels
from .detection_data import BBOX_KEY, CATEGORY_KEY, OBJECTS_COLUMN
from .detection_exports import annotation_objects, describe_objects, same_objects
from .detection_labels import DetectionLabels, read_detection_labels


def stored_objects(objects: dict) -> dict:
    """Boxes as the store keeps them: `{"bbox": [[x, y, w, h] floats, COCO pixels], "category": [int ids]}`."""
    return {BBOX_KEY: [[float(v) for v in box] for box in objects[BBOX_KEY]],
            CATEGORY_KEY: [int(c) for c in objects[CATEGORY_KEY]]}  # fmt: skip


class DetectionLabelStore(AnnotationStore):
    """
    The boxes people gave in a run: `RUN/labeled_objects.parquet`, one row per labeled pool index (columns
    pool_index, objects {bbox, category}, round, source, labeled_at, annotator, annotation_id, num_answers,
    resolution), sorted by round then pool index. The rules are [`AnnotationStore`]'s.

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

    file_name = LABELED_OBJECTS_NAME
    value_column = OBJECTS_COLUMN
    value_type = pa.struct(
        [pa.field(BBOX_KEY, pa.list_(pa.list_(pa.float64()))), pa.field(CATEGORY_KEY, pa.list_(pa.int64()))]
    )
    what = a_what = "boxes"
    missing_hint = " (an image without objects is an answer with no boxes)"
    # People's boxes are stored as COCO pixels, whatever the pool's bbox_format.
    prepare_options = {"bbox_format": "coco"}

    @property
    def annotation_feature(self) -> dict:
        """The `datasets` feature of a stored annotation (the `objects` column: COCO pixel boxes, class ids)."""
        import datasets

        return {BBOX_KEY: datasets.List(datasets.List(datasets.Value("float64"))),
                CATEGORY_KEY: datasets.List(datasets.Value("int64"))}  # fmt: skip

    def given(self, labels: DetectionLabels) -> list:
        return labels.objects

    def to_stored(self, pool_index: int, objects: dict) -> dict:
        return stored_objects(objects)

    def check(self, pool_index: int, objects: dict, source: str) -> None:
        bad = [c for c in objects[CATEGORY_KEY] if not 0 <= int(c) < len(self.class_names)]
        if bad:
            raise LabelError(f"{source}: pool index {pool_index} has class id {bad} out of range for the run's "
                             f"{len(self.class_names)} classes {self.class_names}. Fix the categories.")  # fmt: skip

    def check_loaded(self, table: pa.Table) -> None:
        top = max(
            (max(o[CATEGORY_KEY], default=-1) for o in table.column(OBJECTS_COLUMN).to_pylist()), default=-1
        )
        if top >= len(self.class_names):
            raise LabelError(f"{self.path} holds class id {top} but the run has {len(self.class_names)} classes "
                             f"({self.class_names[:10]}). Were these boxes stored with another class list?")  # fmt: skip


def ingest_detection_labels(run_dir: str | os.PathLike, source, *, allow_partial: bool = False, overwrite: bool = False,
                            resolve: str | None = None, requery_skipped: bool = False, pool=None,
                            image_column: str | None = None, label_column: str | None = None,
                            index_column: str | None = None) -> AddResult:  # fmt: skip
    """
    Bring annotators' boxes for an object-detection run's open query into `RUN/labeled_objects.parquet`; the run
    trains on them when it is resumed ([`ingest_task_labels`] with [`read_detection_labels`] and
    [`DetectionLabelStore`]).

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
    return ingest_task_labels(run_dir, source, read=read_detection_labels, store=DetectionLabelStore, what="boxes",
                              allow_partial=allow_partial, overwrite=overwrite, resolve=resolve,
                              requery_skipped=requery_skipped, pool=pool, image_column=image_column,
                              label_column=label_column, index_column=index_column)  # fmt: skip


# How the boxes stored from Label Studio compare with its project's annotations: `label-studio pull` and the loop
# report an image whose boxes were edited, deleted or answered anew after they were pulled (see `label_edits`).
DETECTION_ANSWERS = StoredAnswers(
    file_name=LABELED_OBJECTS_NAME,
    stored=lambda row, class_names: stored_objects(row[OBJECTS_COLUMN]),
    answer=annotation_objects,
    same=same_objects,
    describe=describe_objects,
    retrain="start a new run and label its queries with the corrected boxes (seed_labels is refused for detection)",
)
