"""The selected subset: saved from a run, rebuilt with its labels from the recorded (pinned) source."""

import gzip
import json
from types import SimpleNamespace

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from huggingface_hub import HfApi

from conftest import detection_items, make_image_dataset
from hub_server import serve_local_hub
from prunefuse_hf import load_subset
from prunefuse_hf.arguments import DataArguments
from prunefuse_hf.data.loading import load_image_dataset, load_run_datasets, subsample
from prunefuse_hf.data.pool import DataPool
from prunefuse_hf.hub.subset import save_subset, subset_metadata
from prunefuse_hf.hub.subset_source import SubsetMismatchError
from prunefuse_hf.tasks import (
    coco_json_from_dataset,
    get_task,
    synthetic_detection_pool,
    synthetic_segmentation_pool,
)

CLASSES = ["circle", "cross", "square", "triangle"]


def finished_selection(run_dir, pool_dataset, recipe, seed=3, labels=None, class_names=None, settings=None):
    """A run directory as far as the subset needs it: the state and selection.parquet of a real DataPool.

    `labels` are the class ids the run learned for every pool row (default: the pool's label column)."""
    if labels is None:
        labels = np.asarray(pool_dataset["label"])
    class_names = class_names or pool_dataset.features["label"].names
    pool = DataPool(pool_dataset)
    pool.label_randomly(10, seed=seed, round=1, labels=labels)
    chosen = pool.unlabeled_indices[::3][:6]
    pool.label(
        chosen, round=2, scores=np.linspace(1, 0, len(chosen)), strategy="entropy", labels=labels[chosen]
    )
    run_dir.mkdir(parents=True)
    pool.save_selection(run_dir / "selection.parquet", class_names=class_names)
    settings = {"method": "prunefuse", "seed": seed, "strategy": "entropy", "pruning_ratio": 0.5,
                "initial_labeled_size": 10, "query_size": [6], "num_rounds": 1, "image_column": "image",
                "label_column": "label", "annotation": "simulated", **(settings or {})}  # fmt: skip
    state = {"version": 2, "settings": settings, "pool": pool.state_dict(), "recipe": recipe,
             "class_names": class_names}  # fmt: skip
    (run_dir / "state.json").write_text(json.dumps(state))
    return pool


def named_dataset(num_examples, seed):
    dataset = make_image_dataset(num_examples=num_examples, seed=seed)
    return dataset.cast_column("label", datasets.ClassLabel(names=CLASSES))


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("source") / "pool"
    named_dataset(60, seed=4).save_to_disk(path)
    return path


def test_subset_of_a_subsampled_pool_is_rebuilt_exactly_with_its_labels(tmp_path, source_dir):
    recipe = {"dataset_name": str(source_dir), "max_pool_size": 40, "eval_split": None}
    # What `prunefuse-hf run` selects from.
    pool_dataset, _ = load_run_datasets(DataArguments(**recipe), seed=3)
    pool = finished_selection(tmp_path / "run", pool_dataset, recipe)
    folder = save_subset(tmp_path / "run", tmp_path / "subset", repo_id="org/subset", include_examples=True)

    subset = load_subset(folder)
    selection = pq.read_table(folder / "selection.parquet").to_pydict()
    assert subset["pool_index"][:] == selection["pool_index"]
    assert sorted(selection["pool_index"]) == pool.labeled_indices.tolist()
    expected = pool_dataset.select(selection["pool_index"])
    assert subset["label"][:] == expected["label"][:] == selection["label"]
    assert selection["label_name"] == [CLASSES[y] for y in selection["label"]]
    assert [np.asarray(i).tolist() for i in subset["image"][:]] == [
        np.asarray(i).tolist() for i in expected["image"][:]
    ]
    # source_index: rows of the full source split, which rebuild the same examples without prunefuse.
    full = datasets.load_from_disk(str(source_dir))
    assert full.select(selection["source_index"])["label"][:] == expected["label"][:]
    assert selection["source_index"] != selection["pool_index"]
    metadata = json.loads((folder / "prunefuse_subset.json").read_text())
    assert metadata["pool"] == {"num_examples": 40, "fingerprint": pool_dataset._fingerprint, "max_pool_size": 40,
                                "seed": 3}  # fmt: skip
    assert metadata["class_names"] == CLASSES and metadata["source"]["label_column"] == "label"
    examples = datasets.load_dataset(
        "parquet", data_files=str(folder / "examples" / "*.parquet"), split="train"
    )
    assert examples["label"][:] == expected["label"][:]

    card = (folder / "README.md").read_text()
    assert 'load_subset("org/subset")' in card and "config_name: examples" in card and "None" not in card
    # The card names a local source by its folder only, and counts the classes of the selection.
    assert "the local dataset folder `pool`" in card and str(source_dir) not in card
    counts = {name: selection["label_name"].count(name) for name in CLASSES}
    for name, count in counts.items():
        if count:
            assert f"| {name} | {count} | {count / 16:.1%} |" in card, name


