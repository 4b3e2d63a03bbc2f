"""A finished semantic-segmentation run pushed to a local Hub (tests/hub_server.py) with the unmodified client
libraries: the fused segmenter with its card (mean IoU), its surrogate and the selected subset with its masks come
back from the Hub and work, and
the subset's examples keep their masks."""

from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from transformers import AutoModelForSemanticSegmentation, SegformerConfig, pipeline

from conftest import assert_same_outputs, assert_states_equal, detection_items
from hub_server import serve_local_hub
from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer, load_subset
from prunefuse_hf.cli.main import main
from prunefuse_hf.hub import save_subset
from prunefuse_hf.tasks import synthetic_segmentation_pool

MODEL, SUBSET, SURROGATE = "org/segmenter", "org/masks-subset", "org/segmenter-surrogate"
CLASSES = ["background", "0", "1", "2"]
RECIPE = Path(__file__).parents[2] / "recipes" / "synthetic-segmentation-segformer" / "prunefuse.yaml"


@pytest.fixture
def hub(monkeypatch, tmp_path_factory):
    yield from serve_local_hub(monkeypatch, tmp_path_factory.mktemp("hf_home"))


def test_a_segmentation_run_pushed_to_the_hub_comes_back_whole(hub, tmp_path):
    items = detection_items()
    pool = synthetic_segmentation_pool(24, items=items, image_size=32, scales=(12, 16), seed=0)
    test = synthetic_segmentation_pool(6, items=items, image_size=32, scales=(12, 16), seed=1)
    model = SegformerConfig(hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 1, 2], depths=[1, 1, 1, 1],
                            decoder_hidden_size=16, classifier_dropout_prob=0.0, drop_path_rate=0.0,
                            num_labels=len(CLASSES), architectures=["SegformerForSemanticSegmentation"])  # fmt: skip
    args = PruneFuseConfig(output_dir=str(tmp_path / "run"), initial_labeled_size=8, query_size=6, num_rounds=1,
                           num_train_epochs=1, per_device_train_batch_size=8, learning_rate=1e-3,
                           optim="adamw_torch", optim_args=None, scoring_batch_size=16, image_size=32,
                           strategy="entropy", disable_tqdm=True, hub_model_id=MODEL, hub_subset_id=SUBSET,
                           hub_surrogate_id=SURROGATE)  # fmt: skip
    trainer = PruneFuseTrainer(model, args=args, train_dataset=pool, eval_dataset=test)
    trainer.train()
    run_dir = trainer.run_dir.path

    trainer.push_to_hub()

    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    local, remote = (
        AutoModelForSemanticSegmentation.from_pretrained(path).eval() for path in (run_dir / "fused", MODEL)
    )
    with torch.no_grad():
        assert_same_outputs(remote(pixel_values=pixels).logits, local(pixel_values=pixels).logits)
    assert_states_equal(remote.state_dict(), local.state_dict())
    masks = pipeline("image-segmentation", model=MODEL)(pool[0]["image"])
    assert masks and {mask["label"] for mask in masks} <= set(CLASSES)
    surrogate = AutoModelForSemanticSegmentation.from_pretrained(SURROGATE)
    assert surrogate.config.hidden_sizes[-1] < local.config.hidden_sizes[-1]
    card = hub.files(MODEL)["README.md"].decode()
    assert yaml.safe_load(card.split("---\n")[1])["pipeline_tag"] == "image-segmentation"
    assert f'pipeline("image-segmentation", model="{MODEL}")' in card
    # A segmenter trains with its own loss: no distillation, and no `distill_alpha` the user did not set.
    method = next(line for line in card.splitlines() if line.startswith("- **Method:**"))
    assert "trains with its own loss" in method and "`strategy: entropy` set explicitly" in method
    assert "distill_alpha" not in method
    assert "| distillation | none (the model's own loss) |" in card
    assert f"It reaches a mean IoU of **{trainer.progress['final']['mean_iou']:.4f}**" in card
    assert "image-segmentation" in hub.files(SURROGATE)["README.md"].decode()

    # The subset: the selected pool rows, in the order they were labeled, through the Hub.
    selection = pq.read_table(run_dir / "selection.parquet").to_pydict()
    rows = datasets.load_dataset(SUBSET, split="train")
    assert rows["pool_index"][:] == selection["pool_index"] and len(selection["pool_index"]) == 14
    # With its examples (the pool given, as a run from an in-memory dataset records no source): images and masks.
    folder = save_subset(run_dir, tmp_path / "subset", pool=pool, include_examples=True)
    examples = datasets.load_dataset(str(folder), "examples", split="train")
    assert len(examples) == 14
    for row, index in zip(examples, selection["pool_index"]):  # the examples follow the selection's order
        assert np.array_equal(np.asarray(row["label"]), np.asarray(pool[index]["label"]))
        assert np.array_equal(np.asarray(row["image"]), np.asarray(pool[index]["image"]))


