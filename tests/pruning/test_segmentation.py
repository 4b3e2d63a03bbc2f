"""Semantic-segmentation models: prune, reload, fuse exactly, on tiny configs built locally.

One parametrization over every entry of `SEGMENTATION_ADAPTERS` (narrowed config: SegFormer, UperNet with ConvNeXt
and Swin backbones) and `GENERAL_SEGMENTATION_FAMILIES` (general path: MobileNetV2 + DeepLabV3). For each: the
surrogate keeps the class and `num_labels`, reloads with `AutoModelForSemanticSegmentation` (or `load_surrogate`) with
identical weights (and logits to float rounding), an untrained one fuses back to θ0 bit for bit, a trained one lands
exactly at its kept indices with every other entry at θ0, and its parameters are about (1 − p)² of the dense model's.
Classes no rule covers are refused by name before work, and run with `pruning_ratio=0`.
"""

import copy

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers import AutoModelForSemanticSegmentation, SegformerImageProcessor, pipeline

from conftest import (
    IMAGE_SIZE,
    SEGMENTATION_NUM_LABELS,
    SEGMENTATION_TINY_CONFIGS,
    assert_fused_at_kept_indices,
    assert_same_outputs,
    assert_states_equal,
    pruned_segmentation,
    segmentation_batch,
    segmentation_model,
    segmentation_sgd_steps,
)
from prunefuse_hf import PruningPlan, fuse_into_dense, prune_model
from prunefuse_hf.constants import PRUNING_PATH_CONFIG, PRUNING_PATH_REPLAY
from prunefuse_hf.pruning import load_surrogate, save_surrogate
from prunefuse_hf.pruning.families import (
    GENERAL_SEGMENTATION_FAMILIES,
    REFUSED_SEGMENTATION_CLASSES,
    SEGMENTATION_ADAPTERS,
    segmentation_family,
)
from prunefuse_hf.pruning.support import check_supported_model, refused_model_classes, support_table_markdown

CONFIG_PATH = list(SEGMENTATION_ADAPTERS)
GENERAL_PATH = list(GENERAL_SEGMENTATION_FAMILIES)
# Every ratio on the narrowed-config path; p = 0.5 on the general path (its pruning traces a larger graph).
CASES = [(key, ratio) for key in CONFIG_PATH for ratio in (0.25, 0.5, 0.75)] + [
    (key, 0.5) for key in GENERAL_PATH
]
cases = pytest.mark.parametrize(("key", "ratio"), CASES, ids=[f"{k}-{r}" for k, r in CASES])
keys = pytest.mark.parametrize("key", CONFIG_PATH + GENERAL_PATH)

# |surrogate params / dense params - (1 - p)^2| bounds: the classifiers' outputs, the 3 input channels of the stem,
# biases and norms (linear in the width) push the ratio above (1 - p)^2.
PARAM_RATIO_TOLERANCE = {
    "SegformerForSemanticSegmentation": 0.03,
    "UperNetForSemanticSegmentation/convnext": 0.03,
    "UperNetForSemanticSegmentation/swin": 0.03,
    "MobileNetV2ForSemanticSegmentation": 0.03,
}


def logits(model, pixel_values):
    model.eval()
    with torch.no_grad():
        return model(pixel_values=pixel_values).logits


def test_every_segmentation_entry_has_a_tiny_config_and_a_tolerance():
    assert (
        set(SEGMENTATION_TINY_CONFIGS) == set(CONFIG_PATH) | set(GENERAL_PATH) == set(PARAM_RATIO_TOLERANCE)
    )


@keys
def test_the_segmentation_class_passes_the_check_and_finds_its_registry_entry(key):
    dense = segmentation_model(key)
    assert type(dense).__name__ == key.split("/")[0]
    entry = segmentation_family(dense)
    assert entry is (SEGMENTATION_ADAPTERS.get(key) or GENERAL_SEGMENTATION_FAMILIES.get(key))
    for ratio in (0.0, 0.5, None):
        check_supported_model(dense, pruning_ratio=ratio)


