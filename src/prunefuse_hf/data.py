"""Loading image-classification pools with `datasets` and preparing them lazily for a vision model.

Everything here keeps the pool as one Arrow-backed `datasets.Dataset`: nothing is decoded or copied
until a batch is read, so a pool of millions of images costs the same to open as a pool of ten.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import datasets
import numpy as np
import PIL.Image
import torch
from transformers.utils import logging

from .constants import (
    FASHION_MNIST,
    FASHION_MNIST_APT_PACKAGE,
    FASHION_MNIST_DIR,
    FASHION_MNIST_HUB_ID,
    FASHION_MNIST_LABELS,
    LABELS,
    PIXEL_VALUES,
)

logger = logging.get_logger(__name__)

# Read at call time (not import time) so that tests and users can point it elsewhere.
FASHION_MNIST_DIR_ENV = "PRUNEFUSE_FASHION_MNIST_DIR"
# Bump when the way the built-in dataset is built changes: it is part of the cache key and fingerprint.
_FASHION_MNIST_BUILD_VERSION = "v1"
_FASHION_MNIST_FILES = {"train": "train", "test": "t10k"}
_IDX_MAGIC = {"images": 2051, "labels": 2049}
_CHANNEL_MODES = {1: "L", 3: "RGB"}
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
        dataset = _load_local_directory(Path(name_or_path).expanduser(), split)
    elif name_or_path.startswith(("/", "./", "../", "~")):
        # Looks like a path, so a Hub lookup would only hide the real problem behind a network error.
        raise FileNotFoundError(f"No dataset directory at {name_or_path!r}.")
    else:
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
    >>> validate_image_dataset(dataset, image_column="img", label_column="fine_label")
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
            f"Column {label_column!r} should hold integer class ids but its feature is "
            f"{features[label_column]}. Encode it first, e.g. "
            f"`dataset = dataset.class_encode_column({label_column!r})`, or cast it to a `ClassLabel`."
        )
    return dataset


def class_names(dataset: datasets.Dataset, label_column: str = "label") -> list[str]:
    """
    Names of the classes, in class-id order.

    Args:
        dataset (`datasets.Dataset`): A dataset with a label column.
        label_column (`str`, *optional*, defaults to `"label"`): Column holding the class ids.

    Returns:
        `list[str]`: the `ClassLabel` names, or `["0", ..., str(max_id)]` for a plain integer column.

    Example:

    ```python
    >>> class_names(load_image_dataset("fashion_mnist"))[:2]
    ['T-shirt/top', 'Trouser']
    ```
    """
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    # Plain integers: ids run from 0 to the largest one seen (the model needs that many outputs).
    labels = np.asarray(dataset.with_format("arrow")[label_column])
    return [str(i) for i in range(int(labels.max()) + 1)] if labels.size else []


def num_classes(dataset: datasets.Dataset, label_column: str = "label") -> int:
    """Number of classes of `dataset` (see [`class_names`])."""
    return len(class_names(dataset, label_column))


def build_image_transform(
    model_config,
    image_processor=None,
    *,
    image_size: int | tuple[int, int] | None = None,
    train: bool = False,
    augment: bool = False,
    image_column: str = "image",
    label_column: str | None = "label",
) -> Callable[[dict], dict]:
    """
    Build a batched transform for `Dataset.with_transform` that turns images into model inputs.

    Images are first converted to the model's channel count (`model_config.num_channels`, default 3):
    gray images are repeated to RGB, RGB images become gray for one-channel models. Then either the
    `image_processor` does resizing and normalization, or the images are resized to `image_size` (default
    `model_config.image_size` when the config has one, else their own size) and normalized with mean 0.5
    and std 0.5 per channel.

    Args:
        model_config ([`~transformers.PretrainedConfig`]):
            Config of the model that will consume the batches.
        image_processor ([`~transformers.BaseImageProcessor`], *optional*):
            Processor of a pretrained model; its own size wins over `image_size`.
        image_size (`int` or `tuple[int, int]`, *optional*):
            Target `(height, width)` without an image processor.
        train (`bool`, *optional*, defaults to `False`):
            Whether the batches are for training (augmentation only applies then).
        augment (`bool`, *optional*, defaults to `False`):
            With `train=True`: random crop with 4-pixel zero padding and random horizontal flip, drawn
            from torch's global generator (so `torch.manual_seed` makes it reproducible).
        image_column (`str`, *optional*, defaults to `"image"`):
            Column holding the images.
        label_column (`str`, *optional*, defaults to `"label"`):
            Column holding class ids; `None` or absent from the batch means no `labels` are returned.

    Returns:
        `Callable[[dict], dict]`: maps a batch `{column: list}` to `{"pixel_values": float tensor [B, C, H, W],
        "labels": long tensor [B]}` (`labels` only when the batch has the label column).

    Example:

    ```python
    >>> transform = build_image_transform(model.config, train=True, augment=True)
    >>> batch = transform(dataset[:8])
    >>> batch["pixel_values"].shape
    torch.Size([8, 3, 28, 28])
    ```
    """
    channels = getattr(model_config, "num_channels", 3)
    if channels not in _CHANNEL_MODES:
        raise ValueError(f"Models with {channels} input channels are not supported (only 1 or 3).")
    mode = _CHANNEL_MODES[channels]
    mean = getattr(image_processor, "image_mean", None)
    if (
        getattr(image_processor, "do_normalize", False)
        and isinstance(mean, (list, tuple))
        and len(mean) != channels
    ):
        # Caught here because the processor's own error ("mean must have 1 elements") hides the cause.
        raise ValueError(
            f"The image processor normalizes {len(mean)} channels but the model expects {channels}; give it "
            f"one `image_mean`/`image_std` value per model channel."
        )
    if image_processor is not None and image_size is not None:
        logger.warning("`image_size` is ignored when an `image_processor` is given: the processor resizes.")
    size = _as_size(image_size if image_size is not None else getattr(model_config, "image_size", None))
    do_augment = train and augment

    def transform(batch: dict) -> dict:
        images = [_to_pil(image).convert(mode) for image in batch[image_column]]
        if image_processor is not None:
            pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
        else:
            if size is None and len({image.size for image in images}) > 1:
                raise ValueError(
                    "The images have different sizes; set `image_size` to resize them to one size."
                )
            pixel_values = _pil_batch_to_tensor(images, size)
        if do_augment:
            pixel_values = _random_crop_and_flip(pixel_values, padding=4)
        output = {PIXEL_VALUES: pixel_values}
        if label_column is not None and label_column in batch:
            output[LABELS] = torch.as_tensor(list(batch[label_column]), dtype=torch.long)
        return output

    return transform


def prepare_dataset(
    dataset: datasets.Dataset,
    model_config,
    image_processor=None,
    *,
    train: bool = False,
    augment: bool = False,
    image_size: int | tuple[int, int] | None = None,
    image_column: str = "image",
    label_column: str | None = "label",
) -> datasets.Dataset:
    """
    Attach [`build_image_transform`] to `dataset` with `with_transform`.

    The result shares the Arrow table of `dataset` (no copy of the pool): images are decoded and
    transformed only when rows are read. Its rows are exactly `{"pixel_values", "labels"}` tensors, so
    `transformers.default_data_collator` stacks them. With `transformers.Trainer`, set
    `remove_unused_columns=False`: otherwise Trainer drops the image column before the transform sees it.

    Args:
        dataset (`datasets.Dataset`): The images (see [`validate_image_dataset`]).
        model_config, image_processor, train, augment, image_size, image_column, label_column:
            As in [`build_image_transform`].

    Returns:
        `datasets.Dataset`: a view of `dataset` with the transform set.

    Example:

    ```python
    >>> train_ds = prepare_dataset(pool.labeled, model.config, train=True, augment=True)
    >>> train_ds[0]["pixel_values"].shape
    torch.Size([3, 28, 28])
    ```
    """
    if label_column is not None and label_column not in dataset.column_names:
        label_column = None  # an unlabeled pool: the transform returns pixel values only
    validate_image_dataset(dataset, image_column=image_column, label_column=label_column)
    transform = build_image_transform(
        model_config,
        image_processor,
        image_size=image_size,
        train=train,
        augment=augment,
        image_column=image_column,
        label_column=label_column,
    )
    # Only these columns are decoded per batch: other columns (extra images, metadata) are never read.
    columns = [image_column] + ([label_column] if label_column is not None else [])
    return dataset.with_transform(transform, columns=columns)


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
        if _hub_reachable():
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


def _hub_reachable(timeout: float = 2.0) -> bool:
    """Offline mode says no; otherwise one short TCP connection decides (no retries, no long DNS wait)."""
    from huggingface_hub import constants

    offline_env = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    if offline_env or constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


# ----- local directories -----


def _load_local_directory(path: Path, split: str) -> datasets.Dataset:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{path} has no split {split!r}; valid splits: {list(loaded)}.")
            return loaded[split]
        return loaded
    return datasets.load_dataset("imagefolder", data_dir=str(path), split=split)


# ----- helpers -----


def _is_class_id_feature(feature) -> bool:
    if isinstance(feature, datasets.ClassLabel):
        return True
    return isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))


def _as_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def _to_pil(image) -> PIL.Image.Image:
    if isinstance(image, PIL.Image.Image):
        return image
    # Pixel arrays (Array2D/Array3D or nested lists): uint8, or floats in [0, 1].
    array = np.asarray(image)
    if array.dtype.kind == "f":
        array = np.clip(array * 255.0, 0, 255).round()
    array = array.astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return PIL.Image.fromarray(array)


def _pil_batch_to_tensor(images: list[PIL.Image.Image], size: tuple[int, int] | None) -> torch.Tensor:
    """Resize with PIL, then convert and normalize the whole batch at once (mean and std 0.5)."""
    if size is not None:
        images = [
            image
            if image.size == (size[1], size[0])
            else image.resize((size[1], size[0]), PIL.Image.Resampling.BILINEAR)
            for image in images
        ]  # PIL sizes are (width, height)
    pixels = torch.from_numpy(np.stack([np.asarray(image) for image in images]))
    if pixels.ndim == 3:
        pixels = pixels.unsqueeze(-1)
    # uint8 [0, 255] -> [-1, 1]; the same float operations as converting image by image
    return pixels.permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5).div_(0.5)


def _random_crop_and_flip(pixel_values: torch.Tensor, padding: int) -> torch.Tensor:
    """CIFAR-style augmentation, per example: zero-pad, crop back to size at a random offset, maybe flip."""
    _, _, height, width = pixel_values.shape
    padded = torch.nn.functional.pad(pixel_values, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (len(pixel_values), 2))
    flips = torch.rand(len(pixel_values)) < 0.5
    out = torch.empty_like(pixel_values)
    for i, ((top, left), flip) in enumerate(zip(offsets.tolist(), flips.tolist())):
        crop = padded[i, :, top : top + height, left : left + width]
        out[i] = crop.flip(-1) if flip else crop
    return out


def load_run_datasets(data_args, seed: int = 0) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Load the pool and evaluation splits described by a `DataArguments`, subsampled when asked.

    Subsets are seeded random draws kept in dataset order, so the same arguments always give the same
    examples (and the same fingerprint, which a resumed run checks).

    Args:
        data_args (`DataArguments`): dataset name, splits, columns and size limits.
        seed (`int`): Seed of the subsampling.

    Returns:
        `(pool, eval_dataset)`; `eval_dataset` is `None` when `data_args.eval_split` is unset.
    """
    load = functools.partial(
        load_image_dataset,
        data_args.dataset_name,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        config_name=data_args.dataset_config_name,
        revision=data_args.dataset_revision,
    )
    pool = _subsample(load(data_args.train_split), data_args.max_pool_size, seed)
    eval_dataset = None
    if data_args.eval_split:
        eval_dataset = _subsample(load(data_args.eval_split), data_args.max_eval_samples, seed + 1)
    return pool, eval_dataset


def _subsample(dataset: datasets.Dataset, size: int | None, seed: int) -> datasets.Dataset:
    if size is None or size >= len(dataset):
        return dataset
    rows = np.sort(np.random.default_rng(seed).choice(len(dataset), size=size, replace=False))
    return dataset.select(rows)