@pytest.mark.slow  # about 25 s: a two-round human run and its push
def test_the_subset_of_a_human_segmentation_run_carries_the_masks_people_painted(hub, tmp_path):
    from prunefuse_hf import load_subset
    from segmentation_human_run import filled_masks, human_config, human_pools, stored_masks, tiny_segformer

    pool, _, names, truth = human_pools()
    # People paint other masks than the pool's hidden ones (the top rows left unlabeled): the subset must hold theirs.
    painted = [np.where(np.arange(32)[:, None] < 3, 255, mask).astype(np.uint8) for mask in truth]
    args = human_config(tmp_path, names, use_cpu=True, hub_model_id=MODEL, hub_subset_id=SUBSET)
    trainer = PruneFuseTrainer(tiny_segformer(len(names)), args=args, train_dataset=pool)
    trainer.train()
    run = trainer.run_dir.path
    for round_ in (1, 2):
        trainer.add_labels(
            filled_masks(run / "queries" / f"round_{round_}", painted, tmp_path / f"painted_{round_}")
        )
        trainer.train(resume_from_checkpoint=True)
    assert trainer.done
    stored = stored_masks(run)
    selection = pq.read_table(run / "selection.parquet").to_pydict()["pool_index"]
    assert sorted(selection) == sorted(stored) and all(np.array_equal(stored[i], painted[i]) for i in stored)

    trainer.push_to_hub()
    from_hub = load_subset(SUBSET, pool)
    assert from_hub["pool_index"] == selection
    assert all(np.array_equal(np.asarray(row["label"]), painted[i]) for row, i in zip(from_hub, selection))
    pushed = datasets.load_dataset(SUBSET, split="train")
    assert isinstance(pushed.features["label"], datasets.Image)
    assert all(np.array_equal(np.asarray(mask), painted[i]) for mask, i in zip(pushed["label"], selection))


@pytest.mark.slow  # a whole recipe run and a push: about 20 s of CPU (50 s on a busy 2-core machine)
def test_push_include_examples_rebuilds_the_pool_of_a_segmentation_recipe(hub, tmp_path):
    # The recipe's built-in synthetic pool, drawn again at push time by the segmentation loader.
    run = tmp_path / "run"
    argv = ["run", "--config", str(RECIPE), "--output_dir", str(run), "--max_pool_size", "16", "--max_eval_samples",
            "4", "--image_size", "32", "--initial_labeled_size", "6", "--query_size", "4", "--num_rounds", "1",
            "--num_train_epochs", "1", "--disable_tqdm", "true"]  # fmt: skip
    assert main(argv) == 0
    assert (
        main(["push", str(run), "--model_repo_id", MODEL, "--subset_repo_id", SUBSET, "--include_examples"])
        == 0
    )

    selection = pq.read_table(run / "selection.parquet").to_pydict()["pool_index"]
    expected = synthetic_segmentation_pool(16, split="train", seed=42).select(selection)  # the recipe's seed
    examples = datasets.load_dataset(SUBSET, "examples", split="train")
    assert examples.num_rows == 10 and examples.column_names == expected.column_names
    for got, want in zip(examples, expected):  # image and mask of each selected row, in selection order
        assert np.array_equal(np.asarray(got["label"]), np.asarray(want["label"]))
        assert np.array_equal(np.asarray(got["image"]), np.asarray(want["image"]))
    assert load_subset(SUBSET)["pool_index"] == selection  # from the recorded source, without a pool given