@cases
def test_surrogate_keeps_class_and_classes_and_reloads_with_identical_weights(tmp_path, key, ratio):
    dense, surrogate, plan = pruned_segmentation(key, ratio)
    assert type(surrogate) is type(dense)
    assert plan.model_class == type(dense).__name__
    assert plan.pruning_path == (PRUNING_PATH_CONFIG if key in CONFIG_PATH else PRUNING_PATH_REPLAY)
    assert surrogate.config.num_labels == dense.config.num_labels == SEGMENTATION_NUM_LABELS
    assert surrogate.config.id2label == dense.config.id2label
    pixel_values, _ = segmentation_batch(dense, size=2)
    dense_logits, surrogate_logits = logits(dense, pixel_values), logits(surrogate, pixel_values)
    assert surrogate_logits.shape == dense_logits.shape
    assert surrogate_logits.shape[:2] == (2, SEGMENTATION_NUM_LABELS)

    save_surrogate(surrogate, plan, tmp_path)
    reloaded = load_surrogate(tmp_path)
    assert type(reloaded) is type(dense)
    assert_same_outputs(logits(reloaded, pixel_values), surrogate_logits)
    assert_states_equal(reloaded.state_dict(), surrogate.state_dict())
    if key in CONFIG_PATH:
        # A plain checkpoint with a narrowed config: transformers' own auto class reloads it.
        auto = AutoModelForSemanticSegmentation.from_pretrained(tmp_path)
        assert type(auto) is type(dense)
        assert_same_outputs(logits(auto, pixel_values), surrogate_logits)
        assert_states_equal(auto.state_dict(), surrogate.state_dict())


@cases
def test_an_untrained_segmentation_surrogate_fuses_back_to_the_dense_weights_bit_for_bit(key, ratio):
    dense, surrogate, plan = pruned_segmentation(key, ratio)
    assert plan.num_pruned_tensors > 0
    assert_states_equal(fuse_into_dense(dense, surrogate, plan).state_dict(), dense.state_dict())


@cases
def test_a_trained_segmentation_surrogate_lands_at_its_kept_indices_and_the_rest_keeps_theta0(
    tmp_path, key, ratio
):
    dense, surrogate, plan = pruned_segmentation(key, ratio)
    dense_before = copy.deepcopy(dense.state_dict())
    losses = segmentation_sgd_steps(surrogate)
    assert losses[-1] < losses[0]
    trained = copy.deepcopy(surrogate.state_dict())

    fused = fuse_into_dense(dense, surrogate, PruningPlan.from_dict(plan.to_dict()))

    assert_fused_at_kept_indices(fused, trained, dense_before, plan)
    assert_states_equal(dense.state_dict(), dense_before)
    # The fused model is a plain checkpoint of the dense class that reloads with identical weights.
    fused.save_pretrained(tmp_path)
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path)
    assert type(reloaded) is type(dense)
    pixel_values, _ = segmentation_batch(dense, size=2)
    assert_same_outputs(logits(reloaded, pixel_values), logits(fused, pixel_values))
    assert_states_equal(reloaded.state_dict(), fused.state_dict())


@cases
def test_segmentation_parameters_follow_the_square_of_the_kept_width(key, ratio):
    dense, surrogate, _ = pruned_segmentation(key, ratio)
    dense_params = sum(p.numel() for p in dense.parameters())
    surrogate_params = sum(p.numel() for p in surrogate.parameters())
    assert surrogate_params / dense_params == pytest.approx((1 - ratio) ** 2, abs=PARAM_RATIO_TOLERANCE[key])


def test_segformer_narrows_every_stage_head_dimension_and_the_decoder_and_keeps_head_counts():
    dense, surrogate, plan = pruned_segmentation("SegformerForSemanticSegmentation", 0.5)
    assert surrogate.config.hidden_sizes == [8, 16, 24, 32]
    assert surrogate.config.num_attention_heads == dense.config.num_attention_heads
    assert surrogate.config.decoder_hidden_size == 16
    attention = surrogate.segformer.stages[1].blocks[0].attention
    assert attention.sequence_reduction.sequence_reduction.out_channels == 16
    assert surrogate.segformer.stages[1].blocks[0].mlp.fc1.out_features == 16 * dense.config.mlp_ratios[1]
    assert surrogate.decode_head.classifier.out_channels == SEGMENTATION_NUM_LABELS
    # Every head keeps the same positions of its dimensions (stage 1: 2 heads of 16).
    kept = plan.kept_indices["segformer.stages.1.blocks.0.attention.q_proj.weight"][0]
    assert [i - 16 for i in kept[8:]] == kept[:8] and max(kept[:8]) < 16


