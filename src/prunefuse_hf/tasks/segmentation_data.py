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

The checks made before any work, the decoding of masks (raw ids, never colors), and loading from a saved dataset, a
Hub dataset, or an image folder with a masks folder paired by file name.
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

logger = logging.get_logger(__name__)

MASK_COLUMN = "label"
# A column listing, per image, the classes its mask holds, as a `ClassLabel` list: it names the classes.
CLASSES_COLUMN = "classes"
IGNORE_INDEX = 255
ID2LABEL_FILE = "id2label.json"
# Masks go through the image processors as uint8 images: class ids 0..254, and 255 the ignore index.
MAX_CLASSES = 255
# Folder names an image folder's masks are looked for in, and its images' (else the folder itself).
MASK_DIRS = ("masks", "labels", "annotations", "label", "mask")
IMAGE_DIRS = ("images", "image", "img")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_INTEGER_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")
_MAX_LISTED = 5


class MaskDecodeError(ValueError):
    """A mask cannot be read as class ids; the message names the pool index (or file), the value and the fix."""


def open_mask(value, *, pool_index: int | None = None, palette=None) -> np.ndarray:
    """
    Decode one mask to its class ids, an `(height, width)` int64 array.

    Masks are read as stored, never as a viewer shows them: an "L", "I" or 16-bit image gives its values, a palette
    ("P") image its palette indices (the Pascal VOC convention: the index is the class id, the palette only colors
    it). An RGB(A) mask is read through `palette` (one color per class id); without one it is accepted only when it
    is gray (R = G = B, its value the id), and refused otherwise.

    Args:
        value: What a `datasets.Image(decode=False)` column holds (`{"path", "bytes"}`), a path, bytes, a PIL image,
            or an array `(H, W)` (or `(H, W, 3)` colors).
        pool_index (`int`, *optional*): Named in the error message.
        palette (*optional*): Colors of the class ids for RGB masks: a list of `(r, g, b)` by class id, or a mapping
            `{(r, g, b): class_id}`.

    Returns:
        `np.ndarray` of shape `(height, width)`, int64.

    Raises:
        [`MaskDecodeError`]: no mask, an undecodable file, a colored mask without `palette`, or a color not in it.

    Example:

    ```python
    >>> open_mask(np.array([[0, 1], [255, 2]], dtype=np.uint8)).tolist()
    [[0, 1], [255, 2]]
    >>> open_mask(np.array([[[255, 0, 0], [0, 0, 0]]], dtype=np.uint8), palette=[(0, 0, 0), (255, 0, 0)]).tolist()
    [[1, 0]]
    ```
    """
    where = f"pool index {pool_index}" if pool_index is not None else "mask"
    path = _path_of(value)
    shown = f" ({path})" if path else ""
    if value is None or (isinstance(value, dict) and not value.get("bytes") and not value.get("path")):
        raise MaskDecodeError(
            f"{where}: no mask (the value is None); give the image its mask, or drop the row from the pool"
        )
    try:
        pixels = _mask_pixels(value)
    except Exception as error:  # PIL raises many kinds of errors on corrupt files
        reason = " ".join(str(error).split()) or type(error).__name__
        raise MaskDecodeError(
            f"{where}: the mask{shown} cannot be decoded ({reason}); repair or replace the mask file, or drop "
            "the row"
        ) from None
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        return _colors_to_ids(pixels[..., :3], palette, where + shown)
    if pixels.ndim == 3 and pixels.shape[-1] in (1, 2):  # gray (and alpha)
        pixels = pixels[..., 0]
    if pixels.ndim != 2:
        raise MaskDecodeError(
            f"{where}: the mask{shown} has shape {pixels.shape}, not (height, width); store one class id per pixel"
        )
    if np.issubdtype(pixels.dtype, np.floating):
        if not np.all(np.isfinite(pixels)) or not np.array_equal(pixels, np.round(pixels)):
            raise MaskDecodeError(
                f"{where}: the mask{shown} holds non-integer values; store integer class ids (an 'L' or 'P' PNG)"
            )
    return pixels.astype(np.int64)


