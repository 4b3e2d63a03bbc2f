"""The README's "Checked before a run starts" table, one test per row: `prunefuse-hf run` on a recipe with that
problem exits with code 2, prints the message (field or file, value, fix) without a traceback, and leaves no run
directory behind."""

import json
import re
import time

import datasets
import pytest
import yaml
from transformers import ResNetModel

from conftest import make_image_dataset, tiny_resnet_config
from prunefuse_hf.cli.main import main

NAMES = ["circle", "cross", "square", "triangle"]


def _named(dataset, names=NAMES):
    return dataset.cast_column("label", datasets.ClassLabel(names=names))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved pool with a train and a test split (RGB 16×16, four named classes)."""
    root = tmp_path_factory.mktemp("datasets")
    train = _named(make_image_dataset(48, 4, seed=1, mode="RGB"))
    test = _named(make_image_dataset(16, 4, seed=2, mode="RGB"))
    datasets.DatasetDict(train=train, test=test).save_to_disk(root / "good")
    unlabeled = train.cast_column("label", datasets.Value("int64")).map(
        lambda row, i: {"label": -1 if i == 5 else row["label"]}, with_indices=True
    )
    datasets.DatasetDict(train=unlabeled, test=test).save_to_disk(root / "minus_one")
    out_of_range = train.cast_column("label", datasets.Value("int64")).map(
        lambda row, i: {"label": 9 if i == 7 else row["label"]}, with_indices=True
    )
    datasets.DatasetDict(train=out_of_range, test=test).save_to_disk(root / "out_of_range")
    star = _named(make_image_dataset(16, 4, seed=2, mode="RGB"), [*NAMES[:3], "star"])
    datasets.DatasetDict(train=train, test=star).save_to_disk(root / "other_classes")
    _folder(root / "mixed_sizes", train, sizes=[(16, 16), (20, 12)])
    blank = _folder(root / "blank_metadata", train, sizes=[(16, 16)]) / "train"
    # An image folder whose metadata.jsonl leaves one label blank: that row has no label.
    files = sorted(blank.rglob("*.png"))
    rows = [
        {"file_name": str(f.relative_to(blank)), "label": "" if i == 3 else f.parent.name}
        for i, f in enumerate(files)
    ]
    (blank / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    damaged = _folder(root / "damaged", train, sizes=[(16, 16)])
    (damaged / "train" / "cross" / "broken.png").write_bytes(b"not a png")
    return root


def _folder(root, dataset, sizes):
    for i, row in enumerate(dataset):
        folder = root / "train" / NAMES[row["label"]]
        folder.mkdir(parents=True, exist_ok=True)
        row["image"].resize(sizes[i % len(sizes)]).save(folder / f"{i}.png")
    return root


def recipe(root, **overrides):
    values = dict(model_config=dict(model_type="resnet", num_channels=3, embedding_size=16, hidden_sizes=[16, 32],
                                    depths=[1, 1]),
                  dataset_name=str(root / "good"), eval_split="test", initial_labeled_size=16, query_size=8,
                  num_rounds=1, num_train_epochs=1, per_device_train_batch_size=8, disable_tqdm=True)  # fmt: skip
    values.update(overrides)
    path = root.parent / f"recipe-{abs(hash(repr(sorted(values.items()))))}.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in values.items() if v is not None or k != "model_config"}))
    return path


# One row of the README table per entry: (row, recipe overrides, the message printed).
ROWS = {
    "columns: image column": (dict(image_column="img"), r"no column 'img'.*Set `image_column`"),
    "columns: label ids": (dict(label_column="image"), r"'image' should hold integer class ids"),
    "labels: -1 in simulation": (
        dict(dataset_name="minus_one"),
        r"1 rows without a label.*row 5.*annotation: human",
    ),
    "labels: blank": (
        dict(dataset_name="blank_metadata", eval_split=None, class_names=NAMES),
        r"1 rows without a label.*row \d+.*annotation: human",
    ),
    "labels: out of range": (dict(dataset_name="out_of_range", class_names=NAMES), r"class id 9 at row 7"),
    "label spaces": (dict(dataset_name="other_classes"), r"classes the pool does not have: \['star'\]"),
    "images": (dict(dataset_name="damaged", eval_split=None), r"broken\.png"),
    "image sizes: mixed": (
        dict(dataset_name="mixed_sizes", eval_split=None),
        r"different sizes: 20×12.*first is 16×16.*Set image_size",
    ),
    "image sizes: too small": (
        dict(
            model_config=dict(
                model_type="convnext", num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2
            ),
            image_size=4,
        ),  # fmt: skip
        r"cannot take 4×4 inputs.*image_size to at least 8",
    ),
    "settings vs model: batch of one": (
        dict(per_device_train_batch_size=1, image_size=8),
        r"per_device_train_batch_size: 1 cannot train",
    ),
    "settings vs model: bald": (
        dict(strategy="bald", dataset_name="damaged", eval_split=None),
        r"no active dropout.*No setting of ResNetForImageClassification's config adds dropout layers.*choose another",
    ),
    "settings vs model: a classifier that cannot run on images alone": (
        dict(
            model_config=dict(model_type="imagegpt", n_embd=16, n_layer=1, n_head=2, n_positions=64),
            pruning_ratio=0.0,
            dataset_name="damaged",
            eval_split=None,
        ),
        r"ImageGPTForImageClassification .* cannot run on images alone.*no setting runs it",
    ),
    # Refused before the pool is decoded: the damaged image would be named otherwise.
    "settings vs model: a class the general path cannot prune": (
        dict(
            model_config=dict(
                model_type="segformer",
                num_channels=3,
                hidden_sizes=[8, 16, 32, 64],
                depths=[1, 1, 1, 1],
                num_attention_heads=[1, 1, 2, 2],
                decoder_hidden_size=16,
            ),
            dataset_name="damaged",
            eval_split=None,
        ),  # fmt: skip
        r"SegformerForImageClassification \(model_type 'segformer'\) cannot be pruned by the general path.*"
        r"Use pruning_ratio=0",
    ),
    "settings vs model: a family with no trainable class": (
        dict(model_config=dict(model_type="pp_lcnet"), pruning_ratio=0.0),
        r"PPLCNetForImageClassification .* cannot be trained: its forward takes no labels.*there is no class of it "
        r"to use: choose a model of another family",
    ),
    "budget": (dict(query_size=40), r"initial_labeled_size \(16\) \+ query_size"),
    "datasets: path not on disk": (dict(dataset_name="./no/such/folder"), r"no/such/folder"),
    "datasets: missing split": (
        dict(eval_split="validation"),
        r"no split 'validation'.*\['test', 'train'\]|"
        r"no split 'validation'.*\['train', 'test'\]",
    ),  # fmt: skip
    "Hub ids": (dict(hub_model_id="not a valid id!"), r"hub_model_id"),
    # TrainingArguments a run would ignore or fail on half-way (trainer/training_settings.py).
    "training arguments: metric_for_best_model": (
        dict(
            eval_strategy="epoch",
            save_strategy="epoch",
            load_best_model_at_end=True,
            metric_for_best_model="f1",
        ),
        r"metric_for_best_model: 'f1' is not reported.*'accuracy', 'loss'",
    ),
    "training arguments: evaluation without an evaluation set": (
        dict(eval_split=None, class_names=NAMES, eval_strategy="epoch"),
        r"eval_strategy: epoch .*no evaluation set.*eval_split",
    ),
    "training arguments: group_by_length": (
        dict(train_sampling_strategy="group_by_length"),
        r"train_sampling_strategy: group_by_length .*images have none",
    ),
    "training arguments: neftune_noise_alpha": (dict(neftune_noise_alpha=5), r"neftune_noise_alpha: 5 "),
    "training arguments: gradient_checkpointing": (
        dict(gradient_checkpointing=True),
        r"gradient_checkpointing: true, but ResNetForImageClassification does not support",
    ),
    "training arguments: label_names": (dict(label_names=["label"]), r"label_names: \['label'\]"),
    "training arguments: prediction_loss_only": (
        dict(prediction_loss_only=True),
        r"prediction_loss_only: true",
    ),
    "training arguments: batch_eval_metrics": (dict(batch_eval_metrics=True), r"batch_eval_metrics: true"),
    "training arguments: eval_do_concat_batches": (
        dict(eval_do_concat_batches=False),
        r"eval_do_concat_batches: false",
    ),
    "training arguments: use_liger_kernel": (dict(use_liger_kernel=True), r"use_liger_kernel: true"),
    "training arguments: dataloader_persistent_workers": (
        dict(dataloader_persistent_workers=True),
        r"dataloader_persistent_workers: true needs worker processes.*dataloader_num_workers",
    ),
    "training arguments: ignore_data_skip": (
        dict(ignore_data_skip=True),
        r"ignore_data_skip: true.*--resume",
    ),
    "training arguments: enable_jit_checkpoint": (
        dict(enable_jit_checkpoint=True),
        r"enable_jit_checkpoint: true",
    ),
    "training arguments: hub_strategy": (
        dict(push_to_hub=True, hub_model_id="someone/model", hub_strategy="checkpoint"),
        r"hub_strategy: checkpoint pushes training checkpoints.*hub_strategy: end",
    ),
    "training arguments: fsdp": (dict(fsdp="full_shard"), r"fsdp shards each model over several GPUs"),
    "training arguments: deepspeed": (dict(deepspeed="ds_config.json"), r"deepspeed: 'ds_config.json'"),
    "training arguments: resume_from_checkpoint": (
        dict(resume_from_checkpoint="runs/x/checkpoint-8"),
        r"resume_from_checkpoint: 'runs/x/checkpoint-8'.*--resume",
    ),
    "training arguments: optim": (
        dict(optim="adamw_bnb_8bit", optim_args=None),
        r"optim: adamw_bnb_8bit .*cannot be built.*bitsandbytes",
    ),
    "training arguments: lr_scheduler_type": (
        dict(lr_scheduler_type="cosine_with_min_lr"),
        r"lr_scheduler_type: cosine_with_min_lr .*cannot be built.*min_lr",
    ),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_each_row_of_the_table_is_refused_before_the_run_starts(saved, tmp_path, capsys, row):
    overrides, message = ROWS[row]
    for key in ("dataset_name", "model_name_or_path"):
        if overrides.get(key) and not overrides[key].startswith("./"):
            overrides = {**overrides, key: str(saved / overrides[key])}
    output_dir = tmp_path / "run"
    code = main(["run", "--config", str(recipe(saved, **overrides)), "--output_dir", str(output_dir)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    printed = err[err.index("prunefuse-hf run: error:") :]  # after the datasets' progress bars, if any
    assert len(printed.strip().splitlines()) <= 2, err
    assert re.search(message, err, flags=re.S), err
    assert not re.search(r"cannot be trained.*Use PPLCNet|Decoding the pool", err, flags=re.S), err
    assert not output_dir.exists()


def test_the_way_out_of_an_unprunable_class_runs(saved, tmp_path, capsys):
    """The refusal above names pruning_ratio: 0; that run (dense active learning) goes to its end."""
    model = dict(model_type="segformer", num_channels=3, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                 num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=16)  # fmt: skip
    config = recipe(saved, model_config=model, pruning_ratio=0.0, image_size=32, strategy="kcenter_greedy",
                    dataset_name=str(saved / "good"), cache_pixels=False)  # fmt: skip
    assert main(["run", "--config", str(config), "--output_dir", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "fused" / "config.json").is_file()


@pytest.mark.parametrize("strategy", ["kcenter_greedy", "badge", "cluster_margin"])
def test_feature_strategies_run_on_a_classifier_whose_head_is_not_called_classifier(
    saved, tmp_path, strategy
):
    """SwiftFormer's head is `head` + `dist_head`: the features are the head's input, found from the logits' layer."""
    model = dict(model_type="swiftformer", num_channels=3, embed_dims=[8, 16, 32, 64], depths=[1, 1, 1, 1])
    config = recipe(saved, model_config=model, image_size=32, strategy=strategy, initial_strategy="typiclust",
                    dataset_name=str(saved / "good"), cache_pixels=False)  # fmt: skip
    assert main(["run", "--config", str(config), "--output_dir", str(tmp_path / "run")]) == 0
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["queries"]["2"]["strategy"] == strategy and state["queries"]["1"]["strategy"] == "typiclust"


