"""Simulated annotation: an oracle that reveals the pool's own label column for the queried indices, as one more
source of labels (`oracle:<column>`) that goes through the same label store as people's labels."""

from __future__ import annotations

import datasets
import numpy as np
import pyarrow as pa

from .labels import (
    ClassLookup,
    LabelBatch,
    LabelError,
    check_class_names,
    check_in_pool,
    preview_values,
)


def oracle_labels(
    dataset: datasets.Dataset, label_column: str, pool_indices, class_names: list[str]
) -> LabelBatch:
    """
    Labels of a simulated run: reveal the pool's own label column at the queried indices.

    Args:
        dataset (`datasets.Dataset`):
            The pool (pool index = row).
        label_column (`str`):
            Column holding the true labels (class ids, e.g. a `ClassLabel`, or class names).
        pool_indices (array-like of int):
            The queried pool indices.
        class_names (`list[str]`):
            The run's class names.

    Returns:
        `LabelBatch`: the labels in the order of `pool_indices`, with source `"oracle:<label_column>"`.

    Raises:
        LabelError: `label_column` is missing; a pool index is out of range; the column has no label (None or a
            negative id) or an out-of-range id at a queried pool index.

    Example:

    ```python
    >>> import datasets
    >>> pool_dataset = datasets.Dataset.from_dict({"label": [0, 1, 1, 0]})
    >>> batch = oracle_labels(pool_dataset, "label", [2, 3], class_names=["cat", "dog"])
    >>> batch.source, batch.labels.tolist()
    ('oracle:label', [1, 0])
    ```
    """
    lookup = ClassLookup(check_class_names(class_names))
    name = f"oracle:{label_column}"
    indices = np.asarray(pool_indices, dtype=np.int64).reshape(-1)
    if label_column not in dataset.column_names:
        raise LabelError(
            f"{name}: the pool has no column {label_column!r} (columns: {dataset.column_names}). Name the column "
            "that holds the true labels, or use human annotation."
        )
    check_in_pool(indices, len(dataset), name)
    column = (
        dataset.select_columns([label_column]).select(indices).with_format("arrow")[:].column(label_column)
    )
    if pa.types.is_integer(column.type):
        labels = column.fill_null(-1).to_numpy().astype(np.int64)
        missing = column.is_null().to_numpy(zero_copy_only=False) | (labels < 0)
    elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        values = column.to_pylist()
        missing = np.array([value is None or not value.strip() for value in values], dtype=bool)
        labels = np.array(
            [-1 if gone else lookup.from_text(value.strip(), f"{name}, pool index {i}")
             for i, value, gone in zip(indices.tolist(), values, missing)],
            dtype=np.int64,
        )  # fmt: skip
    else:
        raise LabelError(
            f"{name}: column {label_column!r} has type {column.type}; expected class ids or class names."
        )
    if missing.any():
        raise LabelError(
            f"{name}: the pool's label column has no label for pool index {preview_values(indices[missing])}. An oracle "
            "can only reveal labels that exist: remove these examples from the pool, or use human annotation."
        )
    out_of_range = labels >= len(lookup.names)
    if out_of_range.any():
        j = int(np.flatnonzero(out_of_range)[0])
        lookup.check_id(int(labels[j]), f"{name}, pool index {indices[j]}")
    return LabelBatch(indices, labels, name)
