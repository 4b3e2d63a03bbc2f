"""People label boxes, the labels side: the boxes annotators bring back (Label Studio JSON, JSON_MIN and COCO
exports, COCO JSON files) as [`DetectionLabels`] in the cppe-5 layout.

Several answers to one image follow classification's rule: refused by default, naming the task and its pool index;
`resolve="ground_truth"` keeps the one marked ground truth, `resolve="latest"` the newest (answers with the same
boxes agree). An answer without boxes labels its image as background; a task whose every answer was cancelled
(skipped in Label Studio) is recorded as skipped, not labeled.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from transformers.utils import logging

from ..annotation.label_studio import AnswersDisagree
from ..annotation.labels import ClassLookup, LabelError, check_class_names
from ..constants import POOL_INDEX
from .annotation_answers import ANSWER_RESOLUTIONS, answer_details, answers_disagree, kept_answers
from .detection_data import BBOX_KEY, CATEGORY_KEY, object_problems
from .detection_exports import (
    ImageAnswers,
    ImageIndex,
    answers_from_coco,
    answers_from_json_min,
    answers_from_label_studio,
    read_coco_source,
    same_boxes,
)
from .detection_loading import is_coco

logger = logging.get_logger(__name__)

BOX_RESOLUTIONS = ANSWER_RESOLUTIONS


@dataclass
class DetectionLabels:
    """
    Boxes people gave for some pool images, from one source, in the cppe-5 layout.

    Args:
        pool_indices (`np.ndarray` of shape `(n,)`, int64): The labeled pool indices, in source order.
        objects (`list[dict]`): Per pool index, `{"bbox": [[x, y, w, h], ...] (COCO pixels), "category": [class
            id, ...]}`; empty lists label an image without objects (background).
        source (`str`): Where the boxes come from (the path as given).
        skipped (`np.ndarray`, int64): Pool indices annotators skipped (every answer cancelled), so not labeled.
        details (`dict[str, list]`, *optional*): Per label, `annotator`, `annotation_id`, `num_answers` and
            `resolution` (`single`, `agreed`, `ground_truth`, `latest`), as classification's labels carry them.
        references (`list[dict]`, *optional*): Per label, the image references of its task (`image`, `file_name`,
            `image_path`), to check against the query.
        places (`list[str]`, *optional*): Per label, where it is in the source.
    """

    pool_indices: np.ndarray
    objects: list
    source: str = ""
    skipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    details: dict | None = None
    references: list | None = None
    places: list | None = None

    def __post_init__(self):
        self.pool_indices = np.asarray(self.pool_indices, dtype=np.int64).reshape(-1)
        self.skipped = np.asarray(self.skipped, dtype=np.int64).reshape(-1)
        if len(self.pool_indices) != len(self.objects):
            raise LabelError(
                f"{self.source}: {len(self.pool_indices)} pool indices but {len(self.objects)} objects."
            )

    def __len__(self) -> int:
        return len(self.pool_indices)

    @property
    def num_boxes(self) -> int:
        return sum(len(objects[BBOX_KEY]) for objects in self.objects)


def read_detection_labels(source, *, class_names: list[str], query=None, dataset: datasets.Dataset | None = None,
                          image_column: str = "image", resolve: str | None = None) -> DetectionLabels:  # fmt: skip
    """
    Read the boxes annotators brought back.

    Sources: a Label Studio export of a `RectangleLabels` project: JSON (the full one: skips, ground truth,
    annotators), JSON_MIN, or COCO (the downloaded zip, its folder or its `result.json`); a COCO JSON file
    (`query/annotations.json` filled in by any COCO tool); or an export already loaded (a list or a dict). Label
    Studio's percents become pixels with each box's `original_width` / `original_height`. COCO images are
    matched to pool indices by their `pool_index` field, else by file name (through `query` or `dataset`), else
    (plain COCO) by `id`. Export COCO from Label Studio with "only annotated tasks" (the default): it lists an
    unanswered task like an image without boxes.

    Args:
        source (`str`, `os.PathLike`, `list` or `dict`): The export or file.
        class_names (`list[str]`): The class names; boxes' classes are matched by name (or id).
        query (`str` or `os.PathLike`, *optional*): The query directory the labels answer (written by
            [`write_detection_query`]): matches COCO file names, and gives image sizes to check against.
        dataset (`datasets.Dataset`, *optional*): The pool: pool indices must be rows of it; matches file names and
            gives image sizes when `query` is not given.
        image_column (`str`, defaults to `"image"`): The pool's image column.
        resolve (`str`, *optional*): Several different answers for one image: `None` refuses, `"ground_truth"`
            keeps the one marked ground truth (JSON exports only), `"latest"` the newest.

    Returns:
        [`DetectionLabels`]

    Raises:
        LabelError: naming the source, the task or image and its pool index, the value and the fix: a file that is
            missing or of another kind; a task without `pool_index`; a result that is not a box, a box without one
            class, rotated, outside its image or of zero area; an unknown class name; an image of another size than
            the query's; a pool index twice or outside the pool; answers that differ and `resolve` does not decide.

    Example:

    ```python
    >>> labels = read_detection_labels("export.json", class_names=["cat", "dog"], resolve="latest")
    >>> labels.pool_indices.tolist(), labels.objects[0]
    ([31, 4], {'bbox': [[5.0, 3.0, 20.0, 12.0]], 'category': [0]})
    ```
    """
    class_names = check_class_names(class_names)
    if resolve is not None and resolve not in BOX_RESOLUTIONS:
        raise LabelError(f"resolve must be one of {list(BOX_RESOLUTIONS)} for boxes (or None to refuse answers that "
                         f"differ), got {resolve!r}: a majority of box sets is not defined.")  # fmt: skip
    index = ImageIndex(query, dataset, image_column)
    kind, content, name = _load(source)
    if kind == "label_studio":
        images = answers_from_label_studio(content, name)
    elif kind == "json_min":
        images = answers_from_json_min(content, name)
    else:
        images = answers_from_coco(content, name, index)
    lookup = ClassLookup(class_names)
    for image in images:
        for answer in image.answers:
            answer.categories = [lookup.parse(label, f"{name}, {image.place} ({POOL_INDEX} {image.pool_index}), box "
                                              f"{k}") for k, label in enumerate(answer.names)]  # fmt: skip
    kept, skipped = kept_answers(images, name, resolve, same=same_boxes, pool_size=index.pool_size,
                                 disagree=lambda conflicts: _disagreement_error(name, conflicts, resolve))  # fmt: skip
    for image, answer, _ in kept:
        _check_boxes(image, answer, index, class_names, name)
    labels = DetectionLabels(
        [image.pool_index for image, _, _ in kept],
        [{BBOX_KEY: [list(map(float, box)) for box in answer.boxes], CATEGORY_KEY: list(answer.categories)}
         for _, answer, _ in kept],
        name,
        skipped,
        answer_details(kept),
        [image.references for image, _, _ in kept],
        [image.place for image, _, _ in kept],
    )  # fmt: skip
    logger.info(f"Read boxes for {len(labels)} images ({labels.num_boxes} boxes) from {name}"
                + (f"; annotators skipped {len(skipped)} images." if skipped else "."))  # fmt: skip
    return labels


def _load(source) -> tuple[str, object, str]:
    """(kind, content, name) of a source: `label_studio` (tasks), `json_min` (records) or `coco`."""
    if isinstance(source, (list, dict)):
        content, name = source, "the export given"
    else:
        name = os.fspath(source)
        path = Path(name).expanduser()
        if not path.exists():
            raise LabelError(
                f"Label file {name} not found. Check the path (relative paths start at {os.getcwd()})."
            )
        if path.is_dir() or path.suffix.lower() == ".zip":
            try:
                return "coco", read_coco_source(path, name), name
            except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as error:
                raise LabelError(f"{name}: not a readable COCO export ({type(error).__name__}: {error}). Download "
                                 "it again.") from error  # fmt: skip
        if path.suffix.lower() != ".json":
            raise LabelError(f"{name}: boxes are read from a .json file (Label Studio JSON, JSON_MIN or COCO "
                             "export, or a COCO file) or Label Studio's COCO .zip; export one of these.")  # fmt: skip
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise LabelError(f"{name}: not valid JSON ({error}). Fix the file or export it again.") from error
    if is_coco(content):
        return "coco", content, name
    if isinstance(content, dict) and isinstance(content.get("data"), dict):
        content = [content]  # one Label Studio task
    if not isinstance(content, list) or not all(isinstance(item, dict) for item in content):
        raise LabelError(f"{name}: neither a Label Studio export (a list of tasks or records) nor COCO JSON "
                         "(images, annotations, categories). Export JSON, JSON_MIN or COCO from Label Studio.")  # fmt: skip
    return (
        ("label_studio" if all(isinstance(item.get("data"), dict) for item in content) else "json_min"),
        content,
        name,
    )


def _disagreement_error(name: str, conflicts: list[ImageAnswers], policy: str | None) -> AnswersDisagree:
    def answer(a) -> str:
        who = (
            f"annotation {a.annotation_id} by {a.annotator or 'unknown'}"
            if a.annotation_id is not None
            else "an entry"
        )
        return f"{who} ({len(a.boxes)} boxes{', ground truth' if a.ground_truth else ''})"

    coco = any(image.coco for image in conflicts)
    note = (" A COCO export holds no ground-truth marks (Label Studio lists one image entry per annotation, newest "
            "first): use resolve='latest', or export JSON." if coco and policy == "ground_truth" else None)  # fmt: skip
    return answers_disagree(name, conflicts, policy, what="boxes", describe=answer, note=note)


def _check_boxes(image: ImageAnswers, answer, index: ImageIndex, class_names: list[str], name: str) -> None:
    """The kept boxes lie inside the image, have an area, and were drawn on an image of the pool image's size."""
    where = f"{name}, {image.place}"
    known = index.size(image.pool_index) if (answer.boxes or answer.size) else None
    if known is not None and answer.size is not None and np.abs(np.subtract(known, answer.size)).max() > 0.5:
        raise LabelError(
            f"{where}: the boxes were drawn on a {answer.size[0]:g}x{answer.size[1]:g} image, but pool index "
            f"{image.pool_index} is {known[0]}x{known[1]}: the task shows another image (or one turned by its EXIF "
            "orientation). Label the query's images (import its label_studio_tasks.json) and export again."
        )
    size = known or answer.size or (float("inf"), float("inf"))
    size = tuple(int(v) if float(v).is_integer() else v for v in size)
    row = {BBOX_KEY: answer.boxes, CATEGORY_KEY: answer.categories}
    problems = object_problems(image.pool_index, row, size, class_names, "coco")
    if problems:
        raise LabelError(f"{where}: " + "; ".join(problems) + ". Fix the boxes in Label Studio (or the file) and "
                         "export again.")  # fmt: skip