def test_run_directory_row_an_occupied_output_dir_needs_resume_or_overwrite(saved, tmp_path, capsys):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("mine")
    assert main(["run", "--config", str(recipe(saved)), "--output_dir", str(output_dir)]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and "Traceback" not in err
    assert [p.name for p in output_dir.iterdir()] == ["notes.txt"]


def test_mixed_sizes_are_refused_from_python_too_and_any_image_size_accepts_them(saved, tmp_path):
    from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer

    pool = datasets.load_dataset("imagefolder", data_dir=str(saved / "mixed_sizes"), split="train")
    assert {pool[i]["image"].size for i in range(2)} == {(16, 16), (20, 12)}
    args = dict(output_dir=str(tmp_path / "run"), initial_labeled_size=16, query_size=8, num_rounds=1)
    with pytest.raises(ValueError, match=r"different sizes: 20×12 \(pool index \d+\) but the first is 16×16"):
        PruneFuseTrainer(tiny_resnet_config(), args=PruneFuseConfig(**args), train_dataset=pool)
    trainer = PruneFuseTrainer(
        tiny_resnet_config(), args=PruneFuseConfig(**args, image_size=16), train_dataset=pool
    )
    assert trainer.input_shape == (3, 16, 16)


def test_settings_vs_model_row_a_model_class_that_is_not_a_classifier_is_named_with_the_class_to_use(
    saved, tmp_path
):
    from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer

    pool = datasets.load_from_disk(str(saved / "good"))["train"]
    args = PruneFuseConfig(
        output_dir=str(tmp_path / "run"), initial_labeled_size=16, query_size=8, num_rounds=1
    )
    with pytest.raises(ValueError, match=r"ResNetModel.*ResNetForImageClassification"):
        PruneFuseTrainer(ResNetModel(tiny_resnet_config()), args=args, train_dataset=pool)
    assert not (tmp_path / "run").exists()


# ----- "models": a Hub model id that the Hub cannot serve -----


@pytest.fixture(params=["HF_HUB_OFFLINE", "closed port"])
def hub_unreachable(request, tmp_path, monkeypatch):
    """The Hub offline (HF_HUB_OFFLINE=1) or unreachable (HF_ENDPOINT on a closed port), with an empty HF cache."""
    import socket

    import huggingface_hub

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    if request.param == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        return "HF_HUB_OFFLINE is set"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return f"the Hub ({endpoint}) cannot be reached"


HUB_MODEL_MESSAGE = (
    r"{field} '{name}' is a Hub model id that is neither a local directory nor in the local Hugging Face cache, "
    r"and .*{reason}.*Give a local checkpoint directory.*model_config: \{{model_type: resnet"
)


@pytest.mark.parametrize(
    "field, name",
    [("model_name_or_path", "microsoft/resnet-18"), ("model_config", "microsoft/resnet-50")],
)
def test_models_row_a_hub_model_the_hub_cannot_serve_is_refused_in_a_second(
    saved, tmp_path, capsys, hub_unreachable, field, name
):
    # The README's "Label with people" recipe, offline: one line instead of ~25 s of retries.
    path = recipe(saved, **{"model_config": None, field: name}, annotation="human", eval_split=None,
                  class_names=NAMES)  # fmt: skip
    output_dir = tmp_path / "run"
    start = time.perf_counter()
    code = main(["run", "--config", str(path), "--output_dir", str(output_dir)])
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2, err
    assert seconds < 2.0, err
    assert "Traceback" not in err and "Retrying" not in err
    assert err.startswith("prunefuse-hf run: error: ") and len(err.strip().splitlines()) == 1, err
    pattern = HUB_MODEL_MESSAGE.format(field=field, name=name, reason=re.escape(hub_unreachable))
    assert re.search(pattern, err), err
    assert not output_dir.exists()


def test_models_row_prune_refuses_the_readmes_hub_model_in_a_second(tmp_path, capsys, hub_unreachable):
    start = time.perf_counter()
    code = main(["prune", "--model", "microsoft/resnet-50", "--pruning_ratio", "0.5",
                 "--output_dir", str(tmp_path / "surrogate")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and time.perf_counter() - start < 2.0, err
    pattern = HUB_MODEL_MESSAGE.format(
        field="--model", name="microsoft/resnet-50", reason=re.escape(hub_unreachable)
    )
    assert re.search(pattern, err) and "Traceback" not in err, err
    assert not (tmp_path / "surrogate").exists()


def test_models_row_from_python_a_hub_model_the_hub_cannot_serve_is_a_value_error(
    saved, tmp_path, hub_unreachable
):
    from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer

    pool = datasets.load_from_disk(str(saved / "good"))["train"]
    args = PruneFuseConfig(
        output_dir=str(tmp_path / "run"), initial_labeled_size=16, query_size=8, num_rounds=1
    )
    start = time.perf_counter()
    pattern = HUB_MODEL_MESSAGE.format(
        field="model", name="microsoft/resnet-18", reason=re.escape(hub_unreachable)
    )
    with pytest.raises(ValueError, match=pattern):
        PruneFuseTrainer("microsoft/resnet-18", args=args, train_dataset=pool)
    assert time.perf_counter() - start < 2.0
    assert not (tmp_path / "run").exists()