def test_labels_of_an_annotated_pool_become_its_label_column(tmp_path, source_dir):
    # A human-annotation run: the pool has no label column; the annotators' labels are in the selection.
    unlabeled = datasets.load_from_disk(str(source_dir)).remove_columns("label")
    unlabeled.save_to_disk(tmp_path / "unlabeled")
    recipe = {"dataset_name": str(tmp_path / "unlabeled"), "eval_split": None}
    pool_dataset, _ = load_run_datasets(DataArguments(**recipe), label_column=None, seed=3)
    annotated = np.random.default_rng(0).integers(0, 4, len(pool_dataset))
    finished_selection(tmp_path / "run", pool_dataset, recipe, labels=annotated, class_names=CLASSES,
                       settings={"annotation": "human"})  # fmt: skip
    folder = save_subset(tmp_path / "run", tmp_path / "subset", include_examples=True)

    subset = load_subset(folder)
    assert subset.features["label"] == datasets.ClassLabel(names=CLASSES)
    assert subset["label"][:] == annotated[subset["pool_index"][:]].tolist()
    examples = datasets.load_dataset(
        "parquet", data_files=str(folder / "examples" / "*.parquet"), split="train"
    )
    assert examples["label"][:] == subset["label"][:]
    # A partly labeled source keeps its labels and takes the run's where it has none.
    partly = datasets.load_from_disk(str(source_dir))
    known = np.asarray(partly["label"])
    missing = np.arange(len(partly)) % 2 == 0
    partly = partly.map(lambda row, i: {"label": -1 if missing[i] else row["label"]}, with_indices=True)
    merged = load_subset(folder, source=partly, verify=False)
    rows = np.asarray(merged["pool_index"][:])
    assert merged["label"][:] == np.where(missing[rows], annotated[rows], known[rows]).tolist()


def test_other_data_is_refused(tmp_path, source_dir):
    recipe = {"dataset_name": str(source_dir)}
    finished_selection(tmp_path / "run", load_image_dataset(str(source_dir)), recipe)
    folder = save_subset(tmp_path / "run", tmp_path / "subset")
    assert len(load_subset(folder)) == 16
    with pytest.raises(
        SubsetMismatchError, match="has 50 rows but the subset was selected from a pool of 60"
    ):
        load_subset(folder, source=named_dataset(50, seed=4))
    with pytest.raises(SubsetMismatchError, match="fingerprint .* differs .* `verify=False`"):
        load_subset(folder, source=named_dataset(60, seed=5))
    with pytest.raises(SubsetMismatchError, match="fingerprint"):  # the same rows, transformed
        load_subset(folder, source=load_image_dataset(str(source_dir)).map(lambda x: x))
    assert len(load_subset(folder, source=named_dataset(60, seed=5), verify=False)) == 16


