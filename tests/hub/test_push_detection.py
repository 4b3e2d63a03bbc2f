"""A finished object-detection run pushed to a local Hub (tests/hub_server.py) with the unmodified client libraries:
the fused detector, its surrogate and the selected subset come back from the Hub and work. The subset of a run whose
boxes people drew carries those boxes, in the folder `save_subset` writes and through the Hub."""

from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from transformers import AutoModelForObjectDetection, pipeline

from conftest import assert_same_outputs, assert_states_equal, detection_items, tiny_detr
from detection_human_run import filled_coco, human_config, human_pools, stored_objects
from hub_server import serve_local_hub
from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer, load_subset
from prunefuse_hf.cli.main import main
from prunefuse_hf.hub import save_subset
from prunefuse_hf.pruning import load_surrogate
from prunefuse_hf.tasks import synthetic_detection_pool

MODEL, SUBSET, SURROGATE = "org/detector", "org/boxes-subset", "org/detector-surrogate"
RECIPE = Path(__file__).parents[2] / "recipes" / "synthetic-detection-detr" / "prunefuse.yaml"


@pytest.fixture
def hub(monkeypatch, tmp_path_factory):
    yield from serve_local_hub(monkeypatch, tmp_path_factory.mktemp("hf_home"))


def test_a_detection_run_pushed_to_the_hub_comes_back_whole(hub, tmp_path):
    items = detection_items()
    pool = synthetic_detection_pool(24, items=items, image_size=48, scales=(16, 24), seed=0)
    args = PruneFuseConfig(output_dir=str(tmp_path / "run"), initial_labeled_size=8, query_size=8, num_rounds=1,
                           num_train_epochs=1, per_device_train_batch_size=8, learning_rate=1e-3,
                           optim="adamw_torch", optim_args=None, scoring_batch_size=16, use_cpu=True,
                           strategy="least_confidence", detection_score_threshold=0.0, disable_tqdm=True,
                           hub_model_id=MODEL, hub_subset_id=SUBSET, hub_surrogate_id=SURROGATE)  # fmt: skip
    trainer = PruneFuseTrainer(tiny_detr(), args=args, train_dataset=pool)
    trainer.train()
    run_dir = trainer.run_dir.path

    trainer.push_to_hub()

    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    local, remote = (
        AutoModelForObjectDetection.from_pretrained(path).eval() for path in (run_dir / "fused", MODEL)
    )
    with torch.no_grad():
        expected, got = local(pixel_values=pixels), remote(pixel_values=pixels)
    assert_same_outputs(got.logits, expected.logits)
    assert_same_outputs(got.pred_boxes, expected.pred_boxes)
    assert_states_equal(remote.state_dict(), local.state_dict())
    found = pipeline("object-detection", model=MODEL)(pool[0]["image"], threshold=0.0)
    assert found and set(found[0]["box"]) == {"xmin", "ymin", "xmax", "ymax"}
    # A config-narrowed surrogate is an ordinary checkpoint of the detector's class.
    surrogate = AutoModelForObjectDetection.from_pretrained(SURROGATE)
    assert (
        surrogate.config.d_model
        == load_surrogate(run_dir / "surrogate").config.d_model
        < local.config.d_model
    )
    card = hub.files(MODEL)["README.md"].decode()
    assert yaml.safe_load(card.split("---\n")[1])["pipeline_tag"] == "object-detection"
    assert f'pipeline("object-detection", model="{MODEL}")' in card
    surrogate_card = hub.files(SURROGATE)["README.md"].decode()
    assert "surrogate = AutoModelForObjectDetection.from_pretrained(folder)" in surrogate_card
    assert f'pipeline("object-detection", model="{SURROGATE}")' in surrogate_card
    subset_card = hub.files(SUBSET, "dataset")["README.md"].decode()
    assert yaml.safe_load(subset_card.split("---\n")[1])["task_categories"] == ["object-detection"]

    # The subset: the selected pool rows, in the order they were labeled, through the Hub.
    selection = pq.read_table(run_dir / "selection.parquet").to_pydict()
    rows = datasets.load_dataset(SUBSET, split="train")
    assert rows["pool_index"][:] == selection["pool_index"] and len(selection["pool_index"]) == 16


