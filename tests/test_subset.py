import gzip
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import make_image_dataset
from prunefuse_hf import load_subset
from prunefuse_hf.arguments import DataArguments
from prunefuse_hf.data import load_image_dataset, load_run_datasets
from prunefuse_hf.pool import DataPool
from prunefuse_hf.subset import SubsetMismatchError, save_subset


def finished_selection(run_dir, pool_dataset, recipe, seed=3):
    """A run directory as far as the subset needs it: state.json and selection.parquet of a real DataPool."""
    pool = DataPool(pool_dataset)
    pool.label_randomly(10, seed=seed, round=1)
    unlabeled = pool.unlabeled_indices
    chosen = unlabeled[::3][:6]
    pool.label(chosen, round=2, scores=np.linspace(1, 0, len(chosen)), strategy="entropy")
    run_dir.mkdir(parents=True)
    pool.save_selection(run_dir / "selection.parquet")
    state = {"config": {"seed": seed, "strategy": "entropy", "pruning_ratio": 0.5, "initial_labeled_size": 10,
                        "query_size": [6], "num_rounds": 1},
             "pool": pool.state_dict(), "recipe": recipe}  # fmt: skip
    (run_dir / "state.json").write_text(json.dumps(state))
    return pool


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("source") / "pool"
    make_image_dataset(num_examples=60, seed=4).save_to_disk(path)
    return path


def test_subset_of_a_subsampled_pool_is_rebuilt_exactly(tmp_path, source_dir):
    recipe = {"dataset_name": str(source_dir), "max_pool_size": 40, "eval_split": None}
    pool_dataset, _ = load_run_datasets(
        DataArguments(**recipe), seed=3
    )  # what `prunefuse-hf run` selects from
    pool = finished_selection(tmp_path / "run", pool_dataset, recipe)
    folder = save_subset(tmp_path / "run", tmp_path / "subset", repo_id="org/subset", include_examples=True)

    subset = load_subset(folder)
    selection = pq.read_table(folder / "selection.parquet").to_pydict()
    assert (
        subset["pool_index"][:] == selection["pool_index"]
        and sorted(selection["pool_index"]) == pool.labeled_indices.tolist()
    )
    expected = pool_dataset.select(selection["pool_index"])
    assert subset["label"][:] == expected["label"][:]
    assert [np.asarray(i).tolist() for i in subset["image"][:]] == [
        np.asarray(i).tolist() for i in expected["image"][:]
    ]
    # source_index: rows of the full source split, which rebuild the same examples without prunefuse.
    from datasets import load_from_disk

    full = load_from_disk(str(source_dir))
    assert full.select(selection["source_index"])["label"][:] == expected["label"][:]
    assert selection["source_index"] != selection["pool_index"]
    metadata = json.loads((folder / "prunefuse_subset.json").read_text())
    assert metadata["pool"] == {
        "num_examples": 40,
        "fingerprint": pool_dataset._fingerprint,
        "max_pool_size": 40,
        "seed": 3,
    }
    card = (folder / "README.md").read_text()
    assert 'load_subset("org/subset")' in card and "config_name: examples" in card and "None" not in card


def test_other_data_is_refused(tmp_path, source_dir):
    recipe = {"dataset_name": str(source_dir)}
    finished_selection(tmp_path / "run", load_image_dataset(str(source_dir)), recipe)
    folder = save_subset(tmp_path / "run", tmp_path / "subset")
    assert len(load_subset(folder)) == 16
    with pytest.raises(
        SubsetMismatchError, match="has 50 rows but the subset was selected from a pool of 60"
    ):
        load_subset(folder, source=make_image_dataset(num_examples=50, seed=4))
    with pytest.raises(SubsetMismatchError, match="fingerprint .* differs .* `verify=False`"):
        load_subset(folder, source=make_image_dataset(num_examples=60, seed=5))
    with pytest.raises(SubsetMismatchError, match="fingerprint"):  # the same rows, transformed
        load_subset(folder, source=load_image_dataset(str(source_dir)).map(lambda x: x))
    assert len(load_subset(folder, source=make_image_dataset(num_examples=60, seed=5), verify=False)) == 16


def test_run_from_python_needs_the_source(tmp_path):
    dataset = make_image_dataset(num_examples=30, seed=1)
    pool = finished_selection(tmp_path / "run", dataset, recipe=None)
    folder = save_subset(tmp_path / "run", tmp_path / "subset")
    with pytest.raises(ValueError, match="does not record its source dataset"):
        load_subset(folder)
    subset = load_subset(folder, source=dataset)
    assert sorted(subset["pool_index"][:]) == pool.labeled_indices.tolist()
    assert "source_index" not in pq.read_table(folder / "selection.parquet").column_names


def _write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_built_in_fashion_mnist_source(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    files = tmp_path / "fashion"
    files.mkdir()
    for prefix, n in (("train", 50), ("t10k", 10)):
        _write_idx(files / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)), 2051)
        _write_idx(files / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n), 2049)
    monkeypatch.setenv("PRUNEFUSE_FASHION_MNIST_DIR", str(files))
    recipe = {"dataset_name": "fashion_mnist", "max_pool_size": 30}
    pool_dataset, _ = load_run_datasets(DataArguments(**recipe), seed=3)
    finished_selection(tmp_path / "run", pool_dataset, recipe)
    folder = save_subset(tmp_path / "run", tmp_path / "subset")
    subset = load_subset(folder)
    selection = pq.read_table(folder / "selection.parquet").to_pydict()
    assert subset["label"][:] == pool_dataset.select(selection["pool_index"])["label"][:]
    assert "zalando-datasets/fashion_mnist" in (folder / "README.md").read_text()
