"""BADGE's last-layer gradient embedding for models whose example holds many predictions (pixels, decoder queries):
its closed form, the layer that gave the logits, and selections from detection and segmentation pools that do not
depend on how many processes scored them."""

import functools
import json

import numpy as np
import pytest
import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from conftest import detection_items, run_in_processes, tiny_detr
from prunefuse_hf.selection import HeadCalls, last_layer_gradients

POOL_SIZE = 21  # not a multiple of the batch size nor of the process count
BATCH_SIZE = 4


def test_the_embedding_is_the_mean_over_counted_positions_of_residual_outer_features():
    features = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [5.0, 5.0]]])  # one example, 3 positions, D = 2
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 9.0]]])  # C = 2
    keep = torch.tensor([[True, True, False]])
    p = torch.tensor(2.0).sigmoid().item()  # softmax((2, 0))[0]
    residuals = [torch.tensor([-0.5, 0.5]), torch.tensor([p - 1, 1 - p])]
    expected = (torch.outer(residuals[0], features[0, 0]) + torch.outer(residuals[1], features[0, 1])) / 2
    torch.testing.assert_close(last_layer_gradients(features, logits, keep=keep), expected.reshape(1, -1))
    # Sigmoid outputs: residual sigmoid(l) - onehot(argmax), per output.
    sigmoid = last_layer_gradients(features[:, :1], logits[:, :1], activation="sigmoid")
    torch.testing.assert_close(sigmoid, torch.outer(torch.tensor([-0.5, 0.5]), features[0, 0]).reshape(1, -1))
    assert torch.equal(
        last_layer_gradients(features, logits, keep=torch.zeros(1, 3, dtype=torch.bool)), torch.zeros(1, 4)
    )
    with pytest.raises(ValueError, match=r"must share B and P, got \(1, 3, 2\) and \(1, 2, 2\)"):
        last_layer_gradients(features, logits[:, :2])
    with pytest.raises(ValueError, match="activation must be 'softmax' or 'sigmoid', got 'relu'"):
        last_layer_gradients(features, logits, activation="relu")


def test_a_model_without_a_layer_giving_its_logits_is_refused_by_name():
    class Pooled(
        torch.nn.Module
    ):  # its logits come from a 3×3 convolution, which is no per-position classifier
        def __init__(self):
            super().__init__()
            self.config = type("Config", (), {"num_labels": 3})()
            self.head = torch.nn.Conv2d(4, 3, 3, padding=1)

    with pytest.raises(
        ValueError, match=r"Pooled has no linear layer or 1×1 convolution giving its 3 class logits"
    ):
        HeadCalls(Pooled())
    model = torch.nn.Linear(4, 3)
    model.config = type("Config", (), {"num_labels": 3})()
    with HeadCalls(model) as calls:
        model(torch.ones(1, 4))
        with pytest.raises(
            ValueError, match="None of Linear's linear layers or 1×1 convolutions .* gave its logits"
        ):
            calls.producing(torch.zeros(1, 3))


def tiny_segformer():
    # Dropout in the decode head, so that BALD's MC passes differ.
    config = SegformerConfig(hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 1, 2], depths=[1, 1, 1, 1],
                             decoder_hidden_size=16, classifier_dropout_prob=0.5, drop_path_rate=0.0, num_labels=4,
                             output_hidden_states=True)  # fmt: skip
    return SegformerForSemanticSegmentation(config)


@pytest.fixture(scope="module")
def saved_pools_and_models(tmp_path_factory):
    from prunefuse_hf.tasks import synthetic_detection_pool, synthetic_segmentation_pool

    directory = tmp_path_factory.mktemp("task_scoring")
    items = detection_items()
    synthetic_segmentation_pool(POOL_SIZE, items=items, image_size=32, scales=(12, 16), seed=0).save_to_disk(
        directory / "image-segmentation" / "pool"
    )
    synthetic_detection_pool(POOL_SIZE, items=items, image_size=32, scales=(12, 16), seed=0).save_to_disk(
        directory / "object-detection" / "pool"
    )
    torch.manual_seed(0)
    tiny_segformer().save_pretrained(directory / "image-segmentation" / "model")
    tiny_detr().save_pretrained(directory / "object-detection" / "model")
    return directory


