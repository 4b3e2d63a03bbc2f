"""Semantic-segmentation data in the layout of the transformers semantic-segmentation guide and its
`run_semantic_segmentation.py` example: an `image` column and a `label` column holding, per image, a mask image of
class ids (one value per pixel). What differs between datasets, and how it is said here:

- the mask column's name: `label` (sidewalk-semantic, the example's default), `annotation` (scene_parse_150 /
  ADE20k; the example renames it to `label`): set `mask_column`;
- `reduce_labels` (the image processors' `do_reduce_labels`): the masks use 0 for a background that is not a class
  (ADE20k), so every id is lowered by one and 0 becomes the ignore index 255;
- the ignore index 255 (the models' `semantic_loss_ignore_index`): pixels no loss and no metric counts;
- the class names: a list, an `id2label` mapping (what the example reads from `id2label.json` in the dataset repo),
  or the path of such a JSON file; `id2label.json` beside the data is found on its own.

Here: the class names and the checks made before any work. Masks are decoded by `segmentation_masks.py` (raw ids,
never colors); `segmentation_loading.py` loads a saved dataset, a Hub dataset, or an image folder with a masks folder
paired by file name.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
from transformers.utils import logging

from .segmentation_masks import IGNORE_INDEX, MaskDecodeError, open_mask, path_of

logger = logging.get_logger(__name__)

MASK_COLUMN = "label"
# A column listing, per image, the classes its mask holds, as a `ClassLabel` list: it names the classes.
CLASSES_COLUMN = "classes"
ID2LABEL_FILE = "id2label.json"
# Masks go through the image processors as uint8 images: class ids 0..254, and 255 the ignore index.
MAX_CLASSES = 255
_MAX_LISTED = 5


# ----- class names -----


def read_id2label(source) -> list[str]:
    """
    Class names in class-id order from an `id2label` mapping (`{"0": "wall", ...}`, keys ints or digit strings, as
    in `id2label.json` and `config.id2label`), a list of names, or the path of a JSON file holding either.

    Raises:
        `ValueError`: ids that are not 0..K-1 without gaps, or a file that is not such JSON.

    Example:

    ```python
    >>> read_id2label({"1": "road", "0": "background"})
    ['background', 'road']
    ```
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(
                f"Cannot read class names from {path}: {error}. Give an id2label JSON file."
            ) from None
        if not isinstance(content, (dict, list)):
            raise ValueError(f"{path} holds {type(content).__name__}; an id2label file holds {{id: name}}.")
        return read_id2label(content)
    if isinstance(source, Mapping):
        try:
            by_id = {int(key): str(name) for key, name in source.items()}
        except (TypeError, ValueError):
            raise ValueError(
                f"id2label keys must be class ids (ints or digit strings), got {sorted(map(str, source))[:5]}."
            ) from None
        if sorted(by_id) != list(range(len(by_id))):
            missing = sorted(set(range(max(by_id, default=-1) + 1)) - set(by_id))
            raise ValueError(
                f"id2label ids must be 0..{len(by_id) - 1} without gaps; missing {missing[:5]} (ids "
                f"{sorted(by_id)[:10]}). Name every class id (ids above a gap are not classes to the model)."
            )
        return [by_id[i] for i in range(len(by_id))]
    if isinstance(source, Sequence):
        return [str(name) for name in source]
    raise ValueError(
        f"Class names must be a list, an id2label mapping or a JSON path, not {type(source).__name__}."
    )