def test_run_from_python_needs_the_source(tmp_path):
    dataset = named_dataset(30, seed=1)
    pool = finished_selection(tmp_path / "run", dataset, recipe=None)
    folder = save_subset(tmp_path / "run", tmp_path / "subset")
    with pytest.raises(ValueError, match="does not record its source dataset"):
        load_subset(folder)
    subset = load_subset(folder, source=dataset)
    assert sorted(subset["pool_index"][:]) == pool.labeled_indices.tolist()
    assert "source_index" not in pq.read_table(folder / "selection.parquet").column_names
    card = (folder / "README.md").read_text()
    assert "source=pool" in card and "None" not in card


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
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "https://hub.example.org")
    recipe = {"dataset_name": "fashion_mnist", "max_pool_size": 30}
    pool_dataset, _ = load_run_datasets(DataArguments(**recipe), seed=3)
    finished_selection(tmp_path / "run", pool_dataset, recipe)
    folder = save_subset(tmp_path / "run", tmp_path / "subset")
    subset = load_subset(folder)
    selection = pq.read_table(folder / "selection.parquet").to_pydict()
    assert subset["label"][:] == pool_dataset.select(selection["pool_index"])["label"][:]
    # Linked to its Hub copy, on the endpoint in use.
    assert (
        "(https://hub.example.org/datasets/zalando-datasets/fashion_mnist)"
        in (folder / "README.md").read_text()
    )


@pytest.fixture
def hub(monkeypatch, tmp_path_factory):
    yield from serve_local_hub(monkeypatch, tmp_path_factory.mktemp("hf_home"))


def test_subset_loads_its_source_at_the_pinned_revision(hub, tmp_path):
    named_dataset(40, seed=6).push_to_hub("org/shapes")
    api = HfApi()
    pinned = api.dataset_info("org/shapes").sha
    recipe = {
        "dataset_name": "org/shapes",
        "dataset_revision": pinned,
        "max_pool_size": 30,
        "eval_split": None,
    }
    pool_dataset, _ = load_run_datasets(DataArguments(**recipe), seed=3)
    pool = finished_selection(tmp_path / "run", pool_dataset, recipe)
    assert subset_metadata(tmp_path / "run")["source"]["revision"] == pinned
    folder = save_subset(tmp_path / "run", tmp_path / "subset")
    before = load_subset(folder)

    # The source repo moves on with a README-only commit; the subset still rebuilds the same rows.
    api.upload_file(path_or_fileobj=b"# Shapes\n", path_in_repo="README.md", repo_id="org/shapes",
                    repo_type="dataset", commit_message="Add a card")  # fmt: skip
    assert api.dataset_info("org/shapes").sha != pinned
    after = load_subset(folder)
    assert after["pool_index"][:] == before["pool_index"][:] and sorted(after["pool_index"][:]) == (
        pool.labeled_indices.tolist()
    )
    assert after["label"][:] == before["label"][:] == pool_dataset.select(after["pool_index"][:])["label"][:]
    assert [np.asarray(i).tolist() for i in after["image"][:]] == [
        np.asarray(i).tolist() for i in before["image"][:]
    ]


def _detection_sources(root):
    """Detection pools as a recipe names them: a COCO folder (images and one COCO JSON file), a saved dataset."""
    boxes = synthetic_detection_pool(20, items=detection_items(), image_size=32, scales=(12,), seed=5)
    coco = root / "coco"
    coco.mkdir()
    for k, image in enumerate(boxes["image"]):
        image.save(coco / f"{k:02d}.png")
    names = [f"{k:02d}.png" for k in range(len(boxes))]
    (coco / "boxes.json").write_text(json.dumps(coco_json_from_dataset(boxes, file_names=names)))
    boxes.save_to_disk(root / "saved_boxes")
    return {"coco_folder": coco, "saved_boxes": root / "saved_boxes", "synthetic": "synthetic_detection"}


def _segmentation_sources(root):
    """Segmentation pools as a recipe names them: an image folder with a masks folder, a saved dataset."""
    masks = synthetic_segmentation_pool(20, items=detection_items(), image_size=32, scales=(12,), seed=6)
    folder = root / "mask_folder"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for k, row in enumerate(masks):
        row["image"].save(folder / "images" / f"{k:02d}.png")
        row["label"].save(folder / "masks" / f"{k:02d}.png")
    names = masks.features["classes"].feature.names
    (folder / "id2label.json").write_text(json.dumps(dict(enumerate(names))))
    masks.save_to_disk(root / "saved_masks")
    return {"mask_folder": folder, "saved_masks": root / "saved_masks", "synthetic": "synthetic_segmentation"}