def _score_tasks_and_select(directory):
    """Runs in each launched process: for each task, score the saved pool with every strategy's per-image outputs,
    each process keeping its shard, and select from the shards."""
    for task_name in ("image-segmentation", "object-detection"):
        _score_task_and_select(directory, task_name)


def _score_task_and_select(directory, task_name):
    from pathlib import Path

    from accelerate import Accelerator
    from datasets import load_from_disk
    from transformers import DetrImageProcessorPil, SegformerImageProcessorPil

    from prunefuse_hf.selection import get_strategy, score_pool
    from prunefuse_hf.tasks import get_task

    torch.set_num_threads(1)
    directory = Path(directory) / task_name
    accelerator = Accelerator(cpu=True)
    task = get_task(task_name)
    model = task.model_class().from_pretrained(directory / "model")
    pool = load_from_disk(directory / "pool")
    if task_name == "object-detection":
        processor, options = DetrImageProcessorPil(size={"height": 32, "width": 32}), {"num_labels": 3}
        strategies = ["entropy", "kcenter_greedy", "badge", "cluster_margin"]
    else:
        processor, options = SegformerImageProcessorPil(size={"height": 32, "width": 32}), {}
        strategies = ["entropy", "kcenter_greedy", "badge", "cluster_margin", "bald"]
    prepared = pool.remove_columns(task.columns[1]).with_transform(task.prepare(processor))
    pool_indices = np.arange(POOL_SIZE) * 3 + 2
    result = {}
    for name in strategies:
        strategy = get_strategy(name)
        outputs = tuple(sorted(strategy.per_image_outputs))
        scored = score_pool(model, prepared, pool_indices, batch_size=BATCH_SIZE, outputs=outputs,
                            accelerator=accelerator, gather=False, show_progress=False, collate=task.collate,
                            mc_samples=3, pooled_features=task.pooled_features,
                            image_scores=functools.partial(task.image_scores, measure=strategy.measure, **options),
                            gradient_embeddings=functools.partial(task.gradient_embeddings, **options))  # fmt: skip
        given = {name: getattr(scored, name) for name in outputs}
        if "mc_scores" in given:
            given["scores"] = given.pop("mc_scores")
        selection = strategy.select(
            6, pool_indices=scored.pool_indices, seed=0, accelerator=accelerator, **given
        )
        result[name] = {"indices": selection.indices.tolist(), "held": len(scored)}
    rank = f"{accelerator.num_processes}-{accelerator.process_index}"
    (directory / f"result-{rank}.json").write_text(json.dumps(result))


# Slow (3 launched interpreters, both tasks: about 20 s on 2 cores; `make test-slow`).
@pytest.mark.slow
@pytest.mark.distributed
def test_one_and_two_processes_select_the_same_images_from_their_shards(saved_pools_and_models):
    directory = saved_pools_and_models
    run_in_processes(_score_tasks_and_select, str(directory), num_processes=1)
    run_in_processes(_score_tasks_and_select, str(directory), num_processes=2)
    for task_name in ("image-segmentation", "object-detection"):
        _check_agreement(directory, task_name)


def _check_agreement(directory, task_name):
    read = lambda rank: json.loads((directory / task_name / f"result-{rank}.json").read_text())  # noqa: E731
    single, first, second = read("1-0"), read("2-0"), read("2-1")
    expected = {"entropy", "kcenter_greedy", "badge", "cluster_margin"}
    assert set(single) == expected | ({"bald"} if task_name == "image-segmentation" else set())
    for name, picked in single.items():
        assert len(set(picked["indices"])) == 6 and picked["held"] == POOL_SIZE
        # Each process held only its shard (batches of 4 dealt round-robin: 12 and 9 images), and both agree on the
        # selection one process makes.
        assert (first[name]["held"], second[name]["held"]) == (12, 9)
        assert first[name]["indices"] == second[name]["indices"] == picked["indices"], name
