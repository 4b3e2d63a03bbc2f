"""People label masks, the run side: the masks of a semantic-segmentation run with `annotation: human`.

Each labeled image's mask is a PNG of class ids ("L": the id of `class_names` per pixel, 255 where not labeled) in
`RUN/labeled_masks/`, named `<pool_index>-<digest>.png` after its pixels, and `RUN/labeled_masks.parquet` indexes
them: one row per labeled pool index with its `mask_file` (relative to the run directory), the round, the source,
the time, and who answered. The mask files are written first, then the index atomically: a mask is labeled once its
row is in the index, and a replaced mask (only on request) is a new file, so a stop at any moment leaves the run's
masks whole. [`ingest_segmentation_labels`] reads annotators' masks ([`read_segmentation_labels`]), checks each
against the image the query showed and stores them; the run trains on them. The rules are [`AnnotationStore`]'s,
shared with detection's boxes.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow as pa
from transformers.utils import logging

from ..annotation.labels import LabelError
from ..annotation.store import AddResult
from ..constants import LABELED_MASKS_DIR, LABELED_MASKS_NAME
from ..utils.io import atomic_write, fsync_directory
from .annotation_store import AnnotationStore, ingest_task_labels
from .segmentation_labels import SegmentationLabels, read_segmentation_labels
from .segmentation_masks import IGNORE_INDEX

logger = logging.get_logger(__name__)

MASK_FILE = "mask_file"


class SegmentationLabelStore(AnnotationStore):
    """
    The masks people gave in a run: PNGs of class ids in `RUN/labeled_masks/`, indexed by `RUN/labeled_masks.parquet`
    (columns pool_index, mask_file, round, source, labeled_at, annotator, annotation_id, num_answers, resolution),
    sorted by round then pool index. The rules are [`AnnotationStore`]'s.

    Masks hold the ids of the run's `class_names` (with `reduce_labels`, the reduced ones) and 255 where not labeled,
    as the query's templates do; the run trains on them as they are (`reduce_labels` is not applied again).

    Args:
        run_dir (`str` or `os.PathLike`): The run directory (the files are created on the first write).
        class_names (`list[str]`): The run's classes.

    Raises:
        LabelError: an existing index is unreadable, has other columns, repeats a pool index or names a mask file
            that is missing (named, with the fix).

    Example:

    ```python
    >>> store = SegmentationLabelStore("runs/masks", ["road", "car"])
    >>> labels = SegmentationLabels([4], [np.array([[0, 1], [1, 255]], dtype=np.uint8)], source="masks/")
    >>> store.add(labels, round=1, expected=[4]).added
    1
    >>> store.labeled_indices.tolist(), open_mask(store.annotations([4])[0]).tolist()
    ([4], [[0, 1], [1, 255]])
    ```
    """

    file_name = LABELED_MASKS_NAME
    value_column = MASK_FILE
    value_type = pa.string()
    what, a_what = "masks", "a mask"
    missing_hint = f" (a mask still all {IGNORE_INDEX}, the template as written, is no answer)"
    # Stored masks are class ids already: never reduced again.
    prepare_options = {"reduce_labels": False}

    @property
    def folder(self) -> Path:
        """`RUN/labeled_masks/`, where the mask files are."""
        return self.run_dir / LABELED_MASKS_DIR

    @property
    def annotation_feature(self):
        """The `datasets` feature of a stored mask: an `Image` (an "L" PNG of class ids)."""
        import datasets

        return datasets.Image()

    def annotation(self, pool_index: int, stored: str) -> dict:
        """A stored mask as a `datasets.Image` value: `{"bytes": None, "path": <its file>}` (read when decoded)."""
        return {"bytes": None, "path": str(self.run_dir / stored)}

    def given(self, labels: SegmentationLabels) -> list:
        return labels.masks

    def to_stored(self, pool_index: int, mask) -> str:
        mask = np.asarray(mask)
        digest = hashlib.blake2b(digest_size=6)
        digest.update(repr(mask.shape).encode())
        digest.update(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
        return f"{LABELED_MASKS_DIR}/{pool_index}-{digest.hexdigest()}.png"

    def check(self, pool_index: int, mask, source: str) -> None:
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.size == 0:
            raise LabelError(f"{source}: pool index {pool_index} has a mask of shape {mask.shape}; a mask is one class "
                             "id per pixel, (height, width).")  # fmt: skip
        values = np.unique(mask)
        bad = [int(v) for v in values if not (0 <= v < len(self.class_names) or v == IGNORE_INDEX)]
        if bad:
            raise LabelError(f"{source}: pool index {pool_index} has mask value {bad[:5]}, neither a class id of the "
                             f"run's {len(self.class_names)} classes {self.class_names[:10]} nor {IGNORE_INDEX} (not "
                             "labeled). Paint with class ids.")  # fmt: skip

    def check_loaded(self, table: pa.Table) -> None:
        lost = [name for name in table.column(MASK_FILE).to_pylist() if not (self.run_dir / name).is_file()]
        if lost:
            raise LabelError(f"{self.path} names {len(lost)} mask files that are missing (e.g. {self.run_dir / lost[0]})."
                             " Restore them from a backup, or move the index away and ingest the masks again.")  # fmt: skip

    def write_payload(self, rows: list) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for _, mask, stored in rows:
            path = self.run_dir / stored
            if path.is_file():  # the same pixels (the name is their digest)
                continue
            image = PIL.Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="L")
            atomic_write(path, functools.partial(image.save, format="PNG"), binary=True)
        fsync_directory(self.folder)

    def after_write(self) -> None:
        # Masks replaced with overwrite=True: their old files are no answer any more.
        kept = {Path(name).name for name in self._stored.values()}
        for path in self.folder.glob("*.png"):
            if path.name not in kept:
                path.unlink()

    def describe(self, pool_index: int, stored: str) -> str:
        return f"({self.run_dir / stored})"


def ingest_segmentation_labels(run_dir: str | os.PathLike, source, *, allow_partial: bool = False,
                               overwrite: bool = False, resolve: str | None = None, requery_skipped: bool = False,
                               pool=None, image_column: str | None = None, label_column: str | None = None,
                               index_column: str | None = None) -> AddResult:  # fmt: skip
    """
    Bring annotators' masks for a semantic-segmentation run's open query into `RUN/labeled_masks/`; the run trains
    on them when it is resumed ([`ingest_task_labels`] with [`read_segmentation_labels`] and
    [`SegmentationLabelStore`]).

    Args:
        run_dir (`str` or `os.PathLike`): The run (it stopped after writing a query batch).
        source: What [`read_segmentation_labels`] reads: a folder of masks (the query's `masks/` filled in with class
            ids, or a copy of it), or a Label Studio JSON export of `BrushLabels` / `PolygonLabels`.
        allow_partial, overwrite, requery_skipped (`bool`): As for [`ingest_labels`].
        resolve (`str`, *optional*): Several different answers for one image: `None` refuses, `"ground_truth"` or
            `"latest"` decide.
        pool (`datasets.Dataset`, *optional*): The pool as the run reads it, to check each image (default: loaded
            again as the run's recipe loads it).
        image_column (`str`, *optional*): The pool's image column (default: the run's).
        label_column, index_column: Not read for masks (refused when given).

    Returns:
        `AddResult`: added, unchanged, overwritten, the queried images still missing, the skipped ones.

    Raises:
        LabelError: no open query; a mask of another size than its image, a class id outside the classes, answers
            that disagree, an export of another run's images (named by file, task and pool index, with the fix); the
            run directory is then unchanged.

    Example:

    ```python
    >>> ingest_segmentation_labels("runs/masks", "runs/masks/queries/round_1/masks").added
    12
    ```
    """
    return ingest_task_labels(run_dir, source, read=read_segmentation_labels, store=SegmentationLabelStore,
                              what="masks", allow_partial=allow_partial, overwrite=overwrite, resolve=resolve,
                              requery_skipped=requery_skipped, pool=pool, image_column=image_column,
                              label_column=label_column, index_column=index_column)  # fmt: skip
