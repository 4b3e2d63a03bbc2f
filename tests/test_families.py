"""Pruning and exact fusion for every supported family, on tiny configs built locally.

The parametrization comes from `SUPPORTED_FAMILIES`, which also renders the README support table, so
the table lists exactly the families tested here.
"""

import copy
import functools

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    Dinov2Config,
    Dinov2ForImageClassification,
    LevitConfig,
    LevitForImageClassification,
    ViTImageProcessor,
    pipeline,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from conftest import assert_fused_at_kept_indices, sgd_steps
from prunefuse_hf import fuse_into_dense, prune_model
from prunefuse_hf.architectures import SUPPORTED_FAMILIES, support_table_markdown
from prunefuse_hf.cost import model_cost
from prunefuse_hf.modeling import load_image_classifier

RATIOS = [0.25, 0.5, 0.75]
IMAGE_SIZE = 32

# Tiny configs (dropout and stochastic depth off, so that a few SGD steps on one batch lower the loss).
TINY_CONFIGS = {
    "resnet": dict(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1]),
    "convnext": dict(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], image_size=IMAGE_SIZE),
    "convnextv2": dict(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], image_size=IMAGE_SIZE),
    "vit": dict(
        image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64,
    ),
    "deit": dict(
        image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64,
    ),
    "swin": dict(
        image_size=IMAGE_SIZE, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
        window_size=4, drop_path_rate=0.0,
    ),
    # Divisor 2 so that the tiny widths can narrow at every tested ratio (the default 8 would round
    # most of them back up); the fine-grained 1280-wide head is off so that it scales too.
    "mobilenet_v2": dict(
        image_size=IMAGE_SIZE, depth_multiplier=0.5, depth_divisible_by=2, min_depth=2,
        finegrained_output=False, classifier_dropout_prob=0.0,
    ),
    "regnet": dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8, layer_type="y"),
    "efficientnet": dict(
        image_size=IMAGE_SIZE, width_coefficient=0.25, depth_coefficient=0.2, depth_divisor=2,
        hidden_dim=320, dropout_rate=0.0, drop_connect_rate=0.0,
    ),
}  # fmt: skip

# |surrogate params / dense params - (1 - p)^2| must stay within these bounds. Parts that do not
# narrow push the ratio above (1 - p)^2: the classifier's outputs and the stem's 3 input channels
# (largest share in tiny models), biases and norms (linear in the width, not quadratic).
PARAM_RATIO_TOLERANCE = {
    "resnet": 0.1,  # the 7x7 stem on 3 unpruned input channels is a large share of a tiny model
    "convnext": 0.07,
    "convnextv2": 0.07,
    "vit": 0.09,  # the classifier and the 8x8x3 patch embedding inputs stay
    "deit": 0.09,  # as ViT, plus the distillation token's (narrowed) width
    "swin": 0.04,
    # Widths go through make_divisible(round(w * multiplier), 2): a few channels off (1 - p) either way.
    "mobilenet_v2": 0.04,
    "regnet": 0.04,  # SE widths are round(in / 4), rounded to the nearest integer
    # round_filters with depth_divisor 2 and its "not below 90 %" rule, plus depthwise convs and SE
    # layers that scale linearly with the width.
    "efficientnet": 0.1,
}


def tiny_config(model_type, num_labels=4, **kwargs):
    return AutoConfig.for_model(model_type, num_labels=num_labels, **{**TINY_CONFIGS[model_type], **kwargs})


def model_class(model_type):
    # The first class is the plain classifier (DeiT also maps to its "WithTeacher" variant).
    names = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES[model_type]
    return getattr(transformers, names[0] if isinstance(names, tuple) else names)


def dense_model(model_type, **kwargs):
    torch.manual_seed(0)
    return model_class(model_type)(tiny_config(model_type, **kwargs))


@functools.cache
def _pruned(model_type, ratio):
    dense = dense_model(model_type)
    surrogate, plan = prune_model(dense, ratio)
    return dense, surrogate, plan


def pruned(model_type, ratio):
    """A dense model, its surrogate and plan; pruned once per session, fresh copies per test."""
    return copy.deepcopy(_pruned(model_type, ratio))


