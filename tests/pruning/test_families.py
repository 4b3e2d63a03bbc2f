"""Every supported family and every model class transformers offers for it, on tiny configs built locally.

The supported class of each family prunes into a surrogate of the same class that reloads with identical weights
(and logits to float rounding) and is scored for probabilities and features; every other class of the family is
refused by name. Exact fusion for every family is in `test_fusion.py`; the tiny configs are in `conftest.py`. The
parametrization comes from `SUPPORTED_FAMILIES` and `family_model_classes`, which also render the README support
table, so the table lists exactly the classes tested here.
"""

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from torch import nn
from transformers import (
    AutoModelForImageClassification,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    LevitConfig,
    LevitForImageClassification,
    ViTImageProcessor,
    pipeline,
)

from conftest import (
    IMAGE_SIZE,
    RATIOS,
    REFUSED_CLASSES,
    TINY_CONFIGS,
    assert_same_outputs,
    assert_states_equal,
    batch,
    dense_model,
    pruned,
    tiny_config,
)
from prunefuse_hf import prune_model, score_pool
from prunefuse_hf.pruning.cost import model_cost
from prunefuse_hf.pruning.families import (
    DETECTION_FAMILIES,
    FAMILY_ADAPTERS,
    GENERAL_FAMILIES,
    GENERAL_SEGMENTATION_FAMILIES,
    SEGMENTATION_ADAPTERS,
    SUPPORTED_FAMILIES,
    segmentation_class_names,
)
from prunefuse_hf.pruning.modeling import load_image_classifier
from prunefuse_hf.pruning.support import (
    check_supported_model,
    family_model_classes,
    image_classification_classes,
    refused_model_classes,
    support_table_markdown,
)

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


families = pytest.mark.parametrize("model_type", SUPPORTED_FAMILIES)
ratios = pytest.mark.parametrize("ratio", RATIOS)


