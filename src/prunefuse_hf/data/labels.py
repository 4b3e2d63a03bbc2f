"""Class names and label arrays of a dataset: from a `ClassLabel`, an image folder or `class_names`; labels
checked against the class count; evaluation labels matched to the pool's by name."""

from __future__ import annotations

import datasets
import numpy as np
from transformers.utils import logging

logger = logging.get_logger(__name__)

_NAME_DTYPES = ("string", "large_string")


def encode_label_names(
    dataset: datasets.Dataset, label_column: str, given: list[str] | None, what: str = "the pool"
) -> datasets.Dataset:
    """
    A label column of class names (as a `metadata.csv` or `metadata.jsonl` holds them) as class ids: a
    `ClassLabel` with `given` (the run's `class_names`, in their order) or, without them, the sorted names.

    Args:
        dataset (`datasets.Dataset`): The pool or an evaluation set.
        label_column (`str`): Column holding the labels.
        given (`list[str]`, *optional*): The class names of the run.
        what (`str`, *optional*): The dataset, as messages name it.

    Returns:
        `datasets.Dataset`: `dataset` itself when its labels are not strings, else a copy with a `ClassLabel`;
        blank labels (`""`, spaces) become `None` (a row without a label), as `None` is.

    Raises:
        `ValueError`: a name that is not in `given` (the unknown names and `given` are listed).

    Example:

    ```python
    >>> rows = datasets.Dataset.from_dict({"label": ["dog", "cat", "dog"]})
    >>> encode_label_names(rows, "label", ["dog", "cat"])["label"]
    [0, 1, 0]
    ```
    """
    feature = dataset.features.get(label_column)
    if not isinstance(feature, datasets.Value) or feature.dtype not in _NAME_DTYPES:
        return dataset
    values = dataset.with_format("arrow")[label_column]
    found = values.unique().to_pylist()
    if any(v is not None and not v.strip() for v in found):
        # A blank label ("", spaces) marks a row without a label, as None does (datasets would refuse the cast).
        dataset = dataset.map(
            lambda labels: {label_column: [v if v is None or v.strip() else None for v in labels]},
            input_columns=[label_column],  # no image is read
            batched=True,
            desc="Marking blank labels as unlabeled",
        )
    present = sorted({v for v in found if v is not None and v.strip()})
    if not present and given is None:
        raise ValueError(
            f"{what.capitalize()}'s '{label_column}' column holds no class name (every label is blank), so the class "
            "names are unknown. Set class_names in the recipe (or PruneFuseConfig)."
        )
    if given is not None:
        unknown = [name for name in present if name not in given]
        if unknown:
            raise ValueError(
                f"{what.capitalize()}'s '{label_column}' column holds class names that are not in class_names: "
                f"{unknown[:10]}. class_names: {list(given)}. Add them to class_names, or fix the labels."
            )
        names, source = list(given), "class_names"
    else:
        names, source = present, "the sorted names found (set class_names to choose the order)"
    logger.info(
        f"{what.capitalize()}'s '{label_column}' column holds class names; class ids follow {source}: {names}"
    )
    return dataset.cast_column(label_column, datasets.ClassLabel(names=names))


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


def resolve_class_names(
    dataset: datasets.Dataset, label_column: str | None, given: list[str] | None
) -> list[str]:
    """
    The class names of a run: the label column's `ClassLabel` names, else the names the run was given, else
    `["0", ..., str(max_id)]` from the ids (see [`class_names`]).

    Args:
        dataset (`datasets.Dataset`): The pool.
        label_column (`str`, *optional*): Column holding the class ids; `None` when the pool has no labels.
        given (`list[str]`, *optional*): `class_names` of the run's config.

    Returns:
        `list[str]`: the class names, in class-id order.

    Raises:
        `ValueError`: neither a label column nor `given` names the classes, or `given` differs from the
            `ClassLabel` names.

    Example:

    ```python
    >>> import datasets
    >>> unlabeled_pool = datasets.Dataset.from_dict({"image": ["a.png", "b.png"]})
    >>> resolve_class_names(unlabeled_pool, None, ["cat", "dog"])
    ['cat', 'dog']
    ```
    """
    if label_column is None:
        if given is None:
            raise ValueError(
                "The pool has no label column, so the class names are unknown. Set class_names in the recipe (or "
                "PruneFuseConfig), or give the dataset a label column with a ClassLabel feature "
                "(`dataset.cast_column(..., datasets.ClassLabel(names=[...]))`)."
            )
        return list(given)
    feature = dataset.features.get(label_column)
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        if given is not None and given != names:
            raise ValueError(
                f"class_names {given} differ from the names of the dataset's '{label_column}' ClassLabel {names}; "
                "drop class_names from the recipe (the dataset's names are used) or fix them."
            )
        return names
    if given is not None:
        return list(given)
    return class_names(dataset, label_column)


