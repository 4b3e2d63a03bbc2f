"""The data a run is given, checked and prepared before any work: the pool (`prepare_pool`), the seed labels, and
the datasets the evaluation set, `evaluate()` and `predict()` are given, as the run's model reads them.

Whatever a user passes (a raw image dataset of any split, a `DataPool`, a list of images, or the prepared
`PixelDataset`) goes through the run's own preprocessing: the same image processor, the same pixel cache and, in
`_prepare_inputs`, the same normalization as the run's training and evaluation. Labels are matched to the run's
classes by name, as for the evaluation set given at construction.
"""

from __future__ import annotations

import numpy as np

from ..annotation.labels import LabelBatch
from ..annotation.readers import read_labels
from ..data.forms import as_image_dataset
from ..data.labels import align_eval_labels, encode_label_names, label_array, resolve_class_names
from ..data.loading import validate_image_dataset
from ..data.pixel_dataset import PixelDataset
from ..data.pool import DataPool
from ..data.preprocessing import ImagePreprocessor


def prepare_eval_dataset(
    dataset,
    preprocessor: ImagePreprocessor,
    args,
    class_names: list[str],
    *,
    what: str = "the evaluation set",
    input_shape: tuple | None = None,
    allow_unlabeled: bool = False,
    create_cache: bool = True,
) -> tuple[PixelDataset, object]:
    """
    `dataset` as a [`PixelDataset`] of the run's pixels with its class ids.

    Args:
        dataset: A `datasets.Dataset` with `args.image_column` (and `args.label_column` when labeled), a
            [`DataPool`], a `PixelDataset` (returned as it is) or any form [`as_image_dataset`] converts.
        preprocessor ([`ImagePreprocessor`]): The run's preprocessing.
        args ([`PruneFuseConfig`]): `image_column`, `label_column`, `cache_pixels`, `pixel_cache_format`,
            `pixel_cache_max_size`, `dataset_num_proc`, `validate_images`.
        class_names (`list[str]`): The run's classes; a `ClassLabel` is matched to them by name.
        what (`str`, *optional*): The dataset, as errors name it.
        input_shape (`tuple`, *optional*): `(C, H, W)` of the run's pixels, checked against a `PixelDataset`.
        allow_unlabeled (`bool`, *optional*): Accept a dataset without labels (no label column, or every label
            -1 / `None`, as unlabeled test splits store them): its rows then have no labels, so `predict()` returns
            `label_ids=None` as the stock `Trainer` does.
        create_cache (`bool`, *optional*, defaults to `True`): Whether a pixel cache may be built for `dataset`.
            `False` (a dataset given to `evaluate()` / `predict()` outside `pixel_cache_scope`) reads an existing
            cache of it, else decodes its images as batches are read and leaves nothing on disk.

    Returns:
        `tuple`: the `PixelDataset`, and the raw `datasets.Dataset` it was built from (`None` for a
        `PixelDataset`).

    Raises:
        `ValueError`: a missing column, a form that is not read (named, with the fix), labels out of range or of
            classes the run does not have, some rows without a label, pixels of another shape than the run's.
    """
    if isinstance(dataset, PixelDataset):
        shape = tuple(dataset.batch([0]).shape[1:]) if len(dataset) else None
        if input_shape is not None and shape is not None and shape != tuple(input_shape):
            raise ValueError(
                f"{what.capitalize()} is a PixelDataset of {shape} pixels but the run's model reads {tuple(input_shape)}; "
                "pass the raw image dataset instead (it is preprocessed with the run's image processor)."
            )
        return dataset, None
    dataset, labels = labeled_rows(dataset, args, class_names, what=what, allow_unlabeled=allow_unlabeled)
    pixels = preprocessor.pixel_dataset(
        dataset, **pixel_cache_options(args), create_cache=create_cache, desc=f"Decoding {what}"
    )
    return PixelDataset(pixels, np.arange(len(dataset)), labels), dataset


def pixel_cache_options(args) -> dict:
    """The keyword arguments of [`ImagePreprocessor.pixel_dataset`] a run's config sets."""
    return {"cache": args.cache_pixels, "cache_format": args.pixel_cache_format, "num_proc": args.dataset_num_proc,
            "validate": args.validate_images, "max_size": args.pixel_cache_max_size}  # fmt: skip