def _mask_pixels(value) -> np.ndarray:
    if isinstance(value, (np.ndarray, list)):
        return np.asarray(value)
    if isinstance(value, PIL.Image.Image):
        image = value
    elif isinstance(value, dict):
        data = value.get("bytes")
        image = PIL.Image.open(io.BytesIO(data)) if data else PIL.Image.open(value["path"])
    elif isinstance(value, (bytes, bytearray, memoryview)):
        image = PIL.Image.open(io.BytesIO(bytes(value)))
    else:
        image = PIL.Image.open(os.fspath(value))
    image.load()
    if image.mode in _INTEGER_MODES or image.mode == "F":
        return np.asarray(image)
    if image.mode in ("LA", "PA"):
        return np.asarray(image)[..., 0]
    return np.asarray(image.convert("RGB"))


def _colors_to_ids(colors: np.ndarray, palette, where: str) -> np.ndarray:
    colors = colors.astype(np.int64)
    if palette is None:
        if np.array_equal(colors[..., 0], colors[..., 1]) and np.array_equal(colors[..., 0], colors[..., 2]):
            return colors[..., 0]
        first = tuple(
            int(v) for v in colors.reshape(-1, 3)[np.flatnonzero(np.ptp(colors.reshape(-1, 3), 1))[0]]
        )
        raise MaskDecodeError(
            f"{where}: the mask is an RGB color image (e.g. color {first}) and no palette says which class each "
            "color is; pass `palette` (one (r, g, b) per class id), or store the class ids themselves (an 'L' or "
            "'P' PNG)"
        )
    color_of = _palette_mapping(palette)
    codes = (colors[..., 0] << 16) | (colors[..., 1] << 8) | colors[..., 2]
    unique, inverse = np.unique(codes, return_inverse=True)
    lookup = np.array([color_of.get(int(code), -1) for code in unique], dtype=np.int64)
    if (lookup < 0).any():
        code = int(unique[np.flatnonzero(lookup < 0)[0]])
        color = (code >> 16, (code >> 8) & 255, code & 255)
        raise MaskDecodeError(
            f"{where}: color {color} is not in the palette; add it to `palette` (with its class id) or repaint "
            "those pixels"
        )
    return lookup[inverse].reshape(codes.shape)


def _palette_mapping(palette) -> dict[int, int]:
    items = (
        palette.items() if isinstance(palette, Mapping) else ((tuple(c), i) for i, c in enumerate(palette))
    )
    mapping = {}
    for color, class_id in items:
        r, g, b = (int(v) for v in tuple(color)[:3])
        mapping[(r << 16) | (g << 8) | b] = int(class_id)
    return mapping