class Pixels:
    """A pool of seeded random images, read a batch at a time (what `score_pool` reads)."""

    def __init__(self, num_channels, size=6, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.pixel_values = torch.randn(size, num_channels, IMAGE_SIZE, IMAGE_SIZE, generator=generator)

    def __len__(self):
        return len(self.pixel_values)

    def batch(self, rows):
        return self.pixel_values[rows]


def classifier_input_width(model):
    linear = [m for m in model.classifier.modules() if isinstance(m, nn.Linear)]
    return linear[-1].in_features


def test_every_supported_family_has_a_tiny_config_and_a_tolerance():
    assert set(TINY_CONFIGS) == set(SUPPORTED_FAMILIES) == set(PARAM_RATIO_TOLERANCE)


@families
def test_each_family_runs_one_of_the_classes_transformers_offers_and_refuses_the_rest(model_type):
    supported = FAMILY_ADAPTERS[model_type].model_class
    offered = family_model_classes(model_type)
    assert supported in image_classification_classes(model_type)
    assert offered[0] == supported
    # A segmentation class of the family that a segmentation rule prunes (test_segmentation.py) is not refused.
    segmentation = {name for name in offered if name in segmentation_class_names()}
    assert set(offered) == {supported, *refused_model_classes()[model_type], *segmentation}
    assert len(offered) == 1 + len(refused_model_classes()[model_type]) + len(segmentation) >= 2


def test_support_table_has_a_row_per_supported_class_and_lists_the_refused_ones():
    table, not_prunable, refused = support_table_markdown().split("\n\n")
    rows = table.splitlines()[2:]
    assert len(rows) == (
        len(SUPPORTED_FAMILIES)
        + len(DETECTION_FAMILIES)
        + len(GENERAL_FAMILIES)
        + len(SEGMENTATION_ADAPTERS)
        + len(GENERAL_SEGMENTATION_FAMILIES)
    )
    for row, model_type in zip(rows, SUPPORTED_FAMILIES):
        assert f"| `{model_type}` | `{FAMILY_ADAPTERS[model_type].model_class}` | narrowed config |" in row
    assert not_prunable.startswith("Not prunable") and "`CvtForImageClassification`" in not_prunable
    assert refused.startswith("Refused by name")
    for _, name in REFUSED_CLASSES:
        assert f"`{name}`" in refused, name


@families
def test_the_supported_class_passes_the_check_and_its_surrogate_scores_probs_and_features(model_type):
    dense, surrogate, _ = pruned(model_type, 0.5)
    assert type(dense).__name__ == FAMILY_ADAPTERS[model_type].model_class
    check_supported_model(dense, pruning_ratio=0.5)
    check_supported_model(surrogate, pruning_ratio=0.5)
    pool = Pixels(dense.config.num_channels)
    for model in (dense, surrogate):
        scores = score_pool(model, pool, np.arange(10, 16), batch_size=4, outputs=("probs", "features"),
                            show_progress=False)  # fmt: skip
        assert scores.pool_indices.tolist() == list(range(10, 16))
        assert scores.probs.shape == (6, dense.config.num_labels)
        assert torch.allclose(scores.probs.sum(1), torch.ones(6))
        assert scores.features.shape == (6, classifier_input_width(model))
    assert classifier_input_width(surrogate) < classifier_input_width(dense)


@pytest.mark.parametrize(("model_type", "class_name"), REFUSED_CLASSES)
def test_every_other_class_of_a_supported_family_is_refused_by_name(model_type, class_name):
    torch.manual_seed(0)
    model = getattr(transformers, class_name)(tiny_config(model_type))
    adapter = FAMILY_ADAPTERS[model_type]
    expected = rf"{class_name} \({adapter.name} family, model_type '{model_type}'\).* Use {adapter.model_class} instead"
    for ratio in (0.5, 0.0):
        with pytest.raises(ValueError, match=expected):
            check_supported_model(model, pruning_ratio=ratio)
        # The library entry point refuses it the same way, instead of failing inside the dependency graph.
        with pytest.raises(ValueError, match=expected):
            prune_model(model, ratio)


def test_other_families_run_as_image_classifiers_and_prune_through_the_general_path():
    config = Dinov2Config(image_size=IMAGE_SIZE, patch_size=8, hidden_size=16, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=32, num_labels=3)  # fmt: skip
    classifier = Dinov2ForImageClassification(config)
    check_supported_model(classifier, pruning_ratio=0.0)
    check_supported_model(classifier, pruning_ratio=0.5)  # no named adapter: the general path prunes it
    check_supported_model(classifier)
    with pytest.raises(
        ValueError, match="Dinov2Model .*not an image classifier.* Use Dinov2ForImageClassification"
    ):
        check_supported_model(Dinov2Model(config), pruning_ratio=0.0)
    with pytest.raises(ValueError, match="Linear is not a transformers model"):
        check_supported_model(nn.Linear(2, 2), pruning_ratio=0.0)


@families
@ratios
def test_surrogate_reloads_with_identical_weights_and_runs_in_a_pipeline(tmp_path, model_type, ratio):
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
        assert_same_outputs(reloaded(pixel_values).logits, surrogate(pixel_values).logits)
    assert_states_equal(reloaded.state_dict(), surrogate.state_dict())

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


def test_a_family_that_cannot_be_pruned_is_refused_by_name_with_the_reason():
    levit = LevitForImageClassification(
        LevitConfig(
            image_size=IMAGE_SIZE, hidden_sizes=[16, 24, 32], num_attention_heads=[1, 1, 1],
            depths=[1, 1, 1], key_dim=[8, 8, 8], num_labels=3,
        )
    )  # fmt: skip
    check_supported_model(levit, pruning_ratio=0.25)  # LeViT takes the general path (attention kept dense)
    focalnet = transformers.FocalNetForImageClassification(
        transformers.FocalNetConfig(
            image_size=IMAGE_SIZE, patch_size=4, embed_dim=16, depths=[1, 1], num_labels=3
        )
    )
    with pytest.raises(
        NotImplementedError, match=r"FocalNetForImageClassification .*'focalnet'.* never finishes"
    ):
        prune_model(focalnet, 0.25)


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
    # Every head keeps the same positions: Torch-Pruning's head-dimension rule, which the general path uses.
    assert len({tuple(i % 8 for i in kept[4 * h : 4 * h + 4]) for h in range(4)}) == 1
