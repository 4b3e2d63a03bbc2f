"""A finished object-detection run pushed to a local Hub (tests/hub_server.py) with the unmodified client libraries:
the fused detector, its surrogate and the selected subset come back from the Hub and work."""

import datasets
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from transformers import AutoModelForObjectDetection, pipeline

from conftest import detection_items, tiny_detr
from hub_server import serve_local_hub
from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer
from prunefuse_hf.pruning import load_surrogate
from prunefuse_hf.tasks import synthetic_detection_pool

MODEL, SUBSET, SURROGATE = "org/detector", "org/boxes-subset", "org/detector-surrogate"


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
    assert torch.equal(expected.logits, got.logits) and torch.equal(expected.pred_boxes, got.pred_boxes)
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
    assert "object-detection" in hub.files(SURROGATE)["README.md"].decode()

    # The subset: the selected pool rows, in the order they were labeled, through the Hub.
    selection = pq.read_table(run_dir / "selection.parquet").to_pydict()
    rows = datasets.load_dataset(SUBSET, split="train")
    assert rows["pool_index"][:] == selection["pool_index"] and len(selection["pool_index"]) == 16
