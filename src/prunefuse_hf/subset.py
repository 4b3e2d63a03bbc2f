"""The selected subset as a dataset: what a run selected, from what, and how to rebuild it.

A subset folder (and the Hub dataset repo pushed from it) holds:

- `selection.parquet`: `pool_index`, `round`, `score`, `strategy` (+ `source_index` when the source was
  rebuilt at save time), the run's `selection.parquet` plus the source rows;
- `prunefuse_subset.json`: the source dataset (id, config, split, revision, columns), the pool's size and
  fingerprint, and how the run drew the pool from the source (`max_pool_size`, `seed`);
- `README.md`: a dataset card whose `configs` make `datasets.load_dataset(repo)` read the selection;
- optionally `examples/`: the selected images and labels themselves (config `examples`).

Pool indices are rows of the pool the run selected from, which is the source split itself or a seeded
random draw of `max_pool_size` rows of it (see `data.load_run_datasets`): `load_subset` redoes that
draw, checks the pool's size and fingerprint, and selects.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from transformers.utils import logging

from .constants import POOL_INDEX, SELECTION_NAME, STATE_NAME
from .data import _subsample, load_image_dataset
from .model_card import CITATION, DEFAULT_ENDPOINT, _count, redact_secrets, run_data_arguments

logger = logging.get_logger(__name__)

SUBSET_METADATA_NAME = "prunefuse_subset.json"
SUBSET_FORMAT_VERSION = 1
EXAMPLES_DIR = "examples"
SOURCE_INDEX = "source_index"
DATASET_CARD_TEMPLATE = "dataset_card.md"


class SubsetMismatchError(ValueError):
    """The dataset given to rebuild a subset is not the one the subset was selected from."""


def subset_metadata(run_dir: str | os.PathLike, progress: dict | None = None) -> dict:
    """What `prunefuse_subset.json` records for a run: the source, the pool, the run's selection settings."""
    run_dir = Path(run_dir)
    if progress is None:
        with open(run_dir / STATE_NAME) as f:
            progress = json.load(f)
    data = run_data_arguments(redact_secrets(progress.get("recipe")))
    config, pool = progress["config"], progress["pool"]
    source = None
    if data is not None:
        source = {
            "dataset_name": data["dataset_name"],
            "config_name": data["dataset_config_name"],
            "split": data["train_split"],
            "revision": data["dataset_revision"],
            "image_column": data["image_column"],
            "label_column": data["label_column"],
        }
    return {
        "format_version": SUBSET_FORMAT_VERSION,
        "source": source,
        "pool": {
            "num_examples": pool["num_examples"],
            "fingerprint": pool["fingerprint"],
            "max_pool_size": data["max_pool_size"] if data else None,
            "seed": config.get("seed"),
        },
        "run": {
            k: config.get(k)
            for k in ("strategy", "pruning_ratio", "initial_labeled_size", "query_size", "num_rounds")
        },
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
    endpoint: str = DEFAULT_ENDPOINT,
) -> Path:
    """
    Write a run's selected subset (selection, source record, dataset card) to `save_directory`.

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
            (`examples/`, config `examples`). Needs the pool.
        endpoint (`str`, *optional*): Hub address used in the card's links.

    Returns:
        `Path`: `save_directory`.

    Raises:
        `SubsetMismatchError`: `pool` is not the pool the run selected from.
    """
    run_dir, save_directory = Path(run_dir), Path(save_directory)
    metadata = subset_metadata(run_dir)
    table = pq.read_table(run_dir / SELECTION_NAME)
    rebuilt = False
    if pool is None and (rebuild_pool or include_examples) and metadata["source"] is not None:
        try:
            pool, rebuilt = rebuild_subset_pool(metadata), True
        except (OSError, ValueError) as error:
            if include_examples:
                raise
            logger.warning(
                "Could not rebuild the pool from %s (%s); saving the indices only.", metadata["source"], error
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
        examples = _with_embedded_files(pool.select(indices))
        (save_directory / EXAMPLES_DIR).mkdir(exist_ok=True)
        examples.to_parquet(str(save_directory / EXAMPLES_DIR / "train-00000-of-00001.parquet"))
    card = render_dataset_card(
        metadata,
        table,
        repo_id=repo_id,
        model_repo_id=model_repo_id,
        has_examples=include_examples,
        endpoint=endpoint,
    )
    (save_directory / "README.md").write_text(card)
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
    Rebuild the exact examples a PruneFuse run selected.

    Args:
        repo_id_or_path (`str` or `os.PathLike`): A subset dataset repo on the Hub, or a local subset folder
            (from [`save_subset`]).
        source (`datasets.Dataset` or `str`, *optional*): The data to select from: the pool itself or the
            full source split (the run's `max_pool_size` draw is redone), as a `Dataset` or as a name/path for
            [`~prunefuse_hf.data.load_image_dataset`] (the recorded split is used). Defaults to the recorded
            source, e.g. the built-in `fashion_mnist` or a Hub dataset at its recorded revision.
        revision (`str`, *optional*): Revision of the subset repo.
        verify (`bool`, *optional*, defaults to `True`): Refuse a pool whose fingerprint differs from the
            recorded one. The size is always checked.
        token (`str` or `bool`, *optional*): Hub token for a private subset repo.

    Returns:
        `datasets.Dataset`: the selected rows of the source, in selection order (round, then pool index),
        with `pool_index` and `round` columns added.

    Raises:
        `SubsetMismatchError`: the source is not the one the subset was selected from.

    Example:

    ```python
    >>> import prunefuse_hf
    >>> subset = prunefuse_hf.load_subset("my-org/fashion-mnist-prunefuse-subset")
    >>> subset.num_rows, subset.column_names
    (5000, ['image', 'label', 'pool_index', 'round'])
    ```
    """
    folder = _subset_folder(repo_id_or_path, revision=revision, token=token)
    metadata = json.loads((folder / SUBSET_METADATA_NAME).read_text())
    selection = pq.read_table(folder / SELECTION_NAME).to_pydict()
    recorded = metadata.get("source")
    if source is None or isinstance(source, (str, os.PathLike)):
        if recorded is None and source is None:
            raise ValueError(
                f"{repo_id_or_path} does not record its source dataset (the run was started from Python with a "
                "Dataset). Pass the pool it was selected from: load_subset(..., source=dataset)."
            )
        recorded = dict(
            recorded or {}, dataset_name=os.fspath(source) if source is not None else recorded["dataset_name"]
        )
        pool = rebuild_subset_pool({**metadata, "source": recorded}, verify=verify)
    else:
        pool = _pool_from_source(source, metadata, verify=verify)
    subset = pool.select(selection[POOL_INDEX])
    subset = subset.add_column(POOL_INDEX, selection[POOL_INDEX]).add_column("round", selection["round"])
    return subset


def rebuild_subset_pool(metadata: dict, verify: bool = True) -> datasets.Dataset:
    """Load the recorded source and redo the run's pool draw; raises `SubsetMismatchError` when it differs."""
    source = metadata["source"]
    dataset = load_image_dataset(
        source["dataset_name"],
        source.get("split") or "train",
        image_column=source.get("image_column") or "image",
        label_column=source.get("label_column"),
        config_name=source.get("config_name"),
        revision=source.get("revision"),
    )
    return _pool_from_source(dataset, metadata, verify=verify)


def check_pool(pool: datasets.Dataset, metadata: dict, verify: bool = True) -> None:
    """Raise `SubsetMismatchError` unless `pool` has the recorded size (and fingerprint, with `verify`)."""
    expected = metadata["pool"]
    if len(pool) != expected["num_examples"]:
        raise SubsetMismatchError(
            f"The dataset has {len(pool)} rows but the subset was selected from a pool of {expected['num_examples']} "
            f"({_describe(metadata)}). Pass the same dataset, split and revision."
        )
    if verify and pool._fingerprint != expected["fingerprint"]:
        raise SubsetMismatchError(
            f"The dataset's fingerprint {pool._fingerprint!r} differs from the pool the subset was selected from "
            f"({expected['fingerprint']!r}, {_describe(metadata)}): it holds other data or was transformed. Pass the "
            "same dataset, split and revision, or `verify=False` if you know the rows are the same."
        )


def _pool_from_source(dataset: datasets.Dataset, metadata: dict, verify: bool) -> datasets.Dataset:
    pool_info = metadata["pool"]
    size = pool_info.get("max_pool_size")
    if size and len(dataset) > size and len(dataset) != pool_info["num_examples"]:
        dataset = _subsample(dataset, size, pool_info["seed"])
    check_pool(dataset, metadata, verify=verify)
    return dataset


def _describe(metadata: dict) -> str:
    source = metadata.get("source")
    if not source:
        return "source not recorded"
    parts = [source["dataset_name"], f"split {source.get('split')}"]
    if source.get("config_name"):
        parts.append(f"config {source['config_name']}")
    if source.get("revision"):
        parts.append(f"revision {source['revision']}")
    if metadata["pool"].get("max_pool_size"):
        parts.append(f"max_pool_size {metadata['pool']['max_pool_size']}, seed {metadata['pool']['seed']}")
    return ", ".join(parts)


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


def render_dataset_card(
    metadata: dict,
    selection: pa.Table,
    *,
    repo_id: str | None = None,
    model_repo_id: str | None = None,
    has_examples: bool = False,
    endpoint: str = DEFAULT_ENDPOINT,
) -> str:
    """The subset's dataset card (YAML front matter with `configs`, and markdown)."""
    import re

    import jinja2
    from huggingface_hub import DatasetCardData

    from .model_card import FASHION_MNIST, FASHION_MNIST_HUB_ID, TAGS, _template, is_hub_id

    source = metadata.get("source") or {}
    name = source.get("dataset_name")
    source_hub_id = FASHION_MNIST_HUB_ID if name == FASHION_MNIST else name if is_hub_id(name) else None
    configs = [
        {
            "config_name": "default",
            "data_files": [{"split": "train", "path": SELECTION_NAME}],
            "default": True,
        }
    ]
    if has_examples:
        configs.append(
            {
                "config_name": EXAMPLES_DIR,
                "data_files": [{"split": "train", "path": f"{EXAMPLES_DIR}/*.parquet"}],
            }
        )
    card_data = DatasetCardData(
        pretty_name=f"PruneFuse subset of {name}" if name else "PruneFuse subset",
        task_categories=["image-classification"],
        tags=[t for t in TAGS if t != "image-classification"],
        source_datasets=[source_hub_id] if source_hub_id else None,
        configs=configs,
    )
    rows = selection.to_pydict()
    counts = Counter(rows["round"])
    strategies = dict(zip(rows["round"], rows["strategy"]))
    source_fields = (
        ", ".join(f"{k} `{v}`" for k, v in source.items() if v) if source else "not recorded (pass `source=`)"
    )
    facts = {
        "card_data": card_data.to_yaml(),
        "title": card_data.pretty_name,
        "repo_id": repo_id or "path/to/subset",
        "model_repo_id": model_repo_id,
        "model_repo_url": f"{endpoint}/{model_repo_id}" if model_repo_id else None,
        "num_selected": _count(len(rows["round"])),
        "source_description": f"`{name}` (split `{source.get('split')}`)"
        if name
        else "a dataset given in Python",
        "pool_size": _count(metadata["pool"]["num_examples"]),
        "pool_fingerprint": metadata["pool"]["fingerprint"],
        "max_pool_size": _count(metadata["pool"].get("max_pool_size")),
        "pool_seed": metadata["pool"].get("seed"),
        "strategy": metadata["run"].get("strategy"),
        "num_rounds": metadata["run"].get("num_rounds"),
        "metadata_name": SUBSET_METADATA_NAME,
        "source_fields": source_fields,
        "has_source": bool(source),
        "has_source_index": SOURCE_INDEX in selection.column_names,
        "has_examples": has_examples,
        "rounds": [
            {"round": r, "count": _count(counts[r]), "strategy": strategies[r] or "–"} for r in sorted(counts)
        ],
        "citation": CITATION,
    }
    template = _template(DATASET_CARD_TEMPLATE)
    environment = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    text = environment.from_string(template).render(**facts)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def temporary_subset_folder(run_dir, **kwargs) -> tempfile.TemporaryDirectory:
    """`save_subset` into a new temporary directory (removed when the returned object is cleaned up)."""
    folder = tempfile.TemporaryDirectory(prefix="prunefuse-subset-")
    save_subset(run_dir, folder.name, **kwargs)
    return folder
