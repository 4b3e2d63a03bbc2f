"""Loading image-classification pools with `datasets`, checking their columns, and reading their labels.

Everything here keeps the pool as one Arrow-backed `datasets.Dataset`: opening a pool reads no image, so a
pool of millions of images costs the same to open as a pool of ten (images are decoded once, by
`prunefuse_hf.data.preprocessing`).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from pathlib import Path

import datasets
import numpy as np
from transformers.utils import logging

from ..constants import (
    FASHION_MNIST,
    FASHION_MNIST_APT_PACKAGE,
    FASHION_MNIST_DIR,
    FASHION_MNIST_HUB_ID,
    FASHION_MNIST_LABELS,
    IMAGEFOLDER_METADATA_NAMES,
    SYNTHETIC_DETECTION,
    SYNTHETIC_SEGMENTATION,
)
from ..utils.hub_ids import hub_reachable, is_hub_id

logger = logging.get_logger(__name__)

# Read at call time (not import time) so that tests and users can point it elsewhere.
FASHION_MNIST_DIR_ENV = "PRUNEFUSE_FASHION_MNIST_DIR"
# Bump when the way the built-in dataset is built changes: it is part of the cache key and fingerprint.
_FASHION_MNIST_BUILD_VERSION = "v1"
_FASHION_MNIST_FILES = {"train": "train", "test": "t10k"}
_IDX_MAGIC = {"images": 2051, "labels": 2049}
_ARRAY_FEATURES = (datasets.Array2D, datasets.Array3D, datasets.List, datasets.LargeList)


def load_image_dataset(
    name_or_path: str,
    split: str = "train",
    *,
    image_column: str = "image",
    label_column: str | None = "label",
    config_name: str | None = None,
    revision: str | None = None,
) -> datasets.Dataset:
    """
    Load one split of an image-classification dataset and check that it has the expected columns.

    Sources, tried in this order:

    - `"fashion_mnist"`: the Debian package `dataset-fashion-mnist` (directory `FASHION_MNIST_DIR`, or the
      `PRUNEFUSE_FASHION_MNIST_DIR` environment variable), built once into the `datasets` cache with a
      fingerprint that depends only on the files, so it is the same in every process and on every machine.
      Without the files, the Hub copy (`zalando-datasets/fashion_mnist`) is used when the Hub is reachable.
    - a directory written by `save_to_disk` (a `Dataset` or a `DatasetDict`, from which `split` is taken);
    - a directory of class sub-folders (the `imagefolder` builder);
    - anything else is a Hub dataset id passed to `datasets.load_dataset`.

    Args:
        name_or_path (`str`):
            `"fashion_mnist"`, a local directory, or a Hub dataset id.
        split (`str`, *optional*, defaults to `"train"`):
            The split to load.
        image_column (`str`, *optional*, defaults to `"image"`):
            Column holding the images (an `Image` feature or pixel arrays).
        label_column (`str`, *optional*, defaults to `"label"`):
            Column holding integer class ids. `None` for an unlabeled pool.
        config_name (`str`, *optional*):
            Hub dataset configuration name.
        revision (`str`, *optional*):
            Hub dataset revision (branch, tag or commit), to pin the exact data.

    Returns:
        `datasets.Dataset`: the split, unchanged (no column is renamed or copied).

    Example:

    ```python
    >>> from prunefuse_hf.data import load_image_dataset
    >>> pool = load_image_dataset("fashion_mnist", split="train")
    >>> pool.num_rows, pool.features["label"].num_classes
    (60000, 10)
    ```
    """
    if name_or_path == FASHION_MNIST:
        dataset = _load_fashion_mnist(split, revision=revision)
    elif Path(name_or_path).expanduser().is_dir():
        dataset = _load_local_directory(Path(name_or_path).expanduser(), split, label_column or "label")
    else:
        _check_hub_dataset_id(name_or_path)
        dataset = datasets.load_dataset(name_or_path, config_name, split=split, revision=revision)
    return validate_image_dataset(dataset, image_column=image_column, label_column=label_column)


def validate_image_dataset(
    dataset: datasets.Dataset, image_column: str = "image", label_column: str | None = "label"
) -> datasets.Dataset:
    """
    Check that `dataset` has an image column and (unless `label_column` is `None`) integer class ids.

    Only the features are inspected: no row is read.

    Args:
        dataset (`datasets.Dataset`): The dataset to check.
        image_column (`str`, *optional*, defaults to `"image"`): Column holding the images.
        label_column (`str`, *optional*, defaults to `"label"`): Column holding class ids, or `None`.

    Returns:
        `datasets.Dataset`: `dataset` itself.

    Raises:
        `ValueError`: a column is missing, the image column holds no images, or the labels are not
        integer class ids.

    Example:

    ```python
    >>> import datasets
    >>> from PIL import Image
    >>> dataset = datasets.Dataset.from_dict({"img": [Image.new("RGB", (8, 8))], "fine_label": [3]})
    >>> validate_image_dataset(dataset, image_column="img", label_column="fine_label") is dataset
    True
    ```
    """
    features = dataset.features
    for column, option in ((image_column, "image_column"), (label_column, "label_column")):
        if column is not None and column not in features:
            hint = " (or `label_column=None` for an unlabeled pool)" if option == "label_column" else ""
            raise ValueError(
                f"The dataset has no column {column!r}; its columns are {list(features)}. "
                f"Set `{option}` to the right column{hint}."
            )
    image_feature = features[image_column]
    if not isinstance(image_feature, (datasets.Image, *_ARRAY_FEATURES)):
        raise ValueError(
            f"Column {image_column!r} should hold images (an `Image()` feature or pixel arrays) but its "
            f"feature is {image_feature}. Set `image_column`, or cast it with "
            f"`dataset.cast_column({image_column!r}, datasets.Image())`."
        )
    if label_column is not None and not _is_class_id_feature(features[label_column]):
        raise ValueError(
            f"Column {label_column!r} should hold integer class ids or class names but its feature is "
            f"{features[label_column]}. Encode it first, e.g. "
            f"`dataset = dataset.class_encode_column({label_column!r})`, or cast it to a `ClassLabel`."
        )
    return dataset


# ----- the built-in Fashion-MNIST -----


def fashion_mnist_dir() -> Path:
    """Directory read for `"fashion_mnist"`: `$PRUNEFUSE_FASHION_MNIST_DIR`, else the Debian package's."""
    return Path(os.environ.get(FASHION_MNIST_DIR_ENV, FASHION_MNIST_DIR))


