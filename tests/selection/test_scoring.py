import functools
import json

import numpy as np
import pytest
import torch
from transformers import ResNetForImageClassification

from conftest import make_image_dataset, normalized_pixels, run_in_processes, tiny_resnet_config
from prunefuse_hf.selection.scoring import score_pool
from prunefuse_hf.selection.strategies import STRATEGIES, get_strategy

POOL_SIZE = 1001  # not a multiple of the batch size nor of the process count
BATCH_SIZE = 64
LABELED = 10


def pool_indices_for(size):
    # Global pool indices need not be the dataset rows: the loop scores a view of the unlabeled examples.
    return np.arange(size, dtype=np.int64) * 3 + 7


def _score_and_select(directory, gather=True):
    """Runs in each launched process: score the saved pool with the saved model, select with every strategy.

    With `gather=False` every process keeps its shard and the shardable strategies select from shards.
    """
    from pathlib import Path

    from accelerate import Accelerator
    from datasets import load_from_disk
    from transformers import AutoModelForImageClassification

    torch.set_num_threads(1)
    directory = Path(directory)
    accelerator = Accelerator(cpu=True)
    model = AutoModelForImageClassification.from_pretrained(directory / "model")
    dataset = normalized_pixels(load_from_disk(directory / "pool"), model.config)
    score = functools.partial(
        score_pool, model, batch_size=BATCH_SIZE, accelerator=accelerator, show_progress=False
    )
    # The first LABELED rows play the labeled set: their features are gathered on every process.
    labeled = score(dataset.select(range(LABELED)), pool_indices_for(LABELED), outputs=("features",))
    scores = score(dataset, pool_indices_for(len(dataset)), outputs=("probs", "features"), gather=gather)
    candidates = ~np.isin(scores.pool_indices, labeled.pool_indices)
    result = {"pool_indices": scores.pool_indices.tolist(), "selections": {}}
    for name in sorted(STRATEGIES):
        strategy = get_strategy(name)
        if name == "bald" or not (gather or strategy.shardable):
            continue  # bald needs dropout, which this ResNet has none of
        probs = scores.probs[candidates]
        # dropquery's "dropout passes": a function of each row alone, so shards see what one process sees.
        mc_probs = torch.stack([probs, probs.roll(1, dims=1), probs.flip(1)], dim=1)
        result["selections"][name] = strategy.select(
            25, pool_indices=scores.pool_indices[candidates], probs=probs, mc_probs=mc_probs,
            features=scores.features[candidates], labeled_features=labeled.features, seed=0,
            accelerator=None if gather else accelerator,
        ).indices.tolist()  # fmt: skip
    if gather:
        torch.save({"probs": scores.probs, "features": scores.features},
                   directory / f"outputs-{accelerator.num_processes}-{accelerator.process_index}.pt")  # fmt: skip
    elif accelerator.num_processes > 1:
        try:
            get_strategy("random").select(5, pool_indices=scores.pool_indices, accelerator=accelerator)
        except ValueError as error:
            result["random_error"] = str(error)
    name = f"result-{accelerator.num_processes}-{accelerator.process_index}-{int(gather)}.json"
    (directory / name).write_text(json.dumps(result))


@pytest.fixture(scope="module")
def saved_pool_and_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("scoring")
    make_image_dataset(num_examples=POOL_SIZE, seed=4).save_to_disk(directory / "pool")
    torch.manual_seed(0)
    ResNetForImageClassification(tiny_resnet_config(num_channels=3)).save_pretrained(directory / "model")
    return directory


def _result(directory, world, rank, gather=True):
    return json.loads((directory / f"result-{world}-{rank}-{int(gather)}.json").read_text())


@pytest.mark.distributed
def test_one_and_two_processes_score_every_index_once_and_select_the_same(saved_pool_and_model):
    directory = saved_pool_and_model
    run_in_processes(_score_and_select, str(directory), num_processes=1)
    run_in_processes(_score_and_select, str(directory), num_processes=2)

    expected = pool_indices_for(POOL_SIZE).tolist()
    single = _result(directory, 1, 0)
    assert single["pool_indices"] == expected
    for rank in (0, 1):
        two = _result(directory, 2, rank)
        assert two["pool_indices"] == expected  # every index once, in order, on every process
        assert two["selections"] == single["selections"]
        outputs = torch.load(directory / f"outputs-2-{rank}.pt")
        reference = torch.load(directory / "outputs-1-0.pt")
        # Each example sees the same batch with 1 or 2 processes, so the numbers are identical.
        assert torch.equal(outputs["probs"], reference["probs"])
        assert torch.equal(outputs["features"], reference["features"])
    assert set(single["selections"]) == set(STRATEGIES) - {"bald"}


