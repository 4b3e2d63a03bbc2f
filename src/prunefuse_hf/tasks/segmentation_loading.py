"""Loading semantic-segmentation data in the guide's layout (see `segmentation_data.py`): a directory written by
`save_to_disk`, an image folder with a masks folder paired by file name, or a Hub dataset; each checked before any
work.
"""

from __future__ import annotations

from pathlib import Path

import datasets

from ..data.loading import load_saved_split, split_folder
from .segmentation_data import MASK_COLUMN, validate_segmentation_dataset
from .segmentation_masks import IGNORE_INDEX

# Folder names an image folder's masks are looked for in, and its images' (else the folder itself).
MASK_DIRS = ("masks", "labels", "annotations", "label", "mask")
IMAGE_DIRS = ("images", "image", "img")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


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
    - a sub-folder named `split` (`train/`, `test/`) of the directory, holding any of the local sources below;
    - an image folder with a masks folder: images in `images_dir` (default: `images/` or `img/` under the folder, else
      the folder) and masks in `masks_dir` (default: `masks/`, `labels/` or `annotations/`), paired by file name
      without suffix (`a.jpg` with `a.png`); every image needs its mask;
    - anything else is a Hub dataset id passed to `datasets.load_dataset` (e.g. `"segments/sidewalk-semantic"`).

    `id2label.json` beside a saved dataset or in the image folder names the classes (see
    [`segmentation_class_names`]); for a Hub dataset pass `class_names`.

    Args:
        path_or_id (`str`): A local directory or a Hub dataset id.
        split (`str`, *optional*, defaults to `"train"`): The split to load: a `DatasetDict`'s split, a sub-folder of
            that name, or a Hub split (an image folder without split sub-folders is one split).
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
    path = split_folder(path, split)
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        dataset = load_saved_split(path, split)
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
