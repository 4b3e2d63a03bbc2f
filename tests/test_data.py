import socket
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import (
    AutoModelForImageClassification,
    Trainer,
    TrainingArguments,
    ViTConfig,
    ViTImageProcessor,
    default_data_collator,
)

from conftest import make_image_dataset, tiny_resnet_config
from prunefuse_hf import data
from prunefuse_hf.constants import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_HUB_ID,
    FASHION_MNIST_LABELS,
    LABELS,
    PIXEL_VALUES,
)
from prunefuse_hf.data import (
    build_image_transform,
    class_names,
    load_image_dataset,
    num_classes,
    prepare_dataset,
    validate_image_dataset,
)

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
    with pytest.raises(ValueError, match=r"no split 'validation'; valid splits: \['train'\]"):
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


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="No dataset directory"):
        load_image_dataset(str(tmp_path / "nope"))


def test_hub_id_goes_to_load_dataset(monkeypatch):
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
    monkeypatch.setattr(data, "_hub_reachable", lambda: True)
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


@pytest.mark.parametrize("labels", [["cat", "dog"], [0.0, 1.0]])
def test_validate_rejects_non_integer_labels(labels):
    dataset = make_image_dataset(2).remove_columns("label").add_column("label", labels)
    with pytest.raises(ValueError, match=r"integer class ids.*class_encode_column\('label'\)"):
        validate_image_dataset(dataset)


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


# ----- transforms -----


@pytest.mark.parametrize(("mode", "num_channels"), [("L", 3), ("RGB", 1), ("L", 1), ("RGB", 3)])
def test_plain_transform_converts_channels(mode, num_channels):
    dataset = make_image_dataset(6, size=16, mode=mode)
    transform = build_image_transform(tiny_resnet_config(num_channels=num_channels))

    batch = transform(dataset[:6])

    assert set(batch) == {PIXEL_VALUES, LABELS}
    assert batch[PIXEL_VALUES].shape == (6, num_channels, 16, 16)
    assert batch[PIXEL_VALUES].dtype == torch.float32
    assert batch[LABELS].dtype == torch.long
    assert batch[LABELS].tolist() == list(dataset["label"])[:6]
    model_mode = "RGB" if num_channels == 3 else "L"
    for i in range(6):
        assert torch.equal(batch[PIXEL_VALUES][i], expected_pixels(dataset[i]["image"], model_mode))
    if mode == "L" and num_channels == 3:
        assert torch.equal(batch[PIXEL_VALUES][:, 0], batch[PIXEL_VALUES][:, 2])


def test_plain_transform_resizes():
    dataset = make_image_dataset(2, size=16)
    assert build_image_transform(tiny_resnet_config(), image_size=24)(dataset[:2])[PIXEL_VALUES].shape == (
        2,
        3,
        24,
        24,
    )
    vit_config = ViTConfig(image_size=32, num_channels=1)
    assert build_image_transform(vit_config)(dataset[:2])[PIXEL_VALUES].shape == (2, 1, 32, 32)
    assert build_image_transform(vit_config, image_size=(8, 12))(dataset[:2])[PIXEL_VALUES].shape == (
        2,
        1,
        8,
        12,
    )


def test_plain_transform_needs_a_size_for_mixed_images():
    images = [PIL.Image.new("L", (8, 8)), PIL.Image.new("L", (10, 8))]
    transform = build_image_transform(tiny_resnet_config())
    with pytest.raises(ValueError, match="different sizes; set `image_size`"):
        transform({"image": images, "label": [0, 1]})
    assert transform_shape(build_image_transform(tiny_resnet_config(), image_size=8), images) == (2, 3, 8, 8)


def transform_shape(transform, images):
    return tuple(transform({"image": images})[PIXEL_VALUES].shape)


def test_transform_accepts_pixel_arrays():
    pixels = np.random.default_rng(0).integers(0, 255, size=(3, 6, 6), dtype=np.uint8)
    features = datasets.Features(
        {"image": datasets.Array2D((6, 6), "uint8"), "label": datasets.Value("int64")}
    )
    dataset = datasets.Dataset.from_dict({"image": pixels, "label": [0, 1, 2]}, features=features)
    batch = prepare_dataset(dataset, tiny_resnet_config(num_channels=1))[:3]
    assert torch.equal(batch[PIXEL_VALUES][:, 0], (torch.from_numpy(pixels).float() / 255 - 0.5) / 0.5)
    assert batch[LABELS].tolist() == [0, 1, 2]


def test_transform_rejects_unsupported_channel_count():
    with pytest.raises(ValueError, match="4 input channels"):
        build_image_transform(tiny_resnet_config(num_channels=4))