@pytest.mark.distributed
def test_without_gather_each_process_keeps_a_disjoint_shard(saved_pool_and_model):
    directory = saved_pool_and_model
    run_in_processes(_score_and_select, str(directory), False, num_processes=2)
    results = [_result(directory, 2, rank, gather=False) for rank in (0, 1)]
    shards = [result["pool_indices"] for result in results]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == pool_indices_for(POOL_SIZE).tolist()
    assert abs(len(shards[0]) - len(shards[1])) <= BATCH_SIZE

    # Selecting from shards (each process holds only its own features) gives the single-process selection.
    run_in_processes(_score_and_select, str(directory), num_processes=1)
    single = _result(directory, 1, 0)["selections"]
    shardable = {name for name in single if STRATEGIES[name].shardable}
    assert shardable == set(single) - {"random"}
    for result in results:
        assert result["selections"] == {name: single[name] for name in shardable}
        assert "does not select from shards" in result["random_error"]


def test_scores_match_a_direct_forward_pass_per_example():
    dataset = make_image_dataset(num_examples=70, seed=2)
    model = ResNetForImageClassification(tiny_resnet_config(num_channels=3)).eval()
    prepared = normalized_pixels(dataset, model.config)
    order = np.random.default_rng(0).permutation(70)  # the view's rows map to shuffled pool indices
    scores = score_pool(
        model, prepared, order, batch_size=16, outputs=("probs", "features"), show_progress=False
    )
    assert scores.pool_indices.tolist() == list(range(70))
    row_of_index = np.argsort(order)
    with torch.no_grad():
        pixel_values = prepared.batch(row_of_index.tolist())
        expected = torch.softmax(model(pixel_values=pixel_values).logits, dim=-1)
    torch.testing.assert_close(scores.probs, expected)
    assert scores.features.shape == (70, model.config.hidden_sizes[-1])
    assert torch.allclose(scores.probs.sum(dim=1), torch.ones(70))


def test_scoring_restores_training_mode_and_rejects_unknown_outputs():
    model = ResNetForImageClassification(tiny_resnet_config(num_channels=3)).train()
    prepared = normalized_pixels(make_image_dataset(num_examples=8), model.config)
    score_pool(model, prepared, batch_size=4, show_progress=False)
    assert model.training
    with pytest.raises(ValueError, match="outputs may contain"):
        score_pool(model, prepared, outputs=("logits",))
    with pytest.raises(ValueError, match="pool_indices has 3 entries but the dataset has 8 rows"):
        score_pool(model, prepared, np.arange(3))


def tiny_vit(dropout):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=dropout, num_labels=4)  # fmt: skip
    return ViTForImageClassification(config)


def test_mc_dropout_scores_are_seeded_per_batch_and_vary_across_samples():
    model = tiny_vit(dropout=0.3).eval()
    prepared = normalized_pixels(make_image_dataset(num_examples=20, size=16), model.config)
    first = score_pool(
        model, prepared, batch_size=8, outputs=("mc_probs",), mc_samples=5, show_progress=False
    )
    again = score_pool(
        model, prepared, batch_size=8, outputs=("mc_probs",), mc_samples=5, show_progress=False
    )
    assert first.mc_probs.shape == (20, 5, 4)
    assert torch.equal(first.mc_probs, again.mc_probs)
    assert (first.mc_probs.std(dim=1) > 0).any()
    assert not model.training and all(not m.training for m in model.modules())
    selection = get_strategy("bald").select(5, pool_indices=first.pool_indices, mc_probs=first.mc_probs)
    assert len(set(selection.indices.tolist())) == 5 and np.all(np.diff(selection.scores) <= 0)


def test_mc_dropout_on_a_model_without_dropout_is_refused():
    model = ResNetForImageClassification(tiny_resnet_config(num_channels=3))
    prepared = normalized_pixels(make_image_dataset(num_examples=4), model.config)
    with pytest.raises(
        ValueError,
        match="ResNetForImageClassification has no active dropout.*No setting of .* bald cannot run",
    ):
        score_pool(model, prepared, outputs=("mc_probs",))
    with pytest.raises(ValueError, match="no active dropout.*one of hidden_dropout_prob above 0"):
        score_pool(tiny_vit(dropout=0.0), prepared, outputs=("mc_probs",))