def segmentation_class_names(
    dataset: datasets.Dataset, mask_column: str = MASK_COLUMN, class_names=None
) -> list[str]:
    """
    Class names of a segmentation dataset, in class-id order (the ids after `reduce_labels`, when it applies): from
    `class_names` (a list, an `id2label` mapping, or an `id2label.json` path), else the `ClassLabel` of a `classes`
    column (per image, the classes its mask holds, as the synthetic pool has), else `id2label.json` beside the
    data (in the folder of a saved dataset, or of an image folder and its parent).

    Args:
        dataset (`datasets.Dataset`): A segmentation dataset.
        mask_column (`str`, *optional*, defaults to `"label"`): Its mask column (unused: masks hold no names).
        class_names (*optional*): The names, as above.

    Returns:
        `list[str]`

    Raises:
        `ValueError`: no names anywhere, names that differ from the `classes` column's, more than 255 classes, or
            malformed names.
    """
    check_mask_column(dataset, mask_column)
    feature = dataset.features.get(CLASSES_COLUMN)
    feature = getattr(feature, "feature", feature)
    from_features = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    if class_names is not None:
        names = read_id2label(class_names)
        if from_features is not None and names != from_features:
            raise ValueError(
                f"class_names {names} differ from the dataset's '{CLASSES_COLUMN}' ClassLabel names "
                f"{from_features}. Drop class_names, or cast the column to the names you want."
            )
    elif from_features is not None:
        names = from_features
    else:
        found = _id2label_beside(dataset)
        if found is None:
            raise ValueError(
                "The class names of this segmentation dataset are unknown: masks hold class ids only. Pass "
                "class_names (a list of names, an id2label mapping, or the path of an id2label.json file; "
                "scene_parse_150's is huggingface/label-files ade20k-id2label.json), or put id2label.json beside "
                "the data."
            )
        logger.info("Class names read from %s.", found)
        names = read_id2label(found)
    if not names:
        raise ValueError("A segmentation dataset needs at least one class name.")
    if len(names) > MAX_CLASSES:
        raise ValueError(
            f"{len(names)} classes: masks hold class ids 0..{MAX_CLASSES - 1}, with {IGNORE_INDEX} the ignore index "
            "(the image processors read masks as 8-bit images)."
        )
    return names


def check_mask_column(dataset: datasets.Dataset, mask_column: str = MASK_COLUMN) -> None:
    """
    Refuse a mask column that holds one value per image (a `ClassLabel` or an integer: an image-classification
    dataset), naming the column and what it holds.
    """
    feature = dataset.features.get(mask_column)
    if isinstance(feature, datasets.ClassLabel) or (
        isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint", "bool", "string"))
    ):
        kind = "a ClassLabel" if isinstance(feature, datasets.ClassLabel) else f"{feature.dtype} values"
        raise ValueError(
            f"The column {mask_column!r} holds {kind}, one class per image (an image-classification dataset); a "
            "segmentation dataset holds a mask of class ids per image. Set the mask column (label_column / "
            "mask_column), or use an *ForImageClassification model for this dataset."
        )


def _id2label_beside(dataset: datasets.Dataset) -> Path | None:
    folders = [Path(cache["filename"]).parent for cache in dataset.cache_files]
    for column, feature in dataset.features.items():
        if isinstance(feature, datasets.Image) and dataset.num_rows:
            value = dataset.cast_column(column, datasets.Image(decode=False))[0][column]
            path = path_of(value)
            if path and os.path.isabs(path) and Path(path).exists():
                folders.extend([Path(path).parent, Path(path).parent.parent])
    for folder in folders:
        if (folder / ID2LABEL_FILE).is_file():
            return folder / ID2LABEL_FILE
    return None


# ----- checks -----


