"""`PruneFuseTrainer` used as the stock `Trainer` is used when fine-tuning an image classifier: `evaluate()` and
`predict()` on any split (raw images, a `DataPool`, the prepared pixels, a list of images), `metric_key_prefix`,
`compute_metrics` from the `evaluate` library, callbacks; and the dataset forms a user can pass (used, or refused
by name before any work, with the fix)."""

import json

import datasets
import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from conftest import make_image_dataset, tiny_resnet_config
from prunefuse_hf import DataPool, PruneFuseConfig, PruneFuseTrainer, list_pixel_caches, load_image_dataset
from prunefuse_hf.metrics import load_accuracy

NUM_CLASSES = 4
NAMES = ["circle", "cross", "square", "triangle"]


def make_config(output_dir, **overrides):
    values = dict(output_dir=str(output_dir), pruning_ratio=0.5, initial_labeled_size=16, query_size=8, num_rounds=1,
                  num_train_epochs=2, learning_rate=0.05, per_device_train_batch_size=8, per_device_eval_batch_size=16,
                  disable_tqdm=True, seed=3, logging_steps=50)  # fmt: skip
    values.update(overrides)
    return PruneFuseConfig(**values)


def named(dataset):
    return dataset.cast_column("label", datasets.ClassLabel(names=NAMES))


@pytest.fixture(scope="module")
def pool():
    return named(make_image_dataset(num_examples=64, num_classes=NUM_CLASSES, seed=1, mode="RGB"))


@pytest.fixture(scope="module")
def test_split():
    # Another split, gray images (the run's processor converts them to the model's RGB, as pipeline() does).
    return named(make_image_dataset(num_examples=36, num_classes=NUM_CLASSES, seed=7, mode="L"))


