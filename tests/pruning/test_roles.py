"""Object detectors prune into surrogates of their own class and fuse back exactly (`pruning/roles.py`).

Every family of `DETECTION_FAMILIES` (tiny configs in `conftest.py`), at every tested ratio: the surrogate narrows
what the config can express and keeps the queries, classes and box outputs; it reloads with
`AutoModelForObjectDetection` with identical `logits` and `pred_boxes`; the untrained surrogate fuses back to the
dense weights bit for bit, a trained one exactly at the kept indices. Other detector classes and families are
refused by name.
"""

import pytest
import torch
import transformers
from transformers import AutoModelForObjectDetection

from conftest import (
    DETECTION_IMAGE_SIZE,
    DETECTION_TINY_CONFIGS,
    RATIOS,
    assert_fused_at_kept_indices,
    assert_states_equal,
    detection_batch,
    detection_config,
    detection_model,
    kept_mask,
    pruned_detector,
)
from prunefuse_hf import PruningPlan, fuse_into_dense, prune_model
from prunefuse_hf.pruning import load_surrogate, save_surrogate
from prunefuse_hf.pruning.cost import model_cost
from prunefuse_hf.pruning.families import DETECTION_ADAPTERS, DETECTION_FAMILIES
from prunefuse_hf.pruning.support import check_supported_model, refused_model_classes, support_table_markdown

# |surrogate params / dense params - (1 - p)^2| bounds. What does not narrow or narrows linearly pushes the ratio up:
# the backbone stem on 3 input channels, norms and biases; for YOLOS the position tables (tokens x width) and the
# patch embedding's 3 x 8 x 8 inputs, a large share of a tiny ViT.
PARAM_RATIO_TOLERANCE = {
    "detr": 0.04,
    "conditional_detr": 0.04,
    "yolos": 0.1,
    "deformable_detr": 0.03,
    "rt_detr": 0.03,
    "rt_detr_v2": 0.03,
}
# The class and box heads training must change, by family.
HEAD_NAMES = {"class": ("class_labels_classifier", "class_embed"), "box": ("bbox_predictor", "bbox_embed")}

families = pytest.mark.parametrize("model_type", DETECTION_FAMILIES)
ratios = pytest.mark.parametrize("ratio", RATIOS)


def outputs(model, pixel_values):
    model.eval()
    with torch.no_grad():
        result = model(pixel_values=pixel_values)
    return result.logits, result.pred_boxes