def _select_from_a_pool_smaller_than_a_batch(directory):
    """Runs in each launched process: with 30 candidates and batch 64, process 1's shard is empty."""
    from pathlib import Path

    from accelerate import Accelerator
    from datasets import load_from_disk
    from transformers import AutoModelForImageClassification

    torch.set_num_threads(1)
    directory = Path(directory)
    accelerator = Accelerator(cpu=True)
    model = AutoModelForImageClassification.from_pretrained(directory / "model")
    dataset = normalized_pixels(load_from_disk(directory / "pool").select(range(30)), model.config)
    scores = score_pool(model, dataset, batch_size=BATCH_SIZE, outputs=("probs", "features"),
                        accelerator=accelerator, show_progress=False, gather=False)  # fmt: skip
    selections = {
        name: get_strategy(name).select(5, pool_indices=scores.pool_indices, probs=scores.probs,
                                        features=scores.features, seed=1, accelerator=accelerator).indices.tolist()
        for name in ("least_confidence", "kcenter_greedy", "badge")
    }  # fmt: skip
    name = f"tiny-{accelerator.num_processes}-{accelerator.process_index}.json"
    (directory / name).write_text(json.dumps({"shard": len(scores), "selections": selections}))


@pytest.mark.distributed
def test_a_process_with_an_empty_shard_still_takes_part_in_the_selection(saved_pool_and_model):
    directory = saved_pool_and_model
    run_in_processes(_select_from_a_pool_smaller_than_a_batch, str(directory), num_processes=1)
    run_in_processes(_select_from_a_pool_smaller_than_a_batch, str(directory), num_processes=2)
    single = json.loads((directory / "tiny-1-0.json").read_text())
    two = [json.loads((directory / f"tiny-2-{rank}.json").read_text()) for rank in (0, 1)]
    assert [result["shard"] for result in two] == [30, 0]
    for result in two:
        assert result["selections"] == single["selections"]


def test_the_progress_bar_reaches_the_last_batch(capsys):
    model = ResNetForImageClassification(tiny_resnet_config()).eval()
    prepared = normalized_pixels(make_image_dataset(num_examples=20), model.config)
    score_pool(model, prepared, batch_size=8, show_progress=True)
    assert "3/3" in capsys.readouterr().err


def _score_in_bf16(directory):
    """Runs in a fresh process: the accelerator's mixed precision reaches the scoring forward passes."""
    from pathlib import Path

    from accelerate import Accelerator
    from transformers import AutoModelForImageClassification

    directory = Path(directory)
    model = AutoModelForImageClassification.from_pretrained(directory / "model")
    from datasets import load_from_disk

    dataset = normalized_pixels(load_from_disk(directory / "pool").select(range(64)), model.config)
    seen = []
    model.register_forward_hook(lambda module, args, output: seen.append(output.logits.dtype))
    full = score_pool(model, dataset, batch_size=32, show_progress=False)
    mixed = score_pool(model, dataset, batch_size=32, show_progress=False,
                       accelerator=Accelerator(cpu=True, mixed_precision="bf16"))  # fmt: skip
    result = {"dtypes": [str(d) for d in seen], "max_diff": float((full.probs - mixed.probs).abs().max()),
              "probs_dtype": str(mixed.probs.dtype)}  # fmt: skip
    (directory / "bf16.json").write_text(json.dumps(result))


@pytest.mark.distributed
def test_scoring_runs_under_the_accelerators_mixed_precision(saved_pool_and_model):
    run_in_processes(_score_in_bf16, str(saved_pool_and_model), num_processes=1)
    result = json.loads((saved_pool_and_model / "bf16.json").read_text())
    # Two float32 passes, then two under bf16 autocast; probabilities come back as float32 and close.
    assert result["dtypes"] == ["torch.float32"] * 2 + ["torch.bfloat16"] * 2
    assert result["probs_dtype"] == "torch.float32" and 0 < result["max_diff"] < 0.05


def test_the_head_is_found_by_the_logits_it_gives_not_by_its_name():
    from types import SimpleNamespace

    from prunefuse_hf.selection.scoring import classifier_module

    class Renamed(torch.nn.Module):  # a timm-like classifier: the head is `fc` inside a wrapped model
        def __init__(self, head):
            super().__init__()
            self.config = SimpleNamespace(num_labels=3)
            self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3 if head else 5))
            self.inner = torch.nn.Module()
            self.inner.fc = torch.nn.Linear(3 if head else 5, 3) if head else torch.nn.Conv1d(5, 3, 1)

    model = Renamed(head=True)
    assert classifier_module(model) is model.inner.fc
    with pytest.raises(ValueError, match=r"Renamed has no linear layer that gives its 3 class logits.*kcenter_greedy"
                                         r".*Use a strategy on probabilities \(least_confidence"):  # fmt: skip
        classifier_module(Renamed(head=False))