def _load_fashion_mnist(split: str, revision: str | None = None) -> datasets.Dataset:
    if split not in _FASHION_MNIST_FILES:
        raise ValueError(f"Fashion-MNIST has no split {split!r}; valid splits: {list(_FASHION_MNIST_FILES)}.")
    directory = fashion_mnist_dir()
    prefix = _FASHION_MNIST_FILES[split]
    images_path = directory / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = directory / f"{prefix}-labels-idx1-ubyte.gz"
    if not (images_path.is_file() and labels_path.is_file()):
        if hub_reachable():
            logger.info(f"{images_path} not found; loading {FASHION_MNIST_HUB_ID} from the Hub.")
            return datasets.load_dataset(FASHION_MNIST_HUB_ID, split=split, revision=revision)
        raise FileNotFoundError(
            f"Fashion-MNIST files not found in {directory} and the Hugging Face Hub is not reachable. "
            f"Install them with `apt-get install {FASHION_MNIST_APT_PACKAGE}`, or set "
            f"{FASHION_MNIST_DIR_ENV} to a directory holding {images_path.name} and {labels_path.name}."
        )
    # The fingerprint is the cache key: it hashes the files' bytes, so any process or machine with the
    # same files reuses the same cache and a DataPool state saved elsewhere still matches.
    digest = hashlib.sha256()
    for path in (images_path, labels_path):
        digest.update(path.read_bytes())
    fingerprint = f"{FASHION_MNIST}-{split}-{_FASHION_MNIST_BUILD_VERSION}-{digest.hexdigest()[:16]}"
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=FASHION_MNIST_LABELS)}
    )
    return datasets.Dataset.from_generator(
        _fashion_mnist_examples,
        features=features,
        gen_kwargs={"images_path": str(images_path), "labels_path": str(labels_path)},
        split=datasets.NamedSplit(split),
        fingerprint=fingerprint,
    )


def _fashion_mnist_examples(images_path: str, labels_path: str):
    images = _read_idx(images_path, "images")
    labels = _read_idx(labels_path, "labels")
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels."
        )
    for image, label in zip(images, labels):
        yield {"image": image, "label": int(label)}


