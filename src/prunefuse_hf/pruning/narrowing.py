"""How a family's config is written down narrower: one rule per family, from the dense config and the pruning ratio.

Torch-Pruning finds the coupled channel groups by tracing; what it cannot know is how a narrower model is written
down as a config of the same family. Each rule here answers that: it builds the surrogate's config, rounding widths
the way the family's config does (heads, groups, `make_divisible`), and `prune_model` then prunes every coupled
channel group to exactly the width that config builds, so the surrogate is a plain HF checkpoint that reloads with
`from_pretrained`. Which family uses which rule is registry data (`pruning/families.py`).

Every rule takes `(dense_config, pruning_ratio)` and returns a new config (the dense one is left untouched); a width
that would vanish raises a `ValueError` naming the family, the ratio and what would work.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable


def scaled_width(width: int, pruning_ratio: float, family: str, what: str, multiple: int = 1) -> int:
    """`floor(width * (1 - pruning_ratio))`, rounded down to a multiple of `multiple`.

    Raises a `ValueError` naming the family, the ratio and the largest ratio that keeps the width when
    the result would be zero.
    """
    # round() first: (1 - 0.7) * 10 is 2.9999999999999996 in floating point, which must floor to 3.
    kept = math.floor(round(width * (1 - pruning_ratio), 6))
    kept -= kept % multiple
    if kept <= 0:
        largest = 1 - multiple / width
        hint = f"use pruning_ratio <= {largest:.4g}" if largest > 0 else "this width cannot be narrowed"
        raise ValueError(
            f"pruning_ratio={pruning_ratio} cannot be expressed for the {family} family: {what} {width} "
            f"x (1 - {pruning_ratio}) leaves no {'multiple of ' + str(multiple) if multiple > 1 else 'entry'}; "
            f"{hint}."
        )
    return kept


def narrow_resnet_config(dense_config, ratio):
    """ResNet: the stem and stage widths (basic and bottleneck blocks)."""
    config = copy.deepcopy(dense_config)
    # A bottleneck's inner width is derived by the config (out // reduction), so the stage widths and
    # the stem width are all the config needs.
    config.embedding_size = scaled_width(dense_config.embedding_size, ratio, "ResNet", "embedding_size")
    config.hidden_sizes = [scaled_width(w, ratio, "ResNet", "hidden size") for w in dense_config.hidden_sizes]
    return config


def narrow_convnext_config(dense_config, ratio):
    """ConvNeXt (V1 and V2): the stage widths."""
    config = copy.deepcopy(dense_config)
    # The MLP width is 4 x the stage width in the modeling code, so it follows.
    config.hidden_sizes = [
        scaled_width(w, ratio, "ConvNeXt", "hidden size") for w in dense_config.hidden_sizes
    ]
    return config


def narrow_vit_config(dense_config, ratio):
    """ViT-like encoders (ViT, DeiT, YOLOS): hidden size, MLP width and head dimension; the head count is kept."""
    config = copy.deepcopy(dense_config)
    heads = dense_config.num_attention_heads
    family = type(dense_config).__name__.removesuffix("Config")
    # The head count is kept and every head loses the same share of its dimensions; the residual
    # width is heads x head_dim in these configs, so it is rounded down to a multiple of the heads.
    head_dim = dense_config.hidden_size // heads
    config.hidden_size = heads * scaled_width(head_dim, ratio, family, "head dimension")
    config.intermediate_size = scaled_width(
        dense_config.intermediate_size, ratio, family, "intermediate_size"
    )
    if getattr(dense_config, "pooler_output_size", None) == dense_config.hidden_size:
        config.pooler_output_size = config.hidden_size
    return config


def narrow_swin_config(dense_config, ratio):
    """Swin: the embed dim of every stage; the head counts are kept."""
    config = copy.deepcopy(dense_config)
    # Stage i has embed_dim * 2**i channels split over num_heads[i] heads: the narrowed embed_dim is
    # the largest one (at most (1 - p) x embed_dim) that keeps every stage divisible by its heads.
    multiple = math.lcm(*(heads // math.gcd(heads, 2**i) for i, heads in enumerate(dense_config.num_heads)))
    config.embed_dim = scaled_width(dense_config.embed_dim, ratio, "Swin", "embed_dim", multiple)
    config.hidden_size = int(config.embed_dim * 2 ** (len(config.depths) - 1))
    return config


def narrow_by_multiplier(field: str) -> Callable[[object, float], object]:
    """The rule of a family whose widths all derive from one multiplier field (MobileNetV2's `depth_multiplier`,
    EfficientNet's `width_coefficient`): the field times (1 - p)."""

    def narrowed(dense_config, ratio):
        config = copy.deepcopy(dense_config)
        # Every width is derived from the multiplier with the family's own rounding (make_divisible,
        # round_filters); the pruned widths are then whatever this config builds.
        setattr(config, field, getattr(dense_config, field) * (1 - ratio))
        if dense_config.model_type == "efficientnet":
            from transformers.models.efficientnet.modeling_efficientnet import round_filters

            # The head width (top conv, top BatchNorm, classifier input) is a separate config field.
            if dense_config.hidden_dim == round_filters(dense_config, 1280):
                config.hidden_dim = round_filters(config, 1280)
        return config

    return narrowed


def narrow_regnet_config(dense_config, ratio):
    """RegNet: the stem and stage widths; every grouped convolution keeps its group count."""
    config = copy.deepcopy(dense_config)
    group_width = dense_config.groups_width
    for width in dense_config.hidden_sizes:
        if width % group_width:
            raise ValueError(
                f"RegNet stage width {width} is not a multiple of groups_width={group_width}; only "
                "RegNet configs whose stage widths are whole numbers of groups can be pruned."
            )
    # Every grouped convolution keeps its number of groups and each group loses the same number of
    # channels, so the narrowed stage width is groups x the narrowed group width.
    narrow_group_width = scaled_width(group_width, ratio, "RegNet", "groups_width")
    config.groups_width = narrow_group_width
    config.hidden_sizes = [width // group_width * narrow_group_width for width in dense_config.hidden_sizes]
    config.embedding_size = scaled_width(dense_config.embedding_size, ratio, "RegNet", "embedding_size")
    return config


def _refuse_unless(condition: bool, family: str, ratio: float, why: str) -> None:
    """Raise the `ValueError` of a config whose widths its family's narrowed config cannot express."""
    if not condition:
        raise ValueError(f"pruning_ratio={ratio} cannot be expressed for this {family} config: {why}")


def _narrow_resnet_detector(dense_config, ratio, family: str, extra_multiple: int = 1):
    """What DETR-style detectors on a transformers ResNet share: the backbone, `d_model` (head counts kept, even for
    the sine position embedding, a multiple of `extra_multiple`) and the FFN widths."""
    backbone = getattr(dense_config, "backbone_config", None)
    _refuse_unless(
        not getattr(dense_config, "use_timm_backbone", False)
        and getattr(backbone, "model_type", None) == "resnet",
        family,
        ratio,
        "only the transformers ResNet backbone (`use_timm_backbone: false`, `backbone_config` a ResNetConfig) narrows "
        "with the model; use such a config, or pruning_ratio: 0.",
    )
    _refuse_unless(
        getattr(dense_config, "position_embedding_type", "sine") == "sine",
        family,
        ratio,
        f"position_embedding_type {getattr(dense_config, 'position_embedding_type', None)!r} has its own tables of "
        "d_model / 2; use 'sine', or pruning_ratio: 0.",
    )
    config = copy.deepcopy(dense_config)
    config.backbone_config = narrow_resnet_config(backbone, ratio)
    # Both attention stacks keep their head counts and narrow every head alike; the sine position embedding
    # splits d_model into two halves, so it stays even.
    multiple = math.lcm(
        dense_config.encoder_attention_heads, dense_config.decoder_attention_heads, 2, extra_multiple
    )
    config.d_model = scaled_width(dense_config.d_model, ratio, family, "d_model", multiple)
    config.encoder_ffn_dim = scaled_width(dense_config.encoder_ffn_dim, ratio, family, "encoder_ffn_dim")
    config.decoder_ffn_dim = scaled_width(dense_config.decoder_ffn_dim, ratio, family, "decoder_ffn_dim")
    return config


def narrow_detr_config(dense_config, ratio):
    """DETR and Conditional DETR on a transformers ResNet backbone: the backbone widths, `d_model` and the FFN widths;
    the head counts are kept."""
    return _narrow_resnet_detector(dense_config, ratio, type(dense_config).__name__.removesuffix("Config"))


# Deformable DETR normalizes every input projection with `nn.GroupNorm(32, d_model)`.
DEFORMABLE_DETR_NORM_GROUPS = 32


def narrow_deformable_detr_config(dense_config, ratio):
    """Deformable DETR (one stage, with or without box refinement) on a transformers ResNet backbone: the backbone
    widths, `d_model` (the per-level input projections' outputs, the value and output projections of the deformable
    attention, the head dimension) and the FFN widths; the head counts, levels, sampling points and queries are
    kept."""
    family = "DeformableDetr"
    _refuse_unless(
        not dense_config.two_stage,
        family,
        ratio,
        "two_stage: true builds its proposals' position embeddings (`pos_trans`, 2 x d_model) from the sine of "
        "d_model / 2 frequencies, which no narrowing rule writes; use two_stage: false, or pruning_ratio: 0.",
    )
    # The input projections' GroupNorm keeps its 32 groups, so d_model stays a multiple of 32.
    return _narrow_resnet_detector(dense_config, ratio, family, DEFORMABLE_DETR_NORM_GROUPS)


def _backbone_channels(backbone) -> list[int]:
    """The channels of the feature maps an RT-DETR ResNet backbone returns (stem, then stages), by `out_indices`."""
    return [([backbone.embedding_size, *backbone.hidden_sizes])[i] for i in backbone.out_indices]


def narrow_rt_detr_config(dense_config, ratio):
    """RT-DETR (v1 and v2) on its transformers ResNet backbone: the backbone widths, the hybrid encoder (its input
    channels follow the backbone, `encoder_hidden_dim` with the CSP and RepVGG blocks, the AIFI layer's FFN and head
    dimension), the decoder (`decoder_in_channels` follow the encoder, `d_model`, FFN width, head dimension); the
    head counts, levels, sampling points, queries and denoising settings are kept."""
    family = type(dense_config).__name__.removesuffix("Config")
    backbone = dense_config.backbone_config
    _refuse_unless(
        getattr(backbone, "model_type", None) == "rt_detr_resnet",
        family,
        ratio,
        "only its transformers ResNet backbone (`backbone_config` an RTDetrResNetConfig) narrows with the model; "
        "use such a config, or pruning_ratio: 0.",
    )
    _refuse_unless(
        list(dense_config.encoder_in_channels) == _backbone_channels(backbone),
        family,
        ratio,
        f"encoder_in_channels {list(dense_config.encoder_in_channels)} are not the backbone's output channels "
        f"{_backbone_channels(backbone)}; make them equal, or use pruning_ratio: 0.",
    )
    _refuse_unless(
        list(dense_config.decoder_in_channels)
        == [dense_config.encoder_hidden_dim] * len(dense_config.decoder_in_channels),
        family,
        ratio,
        f"decoder_in_channels {list(dense_config.decoder_in_channels)} are not the encoder's output channels "
        f"(encoder_hidden_dim {dense_config.encoder_hidden_dim}); make them equal, or use pruning_ratio: 0.",
    )
    # The extra levels past the first read the previous extra level's d_model channels but are fed the encoder's
    # last map (transformers' RT-DETR), which only works while encoder_hidden_dim equals d_model.
    _refuse_unless(
        dense_config.num_feature_levels <= len(dense_config.decoder_in_channels) + 1,
        family,
        ratio,
        f"num_feature_levels {dense_config.num_feature_levels} adds more than one level to the "
        f"{len(dense_config.decoder_in_channels)} encoder maps; use at most one extra level, or pruning_ratio: 0.",
    )
    config = copy.deepcopy(dense_config)
    narrowed_backbone = copy.deepcopy(backbone)
    # The stem's first two convolutions are embedding_size / 2 wide.
    narrowed_backbone.embedding_size = scaled_width(
        backbone.embedding_size, ratio, family, "embedding_size", 2
    )
    narrowed_backbone.hidden_sizes = [
        scaled_width(w, ratio, family, "hidden size") for w in backbone.hidden_sizes
    ]
    config.backbone_config = narrowed_backbone
    config.encoder_in_channels = _backbone_channels(narrowed_backbone)
    # The AIFI layer keeps its head count; its 2D sine-cosine position embedding splits the width into 4 quarters.
    config.encoder_hidden_dim = scaled_width(
        dense_config.encoder_hidden_dim,
        ratio,
        family,
        "encoder_hidden_dim",
        math.lcm(dense_config.encoder_attention_heads, 4),
    )
    config.encoder_ffn_dim = scaled_width(dense_config.encoder_ffn_dim, ratio, family, "encoder_ffn_dim")
    config.decoder_in_channels = [config.encoder_hidden_dim] * len(dense_config.decoder_in_channels)
    config.d_model = scaled_width(
        dense_config.d_model, ratio, family, "d_model", dense_config.decoder_attention_heads
    )
    config.decoder_ffn_dim = scaled_width(dense_config.decoder_ffn_dim, ratio, family, "decoder_ffn_dim")
    return config


def narrow_segformer_config(dense_config, ratio):
    """SegFormer: every stage's width (head count kept) and the all-MLP decoder width."""
    config = copy.deepcopy(dense_config)
    # Every stage keeps its head count; each head loses the same share of its dimensions (the stage width is
    # heads x head_dim). The MLP width (stage width x mlp_ratio) and the spatial-reduction convolutions follow.
    config.hidden_sizes = [
        heads * scaled_width(width // heads, ratio, "SegFormer", f"stage {i} head dimension")
        for i, (width, heads) in enumerate(zip(dense_config.hidden_sizes, dense_config.num_attention_heads))
    ]
    config.decoder_hidden_size = scaled_width(
        dense_config.decoder_hidden_size, ratio, "SegFormer", "decoder_hidden_size"
    )
    return config


def narrow_upernet_config(
    narrow_backbone: Callable[[object, float], object],
) -> Callable[[object, float], object]:
    """The rule of UperNet on a backbone whose own rule is `narrow_backbone` (its image classifier's): the backbone
    narrows as that classifier does, then the decoder and auxiliary head widths."""

    def narrowed(dense_config, ratio):
        config = copy.deepcopy(dense_config)
        # The heads' input widths come from the backbone.
        config.backbone_config = narrow_backbone(dense_config.backbone_config, ratio)
        config.hidden_size = scaled_width(dense_config.hidden_size, ratio, "UperNet", "hidden_size")
        config.auxiliary_channels = scaled_width(
            dense_config.auxiliary_channels, ratio, "UperNet", "auxiliary_channels"
        )
        if dense_config.auxiliary_in_channels is not None:
            raise ValueError(
                "UperNet configs with an explicit auxiliary_in_channels cannot be narrowed; leave it None (the "
                "auxiliary head then reads the backbone's third stage width), or use pruning_ratio=0."
            )
        return config

    return narrowed
