"""The forms a dataset comes in, brought to the one form a run reads: a map-style `datasets.Dataset` without a
transform. Forms that hold the same rows are converted (lists of images or of rows, a dict of columns, a
dataset formatted as torch / numpy / pandas); every other form is refused by name, before any work, with the
line that converts it.
"""

from __future__ import annotations

import datasets
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Output formats that only change the type of what a row read returns: the rows are the same.
_PLAIN_FORMATS = (None, "python", "numpy", "np", "torch", "pt", "pandas", "arrow", "pa", "tensorflow", "tf", "jax",
                  "polars")  # fmt: skip


def as_image_dataset(dataset, image_column: str = "image", what: str = "the dataset") -> datasets.Dataset:
    """
    `dataset` as a map-style `datasets.Dataset` whose rows hold the stored images (no transform applied).

    Converted: a `datasets.Dataset` with an output format (`with_format("torch")` ...), which is read unformatted;
    a list of images (PIL images, paths or arrays), a list of row dicts and a dict of columns. Refused by name,
    with the fix: a transformed dataset (`with_transform` / `set_transform`: the run preprocesses with its own
    image processor, saved with the model for `pipeline()`), a `DatasetDict` (pass one split), a streamed
    `IterableDataset`, a pandas `DataFrame`, a `torch.utils.data.Dataset` and anything else.

    Args:
        dataset: What the user passed.
        image_column (`str`, *optional*, defaults to `"image"`): The image column (the column of a list of images).
        what (`str`, *optional*): The dataset, as errors name it (`"the pool"`, `"the evaluation set"`).

    Returns:
        `datasets.Dataset`: the rows, unformatted.

    Raises:
        `ValueError`: a form that is not converted (the message names it and the line that converts it).

    Example:

    ```python
    >>> from PIL import Image
    >>> as_image_dataset([Image.new("RGB", (8, 8))] * 2).features
    {'image': Image(mode=None, decode=True)}
    ```
    """
    if isinstance(dataset, datasets.Dataset):
        form = dataset.format
        if form["type"] == "custom":
            transform = form["format_kwargs"].get("transform")
            name = getattr(transform, "__qualname__", None) or type(transform).__name__
            raise ValueError(
                f"{what.capitalize()} has a transform set with `with_transform`/`set_transform` ({name!r}). "
                "PruneFuseTrainer preprocesses the images itself, with the run's image processor (saved with the "
                "model, so that pipeline() preprocesses the same way); a transform's output is not used. Pass the "
                "dataset without it: `dataset.with_format(None)` (the stored images), and set `augment: true` "
                "(random crop and flip) for training augmentation."
            )
        if form["type"] not in _PLAIN_FORMATS:
            raise ValueError(
                f"{what.capitalize()} has the output format {form['type']!r}; pass `dataset.with_format(None)`."
            )
        if form["type"] is None:
            return dataset
        # Only the type of what a read returns changes: the stored rows are read unformatted, and keep the
        # fingerprint (the run state, the pixel cache and a pushed subset are keyed by it).
        plain = dataset.with_format(None)
        plain._fingerprint = dataset._fingerprint
        return plain
    fixes = {
        datasets.DatasetDict: lambda d: (
            f"a DatasetDict with splits {list(d)}",
            f"pass one split, e.g. `dataset[{next(iter(d), 'train')!r}]`",
        ),
        datasets.IterableDatasetDict: lambda d: (
            f"a streamed IterableDatasetDict with splits {list(d)}",
            "load it without `streaming=True`, or materialize one split: "
            "`datasets.Dataset.from_generator(lambda: (yield from split), features=split.features)`",
        ),
        datasets.IterableDataset: lambda d: (
            "a streamed IterableDataset (no length, no random access: a run scores and selects from every row)",
            "load it without `streaming=True`, or materialize it: "
            "`datasets.Dataset.from_generator(lambda: (yield from dataset), features=dataset.features)`",
        ),
    }
    for kind, describe in fixes.items():
        if isinstance(dataset, kind):
            form, fix = describe(dataset)
            raise ValueError(f"{what.capitalize()} is {form}; {fix}.")
    if (
        isinstance(dataset, dict)
        and dataset
        and all(isinstance(v, datasets.Dataset) for v in dataset.values())
    ):
        raise ValueError(
            f"{what.capitalize()} is a dict of datasets {list(dataset)}; pass one dataset here (e.g. "
            f"`dataset[{next(iter(dataset))!r}]`), and evaluate several with `trainer.evaluate(eval_dataset={{...}})`."
        )
    if isinstance(dataset, dict) and dataset and all(isinstance(v, (list, tuple)) for v in dataset.values()):
        return _from_rows(datasets.Dataset.from_dict, {k: list(v) for k, v in dataset.items()}, what)
    if isinstance(dataset, (list, tuple)) and dataset:
        if all(isinstance(row, dict) for row in dataset):
            return _from_rows(datasets.Dataset.from_list, list(dataset), what)
        return _from_rows(datasets.Dataset.from_dict, {image_column: list(dataset)}, what, image_column)
    name = f"{type(dataset).__module__}.{type(dataset).__qualname__}"
    if type(dataset).__name__ == "DataFrame":
        fix = (
            "convert it with `datasets.Dataset.from_dict(df.to_dict('list'))` (PIL images or file paths in the image "
            f"column, then `.cast_column({image_column!r}, datasets.Image())` for paths)"
        )
    elif (
        hasattr(dataset, "__getitem__")
        and hasattr(dataset, "__len__")
        and not isinstance(dataset, (str, bytes))
    ):
        fix = (
            "convert it to a datasets.Dataset, e.g. for (image, label) pairs: `datasets.Dataset.from_list("
            f"[{{{image_column!r}: image, 'label': label}} for image, label in dataset])`"
        )
    elif isinstance(dataset, (str, bytes)) or hasattr(dataset, "__fspath__"):
        fix = "load it first: `prunefuse_hf.load_image_dataset(path_or_hub_id, split)`"
    else:
        fix = "pass a datasets.Dataset with an image column (or a DataPool of one)"
    raise ValueError(f"{what.capitalize()} is a {name}, which a run cannot read; {fix}.")


def _from_rows(build, rows, what: str, image_column: str | None = None) -> datasets.Dataset:
    try:
        dataset = build(rows)
    except (
        TypeError,
        ValueError,
    ) as error:  # pyarrow's ArrowInvalid / ArrowTypeError are ValueError / TypeError
        raise ValueError(
            f"{what.capitalize()} could not be turned into a datasets.Dataset ({error}); pass a datasets.Dataset "
            "with an image column."
        ) from error
    column = dataset.features.get(image_column) if image_column else None
    if image_column and isinstance(column, datasets.Value) and column.dtype == "string":
        dataset = dataset.cast_column(image_column, datasets.Image())  # a list of file paths
    logger.info(f"{what.capitalize()} was converted to a datasets.Dataset of {len(dataset)} rows.")
    return dataset