def _read_idx(path: str, kind: str) -> np.ndarray:
    """Parse a gzipped idx file (big-endian int32 header: magic, then one size per dimension)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic != _IDX_MAGIC[kind]:
        raise ValueError(f"{path} is not an idx {kind} file (magic {magic}, expected {_IDX_MAGIC[kind]}).")
    ndim = magic & 0xFF
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


# ----- local directories -----


def load_saved_split(path: Path, split: str) -> datasets.Dataset:
    """
    `split` of a directory written by `save_to_disk`: a `DatasetDict`'s split, or the saved `Dataset` itself.

    Raises:
        `SplitNotFoundError`: a `DatasetDict` without `split` (the message lists its splits).

    Example:

    ```python
    >>> load_saved_split(Path("data/pool"), "train").num_rows  # doctest: +SKIP
    ```
    """
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise SplitNotFoundError(f"{path} has no split {split!r}; its splits are {list(loaded)}.")
        return loaded[split]
    return loaded


def split_folder(path: Path, split: str) -> Path:
    """`path/split` when a directory holds one sub-folder per split (`train/`, `test/`) and is not a saved
    `DatasetDict`, else `path`."""
    if path.is_dir() and (path / split).is_dir() and not (path / "dataset_dict.json").is_file():
        return path / split
    return path


def _load_local_directory(path: Path, split: str, label_column: str = "label") -> datasets.Dataset:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return load_saved_split(path, split)
    builder = datasets.load_dataset_builder("imagefolder", data_dir=str(path))
    splits = list(builder.config.data_files or {})
    if split not in splits:
        raise SplitNotFoundError(
            f"The image folder {path} has no split {split!r}; its splits are {splits} (a split is a sub-folder "
            "such as train/ or test/, else everything is 'train')."
        )
    dataset = datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
    metadata = [
        p for d in (path, path / split) for p in map(d.joinpath, IMAGEFOLDER_METADATA_NAMES) if p.is_file()
    ]
    if metadata and label_column not in dataset.column_names:
        dataset = _with_folder_classes(dataset, path, metadata[0], label_column)
    elif metadata:
        logger.info(
            f"Classes of {path}: the '{label_column}' column of {metadata[0].name} (with a metadata file, the "
            "imagefolder builder takes the labels from it, not from the class sub-folders)."
        )
    return dataset


def _with_folder_classes(dataset: datasets.Dataset, root: Path, metadata: Path, label_column: str):
    """An image folder whose metadata file has no label column keeps its class sub-folders as the classes (the
    `imagefolder` builder drops them when there is a metadata file)."""
    image_column = next((c for c, f in dataset.features.items() if isinstance(f, datasets.Image)), None)
    if image_column is None:
        return dataset
    stored = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    folders = [Path(value["path"]).parent for value in stored[image_column]]
    names = sorted({folder.name for folder in folders})
    if (
        any(folder.resolve() in (root.resolve(), metadata.parent.resolve()) for folder in folders)
        or not names
    ):
        logger.info(f"{metadata} has no '{label_column}' column and the images are not in class sub-folders.")
        return dataset
    logger.info(
        f"Classes of {root}: the class sub-folders {names} ({metadata.name} has no '{label_column}' column; with a "
        "metadata file the imagefolder builder drops the folder classes, so they are added back)."
    )
    labels = [names.index(folder.name) for folder in folders]
    return dataset.add_column(label_column, labels, feature=datasets.ClassLabel(names=names))


class SplitNotFoundError(ValueError):
    """The dataset has no split of that name (the message lists the splits it has)."""


def _check_hub_dataset_id(name: str) -> None:
    # A name that is not on disk is looked up on the Hub; say at once when that cannot work, instead of
    # after the client's network retries.
    from huggingface_hub import constants

    looks_like_path = not is_hub_id(name)
    if not looks_like_path:
        try:
            from huggingface_hub.utils import validate_repo_id

            validate_repo_id(name)
        except ValueError:
            looks_like_path = True
    if looks_like_path:
        raise FileNotFoundError(
            f"dataset_name {name!r} is not a directory (looked for {Path(name).expanduser().absolute()}) and cannot "
            "be a Hub dataset id. Fix the path, or give a Hub id such as ORG/NAME."
        )
    if not hub_reachable():
        raise FileNotFoundError(
            f"dataset_name {name!r} is not a local directory ({Path(name).absolute()} does not exist), so it was "
            f"taken for a Hub dataset id, but the Hub ({constants.ENDPOINT}) is not reachable. Fix the path, or "
            "connect to the Hub (or set HF_ENDPOINT)."
        )


# ----- helpers -----


def _is_class_id_feature(feature) -> bool:
    if isinstance(feature, datasets.ClassLabel):
        return True
    # Class names (as a metadata.csv holds them) are encoded by the run (`encode_label_names`).
    return isinstance(feature, datasets.Value) and feature.dtype.startswith(
        ("int", "uint", "string", "large_string")
    )


def resolve_dataset_revision(name: str, revision: str | None = None) -> str | None:
    """
    The commit a Hub dataset id resolves to (at `revision`, default its main branch), so a run and the subset it
    publishes pin the exact data; `None` for the built-in Fashion-MNIST read from disk and for local directories.

    Args:
        name (`str`): `"fashion_mnist"`, a local directory or a Hub dataset id.
        revision (`str`, *optional*): A branch, tag or commit.

    Returns:
        `str` or `None`: the commit sha.

    Raises:
        `FileNotFoundError`: `name` is neither on disk nor a reachable Hub id (see [`load_image_dataset`]).
    """
    if name in (SYNTHETIC_DETECTION, SYNTHETIC_SEGMENTATION):
        return revision
    if name == FASHION_MNIST:
        directory = fashion_mnist_dir()
        if (directory / "train-images-idx3-ubyte.gz").is_file() or not hub_reachable():
            return revision
        name = FASHION_MNIST_HUB_ID
    elif Path(name).expanduser().is_dir():
        return revision
    else:
        _check_hub_dataset_id(name)
    from huggingface_hub import HfApi

    return HfApi().dataset_info(name, revision=revision).sha


def load_run_datasets(
    data_args, image_column: str = "image", label_column: str | None = "label", seed: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Load the pool and evaluation splits described by a `DataArguments`, subsampled when asked.

    Subsets are seeded random draws kept in dataset order, so the same arguments always give the same
    examples (and the same fingerprint, which a resumed run checks).

    Args:
        data_args (`DataArguments`): dataset name, splits, revision and size limits.
        image_column (`str`): Column holding the images.
        label_column (`str`, *optional*): Column holding class ids (the pool may lack it).
        seed (`int`): Seed of the subsampling.

    Returns:
        `(pool, eval_dataset)`; `eval_dataset` is `None` when `data_args.eval_split` is unset.

    Raises:
        `ValueError`: a split or column is missing (the message names the field and how to fix it).
        `FileNotFoundError`: the dataset is neither a directory nor a reachable Hub id.
    """
    load = functools.partial(
        load_image_dataset,
        data_args.dataset_name,
        image_column=image_column,
        config_name=data_args.dataset_config_name,
        revision=data_args.dataset_revision,
    )
    try:
        pool = load(data_args.train_split, label_column=None)
    except SplitNotFoundError as error:
        raise ValueError(f"train_split: {error} Set train_split to one of them.") from None
    if label_column is not None and label_column in pool.column_names:
        validate_image_dataset(pool, image_column, label_column)
    pool = subsample(pool, data_args.max_pool_size, seed)
    eval_dataset = None
    if data_args.eval_split:
        try:
            eval_dataset = load(data_args.eval_split, label_column=label_column)
        except SplitNotFoundError as error:
            raise ValueError(
                f"eval_split: {error} Set eval_split to one of them, or eval_split: null to run without evaluation."
            ) from None
        check_distinct_splits(pool, eval_dataset, data_args)
        eval_dataset = subsample(eval_dataset, data_args.max_eval_samples, seed + 1)
    return pool, eval_dataset


