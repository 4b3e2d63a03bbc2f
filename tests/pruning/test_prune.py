"""`prune_model` on ResNet (basic and bottleneck blocks): widths, kept indices, costs, and what it refuses.

Every other family is pruned in `test_families.py`; the plan itself is tested in `test_plan.py`.
"""

import copy
import math

import pytest
import torch
from transformers import (
    AutoModelForImageClassification,
    Dinov2Config,
    Dinov2ForImageClassification,
    ResNetForImageClassification,
)

from conftest import assert_same_outputs, assert_states_equal, tiny_resnet_config
from prunefuse_hf import prune_model
from prunefuse_hf.pruning.cost import model_cost

RATIOS = [0.25, 0.5, 0.75]
LAYER_TYPES = ["basic", "bottleneck"]


def dense_resnet(layer_type="basic", **kwargs):
    return ResNetForImageClassification(tiny_resnet_config(layer_type, **kwargs))


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
@pytest.mark.parametrize("ratio", RATIOS)
def test_surrogate_is_a_narrowed_checkpoint_that_reloads_with_identical_weights(tmp_path, layer_type, ratio):
    dense = dense_resnet(layer_type)
    surrogate, plan = prune_model(dense, ratio)

    config = dense.config
    assert surrogate.config.embedding_size == math.floor(config.embedding_size * (1 - ratio))
    assert surrogate.config.hidden_sizes == [math.floor(w * (1 - ratio)) for w in config.hidden_sizes]
    assert surrogate.config.num_labels == config.num_labels
    assert surrogate.classifier[-1].out_features == config.num_labels

    surrogate.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    pixel_values = torch.randn(3, 3, 32, 32)
    surrogate.eval(), reloaded.eval()
    with torch.no_grad():
        assert_same_outputs(reloaded(pixel_values).logits, surrogate(pixel_values).logits)
    assert_states_equal(reloaded.state_dict(), surrogate.state_dict())


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
@pytest.mark.parametrize("ratio", RATIOS)
def test_surrogate_equals_dense_at_kept_indices(layer_type, ratio):
    dense = dense_resnet(layer_type)
    surrogate, plan = prune_model(dense, ratio)
    dense_state, surrogate_state = dense.state_dict(), surrogate.state_dict()
    assert set(dense_state) == set(surrogate_state)
    pruned = 0
    for name, tensor in surrogate_state.items():
        assert list(tensor.shape) == plan.surrogate_shape(name)
        assert torch.equal(dense_state[name][plan.index(name)], tensor)
        pruned += tensor.shape != dense_state[name].shape
    assert pruned == plan.num_pruned_tensors > 0


def test_kept_indices_are_the_largest_l2_channels_of_the_stem():
    dense = dense_resnet()
    _, plan = prune_model(dense, 0.5)
    name = "resnet.embedder.embedder.convolution.weight"
    kept = plan.kept_indices[name][0]
    assert kept == sorted(kept) and len(set(kept)) == len(kept) == 8
    # The stem's channels are coupled with stage 0 (same width, residual adds): the importance is the
    # group's, so check only that the stem conv and its BatchNorm share the kept list.
    assert plan.kept_indices["resnet.embedder.embedder.normalization.running_mean"][0] == kept


@pytest.mark.parametrize("ratio", RATIOS)
def test_parameter_and_mac_ratios_follow_the_square_of_the_kept_width(ratio):
    dense = ResNetForImageClassification(
        tiny_resnet_config("basic", embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1])
    )
    surrogate, _ = prune_model(dense, ratio)
    dense_cost, surrogate_cost = model_cost(dense, 32), model_cost(surrogate, 32)
    expected = (1 - ratio) ** 2
    # The classifier (outputs kept) and the 3-channel input of the stem are not pruned, so the ratio
    # sits slightly above (1 - p)^2.
    assert expected <= surrogate_cost.params / dense_cost.params <= expected + 0.05
    assert expected <= surrogate_cost.macs / dense_cost.macs <= expected + 0.08


def test_input_model_is_untouched_including_batchnorm_statistics():
    dense = dense_resnet()
    dense.train()
    before = copy.deepcopy(dense.state_dict())
    config_before = dense.config.to_dict()
    surrogate, _ = prune_model(dense, 0.5)
    assert dense.training and surrogate.training
    assert dense.config.to_dict() == config_before
    for name, tensor in dense.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_zero_ratio_gives_an_identical_independent_copy():
    dense = dense_resnet()
    surrogate, plan = prune_model(dense, 0)
    assert surrogate is not dense
    assert plan.kept_indices == {} and plan.pruning_ratio == 0
    for (name, a), b in zip(dense.state_dict().items(), surrogate.state_dict().values()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name


def dense_dinov2():
    # A family without pruning support.
    return Dinov2ForImageClassification(
        Dinov2Config(
            image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, num_labels=3,
        )
    )  # fmt: skip


def test_zero_ratio_works_for_families_without_pruning_support():
    surrogate, plan = prune_model(dense_dinov2(), 0.0)
    assert plan.model_type == "dinov2" and plan.kept_indices == {}


def test_grayscale_model_keeps_its_input_channels():
    dense = dense_resnet(num_channels=1)
    surrogate, plan = prune_model(dense, 0.5)
    assert surrogate.config.num_channels == 1
    assert surrogate.resnet.embedder.embedder.convolution.in_channels == 1
    assert 1 not in plan.kept_indices["resnet.embedder.embedder.convolution.weight"]


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.5", True, None])
def test_pruning_ratio_outside_range_is_refused(bad):
    with pytest.raises(ValueError, match="pruning_ratio"):
        prune_model(dense_resnet(), bad)


def test_unknown_importance_is_refused():
    with pytest.raises(ValueError, match="importance must be one of"):
        prune_model(dense_resnet(), 0.5, importance="taylor")
