"""Object-detection data in the layout of the transformers object-detection guide (cppe-5): an `image` column and
an `objects` column holding, per image, `bbox` (COCO `[x, y, width, height]` in pixels) and `category` (a
`ClassLabel`). Box formats and the checks made before any work; loading and COCO JSON are in
`detection_loading.py`."""

from __future__ import annotations

import io
import math

import datasets
import numpy as np
import PIL.Image
from transformers.utils import logging

from ..constants import BBOX_FORMATS
from ..data.images import open_image

logger = logging.get_logger(__name__)

OBJECTS_COLUMN = "objects"
BBOX_KEY = "bbox"
CATEGORY_KEY = "category"
# A box may stick out of its image by this much (rounding of float coordinates); preparation clips it.
BOX_TOLERANCE_PX = 1.0
_MAX_LISTED = 5


def convert_bbox(
    boxes, from_format: str, to_format: str, image_size: tuple[int, int] | None = None
) -> np.ndarray:
    """
    Convert boxes between the three formats of the transformers guides.

    - `coco`: `[x_min, y_min, width, height]` in pixels (the cppe-5 layout and the image processors' input);
    - `pascal_voc`: `[x_min, y_min, x_max, y_max]` in pixels;
    - `yolo`: `[x_center, y_center, width, height]` relative to the image (0..1).

    Args:
        boxes (array-like of shape `(N, 4)`): The boxes.
        from_format (`str`): Their format.
        to_format (`str`): The format wanted.
        image_size (`tuple[int, int]`, *optional*): `(width, height)` of the image, needed when either format is
            `yolo`.

    Returns:
        `np.ndarray` of shape `(N, 4)`, float64.

    Example:

    ```python
    >>> convert_bbox([[10, 20, 30, 40]], "coco", "yolo", image_size=(100, 200)).tolist()
    [[0.25, 0.2, 0.3, 0.2]]
    ```
    """
    for name, value in (("from_format", from_format), ("to_format", to_format)):
        if value not in BBOX_FORMATS:
            raise ValueError(f"{name} must be one of {list(BBOX_FORMATS)}, got {value!r}.")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if "yolo" in (from_format, to_format) and image_size is None:
        raise ValueError("Converting from or to `yolo` boxes needs the image size (width, height).")
    scale = np.array([*image_size, *image_size], dtype=np.float64) if image_size is not None else None
    # Everything goes through pascal_voc (corners in pixels).
    if from_format == "coco":
        corners = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    elif from_format == "yolo":
        centers, sizes = boxes[:, :2] * scale[:2], boxes[:, 2:] * scale[2:]
        corners = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
    else:
        corners = boxes.copy()
    if to_format == "pascal_voc":
        return corners
    sizes = corners[:, 2:] - corners[:, :2]
    if to_format == "coco":
        return np.concatenate([corners[:, :2], sizes], axis=1)
    return np.concatenate([corners[:, :2] + sizes / 2, sizes], axis=1) / scale


def detection_class_names(
    dataset: datasets.Dataset, objects_column: str = OBJECTS_COLUMN, class_names: list[str] | None = None
) -> list[str]:
    """
    Class names of a detection dataset: from the `category` `ClassLabel` (as in cppe-5), else `class_names`.

    Args:
        dataset (`datasets.Dataset`): A dataset with an objects column.
        objects_column (`str`, *optional*, defaults to `"objects"`): Column holding the objects.
        class_names (`list[str]`, *optional*): The names to use when the categories are plain integers; when
            given with a `ClassLabel`, both must agree.

    Returns:
        `list[str]`: the class names, in category-id order.

    Raises:
        `ValueError`: no `ClassLabel` and no `class_names`, or the two disagree.
    """
    feature = _category_feature(dataset.features.get(objects_column))
    if isinstance(feature, datasets.ClassLabel):
        if class_names is not None and list(class_names) != list(feature.names):
            raise ValueError(
                f"class_names {list(class_names)} differ from the dataset's '{objects_column}.{CATEGORY_KEY}' "
                f"ClassLabel names {feature.names}. Drop class_names, or cast the column to the names you want."
            )
        return list(feature.names)
    if class_names is None:
        raise ValueError(
            f"The dataset's '{objects_column}.{CATEGORY_KEY}' is not a ClassLabel, so the class names are unknown. "
            "Pass class_names (one name per category id), or cast the category to a `datasets.ClassLabel`."
        )
    return list(class_names)