def label_array(dataset: datasets.Dataset, label_column: str, num_classes: int, what: str) -> np.ndarray:
    """
    The class ids of every row, checked against the number of classes.

    Args:
        dataset (`datasets.Dataset`): The pool or the evaluation set.
        label_column (`str`): Column holding the class ids.
        num_classes (`int`): Number of classes of the run.
        what (`str`): The dataset, as the error names it (`"the pool"`, `"the evaluation set"`).

    Returns:
        `np.ndarray` of shape `(len(dataset),)`, int64: the class ids, -1 where a row has none (-1 or `None`).

    Raises:
        `ValueError`: an id outside `[-1, num_classes)`, naming its row.

    Example:

    ```python
    >>> label_array(datasets.Dataset.from_dict({"label": [1, None, 0]}), "label", 2, "the pool").tolist()
    [1, -1, 0]
    ```
    """
    column = dataset.with_format("arrow")[label_column]
    values = np.asarray(column.fill_null(-1), dtype=np.int64) if len(column) else np.zeros(0, dtype=np.int64)
    bad = np.flatnonzero((values < -1) | (values >= num_classes))
    if bad.size:
        raise ValueError(
            f"{what.capitalize()}'s '{label_column}' column holds class id {int(values[bad[0]])} at row {int(bad[0])} "
            f"({bad.size} rows out of range), but there are {num_classes} classes (ids 0..{num_classes - 1}; -1 or "
            "None mark a row without a label). Fix the labels, or give every class in class_names."
        )
    return values


def align_eval_labels(
    eval_dataset: datasets.Dataset, label_column: str, names: list[str]
) -> datasets.Dataset:
    """
    The evaluation set with the pool's class ids: a `ClassLabel` with other names or another order is mapped by
    class name (an image folder missing a class would otherwise shift every id after it).

    Args:
        eval_dataset (`datasets.Dataset`): The evaluation set.
        label_column (`str`): Column holding the class ids.
        names (`list[str]`): The pool's class names, in id order.

    Returns:
        `datasets.Dataset`: `eval_dataset` itself when its ids already are the pool's (or it has no `ClassLabel`),
        else a copy whose `label_column` is a `ClassLabel` with `names`.

    Raises:
        `ValueError`: the evaluation set has a class the pool does not have (both lists are named).

    Example:

    ```python
    >>> import datasets
    >>> eval_folder_without_cats = datasets.Dataset.from_dict(
    ...     {"label": [0, 1]}, features=datasets.Features({"label": datasets.ClassLabel(names=["dog", "frog"])})
    ... )
    >>> aligned = align_eval_labels(eval_folder_without_cats, "label", ["cat", "dog", "frog"])
    >>> aligned.features["label"].names, list(aligned["label"])
    (['cat', 'dog', 'frog'], [1, 2])
    ```
    """
    feature = eval_dataset.features[label_column]
    if not isinstance(feature, datasets.ClassLabel) or list(feature.names) == names:
        return eval_dataset
    unknown = [name for name in feature.names if name not in names]
    if unknown:
        raise ValueError(
            f"The evaluation set has classes the pool does not have: {unknown}. Pool classes: {names}; evaluation "
            f"classes: {list(feature.names)}. Evaluate on the pool's classes only (drop those rows and classes)."
        )
    # Same names, other ids (e.g. an image folder missing a class): match by name, as the ids would shift.
    return eval_dataset.align_labels_with_mapping(
        {name: i for i, name in enumerate(names)}, label_column
    ).cast_column(label_column, datasets.ClassLabel(names=names))
