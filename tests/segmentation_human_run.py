"""Shared pieces of the tests of semantic-segmentation runs with `annotation: human`
(tests/trainer/test_segmentation_human.py, tests/cli/test_segmentation_human_recipe.py): a pool of images whose true
masks are known to the test only, a tiny SegFormer, the run's settings, the query's mask templates filled in with the
true masks, and the masks a run stored."""

import shutil
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
from transformers import SegformerConfig

from conftest import detection_items
from prunefuse_hf import PruneFuseConfig
from prunefuse_hf.tasks import open_mask, synthetic_segmentation_pool

POOL_SIZE, INITIAL, QUERY, IMAGE_SIZE = 20, 6, 4, 32


def human_pools():
    """(pool without masks, test set with masks, class names, the pool's true masks by pool index)."""
    items = detection_items()
    pool = synthetic_segmentation_pool(POOL_SIZE, items=items, image_size=IMAGE_SIZE, scales=(12, 16), seed=0)
    test = synthetic_segmentation_pool(4, items=items, image_size=IMAGE_SIZE, scales=(12, 16), seed=1)
    names = ["background", *pool.features["classes"].feature.names[1:]]
    raw = pool.cast_column("label", datasets.Image(decode=False))["label"]
    truth = [open_mask(value).astype(np.uint8) for value in raw]
    # What people label: the images only (a real pool has no masks).
    return pool.remove_columns("label"), test, names, truth


def tiny_segformer(num_labels):
    return SegformerConfig(hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 1, 2], depths=[1, 1, 1, 1],
                           decoder_hidden_size=16, classifier_dropout_prob=0.0, drop_path_rate=0.0,
                           num_labels=num_labels, architectures=["SegformerForSemanticSegmentation"])  # fmt: skip


def human_config(tmp_path, names, **overrides):
    """The settings of a small human segmentation run in `tmp_path / "run"` (one round after the initial set)."""
    values = dict(output_dir=str(tmp_path / "run"), task="image-segmentation", annotation="human", class_names=names,
                  initial_labeled_size=INITIAL, query_size=QUERY, num_rounds=1, num_train_epochs=1,
                  per_device_train_batch_size=8, learning_rate=1e-3, optim="adamw_torch", optim_args=None,
                  scoring_batch_size=16, per_device_eval_batch_size=16, image_size=IMAGE_SIZE,
                  strategy="least_confidence", disable_tqdm=True)  # fmt: skip
    return PruneFuseConfig(**{**values, **overrides})


def filled_masks(query: Path, truth, out: Path, change=None) -> Path:
    """A copy of the query's `masks/` painted with the true masks by a paint tool (`change(masks)` edits them:
    `{file name: array}`)."""
    templates = sorted((query / "masks").iterdir())
    masks = {}
    for path in templates:
        index = next(int(row.split(",")[0]) for row in (query / "labels.csv").read_text().splitlines()[1:]
                     if row.split(",")[2] == path.name)  # fmt: skip
        masks[path.name] = truth[index].copy()
    if change:
        change(masks)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name, mask in masks.items():
        PIL.Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="L").save(out / name)
    return out


def stored_masks(run: Path) -> dict:
    """`{pool_index: mask}` of the run's `labeled_masks.parquet` and `labeled_masks/`."""
    rows = datasets.Dataset.from_parquet(str(run / "labeled_masks.parquet"))
    return {
        i: open_mask(run / name).astype(np.uint8) for i, name in zip(rows["pool_index"], rows["mask_file"])
    }