def validate_detection_dataset(
    dataset: datasets.Dataset,
    *,
    image_column: str = "image",
    objects_column: str = OBJECTS_COLUMN,
    class_names: list[str] | None = None,
    bbox_format: str = "coco",
) -> datasets.Dataset:
    """
    Check a detection dataset before any work: every box is 4 finite numbers, inside its image (within
    `BOX_TOLERANCE_PX`), of positive area, and of a known category. Images with no objects are allowed.

    Image sizes come from `width` / `height` columns when the dataset has them (cppe-5 does), else from each
    image's header (the pixels are not decoded).

    Args:
        dataset (`datasets.Dataset`): The pool (row `i` is pool index `i`) or an evaluation split.
        image_column (`str`, *optional*, defaults to `"image"`): Column holding the images.
        objects_column (`str`, *optional*, defaults to `"objects"`): Column holding `bbox` and `category` lists.
        class_names (`list[str]`, *optional*): Needed when the category is not a `ClassLabel`.
        bbox_format (`str`, *optional*, defaults to `"coco"`): `coco`, `pascal_voc` or `yolo`.

    Returns:
        `datasets.Dataset`: `dataset` itself.

    Raises:
        `ValueError`: a missing column, or the first rows at fault, each named by pool index with the value and the
            fix (and how many rows are at fault in all).

    Example:

    ```python
    >>> features = datasets.Features({"image": datasets.Image(), "objects": {
    ...     "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
    ...     "category": datasets.List(datasets.ClassLabel(names=["cat"]))}})
    >>> rows = datasets.Dataset.from_dict({"image": [PIL.Image.new("RGB", (20, 10))],
    ...     "objects": [{"bbox": [[0, 0, 30, 5]], "category": [0]}]}, features=features)
    >>> validate_detection_dataset(rows)
    Traceback (most recent call last):
    ValueError: 1 of 1 images have invalid objects: pool index 0, object 0: bbox [0.0, 0.0, 30.0, 5.0] (coco) ...
    ```
    """
    if bbox_format not in BBOX_FORMATS:
        raise ValueError(f"bbox_format must be one of {list(BBOX_FORMATS)}, got {bbox_format!r}.")
    features = dataset.features
    for column, option in ((image_column, "image_column"), (objects_column, "objects_column")):
        if column not in features:
            raise ValueError(
                f"The dataset has no column {column!r}; its columns are {list(features)}. A detection dataset "
                f"holds `image` and `objects` (with `bbox` and `category` lists, as cppe-5 does): set "
                f"`{option}` to the right column, or build that column."
            )
    objects_feature = features[objects_column]
    keys = _object_keys(objects_feature)
    missing = [key for key in (BBOX_KEY, CATEGORY_KEY) if key not in keys]
    if missing:
        raise ValueError(
            f"Column {objects_column!r} has no {missing} (its keys are {sorted(keys)}). Each image's objects hold "
            f"`{BBOX_KEY}` (a list of boxes) and `{CATEGORY_KEY}` (a list of class ids)."
        )
    names = detection_class_names(dataset, objects_column, class_names)
    sizes = image_sizes(dataset, image_column)
    objects = dataset.with_format("arrow")[objects_column].to_pylist()
    problems, bad_rows = [], 0
    for index, row in enumerate(objects):
        row_problems = object_problems(index, row, sizes[index], names, bbox_format)
        if row_problems:
            bad_rows += 1
            problems.extend(row_problems)
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED])
        more = f" (and {len(problems) - _MAX_LISTED} more problems)" if len(problems) > _MAX_LISTED else ""
        raise ValueError(
            f"{bad_rows} of {len(objects)} images have invalid objects: {listed}{more}. Fix or drop these objects "
            "(or rows) before the run."
        )
    return dataset