class Recorder(TrainerCallback):
    def __init__(self):
        self.events = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.events.append(("evaluate", dict(metrics)))

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        self.events.append(("predict", dict(metrics)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pool):
    accuracy = load_accuracy()

    def compute_metrics(eval_pred):  # as in the transformers image-classification guide
        predictions = np.argmax(eval_pred.predictions, axis=1)
        return accuracy.compute(predictions=predictions, references=eval_pred.label_ids)

    recorder = Recorder()
    trainer = PruneFuseTrainer(tiny_resnet_config(), args=make_config(tmp_path_factory.mktemp("contract")),
                               train_dataset=pool, eval_dataset=pool.select(range(20)), callbacks=[recorder],
                               compute_metrics=compute_metrics)  # fmt: skip
    trainer.train()
    return trainer, recorder


def expected_logits(trainer, dataset):
    """The fused model on the run's preprocessing of `dataset`'s images (pixels, then normalization)."""
    images = [dataset[i]["image"] for i in range(len(dataset))]
    pixels = trainer.preprocessor.to_pixels(images)
    model = trainer.model.eval()
    with torch.no_grad():
        return (
            model(pixel_values=trainer.preprocessor.normalize(pixels.to(model.device))).logits.cpu().numpy()
        )


def test_evaluate_on_another_raw_split_with_a_prefix_compute_metrics_and_callbacks(trained, test_split):
    trainer, recorder = trained
    recorder.events.clear()
    metrics = trainer.evaluate(eval_dataset=test_split, metric_key_prefix="test_split")
    predicted = expected_logits(trainer, test_split).argmax(-1)
    assert metrics["test_split_accuracy"] == pytest.approx(
        float(np.mean(predicted == np.asarray(test_split["label"])))
    )
    assert {"test_split_loss", "test_split_runtime", "test_split_samples_per_second"} <= set(metrics)
    assert recorder.events == [("evaluate", metrics)]
    assert trainer.state.log_history[-1]["test_split_accuracy"] == metrics["test_split_accuracy"]
    # The evaluation set given at construction is still the default.
    assert trainer.evaluate()["eval_accuracy"] == pytest.approx(trainer.metrics["final"]["accuracy"])


def test_evaluate_on_a_dict_of_splits_prefixes_each(trained, pool, test_split):
    trainer, _ = trained
    metrics = trainer.evaluate(eval_dataset={"gray": test_split, "pool": pool.select(range(20))})
    assert metrics["eval_gray_accuracy"] == trainer.evaluate(test_split)["eval_accuracy"]
    assert metrics["eval_pool_accuracy"] == pytest.approx(trainer.metrics["final"]["accuracy"])


def test_predict_with_labels_returns_label_ids_and_metrics(trained, test_split):
    trainer, recorder = trained
    recorder.events.clear()
    output = trainer.predict(test_split)
    np.testing.assert_allclose(output.predictions, expected_logits(trainer, test_split), atol=1e-5)
    assert output.label_ids.tolist() == list(test_split["label"])
    predicted = output.predictions.argmax(-1)
    assert output.metrics["test_accuracy"] == pytest.approx(float(np.mean(predicted == output.label_ids)))
    assert recorder.events == [("predict", output.metrics)]


def test_predict_and_evaluate_on_new_images_leave_no_pixel_cache_unless_asked(
    trained, test_split, tmp_path, monkeypatch
):
    trainer, _ = trained
    monkeypatch.setenv("PRUNEFUSE_PIXEL_CACHE", str(tmp_path))
    output = trainer.predict(test_split)
    trainer.evaluate(test_split)
    np.testing.assert_allclose(output.predictions, expected_logits(trainer, test_split), atol=1e-5)
    assert list_pixel_caches(tmp_path) == []
    # Asked for: the datasets given to evaluate() / predict() are cached too (e.g. a split evaluated many times).
    monkeypatch.setattr(trainer.args, "pixel_cache_scope", "all")
    assert trainer.predict(test_split).predictions.tolist() == output.predictions.tolist()
    assert [info.num_images for info in list_pixel_caches(tmp_path)] == [len(test_split)]


def test_predict_on_images_with_a_pixel_cache_reads_it_and_writes_nothing(trained, pool, caplog):
    trainer, _ = trained
    before = list_pixel_caches()
    with caplog.at_level("INFO", logger="prunefuse_hf"):
        trainer.predict(pool)
    assert f"Reading the cached pixels of {len(pool)} images" in caplog.text
    assert {info.key for info in list_pixel_caches()} == {info.key for info in before}


@pytest.mark.parametrize("unlabeled", ["no label column", "every label -1"])
def test_predict_without_labels_returns_predictions_and_no_label_ids(trained, test_split, unlabeled):
    trainer, _ = trained
    if unlabeled == "no label column":
        raw = test_split.remove_columns("label")
    else:  # how unlabeled test splits on the Hub store it
        raw = test_split.cast_column("label", datasets.Value("int64")).map(lambda _: {"label": -1})
    output = trainer.predict(raw)
    assert output.label_ids is None and "test_accuracy" not in output.metrics
    np.testing.assert_allclose(output.predictions, expected_logits(trainer, test_split), atol=1e-5)


def test_every_form_of_the_same_images_predicts_the_same(trained, test_split):
    trainer, _ = trained
    expected = expected_logits(trainer, test_split)
    images = [test_split[i]["image"] for i in range(len(test_split))]
    forms = {
        "DataPool": DataPool(test_split),
        "torch format": test_split.with_format("torch"),
        "list of PIL images": images,
        "list of rows": [{"image": image} for image in images],
        "dict of columns": {"image": images},
        "the prepared PixelDataset": trainer.get_test_dataloader(test_split).dataset,
    }
    for name, form in forms.items():
        np.testing.assert_allclose(trainer.predict(form).predictions, expected, atol=1e-5, err_msg=name)


def test_evaluation_labels_are_matched_to_the_runs_classes_by_name(trained, test_split):
    trainer, _ = trained
    reordered = test_split.align_labels_with_mapping({n: i for i, n in enumerate(NAMES[::-1])}, "label")
    reordered = reordered.cast_column("label", datasets.ClassLabel(names=NAMES[::-1]))
    assert trainer.predict(reordered).label_ids.tolist() == list(test_split["label"])
    unknown = test_split.cast_column("label", datasets.ClassLabel(names=[*NAMES[:3], "star"]))
    with pytest.raises(ValueError, match=r"classes the pool does not have: \['star'\]"):
        trainer.evaluate(unknown)


def test_evaluate_needs_labels_and_names_predict(trained, test_split):
    trainer, _ = trained
    with pytest.raises(ValueError, match=r"has no column 'label'.*trainer.predict\(dataset\)"):
        trainer.evaluate(test_split.remove_columns("label"))
    partly = test_split.cast_column("label", datasets.Value("int64")).map(
        lambda row, i: {"label": -1 if i == 3 else row["label"]}, with_indices=True
    )
    with pytest.raises(ValueError, match="The test set has 1 rows without a label.*e.g. row 3"):
        trainer.predict(partly)


def _transform(batch):  # as in the transformers image-classification guide
    batch["pixel_values"] = [np.asarray(image.convert("RGB"), dtype=np.float32) for image in batch["image"]]
    del batch["image"]
    return batch


class TorchDataset(torch.utils.data.Dataset):  # a torchvision-style dataset of (image, label) pairs
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i]["image"], self.dataset[i]["label"]