def batch(model, seed=0, size=8):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(size, model.config.num_channels, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.randint(0, model.config.num_labels, (size,), generator=generator)
    return pixel_values, labels


def train_steps(model, steps=3, lr=0.05, seed=0):
    pixel_values, labels = batch(model, seed)
    return sgd_steps(model, pixel_values, labels, steps=steps, lr=lr)


def assert_states_equal(actual, expected):
    assert set(actual) == set(expected)
    for name, tensor in actual.items():
        assert torch.equal(tensor, expected[name]), name


families = pytest.mark.parametrize("model_type", SUPPORTED_FAMILIES)
ratios = pytest.mark.parametrize("ratio", RATIOS)


def test_every_supported_family_has_a_tiny_config_and_a_tolerance():
    assert set(TINY_CONFIGS) == set(SUPPORTED_FAMILIES) == set(PARAM_RATIO_TOLERANCE)


def test_support_table_lists_every_family():
    table = support_table_markdown().splitlines()
    assert len(table) == 2 + len(SUPPORTED_FAMILIES)
    for model_type in SUPPORTED_FAMILIES:
        assert any(f"`{model_type}`" in row for row in table), model_type


@families
@ratios
def test_surrogate_reloads_with_identical_logits_and_runs_in_a_pipeline(tmp_path, model_type, ratio):
    dense, surrogate, plan = pruned(model_type, ratio)
    assert type(surrogate) is type(dense)
    assert surrogate.config.num_labels == dense.config.num_labels
    surrogate.save_pretrained(tmp_path)
    plan.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(surrogate)
    surrogate.eval()
    pixel_values, _ = batch(dense, size=2)
    with torch.no_grad():
        assert torch.equal(surrogate(pixel_values).logits, reloaded(pixel_values).logits)

    processor = ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    classify = pipeline("image-classification", model=str(tmp_path), image_processor=processor, device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    predictions = classify(image, top_k=2)
    assert len(predictions) == 2
    assert {p["label"] for p in predictions} <= set(surrogate.config.id2label.values())


@families
@ratios
def test_parameter_ratio_follows_the_square_of_the_kept_width(model_type, ratio):
    dense, surrogate, _ = pruned(model_type, ratio)
    dense_params = sum(p.numel() for p in dense.parameters())
    surrogate_params = sum(p.numel() for p in surrogate.parameters())
    assert surrogate_params / dense_params == pytest.approx(
        (1 - ratio) ** 2, abs=PARAM_RATIO_TOLERANCE[model_type]
    )
    # The counted cost follows as well, and counting leaves both models usable.
    dense_cost, surrogate_cost = model_cost(dense, IMAGE_SIZE), model_cost(surrogate, IMAGE_SIZE)
    assert surrogate_cost.params == surrogate_params
    assert 0 < surrogate_cost.macs < dense_cost.macs


@families
@ratios
def test_fusing_the_untrained_surrogate_returns_the_dense_weights_exactly(model_type, ratio):
    dense, surrogate, plan = pruned(model_type, ratio)
    assert plan.num_pruned_tensors > 0
    assert_states_equal(fuse_into_dense(dense, surrogate, plan).state_dict(), dense.state_dict())


@families
@ratios
def test_trained_surrogate_lands_exactly_at_the_kept_indices_and_the_fused_model_trains(model_type, ratio):
    dense, surrogate, plan = pruned(model_type, ratio)
    dense_before = copy.deepcopy(dense.state_dict())
    train_steps(surrogate)
    surrogate_state = surrogate.state_dict()

    fused = fuse_into_dense(dense, surrogate, plan)

    assert_fused_at_kept_indices(fused, surrogate_state, dense_before, plan)
    assert_states_equal(dense.state_dict(), dense_before)

    # A small step: the tiny 17-block MobileNetV2 on one batch of 8 is noisy at larger ones.
    losses = train_steps(fused, steps=5, lr=0.01)
    assert losses[-1] < losses[0]


@families
def test_without_norm_stats_only_running_statistics_keep_the_dense_values(model_type):
    dense, surrogate, plan = pruned(model_type, 0.5)
    train_steps(surrogate)
    with_stats = fuse_into_dense(dense, surrogate, plan).state_dict()
    without_stats = fuse_into_dense(dense, surrogate, plan, copy_norm_stats=False).state_dict()
    statistics = {
        name for name in with_stats if name.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }
    for name, tensor in without_stats.items():
        expected = dense.state_dict()[name] if name in statistics else with_stats[name]
        assert torch.equal(tensor, expected), name


@families
def test_a_trained_fused_model_can_be_pruned_again_and_fused_exactly(model_type):
    # The sync_every loop: fuse, train the fused model, prune it again for the next surrogate.
    dense, surrogate, plan = pruned(model_type, 0.5)
    train_steps(surrogate)
    fused = fuse_into_dense(dense, surrogate, plan)
    train_steps(fused, steps=2)

    next_surrogate, next_plan = prune_model(fused, 0.5)
    assert next_surrogate.config.to_dict() == surrogate.config.to_dict()
    fused_state = fused.state_dict()
    for name, tensor in next_surrogate.state_dict().items():
        assert torch.equal(fused_state[name][next_plan.index(name)], tensor), name
    assert_states_equal(fuse_into_dense(fused, next_surrogate, next_plan).state_dict(), fused_state)
    train_steps(next_surrogate, steps=2, seed=1)
    refused = fuse_into_dense(fused, next_surrogate, next_plan).state_dict()
    for name, tensor in next_surrogate.state_dict().items():
        assert torch.equal(refused[name][next_plan.index(name)], tensor), name


@families
def test_a_model_loaded_from_a_checkpoint_directory_is_pruned_from_its_weights(tmp_path, model_type):
    saved = dense_model(model_type)
    saved.save_pretrained(tmp_path)
    # A different class count re-initializes only the head; pruning then starts from the loaded backbone.
    dense = load_image_classifier(str(tmp_path), num_labels=6)
    assert dense.config.num_labels == 6
    surrogate, plan = prune_model(dense, 0.5)
    assert plan.dense_name_or_path == str(tmp_path)
    assert surrogate.config.num_labels == 6
    saved_state = saved.state_dict()
    backbone = [name for name in surrogate.state_dict() if not name.startswith("classifier")]
    for name in backbone:
        assert torch.equal(saved_state[name][plan.index(name)], surrogate.state_dict()[name]), name


@families
def test_grayscale_models_keep_their_single_input_channel(model_type):
    dense = dense_model(model_type, num_channels=1)
    surrogate, plan = prune_model(dense, 0.5)
    assert surrogate.config.num_channels == 1
    pixel_values, _ = batch(surrogate, size=2)
    surrogate.eval()
    with torch.no_grad():
        assert surrogate(pixel_values).logits.shape == (2, dense.config.num_labels)


def test_unsupported_family_is_refused_by_name():
    dense = Dinov2ForImageClassification(
        Dinov2Config(
            image_size=IMAGE_SIZE, patch_size=8, hidden_size=16, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=32, num_labels=3,
        )
    )  # fmt: skip
    with pytest.raises(NotImplementedError, match=r"'dinov2' family .*Supported families: \[.*'vit'"):
        prune_model(dense, 0.5)
    levit = LevitForImageClassification(
        LevitConfig(
            image_size=IMAGE_SIZE, hidden_sizes=[16, 24, 32], num_attention_heads=[1, 1, 1],
            depths=[1, 1, 1], key_dim=[8, 8, 8], num_labels=3,
        )
    )  # fmt: skip
    with pytest.raises(NotImplementedError, match="'levit' family"):
        prune_model(levit, 0.25)


def test_a_ratio_that_leaves_no_head_dimension_names_family_ratio_and_limit():
    # Head dimension 8: 8 x (1 - 0.9) rounds to 0.
    with pytest.raises(ValueError, match=r"pruning_ratio=0.9 .*ViT family: head dimension 8 .*<= 0.875"):
        prune_model(dense_model("vit"), 0.9)


def test_a_ratio_whose_widths_all_round_back_names_the_ratios_that_work():
    # With the default divisor 8, min_depth 8 and the fixed 1280-wide head, a 0.25 multiplier rounds
    # every 5 % narrower width back up.
    dense = dense_model(
        "mobilenet_v2", depth_divisible_by=8, min_depth=8, depth_multiplier=0.25, finegrained_output=True
    )
    with pytest.raises(ValueError, match=r"pruning_ratio=0.05 .*MobileNetV2 family.*Ratios that work.*0\.5"):
        prune_model(dense, 0.05)


def test_regnet_widths_that_are_not_whole_groups_are_refused():
    dense = dense_model("regnet", hidden_sizes=[16, 36], groups_width=8)
    with pytest.raises(ValueError, match="RegNet stage width 36 is not a multiple of groups_width=8"):
        prune_model(dense, 0.5)


def test_swin_keeps_its_head_counts_and_patch_merging_consistent():
    dense, surrogate, plan = pruned("swin", 0.5)
    assert surrogate.config.num_heads == dense.config.num_heads
    assert surrogate.config.embed_dim == 8
    # Patch merging concatenates the 4 pixels of a 2x2 patch: its norm keeps the same channels of each.
    kept = plan.kept_indices["swin.encoder.layers.0.downsample.norm.weight"][0]
    stage = plan.kept_indices["swin.embeddings.norm.weight"][0]
    assert kept == [offset * 16 + channel for offset in range(4) for channel in stage]


def test_vit_prunes_head_dimensions_within_each_head():
    dense, surrogate, plan = pruned("vit", 0.5)
    assert surrogate.config.num_attention_heads == 4 and surrogate.config.hidden_size == 16
    kept = plan.kept_indices["vit.layers.0.attention.q_proj.weight"][0]
    assert [sum(1 for i in kept if i // 8 == head) for head in range(4)] == [4, 4, 4, 4]
