"""People label masks, the labels side: the masks annotators bring back (a Label Studio JSON export of `BrushLabels`
and `PolygonLabels` results, or a folder of mask images filled in from the query's template) as
[`SegmentationLabels`]: per pool index, a mask of class ids.

How a Label Studio answer becomes a mask: every pixel starts as `background` (without one, 255: not labeled); then
the answer's regions are painted in the order the export lists them (the order they were drawn), a later region
winning where strokes overlap. A brush region is its RLE decoded ([`decode_brush_rle`]: pixels whose alpha is not
0); a polygon's vertices are `x / 100 * original_width`, `y / 100 * original_height` pixels, filled with PIL's
`ImageDraw.polygon` (pixels its outline touches included). Several answers to one image follow detection's rule:
refused by default, naming the task and its pool index; `resolve="ground_truth"` keeps the one marked ground truth,
`resolve="latest"` the newest (answers with equal masks agree). A task whose every answer was cancelled (skipped in
Label Studio) is recorded as skipped, not labeled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import PIL.ImageDraw
from transformers.utils import logging

from ..annotation.labels import (
    ClassLookup,
    LabelError,
    check_class_names,
    image_references,
    parse_pool_index,
    truthy,
)
from ..constants import LABEL_STUDIO_TASKS, POOL_INDEX, QUERY_CSV, QUERY_FILE_NAME, QUERY_MASKS_DIR
from .annotation_answers import ANSWER_RESOLUTIONS, answer_details, answers_disagree, kept_answers
from .detection_exports import ImageAnswers, ImageIndex, annotator_name
from .segmentation_annotation import QUERY_MASK_FILE_NAME, read_query_masks
from .segmentation_brush import BRUSH_TYPES, POLYGON_TYPES, check_background, decode_brush_rle
from .segmentation_loading import IMAGE_SUFFIXES
from .segmentation_masks import IGNORE_INDEX, MaskDecodeError, open_mask

logger = logging.get_logger(__name__)

MASK_RESOLUTIONS = ANSWER_RESOLUTIONS


@dataclass
class SegmentationLabels:
    """
    Masks people gave for some pool images, from one source (the fields of [`DetectionLabels`], `masks` for
    `objects`).

    Args:
        pool_indices (`np.ndarray` of shape `(n,)`, int64): The labeled pool indices, in source order.
        masks (`list[np.ndarray]`): Per pool index, an `(height, width)` uint8 mask of class ids, 255 where not
            labeled; `PIL.Image.fromarray(mask)` is the "L" mask the dataset layout stores. The ids are those of
            `class_names`: with `reduce_labels` the reduced ones (a dataset stored that way holds id + 1, and 0
            where these hold 255).
        source (`str`): Where the masks come from (the path as given).
        skipped (`np.ndarray`, int64): Pool indices annotators skipped (every answer cancelled), so not labeled.
        details (`dict[str, list]`, *optional*): Per label, `annotator`, `annotation_id`, `num_answers` and
            `resolution` (`single`, `agreed`, `ground_truth`, `latest`).
        references (`list[dict]`, *optional*): Per label, the image references of its task (`image`, `file_name`,
            `image_path`), to check against the query.
        places (`list[str]`, *optional*): Per label, where it is in the source.

    Example:

    ```python
    >>> labels = SegmentationLabels([3], [np.zeros((2, 2), dtype=np.uint8)], "export.json")
    >>> len(labels), labels.masks[0].shape
    (1, (2, 2))
    ```
    """

    pool_indices: np.ndarray
    masks: list
    source: str = ""
    skipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    details: dict | None = None
    references: list | None = None
    places: list | None = None

    def __post_init__(self):
        self.pool_indices = np.asarray(self.pool_indices, dtype=np.int64).reshape(-1)
        self.skipped = np.asarray(self.skipped, dtype=np.int64).reshape(-1)
        if len(self.pool_indices) != len(self.masks):
            raise LabelError(
                f"{self.source}: {len(self.pool_indices)} pool indices but {len(self.masks)} masks."
            )

    def __len__(self) -> int:
        return len(self.pool_indices)


@dataclass
class _MaskAnswer:
    mask: np.ndarray
    annotator: str | None = None
    annotation_id: int | None = None
    ground_truth: bool = False
    stamp: str = ""
    order: int = 0


def read_segmentation_labels(source, *, class_names: list[str], query=None, dataset: datasets.Dataset | None = None,
                             image_column: str = "image", background: int | None = None,
                             resolve: str | None = None) -> SegmentationLabels:  # fmt: skip
    """
    Read the masks annotators brought back.

    Sources: a Label Studio JSON export (the full one: skips, ground truth, annotators) of a project with the config
    [`write_segmentation_query`] writes (`BrushLabels` and `PolygonLabels`; also a `Brush` or `Polygon` tag with a
    `Labels` tag), as a file or already loaded (a list or a dict); or a folder of mask images (the query's `masks/`
    filled in with class ids by any paint tool, or a folder holding such a `masks/`), matched to the query by file
    name (any image suffix). A mask still all 255 (the template as written) is not an answer and is left out; in a
    folder, `background` does not apply: the pixels say their class.

    Args:
        source (`str`, `os.PathLike`, `list` or `dict`): The export or the folder.
        class_names (`list[str]`): The class names; regions' classes are matched by name (or id).
        query (`str` or `os.PathLike`, *optional*): The query directory the labels answer (written by
            [`write_segmentation_query`]): gives image sizes to check against, and a folder's file names (a folder
            that is the query needs no `query`).
        dataset (`datasets.Dataset`, *optional*): The pool: pool indices must be rows of it; gives image sizes when
            `query` is not given.
        image_column (`str`, defaults to `"image"`): The pool's image column.
        background (`int`, *optional*): The class id of unpainted pixels in Label Studio answers (as the query was
            written); `None`: they are 255, not labeled.
        resolve (`str`, *optional*): Several different answers for one image: `None` refuses, `"ground_truth"`
            keeps the one marked ground truth, `"latest"` the newest.

    Returns:
        [`SegmentationLabels`]

    Raises:
        LabelError: naming the source, the task or file and its pool index, the value and the fix: a missing file or
            a JSON_MIN/COCO export; a task without `pool_index`; a result that is not a brush or a polygon, a region
            without one class, an unknown class name, a rotated image, an RLE that is damaged or of another size, a
            polygon of fewer than 3 points; an image of another size than the query's; a mask file the query does not
            name, or holding ids that are not classes; a pool index twice or outside the pool; answers that differ
            and `resolve` does not decide.

    Example:

    ```python
    >>> labels = read_segmentation_labels("export.json", class_names=["road", "car"], query="run/queries/round_2")
    >>> labels.pool_indices.tolist(), labels.masks[0].shape
    ([31, 4], (48, 64))
    ```
    """
    class_names = check_class_names(class_names)
    background = check_background(background, class_names)
    if resolve is not None and resolve not in MASK_RESOLUTIONS:
        raise LabelError(f"resolve must be one of {list(MASK_RESOLUTIONS)} for masks (or None to refuse answers that "
                         f"differ), got {resolve!r}: a majority of masks is not defined.")  # fmt: skip
    folder = _mask_folder(source)
    if query is None and folder is not None and (Path(source) / QUERY_CSV).is_file():
        query = source  # the query's own masks/
    rows = read_query_masks(query) if query is not None else []
    sizes = {row[POOL_INDEX]: (row["width"], row["height"]) for row in rows}
    index = ImageIndex(None, dataset, image_column)
    size_of = lambda i: sizes.get(i) or index.size(i)  # noqa: E731
    if folder is not None:
        name = os.fspath(source)
        images = _answers_from_folder(folder, rows, name, len(class_names), query)
    else:
        content, name = _load(source)
        lookup = ClassLookup(class_names)
        fill = IGNORE_INDEX if background is None else background
        images = _answers_from_label_studio(content, name, lookup, fill, size_of)
    kept, skipped = kept_answers(images, name, resolve, same=_same_mask, pool_size=index.pool_size,
                                 disagree=lambda conflicts: answers_disagree(name, conflicts, resolve, what="masks",
                                                                             describe=_described))  # fmt: skip
    labels = SegmentationLabels(
        [image.pool_index for image, _, _ in kept], [answer.mask for _, answer, _ in kept], name, skipped,
        answer_details(kept),
        [image.references for image, _, _ in kept], [image.place for image, _, _ in kept],
    )  # fmt: skip
    logger.info(f"Read masks for {len(labels)} images from {name}"
                + (f"; annotators skipped {len(skipped)} images." if skipped else "."))  # fmt: skip
    return labels


def _mask_folder(source) -> Path | None:
    """The folder of mask files `source` names (it, or its `masks/`), or None for an export."""
    if isinstance(source, (list, dict)):
        return None
    path = Path(os.fspath(source)).expanduser()
    if not path.is_dir():
        return None
    return path / QUERY_MASKS_DIR if (path / QUERY_MASKS_DIR).is_dir() else path


def _load(source) -> tuple[list, str]:
    if isinstance(source, (list, dict)):
        content, name = source, "the export given"
    else:
        name = os.fspath(source)
        path = Path(name).expanduser()
        if not path.is_file():
            raise LabelError(
                f"Label file {name} not found. Check the path (relative paths start at {os.getcwd()})."
            )
        if path.suffix.lower() != ".json":
            raise LabelError(f"{name}: masks are read from Label Studio's JSON export (a .json file) or a folder of "
                             "mask images; export JSON from Label Studio.")  # fmt: skip
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise LabelError(f"{name}: not valid JSON ({error}). Fix the file or export it again.") from error
    if isinstance(content, dict) and isinstance(content.get("data"), dict):
        content = [content]  # one Label Studio task
    if not isinstance(content, list) or not all(
        isinstance(t, dict) and isinstance(t.get("data"), dict) for t in content
    ):
        raise LabelError(f"{name}: not a Label Studio JSON export (a list of tasks with `data`). Masks are read from "
                         "the JSON export (JSON_MIN and COCO drop the brush masks' sizes or answers): export JSON.")  # fmt: skip
    return content, name


def _answers_from_label_studio(tasks: list[dict], name: str, lookup: ClassLookup, fill: int, size_of) -> list:
    found = []
    for j, task in enumerate(tasks):
        data = task["data"]
        place = f"Label Studio task {task['id']} (item {j})" if task.get("id") is not None else f"item {j}"
        if POOL_INDEX not in data:
            raise LabelError(f"{name}: {place} has no data.{POOL_INDEX}; data fields found: {list(data)}. Import the "
                             f"tasks from PruneFuse's {LABEL_STUDIO_TASKS} (its data carries {POOL_INDEX!r}).")  # fmt: skip
        index = parse_pool_index(data[POOL_INDEX], f"{name}, {place}")
        image = ImageAnswers(index, place, references=image_references(data))
        for k, annotation in enumerate(task.get("annotations", task.get("completions")) or []):
            if truthy(annotation.get("was_cancelled")) or truthy(annotation.get("skipped")):
                image.cancelled += 1
                continue
            where = f"{name}, {place} ({POOL_INDEX} {index}), annotation {annotation.get('id')}"
            mask = _paint(annotation.get("result") or [], size_of(index), lookup, fill, where)
            image.answers.append(_MaskAnswer(mask, annotator_name(annotation.get("completed_by")), annotation.get("id"),
                                             truthy(annotation.get("ground_truth")),
                                             str(annotation.get("updated_at") or annotation.get("created_at") or ""),
                                             k))  # fmt: skip
        if image.answers or image.cancelled:
            found.append(image)
    return found


def _paint(results: list, known, lookup: ClassLookup, fill: int, where: str) -> np.ndarray:
    """One answer's mask: its regions painted in order over `fill` (see the module docstring)."""
    regions: dict[str, list] = {}
    for k, result in enumerate(results):
        kind = result.get("type")
        if kind not in (*BRUSH_TYPES, *POLYGON_TYPES, "labels"):
            raise LabelError(f"{where}: a {kind} result ({result.get('from_name')!r}) is not a mask. Semantic "
                             "segmentation reads BrushLabels and PolygonLabels: use the labeling config PruneFuse "
                             "writes (label_studio_config.xml).")  # fmt: skip
        regions.setdefault(str(result.get("id", f"#{k}")), []).append(result)
    size = tuple(known) if known is not None else None
    painted = []
    for number, group in enumerate(regions.values()):
        at = f"{where}, region {number}"
        geometry = next((r for r in group if r.get("type") in (*BRUSH_TYPES, *POLYGON_TYPES)), None)
        if geometry is None:
            continue  # a Labels result of no region
        names = list(dict.fromkeys(n for r in group for n in (r.get("value") or {}).get(r["type"], [])
                                   if r["type"] in ("brushlabels", "polygonlabels", "labels")))  # fmt: skip
        if len(names) != 1:
            raise LabelError(f"{at}: the region has {'no class' if not names else f'several classes {names}'}; give "
                             "every stroke or polygon exactly one class in Label Studio and export again.")  # fmt: skip
        class_id = lookup.parse(names[0], at)
        if (geometry.get("image_rotation") or 0) != 0:
            raise LabelError(f"{at}: drawn on the image turned by {geometry['image_rotation']} degrees; masks are read "
                             "on the upright image. Turn it back in Label Studio and export again.")  # fmt: skip
        drawn = (geometry.get("original_width"), geometry.get("original_height"))
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and float(v).is_integer()
            for v in drawn
        ):
            raise LabelError(f"{at}: original_width/original_height is {drawn}, not the image's size in pixels. Export "
                             "from Label Studio again (it writes them with every region).")  # fmt: skip
        if size is not None and drawn != size:
            raise LabelError(f"{at}: the region was drawn on a {drawn[0]}x{drawn[1]} image, but the pool image is "
                             f"{size[0]}x{size[1]}: the task shows another image (or one turned by its EXIF "
                             "orientation). Label the query's images (import its label_studio_tasks.json) and export "
                             "again.")  # fmt: skip
        size = drawn = (int(drawn[0]), int(drawn[1]))
        painted.append((_region(geometry, drawn, at), class_id))
    if size is None:
        raise LabelError(f"{where}: an answer without regions, and no image size: pass query= (the query directory) "
                         "or dataset= (the pool), so that its mask can be made.")  # fmt: skip
    mask = np.full((size[1], size[0]), fill, dtype=np.uint8)
    for region, class_id in painted:
        mask[region] = class_id
    return mask