def refused_forms(dataset):
    iterable = dataset.to_iterable_dataset()
    return {
        "with_transform": (
            dataset.with_transform(_transform),
            r"with_transform.*'_transform'.*with_format\(None\)",
        ),
        "set_transform": (_set_transform(dataset), r"set_transform.*'_transform'.*with_format\(None\)"),
        "DatasetDict": (
            datasets.DatasetDict(train=dataset, test=dataset),
            r"DatasetDict with splits \['train', "
            r"'test'\]; pass one split, e.g. `dataset\['train'\]`",
        ),  # fmt: skip
        "dict of datasets": (
            {"a": dataset, "b": dataset},
            r"dict of datasets \['a', 'b'\].*evaluate\(eval_dataset=",
        ),
        "IterableDataset": (iterable, r"streamed IterableDataset.*Dataset.from_generator"),
        "IterableDatasetDict": (
            datasets.IterableDatasetDict(train=iterable),
            r"IterableDatasetDict.*streaming",
        ),
        "torch Dataset": (TorchDataset(dataset), r"TorchDataset, which a run cannot read.*Dataset.from_list"),
        "pandas DataFrame": (
            dataset.to_pandas(),
            r"pandas.*DataFrame.*Dataset.from_dict\(df.to_dict\('list'\)\)",
        ),
        "a path": ("some/folder", r"is a builtins.str.*load_image_dataset"),
    }


def _set_transform(dataset):
    copy = dataset.select(range(len(dataset)))
    copy.set_transform(_transform)
    return copy


def test_every_other_form_is_refused_by_name_with_the_fix_before_any_work(
    tmp_path, trained, pool, test_split
):
    trainer, _ = trained
    for form, message in refused_forms(test_split).values():
        with pytest.raises(ValueError, match=message):
            trainer.predict(form)
    for name, (form, message) in refused_forms(pool).items():
        output_dir = tmp_path / name
        with pytest.raises(ValueError, match=message):
            PruneFuseTrainer(tiny_resnet_config(), args=make_config(output_dir), train_dataset=form)
        with pytest.raises(ValueError, match=message):
            PruneFuseTrainer(tiny_resnet_config(), args=make_config(output_dir), train_dataset=pool,
                             eval_dataset=form)  # fmt: skip
        assert not output_dir.exists()