def validate_segmentation_dataset(
    dataset: datasets.Dataset,
    *,
    image_column: str = "image",
    mask_column: str = MASK_COLUMN,
    class_names=None,
    reduce_labels: bool = False,
    ignore_index: int = IGNORE_INDEX,
    palette=None,
) -> datasets.Dataset:
    """
    Check a segmentation dataset before any work: every row has a mask that decodes to class ids (see
    [`open_mask`]), the size of its image, whose ids are class ids or the ignore index. With `reduce_labels`, the
    stored ids are 0 (background, ignored) and 1..K for the K classes (as ADE20k stores them).

    Image sizes come from the image headers (image pixels are not decoded); every mask is decoded.

    Args:
        dataset (`datasets.Dataset`): The pool (row `i` is pool index `i`) or an evaluation split.
        image_column (`str`, *optional*, defaults to `"image"`): Column holding the images.
        mask_column (`str`, *optional*, defaults to `"label"`): Column holding the masks (`annotation` in
            scene_parse_150).
        class_names (*optional*): See [`segmentation_class_names`].
        reduce_labels (`bool`, *optional*, defaults to `False`): Whether 0 is a background that is not a class.
        ignore_index (`int`, *optional*, defaults to 255): The id of pixels no loss or metric counts.
        palette (*optional*): Colors of the class ids, for RGB masks (see [`open_mask`]).

    Returns:
        `datasets.Dataset`: `dataset` itself.

    Raises:
        `ValueError`: a missing column, unknown class names, or the first rows at fault, each named by pool index with
            the value and the fix (and how many rows are at fault in all).

    Example:

    ```python
    >>> rows = datasets.Dataset.from_dict({"image": [PIL.Image.new("RGB", (4, 2))],
    ...     "label": [PIL.Image.fromarray(np.array([[0, 1, 7, 255]], dtype=np.uint8))]})
    >>> validate_segmentation_dataset(rows, class_names=["sky", "road"])
    Traceback (most recent call last):
    ValueError: 1 of 1 masks are invalid: pool index 0: the mask is 4x1 but its image is 4x2; ...
    ```
    """
    for column, option in ((image_column, "image_column"), (mask_column, "mask_column")):
        if column not in dataset.features:
            hint = (
                " (scene_parse_150 and ADE20k name it `annotation`; sidewalk-semantic `label`)"
                if option == "mask_column"
                else " (sidewalk-semantic names it `pixel_values`)"
            )
            raise ValueError(
                f"The dataset has no column {column!r}; its columns are {list(dataset.features)}. A segmentation "
                f"dataset holds `image` and a mask image of class ids per image{hint}: set `{option}` to the right "
                "column."
            )
    check_mask_column(dataset, mask_column)
    names = segmentation_class_names(dataset, mask_column, class_names)
    allowed = len(names) + 1 if reduce_labels else len(names)
    problems, bad_rows = [], 0
    raw = dataset.select_columns([image_column, mask_column])
    for column in (image_column, mask_column):
        if isinstance(raw.features[column], datasets.Image):
            raw = raw.cast_column(column, datasets.Image(decode=False))
    for start in range(0, raw.num_rows, 256):
        batch = raw[start : start + 256]
        for offset, (image, mask) in enumerate(zip(batch[image_column], batch[mask_column])):
            index = start + offset
            problem = _row_problem(index, image, mask, allowed, names, reduce_labels, ignore_index, palette)
            if problem:
                bad_rows += 1
                problems.append(problem)
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED])
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise ValueError(
            f"{bad_rows} of {raw.num_rows} masks are invalid: {listed}{more}. Fix or drop these rows before the run."
        )
    return dataset


def _row_problem(index, image, mask, allowed, names, reduce_labels, ignore_index, palette) -> str | None:
    try:
        ids = open_mask(mask, pool_index=index, palette=palette)
    except MaskDecodeError as error:
        return str(error)
    try:
        width, height = _image_size(image)
    except Exception as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        return f"pool index {index}: the image cannot be read ({reason}); repair the file or drop the row"
    if ids.shape != (height, width):
        return (
            f"pool index {index}: the mask is {ids.shape[1]}x{ids.shape[0]} but its image is {width}x{height}; "
            "give the image a mask of its own size (resize masks with nearest-neighbor only)"
        )
    values = np.unique(ids)
    bad = values[((values < 0) | (values >= allowed)) & (values != ignore_index)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:5])
        if reduce_labels:
            meaning = f"with reduce_labels the ids are 0 (background) and 1..{len(names)} for the {len(names)} classes"
        else:
            meaning = f"the {len(names)} class names give ids 0..{len(names) - 1}"
        return (
            f"pool index {index}: class ids {shown} are outside the classes ({meaning}, {ignore_index} is ignored); "
            "add the classes to class_names, map those pixels to a class or to the ignore index, or check "
            "reduce_labels"
        )
    return None


def _image_size(value) -> tuple[int, int]:
    if isinstance(value, PIL.Image.Image):
        return value.size
    if isinstance(value, (np.ndarray, list)):
        array = np.asarray(value)
        return array.shape[1], array.shape[0]
    if isinstance(value, dict) and value.get("bytes"):
        with PIL.Image.open(io.BytesIO(value["bytes"])) as image:
            return image.size
    path = value.get("path") if isinstance(value, dict) else value
    with PIL.Image.open(os.fspath(path)) as image:
        return image.size
