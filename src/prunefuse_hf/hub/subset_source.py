"""The source a subset was selected from: the run's pool rebuilt from the recorded source (as the run read it: image
classification's loader, or the task's own for object detection and semantic segmentation), and the check that a
pool is the one the subset was selected from."""

from __future__ import annotations

from types import SimpleNamespace

import datasets

from ..arguments import DataArguments
from ..data.loading import load_image_dataset, subsample


class SubsetMismatchError(ValueError):
    """The dataset given to rebuild a subset is not the one the subset was selected from."""


def rebuild_subset_pool(metadata: dict, verify: bool = True) -> datasets.Dataset:
    """
    Load the recorded source at its recorded revision and redo the run's pool draw.

    The source is read as the run read it: an image-classification pool with
    [`~prunefuse_hf.data.load_image_dataset`], an object-detection or semantic-segmentation pool with its task's
    loader (`Task.load_pool_split`: a saved or Hub dataset, a COCO folder, a mask folder, or the task's built-in
    synthetic pool, redrawn with the run's seed).

    Args:
        metadata (`dict`): A subset's record (see [`subset_metadata`]).
        verify (`bool`, *optional*, defaults to `True`): Also check the pool's fingerprint.

    Returns:
        `datasets.Dataset`: the pool the run selected from.

    Raises:
        `SubsetMismatchError`: the rebuilt pool differs from the recorded one.
        `FileNotFoundError`: the source cannot be found (a local folder that is not here, an unreachable Hub).

    Example:

    ```python
    >>> import json
    >>> from pathlib import Path
    >>> metadata = json.loads(Path("subset/prunefuse_subset.json").read_text())
    >>> len(rebuild_subset_pool(metadata)) == metadata["pool"]["num_examples"]
    True
    ```
    """
    source = metadata["source"]
    if (metadata.get("task") or "image-classification") != "image-classification":
        dataset = _task_pool_split(metadata)
    else:
        # Loaded as the run loaded its pool (no label check: a pool labeled by annotators has no label column).
        dataset = load_image_dataset(
            source["dataset_name"],
            source.get("split") or "train",
            image_column=source.get("image_column") or "image",
            label_column=None,
            config_name=source.get("config_name"),
            revision=source.get("revision"),
        )
    return pool_from_source(dataset, metadata, verify=verify)


def check_pool(pool: datasets.Dataset, metadata: dict, verify: bool = True) -> None:
    """
    Check that `pool` is the pool a subset was selected from.

    Args:
        pool (`datasets.Dataset`): The candidate pool.
        metadata (`dict`): The subset's record (see [`subset_metadata`]).
        verify (`bool`, *optional*, defaults to `True`): Also compare the fingerprint (the size always is).

    Raises:
        `SubsetMismatchError`: the size or the fingerprint differs (the message says how to fix it).

    Example:

    ```python
    >>> check_pool(pool, subset_metadata("runs/fashion-mnist-resnet/prunefuse"))  # silent when it matches
    ```
    """
    expected = metadata["pool"]
    if len(pool) != expected["num_examples"]:
        raise SubsetMismatchError(
            f"The dataset has {len(pool)} rows but the subset was selected from a pool of {expected['num_examples']} "
            f"({describe_source(metadata)}). Pass the same dataset, split and revision."
        )
    if verify and pool._fingerprint != expected["fingerprint"]:
        raise SubsetMismatchError(
            f"The dataset's fingerprint {pool._fingerprint!r} differs from the pool the subset was selected from "
            f"({expected['fingerprint']!r}, {describe_source(metadata)}): it holds other data or was transformed. Pass the "
            "same dataset, split and revision, or `verify=False` if you know the rows are the same."
        )


def _task_pool_split(metadata: dict) -> datasets.Dataset:
    """The pool split of a detection or segmentation run, read by its task's loader with the recorded settings."""
    # Imported only here: a classification subset is pushed and loaded without torch.
    from ..tasks import get_task

    task = get_task(metadata["task"])
    source, pool = metadata["source"], metadata["pool"]
    data_args = DataArguments(dataset_name=source["dataset_name"], annotations_file=source.get("annotations_file"),
                              dataset_config_name=source.get("config_name"), dataset_revision=source.get("revision"),
                              train_split=source.get("split") or "train", max_pool_size=pool.get("max_pool_size"))  # fmt: skip
    # The run's settings that `load_split` reads, by field name (a subset written before they were recorded: the
    # PruneFuseConfig defaults, which its run had).
    settings = SimpleNamespace(
        seed=pool["seed"],
        image_column=source.get("image_column") or "image",
        label_column=source.get("label_column") or "label",
        objects_column=source.get("objects_column") or "objects",
        bbox_format=source.get("bbox_format") or "coco",
        class_names=metadata.get("class_names"),
    )
    return task.load_pool_split(data_args, settings)


def pool_from_source(dataset: datasets.Dataset, metadata: dict, verify: bool) -> datasets.Dataset:
    """The run's pool from its whole source split (the recorded `max_pool_size` draw redone) or from the pool itself,
    checked with [`check_pool`]."""
    pool_info = metadata["pool"]
    size = pool_info.get("max_pool_size")
    if size and len(dataset) > size and len(dataset) != pool_info["num_examples"]:
        dataset = subsample(dataset, size, pool_info["seed"])
    check_pool(dataset, metadata, verify=verify)
    return dataset


def describe_source(metadata: dict) -> str:
    """The source of a subset's record as messages name it (dataset, split, config, revision, the pool's draw)."""
    source = metadata.get("source") or {}
    if not source.get("dataset_name"):
        return "source not recorded"
    parts = [source["dataset_name"], f"split {source.get('split')}"]
    if source.get("config_name"):
        parts.append(f"config {source['config_name']}")
    if source.get("revision"):
        parts.append(f"revision {source['revision']}")
    if metadata["pool"].get("max_pool_size"):
        parts.append(f"max_pool_size {metadata['pool']['max_pool_size']}, seed {metadata['pool']['seed']}")
    return ", ".join(parts)
