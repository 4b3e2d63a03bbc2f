import socket
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from conftest import make_image_dataset
from prunefuse_hf.constants import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_HUB_ID,
    FASHION_MNIST_LABELS,
)
from prunefuse_hf.data import loading as data
from prunefuse_hf.data.labels import (
    align_eval_labels,
    class_names,
    encode_label_names,
    label_array,
    num_classes,
    resolve_class_names,
)
from prunefuse_hf.data.loading import load_image_dataset, validate_image_dataset

HAS_FASHION_MNIST = (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").is_file()


def expected_pixels(image, mode):
    """What the plain path must produce for one PIL image: mode conversion, then (x / 255 - 0.5) / 0.5."""
    array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    return (torch.from_numpy(array).permute(2, 0, 1) - 0.5) / 0.5


# ----- loading -----


@pytest.mark.parametrize("as_dict", [False, True])
def test_load_from_disk_round_trip(tmp_path, as_dict):
    dataset = make_image_dataset(12, num_classes=3)
    saved = datasets.DatasetDict({"train": dataset, "test": dataset.select(range(5))}) if as_dict else dataset
    saved.save_to_disk(str(tmp_path / "saved"))

    loaded = load_image_dataset(str(tmp_path / "saved"), split="test" if as_dict else "train")

    assert loaded.num_rows == (5 if as_dict else 12)
    assert loaded.features == dataset.features
    assert list(loaded["label"]) == list(dataset["label"])[: loaded.num_rows]
    assert np.array_equal(np.asarray(loaded[0]["image"]), np.asarray(dataset[0]["image"]))


def test_load_from_disk_unknown_split(tmp_path):
    datasets.DatasetDict({"train": make_image_dataset(4)}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match=r"no split 'validation'; its splits are \['train'\]"):
        load_image_dataset(str(tmp_path / "saved"), split="validation")


def test_load_imagefolder_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    for name, count in [("cat", 3), ("dog", 2)]:
        (tmp_path / name).mkdir()
        for i in range(count):
            pixels = rng.integers(0, 255, size=(10, 12, 3), dtype=np.uint8)
            PIL.Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")

    loaded = load_image_dataset(str(tmp_path))

    assert loaded.num_rows == 5
    assert class_names(loaded) == ["cat", "dog"]
    assert sorted(loaded["label"]) == [0, 0, 0, 1, 1]
    assert loaded[0]["image"].size == (12, 10)


@pytest.mark.parametrize("name", ["./pool", "data/pool/train", "../pool", "~/pool", "my pool"])
def test_a_path_that_is_not_on_disk_is_refused_at_once(name, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("a path must not be looked up on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    with pytest.raises(FileNotFoundError, match=f"dataset_name '{name}' is not a directory"):
        load_image_dataset(name)


def test_a_hub_id_that_is_not_on_disk_says_when_the_hub_is_unreachable(monkeypatch):
    monkeypatch.setattr(data, "hub_reachable", lambda timeout=1.0: False)
    monkeypatch.setattr(
        datasets, "load_dataset", lambda *a, **k: pytest.fail("no Hub lookup when unreachable")
    )
    with pytest.raises(
        FileNotFoundError, match="taken for a Hub dataset id, but the Hub .* is not reachable"
    ):
        load_image_dataset("pool")


def test_image_folder_without_the_eval_split_names_the_field(tmp_path):
    from prunefuse_hf.arguments import DataArguments
    from prunefuse_hf.data.loading import load_run_datasets

    folder = tmp_path / "folder"
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True)
        PIL.Image.new("RGB", (8, 8)).save(folder / name / "0.png")
    with pytest.raises(
        ValueError, match=r"eval_split: The image folder .* has no split 'test'.*eval_split: null"
    ):
        load_run_datasets(DataArguments(dataset_name=str(folder)))
    pool, eval_dataset = load_run_datasets(DataArguments(dataset_name=str(folder), eval_split=None))
    assert pool.num_rows == 2 and eval_dataset is None


def test_hub_id_goes_to_load_dataset(monkeypatch):
    monkeypatch.setattr(data, "hub_reachable", lambda timeout=1.0: True)
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return make_image_dataset(4)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_image_dataset("someone/images", split="test", config_name="small", revision="abc123")
    assert loaded.num_rows == 4
    assert calls == [(("someone/images", "small"), {"split": "test", "revision": "abc123"})]


# ----- the built-in Fashion-MNIST -----


@pytest.mark.skipif(not HAS_FASHION_MNIST, reason=f"{FASHION_MNIST_DIR} not installed")
def test_fashion_mnist_from_debian_package():
    train = load_image_dataset("fashion_mnist", split="train")
    test = load_image_dataset("fashion_mnist", split="test")

    assert (train.num_rows, test.num_rows) == (60000, 10000)
    assert class_names(train) == FASHION_MNIST_LABELS
    labels = np.asarray(test["label"])
    assert labels.min() == 0 and labels.max() == 9 and len(np.unique(labels)) == 10
    image = train[0]["image"]
    assert (image.size, image.mode) == ((28, 28), "L")
    # The fingerprint depends on the files only, so a pool state saved in another process still matches.
    assert train._fingerprint.startswith("fashion_mnist-train-v1-")
    assert load_image_dataset("fashion_mnist")._fingerprint == train._fingerprint
    assert test._fingerprint != train._fingerprint


def test_fashion_mnist_unknown_split():
    with pytest.raises(ValueError, match=r"no split 'validation'; valid splits: \['train', 'test'\]"):
        load_image_dataset("fashion_mnist", split="validation")


def test_fashion_mnist_missing_files_offline(tmp_path, monkeypatch):
    monkeypatch.setenv(data.FASHION_MNIST_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("no network access expected")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(datasets, "load_dataset", no_network)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as error:
        load_image_dataset("fashion_mnist")
    assert str(tmp_path) in str(error.value)


def test_fashion_mnist_missing_files_uses_hub_when_reachable(tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return make_image_dataset(4, num_classes=10)

    monkeypatch.setenv(data.FASHION_MNIST_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(data, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_image_dataset("fashion_mnist", split="test").num_rows == 4
    assert calls == [((FASHION_MNIST_HUB_ID,), {"split": "test", "revision": None})]


def test_read_idx_rejects_wrong_file(tmp_path):
    import gzip

    path = tmp_path / "labels.gz"
    with gzip.open(path, "wb") as f:
        f.write((2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([1, 2, 3]))
    assert data._read_idx(str(path), "labels").tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="not an idx images file"):
        data._read_idx(str(path), "images")


# ----- validation -----


def test_validate_missing_columns():
    dataset = make_image_dataset(4)
    with pytest.raises(
        ValueError, match=r"no column 'img'; its columns are \['image', 'label'\]. Set `image_column`"
    ):
        validate_image_dataset(dataset, image_column="img")
    with pytest.raises(ValueError, match=r"no column 'fine_label'.*Set `label_column`.*label_column=None"):
        validate_image_dataset(dataset, label_column="fine_label")
    assert validate_image_dataset(dataset.remove_columns("label"), label_column=None).num_rows == 4


def test_validate_rejects_labels_that_are_neither_ids_nor_names():
    dataset = make_image_dataset(2).remove_columns("label").add_column("label", [0.0, 1.0])
    with pytest.raises(ValueError, match=r"integer class ids or class names.*class_encode_column\('label'\)"):
        validate_image_dataset(dataset)
    # Class names (a metadata.csv's labels) pass: the run encodes them.
    names = make_image_dataset(2).remove_columns("label").add_column("label", ["cat", "dog"])
    assert validate_image_dataset(names) is names


def test_validate_rejects_non_image_column():
    dataset = datasets.Dataset.from_dict({"image": ["a.png", "b.png"], "label": [0, 1]})
    with pytest.raises(ValueError, match=r"Column 'image' should hold images.*cast_column"):
        validate_image_dataset(dataset)


def test_validate_returns_the_same_object():
    dataset = make_image_dataset(4)
    assert validate_image_dataset(dataset) is dataset


def test_class_names_of_plain_integers():
    dataset = datasets.Dataset.from_dict({"image": [[[0]]] * 3, "label": [0, 4, 2]})
    assert class_names(dataset) == ["0", "1", "2", "3", "4"]
    assert num_classes(dataset) == 5
    assert class_names(make_image_dataset(4, num_classes=3)) == ["0", "1", "2"]


# ----- the labels of a run -----


def test_class_names_come_from_the_class_label_then_the_recipe_then_the_ids():
    pool = make_image_dataset(4, num_classes=3)
    assert resolve_class_names(pool, "label", None) == ["0", "1", "2"]
    assert resolve_class_names(pool, "label", ["0", "1", "2"]) == ["0", "1", "2"]
    with pytest.raises(
        ValueError, match=r"class_names \['c', 'b', 'a'\] differ from the names of the dataset's 'label'"
    ):
        resolve_class_names(pool, "label", ["c", "b", "a"])
    plain = datasets.Dataset.from_dict({"label": [0, 4, 2]})
    assert resolve_class_names(plain, "label", ["a", "b", "c", "d", "e"]) == ["a", "b", "c", "d", "e"]
    assert resolve_class_names(plain, "label", None) == ["0", "1", "2", "3", "4"]
    assert resolve_class_names(plain, None, ["x", "y"]) == ["x", "y"]
    with pytest.raises(ValueError, match="no label column, so the class names are unknown. Set class_names"):
        resolve_class_names(plain, None, None)


@pytest.mark.parametrize("blank", ["", "   ", None])
def test_a_blank_label_in_an_image_folders_metadata_marks_an_unlabeled_row(tmp_path, blank):
    import json

    labels = ["cat", blank, "dog", "cat"]
    with open(tmp_path / "metadata.jsonl", "w") as f:
        for i, label in enumerate(labels):
            PIL.Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "label": label}) + "\n")
    pool = load_image_dataset(str(tmp_path))
    encoded = encode_label_names(pool, "label", None)
    assert encoded.features["label"].names == ["cat", "dog"]
    assert label_array(encoded, "label", 2, "the pool").tolist() == [0, -1, 1, 0]
    assert label_array(encode_label_names(pool, "label", ["dog", "cat"]), "label", 2, "the pool").tolist() == [
        1, -1, 0, 1
    ]  # fmt: skip
    only_blank = datasets.Dataset.from_dict({"label": ["", " "]})
    with pytest.raises(ValueError, match="holds no class name \\(every label is blank\\).*Set class_names"):
        encode_label_names(only_blank, "label", None)
    assert encode_label_names(only_blank, "label", ["a"])["label"][:] == [None, None]


def test_label_array_marks_rows_without_a_label_and_names_an_out_of_range_row():
    labels = label_array(datasets.Dataset.from_dict({"label": [1, None, 0, -1]}), "label", 2, "the pool")
    assert labels.dtype == np.int64 and labels.tolist() == [1, -1, 0, -1]
    assert label_array(datasets.Dataset.from_dict({"label": []}), "label", 2, "the pool").shape == (0,)
    wrong = datasets.Dataset.from_dict({"target": [0, 2, 5, -2]})
    with pytest.raises(
        ValueError,
        match=r"The evaluation set's 'target' column holds class id 5 at row 2 \(2 rows out of range\)",
    ):
        label_array(wrong, "target", 5, "the evaluation set")


def test_eval_labels_are_matched_to_the_pool_by_class_name():
    names = ["circle", "cross", "square"]
    eval_set = datasets.Dataset.from_dict(
        {"label": [0, 1, 0]},
        features=datasets.Features({"label": datasets.ClassLabel(names=["square", "cross"])}),
    )
    aligned = align_eval_labels(eval_set, "label", names)
    assert aligned["label"][:] == [2, 1, 2] and aligned.features["label"].names == names
    same = datasets.Dataset.from_dict(
        {"label": [0]}, features=datasets.Features({"label": datasets.ClassLabel(names=names)})
    )
    assert align_eval_labels(same, "label", names) is same
    plain = datasets.Dataset.from_dict({"label": [0, 2]})
    assert align_eval_labels(plain, "label", names) is plain
    with pytest.raises(
        ValueError, match=r"classes the pool does not have: \['square'\]. Pool classes: \['circle', 'cross'\]"
    ):
        align_eval_labels(eval_set, "label", ["circle", "cross"])