def _region(geometry: dict, size: tuple[int, int], at: str) -> np.ndarray:
    width, height = size
    value = geometry.get("value") or {}
    if geometry["type"] in BRUSH_TYPES:
        if value.get("format", "rle") != "rle" or "rle" not in value:
            raise LabelError(f"{at}: a brush result of format {value.get('format')!r} without `rle`; PruneFuse reads "
                             "the RLE Label Studio's BrushLabels writes. Export JSON again.")  # fmt: skip
        return decode_brush_rle(value["rle"], width, height, where=at)
    points = value.get("points")
    try:
        vertices = [(float(x) / 100 * width, float(y) / 100 * height) for x, y in points]
    except (TypeError, ValueError):
        vertices = []
    if len(vertices) < 3 or not np.isfinite(vertices).all():
        raise LabelError(f"{at}: the polygon's points {points!r} are not 3 or more [x, y] percents. Draw it again "
                         "and export again.")  # fmt: skip
    canvas = PIL.Image.new("1", (width, height), 0)
    PIL.ImageDraw.Draw(canvas).polygon(vertices, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _answers_from_folder(folder: Path, rows: list[dict], name: str, num_classes: int, query) -> list:
    if not rows:
        raise LabelError(f"{name}: a folder of masks is matched to its query by file name: pass query=<the query "
                         "directory written by write_segmentation_query>.")  # fmt: skip
    by_stem = {Path(row[QUERY_MASK_FILE_NAME]).stem: row for row in rows}
    found, blank = [], 0
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        row = by_stem.get(path.stem)
        place = f"{folder.name}/{path.name}"
        if row is None:
            raise LabelError(f"{name}: {place} is no image of the query {query} (its masks: "
                             f"{sorted(r[QUERY_MASK_FILE_NAME] for r in rows)[:5]}...). Name each mask as the query's "
                             "template, or move the file away.")  # fmt: skip
        where = f"{name}, {place} ({POOL_INDEX} {row[POOL_INDEX]})"
        try:
            ids = open_mask(path)
        except MaskDecodeError as error:
            raise LabelError(f"{where}: {error}.") from None
        if ids.shape != (row["height"], row["width"]):
            raise LabelError(f"{where}: the mask is {ids.shape[1]}x{ids.shape[0]}, its image {row['width']}x"
                             f"{row['height']}; paint on the query's template (masks/) and save it at its size.")  # fmt: skip
        bad = sorted(set(np.unique(ids).tolist()) - set(range(num_classes)) - {IGNORE_INDEX})
        if bad:
            raise LabelError(f"{where}: mask value {bad[:5]} is neither a class id in [0, {num_classes}) nor "
                             f"{IGNORE_INDEX} (not labeled); paint with class ids (an 'L' or 'P' PNG).")  # fmt: skip
        if (ids == IGNORE_INDEX).all():
            blank += 1  # the template as written: not answered
            continue
        image = ImageAnswers(row[POOL_INDEX], place, references={QUERY_FILE_NAME: row[QUERY_FILE_NAME]})
        image.answers.append(_MaskAnswer(ids.astype(np.uint8)))
        found.append(image)
    if blank:
        logger.info(
            f"{name}: {blank} masks are still the template (all {IGNORE_INDEX}): left out, not labeled."
        )
    return found


def _same_mask(a: _MaskAnswer, b: _MaskAnswer) -> bool:
    return np.array_equal(a.mask, b.mask)


def _described(a: _MaskAnswer) -> str:
    return f"annotation {a.annotation_id} by {a.annotator or 'unknown'}" + (
        ", ground truth" if a.ground_truth else ""
    )