def train_steps(model, steps=2, lr=0.05):
    """A few SGD steps on the detector's own loss (Hungarian matching, classes and boxes)."""
    pixel_values, labels = detection_batch(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(pixel_values=pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def test_every_detection_family_has_a_tiny_config_and_a_tolerance():
    assert set(DETECTION_TINY_CONFIGS) == set(DETECTION_FAMILIES) == set(PARAM_RATIO_TOLERANCE)
    assert {adapter.task for adapter in DETECTION_ADAPTERS.values()} == {"object-detection"}


@families
@ratios
def test_surrogate_is_the_same_class_narrowed_and_keeps_queries_classes_and_boxes(model_type, ratio):
    dense, surrogate, plan = pruned_detector(model_type, ratio)
    assert type(surrogate) is type(dense)
    dense_config, config = dense.config, surrogate.config
    assert config.num_labels == dense_config.num_labels
    if model_type == "yolos":
        assert config.num_detection_tokens == dense_config.num_detection_tokens
        assert config.num_attention_heads == dense_config.num_attention_heads
        assert config.hidden_size < dense_config.hidden_size
        assert config.intermediate_size < dense_config.intermediate_size
    else:
        assert config.num_queries == dense_config.num_queries
        assert (config.encoder_attention_heads, config.decoder_attention_heads) == (
            dense_config.encoder_attention_heads,
            dense_config.decoder_attention_heads,
        )
        assert config.d_model == dense_config.d_model * (1 - ratio)
        assert config.encoder_ffn_dim < dense_config.encoder_ffn_dim
        assert config.backbone_config.hidden_sizes == [
            int(w * (1 - ratio)) for w in dense_config.backbone_config.hidden_sizes
        ]
    pixel_values, _ = detection_batch(dense)
    (dense_logits, dense_boxes), (logits, boxes) = (
        outputs(dense, pixel_values),
        outputs(surrogate, pixel_values),
    )
    assert logits.shape == dense_logits.shape and boxes.shape == dense_boxes.shape == (
        2,
        dense_logits.shape[1],
        4,
    )
    assert plan.pruning_path == "config"


@families
@ratios
def test_surrogate_reloads_with_auto_model_for_object_detection_with_identical_outputs(
    tmp_path, model_type, ratio
):
    _, surrogate, plan = pruned_detector(model_type, ratio)
    save_surrogate(surrogate, plan, tmp_path)
    pixel_values, _ = detection_batch(surrogate)
    expected = outputs(surrogate, pixel_values)
    for reloaded in (AutoModelForObjectDetection.from_pretrained(tmp_path), load_surrogate(tmp_path)):
        assert type(reloaded) is type(surrogate)
        for actual, wanted in zip(outputs(reloaded, pixel_values), expected):
            assert torch.equal(actual, wanted)
    assert PruningPlan.from_pretrained(tmp_path).kept_indices == plan.kept_indices


@families
@ratios
def test_untrained_surrogate_fuses_back_to_the_dense_weights_bit_for_bit(model_type, ratio):
    dense, surrogate, plan = pruned_detector(model_type, ratio)
    fused = fuse_into_dense(dense, surrogate, plan)
    assert type(fused) is type(dense)
    assert_states_equal(fused.state_dict(), dense.state_dict())


@families
def test_trained_surrogate_fuses_exactly_at_the_kept_indices_through_a_saved_plan(tmp_path, model_type):
    dense, surrogate, plan = pruned_detector(model_type, 0.5)
    dense_state = {name: t.clone() for name, t in dense.state_dict().items()}
    before = {name: t.clone() for name, t in surrogate.state_dict().items()}
    train_steps(surrogate)
    changed = [name for name, t in surrogate.state_dict().items() if not torch.equal(t, before[name])]
    assert any(head in name for name in changed for head in HEAD_NAMES["class"])
    assert any(head in name for name in changed for head in HEAD_NAMES["box"])
    save_surrogate(surrogate, plan, tmp_path)
    trained = load_surrogate(tmp_path)
    fused = fuse_into_dense(dense, trained, PruningPlan.from_pretrained(tmp_path))
    assert_fused_at_kept_indices(fused, trained.state_dict(), dense_state, plan)
    assert_states_equal(dense.state_dict(), dense_state)  # the dense model is left untouched
    # The fused detector is the dense architecture and runs as one.
    pixel_values, _ = detection_batch(dense)
    logits, boxes = outputs(fused, pixel_values)
    assert logits.shape == outputs(dense, pixel_values)[0].shape and torch.isfinite(boxes).all()


@families
@ratios
def test_parameter_ratio_follows_the_square_of_the_kept_width(model_type, ratio):
    dense, surrogate, _ = pruned_detector(model_type, ratio)
    dense_cost = model_cost(dense, DETECTION_IMAGE_SIZE)
    surrogate_cost = model_cost(surrogate, DETECTION_IMAGE_SIZE)
    assert surrogate_cost.params == sum(p.numel() for p in surrogate.parameters())
    assert surrogate_cost.params / dense_cost.params == pytest.approx(
        (1 - ratio) ** 2, abs=PARAM_RATIO_TOLERANCE[model_type]
    )
    # MACs fall faster than the width (a tiny model's stem on 3 input channels keeps it above the square).
    assert surrogate_cost.macs / dense_cost.macs < 1 - ratio


@families
def test_attention_keeps_its_heads_and_every_head_the_same_positions(model_type):
    dense, surrogate, plan = pruned_detector(model_type, 0.5)
    attention = next(
        (name, module)
        for name, module in dense.named_modules()
        if type(module).__name__.endswith("SelfAttention")
    )
    name, module = attention
    head_dim = getattr(module, "head_dim", None) or module.attention_head_size
    projection = next(n for n, child in module.named_children() if isinstance(child, torch.nn.Linear))
    kept = plan.kept_indices[f"{name}.{projection}.weight"][0]
    heads = dense.state_dict()[f"{name}.{projection}.weight"].shape[0] // head_dim
    per_head = [[i % head_dim for i in kept if i // head_dim == head] for head in range(heads)]
    assert all(len(positions) == head_dim // 2 for positions in per_head)
    assert all(positions == per_head[0] for positions in per_head)


@pytest.mark.parametrize("model_type", ["detr", "conditional_detr"])
def test_the_input_projection_reads_the_channels_the_backbone_kept(model_type):
    dense, _, plan = pruned_detector(model_type, 0.5)
    # The last stage's output: its bottleneck's last BatchNorm and the shortcut's, coupled by the residual sum.
    last_norm = "model.backbone.model.encoder.stages.1.layers.0.layer.2.normalization.weight"
    shortcut = "model.backbone.model.encoder.stages.1.layers.0.shortcut.normalization.running_var"
    stage_output = plan.kept_indices[shortcut][0]
    assert len(stage_output) == 16 and plan.kept_indices[last_norm][0] == stage_output
    assert plan.kept_indices["model.input_projection.weight"][1] == stage_output
    # The frozen BatchNorm buffers are planned with their convolution.
    assert kept_mask(plan, shortcut).sum() == 16


def test_deformable_detr_input_projections_read_the_channels_the_backbone_kept():
    _, _, plan = pruned_detector("deformable_detr", 0.5)
    kept = plan.kept_indices
    stage_output = [
        kept[f"model.backbone.model.encoder.stages.{stage}.layers.0.layer.2.normalization.weight"][0]
        for stage in (0, 1)
    ]
    assert kept["model.input_proj.0.0.weight"][1] == stage_output[0]
    assert kept["model.input_proj.1.0.weight"][1] == stage_output[1]
    # The extra level is a strided convolution on the last map.
    assert kept["model.input_proj.2.0.weight"][1] == stage_output[1]


def test_deformable_detr_query_embedding_keeps_the_residual_positions_in_its_position_and_target_halves():
    dense, surrogate, plan = pruned_detector("deformable_detr", 0.5)
    residual = plan.kept_indices["model.level_embed"][1]
    assert len(residual) == surrogate.config.d_model == 64
    assert plan.kept_indices["model.query_position_embeddings.weight"] == {
        1: residual + [dense.config.d_model + i for i in residual]
    }
    assert (
        plan.kept_indices["model.input_proj.0.1.weight"][0] == residual
    )  # the GroupNorm after each projection


@pytest.mark.parametrize("model_type", ["deformable_detr", "rt_detr", "rt_detr_v2"])
def test_deformable_attention_narrows_its_values_per_head_and_keeps_every_sampling_point(model_type):
    dense, surrogate, plan = pruned_detector(model_type, 0.5)
    attentions = [
        name
        for name, m in dense.named_modules()
        if type(m).__name__.endswith("MultiscaleDeformableAttention")
    ]
    assert attentions
    for name in attentions:
        module = dense.get_submodule(name)
        kept = plan.kept_indices[f"{name}.value_proj.weight"][0]
        head_dim = dense.config.d_model // module.n_heads
        per_head = [[i % head_dim for i in kept if i // head_dim == head] for head in range(module.n_heads)]
        assert all(positions == per_head[0] for positions in per_head) and len(per_head[0]) == head_dim // 2
        assert plan.kept_indices[f"{name}.output_proj.weight"][1] == kept
        # Offsets and weights per head, level and point: their outputs keep the dense size.
        for projection in ("sampling_offsets", "attention_weights"):
            assert list(plan.kept_indices[f"{name}.{projection}.weight"]) == [1]
            assert f"{name}.{projection}.bias" not in plan.kept_indices
            assert (
                surrogate.get_submodule(f"{name}.{projection}").out_features
                == getattr(module, projection).out_features
            )


def test_deformable_detr_with_box_refinement_prunes_reloads_and_fuses_back(tmp_path):
    dense = detection_model("deformable_detr", with_box_refine=True)
    surrogate, plan = prune_model(dense, 0.5)
    assert surrogate.config.with_box_refine and surrogate.config.d_model == 64
    save_surrogate(surrogate, plan, tmp_path)
    pixel_values, _ = detection_batch(dense)
    for actual, wanted in zip(
        outputs(AutoModelForObjectDetection.from_pretrained(tmp_path), pixel_values),
        outputs(surrogate, pixel_values),
    ):
        assert torch.equal(actual, wanted)
    assert_states_equal(fuse_into_dense(dense, surrogate, plan).state_dict(), dense.state_dict())


@pytest.mark.parametrize("model_type", ["rt_detr", "rt_detr_v2"])
def test_rt_detr_channel_lists_follow_the_backbone_and_the_encoder_and_the_query_settings_stay(model_type):
    dense, surrogate, plan = pruned_detector(model_type, 0.5)
    config, dense_config = surrogate.config, dense.config
    assert config.backbone_config.embedding_size == 8 and config.backbone_config.hidden_sizes == [8, 16, 24]
    assert config.encoder_in_channels == [8, 16, 24] == surrogate.model.backbone.intermediate_channel_sizes
    assert (config.encoder_hidden_dim, config.encoder_ffn_dim, config.d_model, config.decoder_ffn_dim) == (
        16,
        32,
        16,
        24,
    )
    assert config.decoder_in_channels == [16, 16, 16]
    for field in ("num_queries", "num_denoising", "label_noise_ratio", "box_noise_scale", "num_feature_levels",
                  "decoder_n_points", "learn_initial_query", "encoder_attention_heads", "decoder_attention_heads"):  # fmt: skip
        assert getattr(config, field) == getattr(dense_config, field), field
    kept = plan.kept_indices
    # The AIFI layer's residual is the projected last map's channels.
    assert (
        kept["model.encoder.aifi.0.layers.0.final_layer_norm.weight"][0]
        == kept["model.encoder_input_proj.2.1.weight"][0]
    )
    # Each decoder input projection reads the channels its encoder output kept (the CSP block's output sum).
    for level, block in enumerate(["fpn_blocks.1", "pan_blocks.0", "pan_blocks.1"]):
        encoder_output = kept[f"model.encoder.{block}.conv2.norm.weight"][0]
        assert len(encoder_output) == 16
        assert kept[f"model.decoder_input_proj.{level}.0.weight"][1] == encoder_output


def test_rt_detr_on_a_bottleneck_backbone_with_an_extra_level_and_narrow_csp_blocks_prunes_and_fuses_back():
    backbone = dict(model_type="rt_detr_resnet", embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1] * 4,
                    layer_type="bottleneck", out_indices=[2, 3, 4])  # fmt: skip
    dense = detection_model("rt_detr", backbone_config=backbone, encoder_in_channels=[32, 48, 64], num_feature_levels=4,
                            hidden_expansion=0.5)  # fmt: skip
    surrogate, plan = prune_model(dense, 0.5)
    assert surrogate.config.encoder_in_channels == [16, 24, 32]
    assert surrogate.model.encoder.fpn_blocks[0].conv1.conv.out_channels == 8  # int(16 x 0.5)
    # The extra level is a strided convolution on the encoder's last map.
    kept = plan.kept_indices
    assert (
        kept["model.decoder_input_proj.3.0.weight"][1]
        == kept["model.encoder.pan_blocks.1.conv3.norm.weight"][0]
    )
    assert_states_equal(fuse_into_dense(dense, surrogate, plan).state_dict(), dense.state_dict())
    pixel_values, _ = detection_batch(dense)
    assert outputs(surrogate, pixel_values)[1].shape == (2, 10, 4)


def _meta_detector(model_type, **config):
    from prunefuse_hf.pruning.families import DETECTION_ADAPTERS

    with torch.device("meta"):
        return getattr(transformers, DETECTION_ADAPTERS[model_type].model_class)(
            detection_config(model_type, **config)
        )


@pytest.mark.parametrize(
    ("model_type", "config", "message"),
    [
        (
            "deformable_detr",
            dict(two_stage=True, with_box_refine=True),
            "two_stage: true builds .*use two_stage: false, or pruning_ratio: 0",
        ),
        ("deformable_detr", dict(d_model=32), r"DeformableDetr family: d_model 32 .*no multiple of 32"),
        (
            "rt_detr",
            dict(encoder_in_channels=[16, 32, 64]),
            r"encoder_in_channels \[16, 32, 64\] are not the backbone.*pruning_ratio: 0",
        ),
        (
            "rt_detr_v2",
            dict(decoder_in_channels=[32, 32, 24]),
            r"decoder_in_channels \[32, 32, 24\] are not the enc.*pruning_ratio: 0",
        ),
        (
            "rt_detr",
            dict(num_feature_levels=5),
            "num_feature_levels 5 adds more than one level.*pruning_ratio: 0",
        ),
        (
            "rt_detr",
            dict(backbone_config=dict(model_type="resnet", out_features=["stage2", "stage3", "stage4"])),
            "only its transformers ResNet backbone.*pruning_ratio: 0",
        ),
    ],
)
def test_detector_configs_the_narrowing_rule_cannot_write_are_refused_naming_the_field(
    model_type, config, message
):
    with pytest.raises(ValueError, match=rf"pruning_ratio=0.5 cannot be expressed .*{message}"):
        prune_model(_meta_detector(model_type, **config), 0.5)


# A transformers ResNet backbone with every stage as a feature map, at the default sizes.
_RESNET = dict(use_timm_backbone=False, use_pretrained_backbone=False, backbone=None, backbone_config=dict(
    model_type="resnet", out_features=["stage1", "stage2", "stage3", "stage4"]))  # fmt: skip


@pytest.mark.parametrize(("model_type", "class_name"), [
    (model_type, name) for model_type, names in refused_model_classes().items() if model_type in DETECTION_FAMILIES
    for name in names
])  # fmt: skip
def test_other_classes_of_a_detection_family_are_refused_by_name(model_type, class_name):
    # DETR's panoptic mask head needs a 4-stage backbone and d_model + heads a multiple of 8: the default sizes, built
    # on the meta device (no memory, no init).
    config = detection_config(model_type)
    if class_name.endswith("ForSegmentation"):
        config = type(config)(**_RESNET, num_labels=3)
    with torch.device("meta"):
        model = getattr(transformers, class_name)(config)
    adapter = DETECTION_ADAPTERS[model_type]
    for ratio in (0.5, 0.0):
        with pytest.raises(
            ValueError, match=rf"{class_name} \({adapter.name} family.* Use {adapter.model_class}"
        ):
            check_supported_model(model, pruning_ratio=ratio)


def _meta_model(class_name, **config):
    config_class = getattr(transformers, class_name.replace("ForObjectDetection", "Config"))
    with torch.device("meta"):
        return getattr(transformers, class_name)(config_class(**config))


@pytest.mark.parametrize(
    ("class_name", "config", "reason"),
    [
        ("DFineForObjectDetection", {}, "splits that memory into heads without a value projection"),
        (
            "TableTransformerForObjectDetection",
            _RESNET,
            "object detectors prune only through a named adapter",
        ),
    ],
)
def test_detectors_without_an_adapter_are_refused_by_name_and_run_with_ratio_zero(class_name, config, reason):
    model = _meta_model(class_name, **config)
    with pytest.raises(NotImplementedError, match=rf"{class_name} \(model_type .*{reason}.*pruning_ratio=0"):
        check_supported_model(model, pruning_ratio=0.5)
    with pytest.raises(NotImplementedError, match=class_name):
        prune_model(model, 0.5)
    check_supported_model(model, pruning_ratio=0.0)


def test_a_ratio_that_leaves_no_head_dimension_names_the_family_and_the_limit():
    # d_model 32 over lcm(2, 4) = 4 heads: 32 x 0.1 leaves less than one multiple of 4.
    with pytest.raises(ValueError, match=r"pruning_ratio=0.9 .*Detr family: d_model 32 .*<= 0.875"):
        prune_model(detection_model("detr"), 0.9)


def test_configs_whose_widths_the_config_cannot_narrow_are_refused():
    with pytest.raises(ValueError, match="position_embedding_type 'learned'.*pruning_ratio: 0"):
        prune_model(detection_model("detr", position_embedding_type="learned"), 0.5)


def test_ratio_zero_copies_the_detector():
    dense = detection_model("conditional_detr")
    surrogate, plan = prune_model(dense, 0.0)
    assert plan.kept_indices == {}
    assert_states_equal(surrogate.state_dict(), dense.state_dict())


def test_support_table_lists_the_detectors():
    table = support_table_markdown()
    for adapter in DETECTION_ADAPTERS.values():
        assert (
            f"| {adapter.name} | `{adapter.model_type}` | `{adapter.model_class}` | narrowed config |"
            in table
        )
    for name in ("DetrForSegmentation", "DetrModel", "YolosModel", "DFineForObjectDetection"):
        assert f"`{name}`" in table
