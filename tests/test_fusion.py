import copy

import pytest
import torch
from transformers import AutoModelForImageClassification, ResNetForImageClassification

from conftest import assert_fused_at_kept_indices, sgd_steps, tiny_resnet_config
from prunefuse_hf import fuse_into_dense, prune_model

RATIOS = [0.25, 0.5, 0.75]


def dense_resnet(layer_type="basic", **kwargs):
    return ResNetForImageClassification(tiny_resnet_config(layer_type, **kwargs))


def train_steps(model, steps=3, lr=0.1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(8, model.config.num_channels, 32, 32, generator=generator)
    labels = torch.randint(0, model.config.num_labels, (8,), generator=generator)
    return sgd_steps(model, pixel_values, labels, steps=steps, lr=lr)


@pytest.mark.parametrize("layer_type", ["basic", "bottleneck"])
@pytest.mark.parametrize("ratio", [0.0, *RATIOS])
def test_fusing_the_untrained_surrogate_returns_the_dense_weights_exactly(layer_type, ratio):
    dense = dense_resnet(layer_type)
    surrogate, plan = prune_model(dense, ratio)
    fused = fuse_into_dense(dense, surrogate, plan)
    dense_state = dense.state_dict()
    for name, tensor in fused.state_dict().items():
        assert torch.equal(tensor, dense_state[name]), name


@pytest.mark.parametrize("layer_type", ["basic", "bottleneck"])
@pytest.mark.parametrize("ratio", RATIOS)
def test_trained_surrogate_lands_exactly_at_the_kept_indices(layer_type, ratio):
    dense = dense_resnet(layer_type)
    dense_before = copy.deepcopy(dense.state_dict())
    surrogate, plan = prune_model(dense, ratio)
    train_steps(surrogate)
    surrogate_state = copy.deepcopy(surrogate.state_dict())

    fused = fuse_into_dense(dense, surrogate, plan)

    assert_fused_at_kept_indices(fused, surrogate_state, dense_before, plan)
    # Neither input was modified by fusing.
    assert all(torch.equal(t, dense_before[n]) for n, t in dense.state_dict().items())
    assert all(torch.equal(t, surrogate_state[n]) for n, t in surrogate.state_dict().items())


def test_zero_ratio_fusion_is_the_trained_model():
    dense = dense_resnet()
    surrogate, plan = prune_model(dense, 0)
    train_steps(surrogate)
    fused = fuse_into_dense(dense, surrogate, plan)
    for name, tensor in fused.state_dict().items():
        assert torch.equal(tensor, surrogate.state_dict()[name]), name


def test_without_norm_stats_running_statistics_keep_the_dense_values():
    dense = dense_resnet()
    surrogate, plan = prune_model(dense, 0.5)
    train_steps(surrogate)
    fused = fuse_into_dense(dense, surrogate, plan, copy_norm_stats=False)
    fused_state, dense_state, surrogate_state = fused.state_dict(), dense.state_dict(), surrogate.state_dict()
    statistics = [
        n for n in fused_state if n.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    assert statistics
    for name in statistics:
        assert torch.equal(fused_state[name], dense_state[name]), name
    weight = "resnet.embedder.embedder.normalization.weight"
    assert torch.equal(fused_state[weight][plan.index(weight)], surrogate_state[weight])


def test_fused_model_saves_reloads_and_trains(tmp_path):
    dense = dense_resnet()
    surrogate, plan = prune_model(dense, 0.5)
    train_steps(surrogate)
    fused = fuse_into_dense(dense, surrogate, plan)
    fused.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    fused.eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fused(pixel_values).logits, reloaded(pixel_values).logits)
    losses = train_steps(fused, steps=8, lr=0.05)
    assert losses[-1] < losses[0]


def test_plan_that_does_not_match_the_models_is_refused():
    dense = dense_resnet()
    surrogate, plan = prune_model(dense, 0.5)
    other_surrogate, other_plan = prune_model(dense, 0.25)
    with pytest.raises(ValueError, match="surrogate tensor '.*' has shape .* pruning plan expects"):
        fuse_into_dense(dense, other_surrogate, plan)
    bigger_dense = dense_resnet(hidden_sizes=[16, 64])
    with pytest.raises(ValueError, match="dense tensor '.*' has shape"):
        fuse_into_dense(bigger_dense, surrogate, plan)
    deeper_dense = dense_resnet(depths=[2, 1])
    with pytest.raises(ValueError, match="tensors missing .* unexpected"):
        fuse_into_dense(deeper_dense, surrogate, plan)
    assert other_plan.pruning_ratio == 0.25