def test_image_processor_path():
    dataset = make_image_dataset(4, size=16, mode="L")
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.2] * 3, image_std=[0.3] * 3)

    batch = build_image_transform(tiny_resnet_config(), processor, image_size=16)(dataset[:4])

    rgb_images = [dataset[i]["image"].convert("RGB") for i in range(4)]
    expected = processor(rgb_images, return_tensors="pt")[PIXEL_VALUES]
    assert batch[PIXEL_VALUES].shape == (4, 3, 32, 32)
    assert torch.equal(batch[PIXEL_VALUES], expected)
    plain = build_image_transform(tiny_resnet_config())(dataset[:4])
    assert plain[PIXEL_VALUES].shape == (4, 3, 16, 16)
    assert torch.equal(batch[LABELS], plain[LABELS])


def test_image_processor_channel_mismatch():
    processor = ViTImageProcessor(size={"height": 8, "width": 8})
    with pytest.raises(ValueError, match="normalizes 3 channels but the model expects 1"):
        build_image_transform(tiny_resnet_config(num_channels=1), processor)
    gray = ViTImageProcessor(size={"height": 8, "width": 8}, image_mean=[0.5], image_std=[0.5])
    batch = build_image_transform(tiny_resnet_config(num_channels=1), gray)(
        make_image_dataset(2, mode="RGB")[:2]
    )
    assert batch[PIXEL_VALUES].shape == (2, 1, 8, 8)


def test_augmentation_is_random_reproducible_and_shape_preserving():
    dataset = make_image_dataset(16, size=16)
    config = tiny_resnet_config()
    plain = build_image_transform(config)(dataset[:16])[PIXEL_VALUES]
    augment = build_image_transform(config, train=True, augment=True)

    torch.manual_seed(1)
    first = augment(dataset[:16])[PIXEL_VALUES]
    torch.manual_seed(1)
    second = augment(dataset[:16])[PIXEL_VALUES]

    assert first.shape == plain.shape
    assert torch.equal(first, second)
    assert not torch.equal(first, plain)
    # Padding is zero in normalized space and crops keep the image's pixels: every value is one of them.
    allowed = torch.cat([plain.unique(), torch.zeros(1)])
    assert torch.isin(first, allowed).all()
    # Augmentation is for training only.
    assert torch.equal(
        build_image_transform(config, train=False, augment=True)(dataset[:16])[PIXEL_VALUES], plain
    )


# ----- prepare_dataset -----


def test_prepare_dataset_is_lazy(monkeypatch):
    dataset = make_image_dataset(10)
    calls = []
    original = data._pil_batch_to_tensor
    monkeypatch.setattr(data, "_pil_batch_to_tensor", lambda *args: calls.append(1) or original(*args))

    prepared = prepare_dataset(dataset, tiny_resnet_config())

    assert calls == []
    # A view over the same Arrow table: the pool is not copied.
    assert prepared.data.table is dataset.data.table
    assert prepared.cache_files == dataset.cache_files
    assert prepared.num_rows == 10
    row = prepared[3]
    assert len(calls) == 1
    assert torch.equal(row[PIXEL_VALUES], expected_pixels(dataset[3]["image"], "RGB"))
    assert row[LABELS].item() == dataset[3]["label"]
    # The base dataset is left as it was.
    assert isinstance(dataset[0]["image"], PIL.Image.Image)


def test_prepared_dataset_outputs_only_model_inputs():
    dataset = make_image_dataset(10).add_column("caption", [f"image {i}" for i in range(10)])
    prepared = prepare_dataset(dataset, tiny_resnet_config())
    assert set(prepared[0]) == {PIXEL_VALUES, LABELS}

    loader = torch.utils.data.DataLoader(prepared, batch_size=8, collate_fn=default_data_collator)
    batches = list(loader)
    assert [b[PIXEL_VALUES].shape for b in batches] == [(8, 3, 16, 16), (2, 3, 16, 16)]
    assert batches[0][LABELS].dtype == torch.long
    assert torch.cat([b[LABELS] for b in batches]).tolist() == list(dataset["label"])


def test_prepared_unlabeled_pool_has_no_labels():
    prepared = prepare_dataset(make_image_dataset(4).remove_columns("label"), tiny_resnet_config())
    assert set(prepared[:4]) == {PIXEL_VALUES}
    assert prepared[:4][PIXEL_VALUES].shape == (4, 3, 16, 16)


def test_prepared_dataset_trains_with_trainer(tmp_path):
    config = tiny_resnet_config(num_labels=4)
    model = AutoModelForImageClassification.from_config(config)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    prepared = prepare_dataset(make_image_dataset(16), config, train=True, augment=True)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=8,
        remove_unused_columns=False,  # the transform needs the raw image column
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    Trainer(model=model, args=args, train_dataset=prepared).train()
    changed = [name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert "classifier.1.weight" in changed