def labeled_rows(dataset, args, class_names: list[str], *, what: str, allow_unlabeled: bool = False):
    """
    The checks of [`prepare_eval_dataset`] that read no image: `dataset` as a `datasets.Dataset` with the run's
    class ids, and its labels (`None` when it has none and `allow_unlabeled`).
    """
    if isinstance(dataset, DataPool):
        dataset = dataset.dataset
    dataset = as_image_dataset(dataset, args.image_column, what)
    label_column = args.label_column
    labeled = label_column in dataset.column_names
    if labeled:
        dataset = encode_label_names(dataset, label_column, class_names, what)
    validate_image_dataset(dataset, args.image_column, label_column if labeled else None)
    labels = None
    if labeled:
        dataset = align_eval_labels(dataset, label_column, class_names)
        labels = label_array(dataset, label_column, len(class_names), what)
        missing = labels < 0
        if allow_unlabeled and missing.all():
            labels = None
        elif missing.any():
            raise ValueError(
                f"{what.capitalize()} has {int(missing.sum())} rows without a label (-1 or None in '{label_column}'), "
                f"e.g. row {int(np.flatnonzero(missing)[0])}: every evaluated example needs its class. Drop those "
                f"rows{', or drop the label column to predict without labels' if allow_unlabeled else ''}."
            )
    elif not allow_unlabeled:
        raise ValueError(
            f"{what.capitalize()} has no column {label_column!r} (its columns are {dataset.column_names}); evaluation "
            "needs the class of every example. Set `label_column`, or use `trainer.predict(dataset)` for predictions "
            "without labels."
        )
    return dataset, labels


def prepare_pool(train_dataset, args) -> tuple[DataPool, list[str], np.ndarray]:
    """
    The pool a run is given, checked before anything is built or written: any dataset form brought to a map-style
    `datasets.Dataset` (or refused by name), class-name labels encoded, columns and labels validated.

    Args:
        train_dataset (`datasets.Dataset`, [`DataPool`] or another form `as_image_dataset` reads): The pool.
        args ([`PruneFuseConfig`]): The run's settings (`image_column`, `label_column`, `class_names`,
            `annotation`).

    Returns:
        `tuple`: the [`DataPool`], the class names, and the pool's label array (`int64`, `-1` = unlabeled).

    Raises:
        `ValueError`: a form that cannot be used, a missing column, labels out of range, or rows without a label
            in simulation (the message names the row and the fix).
    """
    if train_dataset is None:
        raise ValueError(
            "PruneFuseTrainer needs the pool as `train_dataset` (a datasets.Dataset or a DataPool)."
        )
    if isinstance(train_dataset, DataPool):
        # A DataPool keeps its dataset (its state is tied to it); only a transform or format is taken off.
        train_dataset.dataset = as_image_dataset(train_dataset.dataset, args.image_column, "the pool")
    else:
        train_dataset = DataPool(as_image_dataset(train_dataset, args.image_column, "the pool"))
    pool = train_dataset
    label_column = args.label_column
    human = args.annotation == "human"
    has_labels = label_column in pool.dataset.column_names
    if has_labels:  # class names (a metadata.csv's labels) become ids, in class_names' order when given
        pool.dataset = encode_label_names(pool.dataset, label_column, args.class_names, "the pool")
    validate_image_dataset(pool.dataset, args.image_column, label_column if has_labels or not human else None)
    class_names = resolve_class_names(pool.dataset, label_column if has_labels else None, args.class_names)
    # Simulation reveals this column (the oracle); with human annotation its labeled rows are seed labels.
    pool_labels = np.full(len(pool), -1, dtype=np.int64)
    if has_labels:
        pool_labels = label_array(pool.dataset, label_column, len(class_names), "the pool")
    if not human and (pool_labels < 0).any():
        unlabeled = np.flatnonzero(pool_labels < 0)
        raise ValueError(
            f"The pool has {unlabeled.size} rows without a label (-1 or None in '{label_column}'), e.g. row "
            f"{int(unlabeled[0])}. Simulated annotation reveals the label column, so every row needs one: drop "
            "those rows, or set annotation: human to have them labeled by people."
        )
    return pool, class_names, pool_labels


def seed_labels(args, pool: DataPool, pool_labels: np.ndarray, class_names: list[str]) -> LabelBatch:
    """The labels a run starts with besides the first query: the pool's labeled rows (with human annotation) and
    the `seed_labels` file. Raises `ValueError` when there are none and `initial_labeled_size` is 0."""
    indices = np.flatnonzero(pool_labels >= 0) if args.annotation == "human" else np.zeros(0, np.int64)
    batch = LabelBatch(indices, pool_labels[indices], source=f"dataset:{args.label_column}")
    if args.seed_labels:
        from_file = read_labels(args.seed_labels, class_names, pool_size=len(pool))
        both = np.concatenate([batch.pool_indices, from_file.pool_indices])
        labels = np.concatenate([batch.labels, from_file.labels])
        unique, first = np.unique(both, return_index=True)
        batch = LabelBatch(
            unique, labels[first], source=from_file.source if not len(indices) else "seed labels"
        )
    if not len(batch) and not args.initial_labeled_size:
        raise ValueError(
            "initial_labeled_size is 0 but there are no seed labels: give seed_labels (a labels file), rows of "
            "the pool that already have a label (with annotation: human), or an initial_labeled_size > 0."
        )
    return batch