def test_the_subset_of_a_human_detection_run_carries_the_boxes_people_drew(hub, tmp_path):
    pool, _, names, truth = human_pools()
    # People draw other boxes than the pool's hidden ones (moved by a pixel, inside the 48 x 48 images): the subset
    # must hold theirs.
    drawn = [{"bbox": [[x + 1.0 if x + w < 48 else x - 1.0, y, w, h] for x, y, w, h in objects["bbox"]],
              "category": objects["category"]} for objects in truth]  # fmt: skip
    args = human_config(
        tmp_path, names, use_cpu=True, disable_tqdm=True, hub_model_id=MODEL, hub_subset_id=SUBSET
    )
    trainer = PruneFuseTrainer(tiny_detr(), args=args, train_dataset=pool)
    trainer.train()
    run = trainer.run_dir.path
    for round_ in (1, 2):
        trainer.add_labels(filled_coco(run / "queries" / f"round_{round_}", drawn))
        trainer.train(resume_from_checkpoint=True)
    assert trainer.done
    stored = stored_objects(run)
    selection = pq.read_table(run / "selection.parquet").to_pydict()["pool_index"]
    assert sorted(selection) == sorted(stored) and len(stored) == 14

    folder = save_subset(run, tmp_path / "subset", pool=pool, include_examples=True)
    examples = datasets.load_dataset(str(folder), "examples", split="train")
    assert examples.num_rows == 14 and examples["objects"] == [stored[i] for i in selection]
    assert examples["objects"] != [truth[i] for i in selection]  # people's boxes, not the hidden ones
    assert examples["image_id"] == selection  # the rows are the selected images, in selection order
    rebuilt = load_subset(folder, pool)
    assert rebuilt["pool_index"] == selection and rebuilt["objects"] == examples["objects"]
    # A source that holds boxes of its own (the pool with its hidden ones): the subset gives the people's, which the
    # run trained on, in their place.
    hidden = synthetic_detection_pool(
        len(pool), items=detection_items(), image_size=48, scales=(16, 24), seed=0
    )
    assert load_subset(folder, hidden, verify=False)["objects"] == [stored[i] for i in selection]

    trainer.push_to_hub()
    assert AutoModelForObjectDetection.from_pretrained(MODEL).config.num_labels == len(names)
    from_hub = load_subset(SUBSET, pool)
    assert from_hub["pool_index"] == selection and from_hub["objects"] == [stored[i] for i in selection]
    assert datasets.load_dataset(SUBSET, split="train")["objects"] == [stored[i] for i in selection]


@pytest.mark.slow  # a whole recipe run and a push: about 20 s of CPU (50 s on a busy 2-core machine)
def test_push_include_examples_rebuilds_the_pool_of_a_detection_recipe(hub, tmp_path):
    # The recipe's built-in synthetic pool: `push --include_examples` draws it again, as the run did, with the
    # detection loader (the classification loader took synthetic_detection for a Hub id).
    run = tmp_path / "run"
    argv = ["run", "--config", str(RECIPE), "--output_dir", str(run), "--max_pool_size", "16", "--max_eval_samples",
            "4", "--image_size", "48", "--initial_labeled_size", "6", "--query_size", "4", "--num_rounds", "1",
            "--num_train_epochs", "1", "--disable_tqdm", "true"]  # fmt: skip
    assert main(argv) == 0
    assert (
        main(["push", str(run), "--model_repo_id", MODEL, "--subset_repo_id", SUBSET, "--include_examples"])
        == 0
    )

    selection = pq.read_table(run / "selection.parquet").to_pydict()["pool_index"]
    pool = synthetic_detection_pool(16, split="train", seed=42)  # the recipe's seed
    examples = datasets.load_dataset(SUBSET, "examples", split="train")
    assert examples.num_rows == 10 and examples["image_id"] == pool.select(selection)["image_id"]
    assert examples["objects"] == pool.select(selection)["objects"]
    assert examples.features["objects"] == pool.features["objects"]
    assert [image.size for image in examples["image"]] == [(96, 96)] * 10
    rebuilt = load_subset(SUBSET)  # from the recorded source, without a pool given
    assert rebuilt["pool_index"] == selection and rebuilt["objects"] == examples["objects"]
