"""The selected subset as a dataset: what a run selected, from what, with which labels, and how to rebuild it.

A subset folder (and the Hub dataset repo pushed from it) holds:

- `selection.parquet`: the run's selection table (`pool_index`, `round`, `score`, `strategy`, `label`,
  `label_name`, ...), plus `source_index` when the source was rebuilt at save time, and, for a run whose boxes (or
  other annotations) people gave, those annotations in the task's annotation column (e.g. `objects`);
- `prunefuse_subset.json`: the source dataset (id, config, split, the pinned revision, columns), the pool's size
  and fingerprint, how the run drew the pool from the source (`max_pool_size`, `seed`), and the class names;
- `README.md`: a dataset card (rendered by [`~prunefuse_hf.hub.cards`]) whose `configs` make
  `datasets.load_dataset(repo)` read the selection;
- optionally `examples/`: the selected images and labels themselves (config `examples`).

Pool indices are rows of the pool the run selected from, which is the source split itself or a seeded random
draw of `max_pool_size` rows of it (see `data.load_run_datasets`): `load_subset` loads the source at the
recorded revision, redoes that draw, checks the pool's size and fingerprint, and selects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.table import embed_table_storage
from transformers.utils import logging

from ..arguments import run_data_arguments
from ..constants import (
    MODEL_CARD_NAME,
    POOL_INDEX,
    SELECTION_LABEL,
    SELECTION_LABEL_NAME,
    SELECTION_NAME,
    SOURCE_INDEX,
    SUBSET_EXAMPLES_DIR,
    SUBSET_METADATA_NAME,
)
from ..utils.io import redact_secrets
from ..utils.run_directory import RunDirectory
from .card_facts import collect_subset_card_facts
from .cards import render_dataset_card
from .subset_source import (
    check_pool,
    describe_source,
    pool_from_source,
    rebuild_subset_pool,
)

logger = logging.get_logger(__name__)

SUBSET_FORMAT_VERSION = 2


def subset_metadata(run_dir: str | os.PathLike, progress: dict | None = None) -> dict:
    """
    What `prunefuse_subset.json` records for a run.

    Args:
        run_dir (`str` or `os.PathLike`): A run directory with `state.json`.
        progress (`dict`, *optional*): The run's state; read from `state.json` when not given.

    Returns:
        `dict`: `format_version`; `task` (its `pipeline()` name); `source` (`dataset_name`, `config_name`, `split`,
        `revision` (the recipe's `dataset_revision`), `image_column`, `label_column`, `objects_column`, `bbox_format`
        and `annotations_file` (how the task's loader reads the source; see [`rebuild_subset_pool`]),
        `annotation_column` (the column of the boxes people drew in an object-detection run with `annotation: human`,
        else `None`); `dataset_name` is `None` for a run started from Python); `pool` (`num_examples`,
        `fingerprint`, `max_pool_size`, `seed`); `class_names`; `run` (the selection settings).

    Raises:
        `FileNotFoundError`: `progress` is not given and the run has no `state.json`.

    Example:

    ```python
    >>> subset_metadata("runs/fashion-mnist-resnet/prunefuse")["source"]["dataset_name"]
    'fashion_mnist'
    ```
    """
    if progress is None:
        progress = RunDirectory(run_dir).read_state()
    settings, pool = progress["settings"], progress["pool"]
    data = run_data_arguments(redact_secrets(progress.get("recipe")))
    return {
        "format_version": SUBSET_FORMAT_VERSION,
        "task": progress.get("task") or "image-classification",
        "source": {
            "dataset_name": data["dataset_name"] if data else None,
            "config_name": data["dataset_config_name"] if data else None,
            "split": data["train_split"] if data else None,
            "revision": data["dataset_revision"] if data else None,
            "image_column": settings.get("image_column") or "image",
            "label_column": settings.get("label_column") or "label",
            "objects_column": settings.get("objects_column"),
            "bbox_format": settings.get("bbox_format"),
            "annotations_file": data["annotations_file"] if data else None,
            "annotation_column": _people_annotations(progress)[1],
        },
        "pool": {
            "num_examples": pool["num_examples"],
            "fingerprint": pool["fingerprint"],
            "max_pool_size": data["max_pool_size"] if data else None,
            "seed": settings.get("seed"),
        },
        "class_names": progress.get("class_names") or settings.get("class_names"),
        "run": {
            key: settings.get(key)
            for key in (
                "method",
                "strategy",
                "pruning_ratio",
                "initial_labeled_size",
                "query_size",
                "num_rounds",
                "annotation",
            )
        },  # fmt: skip
    }


def save_subset(
    run_dir: str | os.PathLike,
    save_directory: str | os.PathLike,
    *,
    repo_id: str | None = None,
    model_repo_id: str | None = None,
    pool: datasets.Dataset | None = None,
    rebuild_pool: bool = True,
    include_examples: bool = False,
    endpoint: str | None = None,
) -> Path:
    """
    Write a run's selected subset (selection with labels, source record, dataset card) to `save_directory`.

    The run directory is only read.

    Args:
        run_dir (`str` or `os.PathLike`): A run directory with `state.json` and `selection.parquet`.
        save_directory (`str` or `os.PathLike`): Where the subset folder is written (created if needed).
        repo_id (`str`, *optional*): The dataset repo it will be pushed to (for the card's snippets).
        model_repo_id (`str`, *optional*): The model trained on it (linked from the card).
        pool (`datasets.Dataset`, *optional*): The pool the run selected from. When not given and
            `rebuild_pool` is set, it is rebuilt from the recorded source; it must match the run's pool.
        rebuild_pool (`bool`, *optional*, defaults to `True`): Rebuild the pool from the source recorded in
            the run to add `source_index` (and the examples). Skipped with a warning when that fails.
        include_examples (`bool`, *optional*, defaults to `False`): Also write the selected images and labels
            (`examples/`, config `examples`). Needs the pool. Each image carries its label as the run trained on
            it: the pool's own (the boxes or the mask of a simulated detection or segmentation run), else the one
            people gave (a class id in the label column; for object detection the boxes in the run's
            `labeled_objects.parquet`, in the objects column, as `{"bbox", "category"}`, in place of any the pool
            holds). The pool of a detection or segmentation run is rebuilt by its task's loader.
        endpoint (`str`, *optional*): Hub address of the card's links; defaults to
            `huggingface_hub.constants.ENDPOINT`.

    Returns:
        `Path`: `save_directory`.

    Raises:
        `SubsetMismatchError`: `pool` is not the pool the run selected from.
        `ValueError`: `include_examples` without a pool (none given and none recorded).

    Example:

    ```python
    >>> from prunefuse_hf.hub import save_subset
    >>> save_subset("runs/fashion-mnist-resnet/prunefuse", "fmnist-subset", repo_id="me/fmnist-subset")
    PosixPath('fmnist-subset')
    ```
    """
    run_dir, save_directory = Path(run_dir), Path(save_directory)
    progress = RunDirectory(run_dir).read_state()
    metadata = subset_metadata(run_dir, progress)
    table = with_people_annotations(pq.read_table(run_dir / SELECTION_NAME), run_dir, progress)
    rebuilt = False
    if pool is None and (rebuild_pool or include_examples) and metadata["source"]["dataset_name"] is not None:
        try:
            pool, rebuilt = rebuild_subset_pool(metadata), True
        except (OSError, ValueError) as error:
            if include_examples:
                raise
            logger.warning(
                "Could not rebuild the pool from %s (%s); saving the indices only.",
                describe_source(metadata),
                error,
            )
    elif pool is not None:
        check_pool(pool, metadata)
    if include_examples and pool is None:
        raise ValueError("include_examples needs the pool: pass `pool=` (the run has no recorded source).")

    save_directory.mkdir(parents=True, exist_ok=True)
    indices = table.column(POOL_INDEX).to_pylist()
    if rebuilt:
        # The rebuilt pool is the source split or one `select` of it: its indices mapping gives the source rows.
        rows = pool._indices.column(0).to_pylist() if pool._indices is not None else None
        source_rows = [rows[i] for i in indices] if rows is not None else indices
        table = table.append_column(SOURCE_INDEX, pa.array(source_rows, pa.int64()))
    pq.write_table(table, save_directory / SELECTION_NAME)
    metadata["num_selected"] = len(indices)
    (save_directory / SUBSET_METADATA_NAME).write_text(json.dumps(metadata, indent=2) + "\n")
    if include_examples:
        examples = _with_annotations(
            _with_labels(pool.select(indices), table.to_pydict(), metadata), table, metadata
        )
        (save_directory / SUBSET_EXAMPLES_DIR).mkdir(exist_ok=True)
        _with_embedded_files(examples).to_parquet(
            str(save_directory / SUBSET_EXAMPLES_DIR / "train-00000-of-00001.parquet")
        )
    facts = collect_subset_card_facts(metadata, table, repo_id=repo_id, model_repo_id=model_repo_id,
                                      has_examples=include_examples, endpoint=endpoint)  # fmt: skip
    (save_directory / MODEL_CARD_NAME).write_text(render_dataset_card(facts))
    return save_directory


def load_subset(
    repo_id_or_path: str | os.PathLike,
    source: datasets.Dataset | str | None = None,
    *,
    revision: str | None = None,
    verify: bool = True,
    token: str | bool | None = None,
) -> datasets.Dataset:
    """
    Rebuild the exact examples a PruneFuse run selected, with their labels.

    Args:
        repo_id_or_path (`str` or `os.PathLike`): A subset dataset repo on the Hub, or a local subset folder
            (from [`save_subset`]).
        source (`datasets.Dataset` or `str`, *optional*): The data to select from: the pool itself or the
            full source split (the run's `max_pool_size` draw is redone), as a `Dataset` or as a name/path for
            [`~prunefuse_hf.data.load_image_dataset`] (the recorded split and revision are used). Defaults to the
            recorded source, e.g. the built-in `fashion_mnist` or a Hub dataset at its recorded revision.
        revision (`str`, *optional*): Revision of the subset repo.
        verify (`bool`, *optional*, defaults to `True`): Refuse a pool whose fingerprint differs from the
            recorded one. The size is always checked.
        token (`str` or `bool`, *optional*): Hub token for a private subset repo.

    Returns:
        `datasets.Dataset`: the selected rows of the source, in selection order (round, then pool index), with
        `pool_index` and `round` columns added. The label column (the run's `label_column`) holds each example's
        label: the source's, or, where the source has none (a pool labeled by annotators), the one the run
        recorded, as a `ClassLabel` with the run's class names. For an object-detection run whose boxes people
        drew, the run's objects column holds the stored boxes (`{"bbox": COCO pixels, "category": class ids}`,
        `None` for a skipped image), in place of any the source holds: the run trained on them.

    Raises:
        `SubsetMismatchError`: the source is not the one the subset was selected from.
        `ValueError`: the subset records no source and none was given.

    Example:

    ```python
    >>> import prunefuse_hf
    >>> subset = prunefuse_hf.load_subset("my-org/fashion-mnist-prunefuse-subset")
    >>> subset.num_rows, subset.column_names
    (5000, ['image', 'label', 'pool_index', 'round'])
    ```
    """
    folder = _subset_folder(repo_id_or_path, revision=revision, token=token)
    metadata = _read_metadata(folder)
    table = pq.read_table(folder / SELECTION_NAME)
    selection = table.to_pydict()
    recorded = metadata["source"]
    if source is None or isinstance(source, (str, os.PathLike)):
        if recorded["dataset_name"] is None and source is None:
            raise ValueError(
                f"{repo_id_or_path} does not record its source dataset (the run was started from Python with a "
                "Dataset). Pass the pool it was selected from: load_subset(..., source=dataset)."
            )
        if source is not None:
            metadata = {**metadata, "source": {**recorded, "dataset_name": os.fspath(source)}}
        pool = rebuild_subset_pool(metadata, verify=verify)
    else:
        pool = pool_from_source(source, metadata, verify=verify)
    subset = pool.select(selection[POOL_INDEX])
    subset = subset.add_column(POOL_INDEX, selection[POOL_INDEX]).add_column("round", selection["round"])
    return _with_annotations(_with_labels(subset, selection, metadata), table, metadata)


def with_people_annotations(table: pa.Table, run_dir: str | os.PathLike, progress: dict) -> pa.Table:
    """
    The selection table of a run with the annotations people gave, for a task that stores them apart from the class
    labels (object detection's boxes, [`~prunefuse_hf.tasks.DetectionLabelStore`]): one column named as the run's
    annotation column (e.g. `objects`, `{"bbox": COCO pixel boxes, "category": class ids}`), null for a selected
    image with none stored (skipped). Other runs' tables (classification, simulated annotation) are returned as
    they are.

    Args:
        table (`pyarrow.Table`): The run's `selection.parquet`.
        run_dir (`str` or `os.PathLike`): The run directory (its store of people's annotations is read).
        progress (`dict`): The run's state (`state.json`).

    Returns:
        `pyarrow.Table`: `table`, with the annotation column appended for a human run of such a task.

    Raises:
        `ValueError`: the selection table already has a column of that name (the run's annotation column is
            named like a selection column; rename it, e.g. `objects_column: objects`).

    Example:

    ```python
    >>> table = pq.read_table("runs/boxes/selection.parquet")
    >>> with_people_annotations(table, "runs/boxes", RunDirectory("runs/boxes").read_state()).column_names[-1]
    'objects'
    ```
    """
    task, column = _people_annotations(progress)
    if column is None:
        return table
    # The class-id columns are classification's: empty for a task that stores its annotations itself (and a mask
    # column is named `label`, as in the transformers segmentation guide).
    for name in (SELECTION_LABEL, SELECTION_LABEL_NAME):
        if name in table.column_names and table.column(name).null_count == table.num_rows:
            table = table.drop_columns([name])
    if column in table.column_names:
        raise ValueError(f"The run's annotation column {task.annotation_option}: {column!r} has the name of a "
                         f"column of {SELECTION_NAME} ({table.column_names}); the subset cannot hold both. Name it "
                         "differently in the recipe (e.g. objects).")  # fmt: skip
    store = task.label_store(run_dir, progress["class_names"])
    stored = store.labels
    features = datasets.Features({column: store.annotation_feature})
    arrow_type = features.arrow_schema.field(column).type
    values = [stored.get(int(i)) for i in table.column(POOL_INDEX).to_pylist()]
    # Files the store refers to (masks) travel as bytes; the feature is recorded, so that `datasets` reads an image.
    part = embed_table_storage(pa.table({column: pa.array(values, arrow_type)}, schema=features.arrow_schema))
    metadata = {**(table.schema.metadata or {}), **features.arrow_schema.metadata}
    return table.append_column(part.schema.field(column), part.column(column)).replace_schema_metadata(
        metadata
    )


# ----- helpers -----


def _read_metadata(folder: Path) -> dict:
    metadata = json.loads((folder / SUBSET_METADATA_NAME).read_text())
    # Format 1 wrote `source: null` for runs started from Python and no class names.
    metadata["source"] = metadata.get("source") or {"dataset_name": None}
    metadata.setdefault("class_names", None)
    return metadata


def _with_labels(rows: datasets.Dataset, selection: dict, metadata: dict) -> datasets.Dataset:
    """`rows` with the run's labels in the label column where the source has none (annotated pools)."""
    recorded = selection.get(SELECTION_LABEL)
    if (
        metadata["source"].get("annotation_column")
        or recorded is None
        or all(label is None for label in recorded)
    ):
        return rows  # no class ids: a task whose people's annotations are their own column (boxes, masks)
    column = metadata["source"].get("label_column") or "label"
    names = metadata.get("class_names")
    if column not in rows.column_names:
        feature = datasets.ClassLabel(names=names) if names else datasets.Value("int64")
        return rows.add_column(column, [-1 if y is None else y for y in recorded], feature=feature)
    # A partly labeled source: rows without a label (None or -1) take the one the run recorded.
    present = np.asarray(rows.with_format("arrow")[column].fill_null(-1), dtype=np.int64)
    wanted = np.asarray([-1 if y is None else y for y in recorded], dtype=np.int64)
    missing = (present < 0) & (wanted >= 0)
    if not missing.any():
        return rows
    feature = rows.features[column]
    merged = np.where(missing, wanted, present).tolist()
    return (
        rows.remove_columns(column)
        .add_column(column, merged, feature=feature)
        .select_columns(rows.column_names)
    )


def _with_annotations(rows: datasets.Dataset, table: pa.Table, metadata: dict) -> datasets.Dataset:
    """`rows` with the annotations people gave (the selection's annotation column), which the run trained on: they
    replace the source's own (a pool whose boxes the run did not read, e.g. the built-in synthetic pool)."""
    column = metadata["source"].get("annotation_column")
    if not column or column not in table.column_names:
        return rows  # classification, or a simulated run
    feature = datasets.Features.from_arrow_schema(table.select([column]).schema)[column]
    order = rows.column_names if column in rows.column_names else [*rows.column_names, column]
    if column in rows.column_names:
        rows = rows.remove_columns(column)
    return rows.add_column(column, table.column(column).to_pylist(), feature=feature).select_columns(order)


def _people_annotations(progress: dict) -> tuple:
    """(task, annotation column) of a run whose people's annotations the task stores itself (object detection's
    boxes), else (None, None)."""
    if progress["settings"].get("annotation") != "human":
        return None, None
    # Imported only here: pushing or loading a subset reads no model, and the tasks import torch.
    from ..tasks import get_task

    task = get_task(progress.get("task") or "image-classification")
    if task.label_store is None:
        return None, None
    return task, progress["settings"].get(task.annotation_option) or task.columns[-1]


def _subset_folder(repo_id_or_path, revision=None, token=None) -> Path:
    path = Path(os.fspath(repo_id_or_path)).expanduser()
    if path.is_dir():
        if not (path / SUBSET_METADATA_NAME).is_file():
            raise FileNotFoundError(
                f"{path} is not a PruneFuse subset folder ({SUBSET_METADATA_NAME} is missing)."
            )
        return path
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            os.fspath(repo_id_or_path),
            repo_type="dataset",
            revision=revision,
            token=token,
            allow_patterns=[SELECTION_NAME, SUBSET_METADATA_NAME],
        )
    )


def _with_embedded_files(dataset: datasets.Dataset) -> datasets.Dataset:
    # Images stored as paths (image folders) must travel as bytes, as `Dataset.push_to_hub` does.
    from datasets.table import embed_table_storage

    return dataset.with_format("arrow").map(embed_table_storage, batched=True).with_format(None)