@pytest.mark.parametrize(
    "task_name, kind",
    [("object-detection", "coco_folder"), ("object-detection", "saved_boxes"), ("object-detection", "synthetic"),
     ("image-segmentation", "mask_folder"), ("image-segmentation", "saved_masks"),
     ("image-segmentation", "synthetic")],
)  # fmt: skip
def test_a_detection_or_segmentation_pool_is_rebuilt_by_its_task_loader(tmp_path, task_name, kind):
    task = get_task(task_name)
    sources = (_detection_sources if task_name == "object-detection" else _segmentation_sources)(tmp_path)
    recipe = {"dataset_name": str(sources[kind]), "max_pool_size": 12, "eval_split": None}
    settings = {"method": "prunefuse", "seed": 3, "strategy": "entropy", "annotation": "simulated",
                "image_column": "image", "label_column": "label", "objects_column": "objects", "bbox_format": "coco",
                "reduce_labels": False, "class_names": None}  # fmt: skip
    # The pool `prunefuse-hf run` selects from: the task's split, the `max_pool_size` draw, the task's check.
    config = SimpleNamespace(**settings)
    pool_dataset = subsample(task.load_pool_split(DataArguments(**recipe), config), 12, seed=3)
    column = task.run_options(config)[task.annotation_option]
    class_names = task.class_names(pool_dataset, column)
    pool_dataset = task.validate(pool_dataset, class_names=class_names, **task.run_options(config))
    pool = DataPool(pool_dataset)
    pool.label_randomly(4, seed=3, round=1)
    pool.label(pool.unlabeled_indices[:3], round=2, scores=np.ones(3), strategy="entropy")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pool.save_selection(run_dir / "selection.parquet", class_names=class_names)
    state = {"version": 4, "settings": settings, "pool": pool.state_dict(), "recipe": recipe, "task": task_name,
             "class_names": class_names}  # fmt: skip
    (run_dir / "state.json").write_text(json.dumps(state))

    # A folder name of its own: `datasets` caches a local folder's builder by its name and file times.
    folder = save_subset(run_dir, tmp_path / f"subset-{task_name}-{kind}", include_examples=True)

    selection = pq.read_table(folder / "selection.parquet").to_pydict()
    examples = datasets.load_dataset(str(folder), "examples", split="train")
    assert examples.num_rows == 7 and sorted(selection["pool_index"]) == pool.labeled_indices.tolist()
    expected = pool_dataset.select(selection["pool_index"])
    assert [np.asarray(i).tolist() for i in examples["image"]] == [
        np.asarray(i).tolist() for i in expected["image"]
    ]
    if task_name == "object-detection":
        assert [o["bbox"] for o in examples["objects"]] == [o["bbox"] for o in expected["objects"]]
        assert [o["category"] for o in examples["objects"]] == [o["category"] for o in expected["objects"]]
    else:
        assert [np.asarray(m).tolist() for m in examples["label"]] == [
            np.asarray(m).tolist() for m in expected["label"]
        ]
    assert "label" not in selection or all(label is None for label in selection["label"])
    rebuilt = load_subset(folder)  # from the recorded source, by the task's loader, fingerprint checked
    assert rebuilt["pool_index"] == selection["pool_index"]
    if (
        kind == "synthetic"
    ):  # the built-in pool is drawn at `max_pool_size` images: no draw from a larger split
        assert selection["source_index"] == selection["pool_index"]
        return
    # source_index: rows of the whole source split, as the task's loader reads it.
    whole = task.load_split(DataArguments(**recipe), config, "train")
    assert [np.asarray(i).tolist() for i in whole.select(selection["source_index"])["image"]] == [
        np.asarray(i).tolist() for i in expected["image"]
    ]
