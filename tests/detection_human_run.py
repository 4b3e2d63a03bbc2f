"""Shared pieces of the tests of object-detection runs with `annotation: human` (tests/trainer/test_detection_human.py,
tests/hub/test_push_detection.py, tests/annotation/test_loop_boxes.py): a pool of images whose true boxes are known
to the test only, the run's settings, a COCO template filled in with the true boxes, and the boxes a run stored."""

import json

import datasets
import numpy as np

from conftest import detection_items
from prunefuse_hf import PruneFuseConfig
from prunefuse_hf.tasks import synthetic_detection_pool

POOL_SIZE, INITIAL, QUERY = 24, 8, 6


def human_pools():
    """(pool without boxes, test set with boxes, class names, the pool's true boxes by pool index)."""
    items = detection_items()
    pool = synthetic_detection_pool(POOL_SIZE, items=items, image_size=48, scales=(16, 24), seed=0)
    test = synthetic_detection_pool(6, items=items, image_size=48, scales=(16, 24), seed=1)
    names = pool.features["objects"]["category"].feature.names
    truth = [{"bbox": [[float(v) for v in box] for box in row["bbox"]], "category": list(row["category"])}
             for row in pool["objects"]]  # fmt: skip
    # What people label: the images only (a real pool has no boxes).
    return pool.remove_columns("objects"), test, names, truth


def human_config(tmp_path, names, **overrides):
    """The settings of a small human detection run in `tmp_path / "run"` (one round after the initial set)."""
    values = dict(output_dir=str(tmp_path / "run"), annotation="human", class_names=names,
                  initial_labeled_size=INITIAL, query_size=QUERY, num_rounds=1, num_train_epochs=1,
                  per_device_train_batch_size=8, learning_rate=1e-3, optim="adamw_torch", optim_args=None,
                  scoring_batch_size=16, per_device_eval_batch_size=16, strategy="least_confidence",
                  detection_score_threshold=0.0)  # fmt: skip
    return PruneFuseConfig(**{**values, **overrides})


def filled_coco(query, truth, change=None):
    """The query's COCO template filled in by a COCO tool, with the true boxes (`change` edits one)."""
    coco = json.loads((query / "annotations.json").read_text())
    annotations = []
    for image in coco["images"]:
        objects = truth[image["pool_index"]]
        for box, category in zip(objects["bbox"], objects["category"]):
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "bbox": box,
                                "category_id": category, "area": box[2] * box[3], "iscrowd": 0})  # fmt: skip
    coco["annotations"] = annotations
    if change:
        change(coco)
    path = query.parents[2] / f"filled_{query.name}.json"  # beside the run, not in it
    path.write_text(json.dumps(coco))
    return path


def stored_objects(run):
    """`{pool_index: objects}` of the run's `labeled_objects.parquet`."""
    rows = datasets.Dataset.from_parquet(str(run / "labeled_objects.parquet"))
    return {i: objects for i, objects in zip(rows["pool_index"], rows["objects"])}


def same_boxes(stored, truth):
    """The same images, classes and boxes (to 1e-3 px)."""
    assert set(stored) and {i: o["category"] for i, o in stored.items()} == {
        i: truth[i]["category"] for i in stored
    }
    for i, objects in stored.items():
        np.testing.assert_allclose(np.reshape(objects["bbox"], (-1, 4)), np.reshape(truth[i]["bbox"], (-1, 4)),
                                   atol=1e-3)  # fmt: skip