def test_a_pool_in_torch_format_or_as_a_list_of_rows_runs_like_the_dataset(tmp_path, pool):
    reference = PruneFuseTrainer(tiny_resnet_config(), args=make_config(tmp_path / "a"), train_dataset=pool)
    for i, form in enumerate([pool.with_format("torch"), [pool[j] for j in range(len(pool))]]):
        args = make_config(tmp_path / f"b{i}", class_names=NAMES)  # a list of rows has plain int labels
        trainer = PruneFuseTrainer(tiny_resnet_config(), args=args, train_dataset=form)
        assert trainer.class_names == reference.class_names
        assert torch.equal(trainer.pool_pixels.with_format("torch")[:]["pixel_values"],
                           reference.pool_pixels.with_format("torch")[:]["pixel_values"])  # fmt: skip


# ----- image folders with a metadata file -----


def _metadata_folder(root, dataset, metadata):
    """Class sub-folders plus a metadata file: `metadata` maps (file_name, class name) to a row, or None."""
    rows = []
    for i, row in enumerate(dataset):
        name = NAMES[row["label"]]
        (root / name).mkdir(parents=True, exist_ok=True)
        row["image"].save(root / name / f"{i}.png")
        rows.append(metadata(f"{name}/{i}.png", name))
    if rows[0] is not None:
        if "csv" in str(metadata.__name__):
            columns = list(rows[0])
            lines = [",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in rows]
            (root / "metadata.csv").write_text("\n".join(lines) + "\n")
        else:
            (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(root)


def jsonl_captions(path, name):
    return {"file_name": path, "caption": "a shape"}


def csv_captions(path, name):
    return {"file_name": path, "caption": "a shape"}


def csv_class_names(path, name):
    return {"file_name": path, "label": name}


@pytest.mark.parametrize("metadata", [jsonl_captions, csv_captions])
def test_a_metadata_file_without_labels_keeps_the_folder_classes_and_says_why(
    tmp_path, pool, caplog, metadata
):
    folder = _metadata_folder(tmp_path / "folder", pool, metadata)
    with caplog.at_level("INFO", logger="prunefuse_hf"):
        loaded = load_image_dataset(folder)
    assert loaded.features["label"].names == NAMES and "caption" in loaded.column_names
    assert loaded["label"][:] == [NAMES.index(p.split("/")[-2]) for p in _paths(loaded)]
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert f"the class sub-folders {NAMES}" in said and "has no 'label' column" in said
    trainer = PruneFuseTrainer(tiny_resnet_config(), args=make_config(tmp_path / "run"), train_dataset=loaded)
    assert trainer.class_names == NAMES


def test_a_metadata_csv_of_class_names_is_used_with_class_names_in_their_order(tmp_path, pool, caplog):
    folder = _metadata_folder(tmp_path / "folder", pool, csv_class_names)
    with caplog.at_level("INFO", logger="prunefuse_hf"):
        loaded = load_image_dataset(folder)
    assert "the 'label' column of metadata.csv" in "\n".join(r.getMessage() for r in caplog.records)
    order = NAMES[::-1]
    trainer = PruneFuseTrainer(tiny_resnet_config(), args=make_config(tmp_path / "a", class_names=order),
                               train_dataset=loaded, eval_dataset=loaded)  # fmt: skip
    assert trainer.class_names == order and trainer.model.config.id2label == dict(enumerate(order))
    expected = [order.index(p.split("/")[-2]) for p in _paths(loaded)]
    assert trainer.pool_labels.tolist() == expected
    assert trainer.predict(loaded).label_ids.tolist() == expected
    # Without class_names: the sorted names.
    trainer = PruneFuseTrainer(tiny_resnet_config(), args=make_config(tmp_path / "b"), train_dataset=loaded)
    assert trainer.class_names == sorted(NAMES)
    with pytest.raises(ValueError, match=r"class names that are not in class_names: \['triangle'\]"):
        PruneFuseTrainer(tiny_resnet_config(), args=make_config(tmp_path / "c", class_names=NAMES[:3]),
                         train_dataset=loaded)  # fmt: skip


def _paths(dataset):
    return [v["path"] for v in dataset.cast_column("image", datasets.Image(decode=False))["image"]]