def object_problems(index: int, row, size: tuple[int, int], names: list[str], bbox_format: str) -> list[str]:
    """What is wrong with one image's objects (a box that is not 4 numbers, outside the `size` = (width, height)
    image beyond `BOX_TOLERANCE_PX`, of zero area; a category outside `names`), each named by pool index, object,
    value and fix; empty when nothing is."""
    where = f"pool index {index}"
    row = objects_as_columns(row)
    boxes, categories = row[BBOX_KEY], row[CATEGORY_KEY]
    if len(boxes) != len(categories):
        return [f"{where}: {len(boxes)} boxes but {len(categories)} categories; give one category per box"]
    width, height = size
    problems = []
    for number, (box, category) in enumerate(zip(boxes, categories)):
        at = f"{where}, object {number}"
        if not _is_four_numbers(box):
            problems.append(
                f"{at}: bbox {box!r} is not 4 numbers; write it as [x, y, width, height] ({bbox_format})"
            )
            continue
        if not isinstance(category, (int, np.integer)) or not 0 <= category < len(names):
            problems.append(
                f"{at}: category {category!r} is outside the {len(names)} class names (ids 0..{len(names) - 1}); "
                "use a listed class id or add the class to class_names"
            )
        x, y, w, h = convert_bbox([box], bbox_format, "coco", image_size=(width, height))[0]
        shown = f"bbox {[float(v) for v in box]} ({bbox_format})"
        if w <= 0 or h <= 0:
            problems.append(
                f"{at}: {shown} has zero area (width {w:g}, height {h:g}); drop the box or fix its size"
            )
        elif (
            x < -BOX_TOLERANCE_PX
            or y < -BOX_TOLERANCE_PX
            or x + w > width + BOX_TOLERANCE_PX
            or y + h > height + BOX_TOLERANCE_PX
        ):
            problems.append(
                f"{at}: {shown} is outside the {width}x{height} image; clip it to the image "
                f"(0 <= x, 0 <= y, x + width <= {width}, y + height <= {height}) or check bbox_format"
            )
    return problems


def objects_as_columns(objects) -> dict[str, list]:
    """One image's objects as `{"bbox": [...], "category": [...]}`, whether the dataset stores them as a dict of
    lists (cppe-5) or a list of per-object dicts (`datasets.List({...})`); `None` is no objects."""
    if objects is None:
        return {BBOX_KEY: [], CATEGORY_KEY: []}
    if isinstance(objects, (list, tuple)):
        return {
            BBOX_KEY: [item.get(BBOX_KEY) for item in objects],
            CATEGORY_KEY: [item.get(CATEGORY_KEY) for item in objects],
        }
    boxes, categories = objects.get(BBOX_KEY), objects.get(CATEGORY_KEY)
    return {
        **objects,
        BBOX_KEY: [] if boxes is None else list(boxes),
        CATEGORY_KEY: [] if categories is None else list(categories),
    }


def _is_four_numbers(box) -> bool:
    if not isinstance(box, (list, tuple, np.ndarray)) or len(box) != 4:
        return False
    return all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
        for v in box
    )


def _object_keys(feature) -> set[str]:
    if isinstance(feature, dict):
        return set(feature)
    inner = getattr(feature, "feature", None)
    return set(inner) if isinstance(inner, dict) else set()


def _category_feature(feature):
    if isinstance(feature, dict):
        category = feature.get(CATEGORY_KEY)
        return getattr(category, "feature", category)
    inner = getattr(feature, "feature", None)
    return inner.get(CATEGORY_KEY) if isinstance(inner, dict) else None


def image_sizes(dataset: datasets.Dataset, image_column: str) -> list[tuple[int, int]]:
    """`(width, height)` of every image: from the `width` / `height` columns when the dataset has them, else from
    each image file's header (no pixels are decoded)."""
    if "width" in dataset.column_names and "height" in dataset.column_names:
        table = dataset.with_format("arrow")
        return list(zip(table["width"].to_pylist(), table["height"].to_pylist()))
    values = dataset.cast_column(image_column, datasets.Image(decode=False))[image_column]
    return [_header_size(value, index) for index, value in enumerate(values)]


def _header_size(value, index: int) -> tuple[int, int]:
    # PIL reads only the header on open; the pixels are decoded later, by the preparation.
    if isinstance(value, dict) and value.get("bytes"):
        with PIL.Image.open(io.BytesIO(value["bytes"])) as image:
            return image.size
    if isinstance(value, dict) and value.get("path"):
        with PIL.Image.open(value["path"]) as image:
            return image.size
    return open_image(value, pool_index=index).size


def detection_features(class_names: list[str], with_file_name: bool = False) -> datasets.Features:
    """The `datasets.Features` of the cppe-5 layout, with `class_names` as the category `ClassLabel`."""
    columns = {"image": datasets.Image(), "image_id": datasets.Value("int64")}
    if with_file_name:
        columns["file_name"] = datasets.Value("string")
    columns.update(
        {
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            OBJECTS_COLUMN: {
                "id": datasets.List(datasets.Value("int64")),
                "area": datasets.List(datasets.Value("float32")),
                BBOX_KEY: datasets.List(datasets.List(datasets.Value("float32"), length=4)),
                CATEGORY_KEY: datasets.List(datasets.ClassLabel(names=list(class_names))),
            },
        }
    )
    return datasets.Features(columns)