def check_distinct_splits(pool: datasets.Dataset, eval_dataset: datasets.Dataset, data_args) -> None:
    """
    Refuse an evaluation split that is the pool itself: a source that holds one split (a single saved `Dataset`, an
    image folder with its masks or its COCO file) gives the same rows for `train_split` and `eval_split`, and a run
    would report its accuracy, mAP or mean IoU on the images it trained on.

    Args:
        pool, eval_dataset (`datasets.Dataset`): The two splits as loaded, before subsampling.
        data_args (`DataArguments`): Names the source and the two splits in the message.

    Raises:
        `ValueError`: both splits are the same rows of the same source (the same Arrow files, or for a dataset built
            in memory the same fingerprint), naming `eval_split` and the ways out.

    Example:

    ```python
    >>> from prunefuse_hf.arguments import DataArguments
    >>> one_split = datasets.Dataset.from_dict({"label": [0, 1]})
    >>> check_distinct_splits(one_split, one_split, DataArguments(dataset_name="org/one-split"))
    Traceback (most recent call last):
    ValueError: eval_split: 'test' of org/one-split gives the same rows as train_split 'train' (the source holds ...
    ```
    """
    files = [[f["filename"] for f in dataset.cache_files] for dataset in (pool, eval_dataset)]
    same = files[0] == files[1] if any(files) else pool._fingerprint == eval_dataset._fingerprint
    if same and len(pool) == len(eval_dataset):
        raise ValueError(
            f"eval_split: {data_args.eval_split!r} of {data_args.dataset_name} gives the same rows as train_split "
            f"{data_args.train_split!r} (the source holds one split), so the run would evaluate on its own pool. "
            "Keep the evaluation images apart: a saved DatasetDict with both splits, a sub-folder per split "
            f"({data_args.dataset_name}/{data_args.train_split}/ and {data_args.dataset_name}/{data_args.eval_split}/), "
            "or a Hub dataset with both; or set eval_split: null to run without an evaluation set."
        )


def subsample(dataset: datasets.Dataset, size: int | None, seed: int) -> datasets.Dataset:
    """A seeded draw of `size` rows in their original order (`max_pool_size`, `max_eval_samples`); the subset's
    rebuild draws the same rows."""
    if size is None or size >= len(dataset):
        return dataset
    rows = np.sort(np.random.default_rng(seed).choice(len(dataset), size=size, replace=False))
    return dataset.select(rows)