def test_upernet_narrows_its_backbone_and_both_heads_and_keeps_the_classes():
    dense, surrogate, plan = pruned_segmentation("UperNetForSemanticSegmentation/convnext", 0.5)
    assert surrogate.config.backbone_config.hidden_sizes == [4, 8, 12, 16]
    assert (surrogate.config.hidden_size, surrogate.config.auxiliary_channels) == (16, 8)
    for head in (surrogate.decode_head, surrogate.auxiliary_head):
        assert head.classifier.out_channels == SEGMENTATION_NUM_LABELS
    # The auxiliary head reads the third stage; it feeds only the loss and is pruned with the rest.
    assert plan.surrogate_shape("auxiliary_head.convs.0.conv.weight")[:2] == [8, 12]


def test_upernet_swin_narrows_the_final_layernorm_its_backbone_never_reads():
    _, surrogate, plan = pruned_segmentation("UperNetForSemanticSegmentation/swin", 0.5)
    assert plan.kept_indices["backbone.swin.layernorm.weight"][0] == list(range(32))
    assert surrogate.config.backbone_config.num_heads == [2, 2, 4]


@pytest.mark.parametrize("key", CONFIG_PATH)
def test_the_reloaded_segmentation_surrogate_runs_in_an_image_segmentation_pipeline(tmp_path, key):
    dense, surrogate, plan = pruned_segmentation(key, 0.5)
    surrogate.config.id2label = {i: f"class {i}" for i in range(SEGMENTATION_NUM_LABELS)}
    surrogate.config.label2id = {name: i for i, name in surrogate.config.id2label.items()}
    save_surrogate(surrogate, plan, tmp_path)
    processor = SegformerImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_reduce_labels=False
    )
    segment = pipeline("image-segmentation", model=str(tmp_path), image_processor=processor, device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    masks = segment(image, subtask="semantic")
    assert masks and {m["label"] for m in masks} <= set(surrogate.config.id2label.values())
    assert all(m["mask"].size == (48, 40) for m in masks)


def test_segmentation_classes_of_supported_families_are_no_longer_refused_as_other_heads():
    refused = {name for names in refused_model_classes().values() for name in names}
    assert "MobileNetV2ForSemanticSegmentation" not in refused
    table = support_table_markdown()
    for key in CONFIG_PATH:
        adapter = SEGMENTATION_ADAPTERS[key]
        assert (
            f"| {adapter.name} | `{adapter.model_type}` | `{adapter.model_class}` | narrowed config |"
            in table
        )
    for family in GENERAL_SEGMENTATION_FAMILIES.values():
        assert f"| `{family.model_class}` | general (replay) |" in table
    for name in REFUSED_SEGMENTATION_CLASSES:
        assert f"`{name}`" in table


def test_a_segmentation_class_no_rule_covers_is_refused_by_name_and_runs_with_a_zero_ratio():
    # UperNet on a ResNet backbone: no tested rule.
    config = transformers.UperNetConfig(
        backbone_config=transformers.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
            out_features=["stage1", "stage2", "stage3", "stage4"],
        ),
        hidden_size=16, auxiliary_channels=8, num_labels=3,
    )  # fmt: skip
    model = transformers.UperNetForSemanticSegmentation(config)
    expected = (
        r"UperNetForSemanticSegmentation \(model_type 'upernet', resnet backbone\) cannot be pruned: .*"
        r"pruning_ratio: 0 .*UperNetForSemanticSegmentation \(convnext backbone\)"
    )
    with pytest.raises(NotImplementedError, match=expected):
        check_supported_model(model, pruning_ratio=0.5)
    with pytest.raises(NotImplementedError, match=expected):
        prune_model(model, 0.5)
    check_supported_model(model, pruning_ratio=0.0)
    surrogate, plan = prune_model(model, 0.0)
    assert plan.kept_indices == {} and type(surrogate) is type(model)


@pytest.mark.parametrize("class_name", list(REFUSED_SEGMENTATION_CLASSES))
def test_segmentation_classes_that_cannot_be_pruned_are_refused_before_work_with_the_reason(class_name):
    vit_like = dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                    intermediate_size=32, num_labels=3)  # fmt: skip
    if class_name == "BeitForSemanticSegmentation":
        config = transformers.BeitConfig(**vit_like, out_indices=[0, 1, 2, 3], auxiliary_channels=8)
    else:
        config = transformers.DPTConfig(**vit_like, neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8,
                                         backbone_out_indices=[0, 1, 2, 3])  # fmt: skip
    model = getattr(transformers, class_name)(config)
    expected = rf"{class_name} \(model_type '{config.model_type}'\) cannot be pruned: .*pruning_ratio: 0"
    with pytest.raises(NotImplementedError, match=expected):
        prune_model(model, 0.5)
    surrogate, plan = prune_model(model, 0.0)
    assert plan.kept_indices == {} and type(surrogate) is type(model)
