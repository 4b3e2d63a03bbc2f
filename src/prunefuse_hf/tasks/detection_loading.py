"""Detection datasets in and out: `load_detection_dataset` reads an image folder with a COCO JSON file, a saved dataset
or a Hub dataset into the cppe-5 layout (`detection_data.py`) and checks it; `coco_json_from_dataset` writes a
dataset back as COCO JSON, what annotators and COCO tools read."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import PIL.Image

from ..data.loading import load_saved_split, split_folder
from .detection_data import (
    BBOX_KEY,
    CATEGORY_KEY,
    OBJECTS_COLUMN,
    convert_bbox,
    detection_class_names,
    detection_features,
    image_sizes,
    objects_as_columns,
    validate_detection_dataset,
)


def load_detection_dataset(
    path_or_id: str,
    split: str = "train",
    *,
    annotations: str | None = None,
    class_names: list[str] | None = None,
    bbox_format: str = "coco",
    image_column: str = "image",
    objects_column: str = OBJECTS_COLUMN,
    revision: str | None = None,
    validate: bool = True,
) -> datasets.Dataset:
    """
    Load one split of a detection dataset in the cppe-5 layout, and check it (see [`validate_detection_dataset`]).

    Sources, tried in this order (in the sub-folder named `split`, `train/` or `test/`, when the directory has one):

    - an image folder with a COCO JSON file: `annotations` names the file (relative to the folder or absolute), or
      the folder holds exactly one `*.json` file with `images`, `annotations` and `categories`;
    - a directory written by `save_to_disk` (a `Dataset`, or a `DatasetDict` from which `split` is taken);
    - anything else is a Hub dataset id passed to `datasets.load_dataset` (e.g. `"cppe-5"`).

    Args:
        path_or_id (`str`): A local directory or a Hub dataset id.
        split (`str`, *optional*, defaults to `"train"`): The split to load: a `DatasetDict`'s split, a sub-folder of
            that name, or a Hub split (a COCO folder without split sub-folders is one split).
        annotations (`str`, *optional*): The COCO JSON file of an image folder.
        class_names (`list[str]`, *optional*): Class names when the categories are not a `ClassLabel`.
        bbox_format (`str`, *optional*, defaults to `"coco"`): Format of the stored boxes (`coco` for COCO JSON).
        image_column (`str`, *optional*, defaults to `"image"`): Column holding the images.
        objects_column (`str`, *optional*, defaults to `"objects"`): Column holding the objects.
        revision (`str`, *optional*): Hub dataset revision.
        validate (`bool`, *optional*, defaults to `True`): Check every row before returning.

    Returns:
        `datasets.Dataset`: columns `image`, `objects` (and whatever else the source has; a COCO folder also gives
        `image_id`, `file_name`, `width` and `height`).

    Raises:
        `ValueError`: a row at fault (see [`validate_detection_dataset`]), or a COCO file naming unknown images or
            categories.

    Example:

    ```python
    >>> pool = load_detection_dataset("data/boxes")  # images + one COCO JSON file  # doctest: +SKIP
    >>> pool = load_detection_dataset("cppe-5", split="train")  # from the Hub  # doctest: +SKIP
    >>> pool.features["objects"]["category"].feature.names  # doctest: +SKIP
    ['Coverall', 'Face_Shield', 'Gloves', 'Goggles', 'Mask']
    ```
    """
    path = Path(path_or_id).expanduser()
    path = split_folder(path, split)
    coco_file = find_coco_file(path, annotations)
    if coco_file is not None:
        dataset = dataset_from_coco_json(coco_file, image_dir=path if path.is_dir() else coco_file.parent)
    elif path.is_dir():
        dataset = load_saved_split(path, split)
    else:
        dataset = datasets.load_dataset(path_or_id, split=split, revision=revision)
    if validate:
        validate_detection_dataset(
            dataset,
            image_column=image_column,
            objects_column=objects_column,
            class_names=class_names,
            bbox_format=bbox_format,
        )
    return dataset


def find_coco_file(path: Path, annotations: str | None) -> Path | None:
    """The COCO JSON file of an image folder: `annotations` (relative to the folder or absolute), else the folder's
    one COCO file; `None` when `path` is not a folder of images (a saved dataset, a Hub id) or holds none."""
    if annotations is not None:
        file = Path(annotations).expanduser()
        if not file.is_absolute() and path.is_dir():
            file = path / file
        if not file.is_file():
            raise FileNotFoundError(f"COCO annotation file {file} not found.")
        return file
    if not path.is_dir() or (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return None
    candidates = [file for file in sorted(path.glob("*.json")) if is_coco_file(file)]
    if len(candidates) > 1:
        raise ValueError(
            f"{path} holds several COCO JSON files {[c.name for c in candidates]}; name one with `annotations`."
        )
    return candidates[0] if candidates else None


def is_coco(content) -> bool:
    """Whether parsed JSON content is COCO (a dict with `images`, `annotations` and `categories`)."""
    return isinstance(content, dict) and {"images", "annotations", "categories"} <= set(content)


def is_coco_file(file: Path) -> bool:
    """Whether `file` holds COCO JSON (`False` for a file that cannot be read or parsed)."""
    try:
        return is_coco(json.loads(file.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return False


def dataset_from_coco_json(
    annotation_file: str | Path, image_dir: str | Path | None = None
) -> datasets.Dataset:
    """
    A detection dataset in the cppe-5 layout from a COCO JSON file and its image folder.

    Category ids are mapped to contiguous class ids in the order of their COCO ids; the names become the
    `category` `ClassLabel`. Images without annotations get empty objects; `iscrowd` annotations are kept as boxes.

    Args:
        annotation_file (`str` or `Path`): The COCO JSON file (`images`, `annotations`, `categories`).
        image_dir (`str` or `Path`, *optional*): Folder the `file_name`s are relative to (default: the file's).

    Returns:
        `datasets.Dataset` with `image`, `image_id`, `file_name`, `width`, `height` and `objects` (`id`, `area`,
        `bbox` in COCO pixels, `category`).

    Raises:
        `ValueError`: an annotation naming an unknown image or category id, or an image file that is missing.
    """
    annotation_file = Path(annotation_file)
    image_dir = Path(image_dir) if image_dir is not None else annotation_file.parent
    coco = json.loads(annotation_file.read_text())
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    class_of = {c["id"]: position for position, c in enumerate(categories)}
    per_image: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        if annotation["image_id"] not in per_image:
            raise ValueError(
                f"{annotation_file}: annotation {annotation.get('id')} names image_id {annotation['image_id']}, "
                "which is not in `images`; add the image or drop the annotation."
            )
        if annotation["category_id"] not in class_of:
            raise ValueError(
                f"{annotation_file}: annotation {annotation.get('id')} names category_id "
                f"{annotation['category_id']}, which is not in `categories` {sorted(class_of)}; add the category."
            )
        per_image[annotation["image_id"]].append(annotation)
    rows = {"image": [], "image_id": [], "file_name": [], "width": [], "height": [], OBJECTS_COLUMN: []}
    for image in coco["images"]:
        file = image_dir / image["file_name"]
        if not file.is_file():
            raise ValueError(
                f"{annotation_file}: image {image['id']} file {file} not found; fix `image_dir`."
            )
        width, height = image.get("width"), image.get("height")
        if width is None or height is None:
            with PIL.Image.open(file) as opened:
                width, height = opened.size
        found = per_image[image["id"]]
        rows["image"].append(str(file))
        rows["image_id"].append(int(image["id"]))
        rows["file_name"].append(image["file_name"])
        rows["width"].append(int(width))
        rows["height"].append(int(height))
        rows[OBJECTS_COLUMN].append(
            {
                "id": [int(a.get("id", k)) for k, a in enumerate(found)],
                "area": [float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in found],
                BBOX_KEY: [[float(v) for v in a["bbox"]] for a in found],
                CATEGORY_KEY: [class_of[a["category_id"]] for a in found],
            }
        )
    return datasets.Dataset.from_dict(
        rows, features=detection_features([c["name"] for c in categories], True)
    )


def coco_json_from_dataset(
    dataset: datasets.Dataset,
    *,
    objects_column: str = OBJECTS_COLUMN,
    class_names: list[str] | None = None,
    bbox_format: str = "coco",
    file_names: list[str] | None = None,
) -> dict:
    """
    The COCO JSON content (`images`, `annotations`, `categories`) of a detection dataset: what annotators and COCO
    tools read. Image ids are the row positions (pool indices); category ids are the class ids.

    Args:
        dataset (`datasets.Dataset`): A detection dataset (with `width`/`height` columns or images).
        objects_column (`str`, *optional*, defaults to `"objects"`): Column holding the objects.
        class_names (`list[str]`, *optional*): Needed when the category is not a `ClassLabel`.
        bbox_format (`str`, *optional*, defaults to `"coco"`): Format of the stored boxes.
        file_names (`list[str]`, *optional*): One file name per row (default: the `file_name` column, else
            `"{row}.png"`).

    Returns:
        `dict`: JSON-ready COCO content, boxes in COCO pixels.
    """
    names = detection_class_names(dataset, objects_column, class_names)
    sizes = image_sizes(dataset, "image")
    if file_names is None:
        file_names = (
            list(dataset["file_name"])
            if "file_name" in dataset.column_names
            else [f"{i}.png" for i in range(len(sizes))]
        )
    objects = dataset.with_format("arrow")[objects_column].to_pylist()
    images, annotations = [], []
    for index, ((width, height), row) in enumerate(zip(sizes, objects)):
        images.append(
            {"id": index, "file_name": file_names[index], "width": int(width), "height": int(height)}
        )
        row = objects_as_columns(row)
        boxes = convert_bbox(row[BBOX_KEY], bbox_format, "coco", (width, height))
        for box, category in zip(boxes, row[CATEGORY_KEY]):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index,
                    "category_id": int(category),
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": class_id, "name": name} for class_id, name in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}