def reduce_mask_labels(mask: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """
    `reduce_labels` as the transformers image processors (`do_reduce_labels`) and `evaluate`'s `mean_iou` apply it:
    0 (a background that is not a class) becomes the ignore index, every other id is lowered by one, and the ignore
    index stays.

    Example:

    ```python
    >>> reduce_mask_labels(np.array([0, 1, 2, 255])).tolist()
    [255, 0, 1, 255]
    ```
    """
    mask = np.asarray(mask, dtype=np.int64)
    reduced = mask - 1
    reduced[(mask == 0) | (mask == ignore_index)] = ignore_index
    return reduced


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
            path = _path_of(value)
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


def _path_of(value) -> str | None:
    if isinstance(value, dict):
        return value.get("path") or None
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    return getattr(value, "filename", None) or None


# ----- loading -----


def load_segmentation_dataset(
    path_or_id: str,
    split: str = "train",
    *,
    class_names=None,
    image_column: str = "image",
    mask_column: str = MASK_COLUMN,
    images_dir: str | None = None,
    masks_dir: str | None = None,
    reduce_labels: bool = False,
    ignore_index: int = IGNORE_INDEX,
    palette=None,
    revision: str | None = None,
    validate: bool = True,
) -> datasets.Dataset:
    """
    Load one split of a segmentation dataset in the guide's layout, and check it (see
    [`validate_segmentation_dataset`]).

    Sources, tried in this order:

    - a directory written by `save_to_disk` (a `Dataset`, or a `DatasetDict` from which `split` is taken);
    - an image folder with a masks folder: images in `images_dir` (default: `images/` or `img/` under the folder, else
      the folder) and masks in `masks_dir` (default: `masks/`, `labels/` or `annotations/`), paired by file name
      without suffix (`a.jpg` with `a.png`); every image needs its mask;
    - anything else is a Hub dataset id passed to `datasets.load_dataset` (e.g. `"segments/sidewalk-semantic"`).

    `id2label.json` beside a saved dataset or in the image folder names the classes (see
    [`segmentation_class_names`]); for a Hub dataset pass `class_names`.

    Args:
        path_or_id (`str`): A local directory or a Hub dataset id.
        split (`str`, *optional*, defaults to `"train"`): The split to load (not used for an image folder).
        class_names (*optional*): A list, an id2label mapping or an id2label.json path.
        image_column, mask_column (`str`, *optional*): The columns (`image`, `label`); an image folder gives these.
        images_dir, masks_dir (`str`, *optional*): The image folder's subfolders (relative to it, or absolute).
        reduce_labels, ignore_index, palette: See [`validate_segmentation_dataset`].
        revision (`str`, *optional*): Hub dataset revision.
        validate (`bool`, *optional*, defaults to `True`): Check every row before returning.

    Returns:
        `datasets.Dataset`; an image folder gives `image`, `label` (both `datasets.Image()`) and `file_name`.

    Raises:
        `ValueError`: an image without a mask, a row at fault, or no class names.
    """
    path = Path(path_or_id).expanduser()
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{path} has no split {split!r}; its splits are {list(loaded)}.")
            loaded = loaded[split]
        dataset = loaded
    elif path.is_dir():
        dataset = dataset_from_mask_folder(path, images_dir=images_dir, masks_dir=masks_dir)
        image_column, mask_column = "image", MASK_COLUMN
    else:
        dataset = datasets.load_dataset(path_or_id, split=split, revision=revision)
    if validate:
        validate_segmentation_dataset(
            dataset,
            image_column=image_column,
            mask_column=mask_column,
            class_names=class_names,
            reduce_labels=reduce_labels,
            ignore_index=ignore_index,
            palette=palette,
        )
    return dataset


def dataset_from_mask_folder(
    folder: str | Path, *, images_dir: str | None = None, masks_dir: str | None = None
) -> datasets.Dataset:
    """
    A segmentation dataset (`image`, `label`, `file_name`) from an image folder and its masks folder, paired by file
    name without suffix; see [`load_segmentation_dataset`] for where the two folders are looked for.

    Raises:
        `ValueError`: no masks folder, or images without a mask (named, with the fix).
    """
    folder = Path(folder)
    image_folder = _subfolder(folder, images_dir, IMAGE_DIRS) or folder
    mask_folder = _subfolder(folder, masks_dir, MASK_DIRS)
    if mask_folder is None:
        raise ValueError(
            f"{folder} has no masks folder ({', '.join(f'{name}/' for name in MASK_DIRS)}); put one mask per image "
            "there, named as its image, or set `masks_dir`."
        )
    images = sorted(p for p in image_folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    masks = {p.stem: p for p in mask_folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(images)} images in {image_folder} have no mask in {mask_folder} (e.g. "
            f"{missing[:5]}); add a mask of the same file name (any image suffix), or remove those images."
        )
    if not images:
        raise ValueError(f"{image_folder} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    features = datasets.Features(
        {"image": datasets.Image(), MASK_COLUMN: datasets.Image(), "file_name": datasets.Value("string")}
    )
    return datasets.Dataset.from_dict(
        {
            "image": [str(p.resolve()) for p in images],
            MASK_COLUMN: [str(masks[p.stem].resolve()) for p in images],
            "file_name": [p.name for p in images],
        },
        features=features,
    )


def _subfolder(folder: Path, given: str | None, names: tuple[str, ...]) -> Path | None:
    if given is not None:
        path = Path(given).expanduser()
        path = path if path.is_absolute() else folder / path
        if not path.is_dir():
            raise ValueError(f"Folder {path} not found.")
        return path
    return next((folder / name for name in names if (folder / name).is_dir()), None)


def segmentation_features(mask_column: str = MASK_COLUMN) -> datasets.Features:
    """The `datasets.Features` of the guide's layout: `image` and a mask `datasets.Image()`."""
    return datasets.Features({"image": datasets.Image(), mask_column: datasets.Image()})
