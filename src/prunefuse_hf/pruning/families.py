"""What pruning needs to know about each supported model family.

Torch-Pruning finds the coupled channel groups by tracing; what it cannot know is how a narrower
model is written down as a config of the same family. Each `FamilyAdapter` answers that: it builds
the surrogate's config from the dense config and the pruning ratio (rounding widths the way the
family's config does: heads, groups, `make_divisible`), and `prune_model` then prunes every coupled
channel group to exactly the width that config builds, so the surrogate is a plain HF checkpoint that
reloads with `from_pretrained`. Families without an adapter are refused with an error naming them.

Each supported family has one model class that PruneFuse runs end to end (its `*ForImageClassification`);
`check_supported_model` refuses every other class transformers offers for the family (bare encoders,
backbones, masked-image-modeling and segmentation heads, DeiT's inference-only distilled classifier) by
name, before a run starts, saying which class to use instead.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# Input size used to trace a model whose config has no `image_size` (large enough for every
# downsampling stage of the supported families to keep a spatial extent).
DEFAULT_TRACE_IMAGE_SIZE = 64


@dataclass(frozen=True)
class FamilyAdapter:
    """How to prune one family.

    Args:
        model_type: The config's `model_type`.
        name: The family's name for people (README table, error messages).
        model_class: The transformers class PruneFuse runs for this family (prunes, fuses, scores); every
            other class of the family is refused by `check_supported_model`.
        narrows: What gets narrower, in words.
        narrowed_config: `(dense_config, pruning_ratio) -> surrogate config`. Raises a `ValueError`
            naming the family, the ratio and what would work when a width would vanish.
        ignored_parameters: Names (suffixes) of parameters that carry no channel dimension and must
            never be pruned (e.g. Swin's per-head relative position bias table).
        channels_last: Whether the model slices (batch, height, width, channels) tensors spatially
            (Swin's patch merging), which Torch-Pruning would otherwise read as channel slices.
        task: The `pipeline()` task of `model_class`.
        coupling: How the coupled groups are found: `"traced"` (Torch-Pruning's dependency graph of the whole
            model) or `"roles"` (Torch-Pruning on the convolutional backbone and the layers reading its feature maps,
            the transformer's widths by role: `pruning/roles.py`), for models Torch-Pruning cannot trace whole.
        keeps: What keeps its dense shape, in words (README table).
        output_layers: Dotted paths of the layers whose outputs are the classes (never pruned); a path whose
            module is absent or `None` (UperNet without its auxiliary head) is skipped.
        backbone_type: For a model built on a `backbone_config` (UperNet), the backbone's `model_type` this
            adapter prunes; `None` for a model without a separate backbone.
    """

    model_type: str
    name: str
    model_class: str
    narrows: str
    narrowed_config: Callable[[object, float], object]
    ignored_parameters: tuple[str, ...] = ()
    channels_last: bool = False
    task: str = "image-classification"
    coupling: str = "traced"
    keeps: str = "the head count; the classifier's outputs"
    output_layers: tuple[str, ...] = ("classifier",)
    backbone_type: str | None = None

    def ignored_layers(self, model: nn.Module) -> list[nn.Module]:
        """Modules whose output widths must not change: the layers whose outputs are the classes."""
        layers = []
        for path in self.output_layers:
            module = model
            for part in path.split("."):
                module = getattr(module, part, None)
            if isinstance(module, nn.Module):
                layers.append(module)
        return layers


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


def _resnet_config(dense_config, ratio):
    config = copy.deepcopy(dense_config)
    # A bottleneck's inner width is derived by the config (out // reduction), so the stage widths and
    # the stem width are all the config needs.
    config.embedding_size = scaled_width(dense_config.embedding_size, ratio, "ResNet", "embedding_size")
    config.hidden_sizes = [scaled_width(w, ratio, "ResNet", "hidden size") for w in dense_config.hidden_sizes]
    return config


def _convnext_config(dense_config, ratio):
    config = copy.deepcopy(dense_config)
    # The MLP width is 4 x the stage width in the modeling code, so it follows.
    config.hidden_sizes = [
        scaled_width(w, ratio, "ConvNeXt", "hidden size") for w in dense_config.hidden_sizes
    ]
    return config


def _vit_config(dense_config, ratio):
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


def _swin_config(dense_config, ratio):
    config = copy.deepcopy(dense_config)
    # Stage i has embed_dim * 2**i channels split over num_heads[i] heads: the narrowed embed_dim is
    # the largest one (at most (1 - p) x embed_dim) that keeps every stage divisible by its heads.
    multiple = math.lcm(*(heads // math.gcd(heads, 2**i) for i, heads in enumerate(dense_config.num_heads)))
    config.embed_dim = scaled_width(dense_config.embed_dim, ratio, "Swin", "embed_dim", multiple)
    config.hidden_size = int(config.embed_dim * 2 ** (len(config.depths) - 1))
    return config


def _multiplier_config(field: str):
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


def _regnet_config(dense_config, ratio):
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


FAMILY_ADAPTERS: dict[str, FamilyAdapter] = {
    adapter.model_type: adapter
    for adapter in [
        FamilyAdapter(
            "resnet",
            "ResNet",
            "ResNetForImageClassification",
            "stem and stage widths (basic and bottleneck)",
            _resnet_config,
        ),
        FamilyAdapter(
            "convnext",
            "ConvNeXt",
            "ConvNextForImageClassification",
            "stage widths (MLP width follows)",
            _convnext_config,
        ),
        FamilyAdapter(
            "convnextv2",
            "ConvNeXt V2",
            "ConvNextV2ForImageClassification",
            "stage widths (MLP and GRN follow)",
            _convnext_config,
        ),
        FamilyAdapter(
            "vit",
            "ViT",
            "ViTForImageClassification",
            "hidden size, MLP width, head dimension (head count kept)",
            _vit_config,
        ),
        FamilyAdapter(
            "deit",
            "DeiT",
            "DeiTForImageClassification",
            "hidden size, MLP width, head dimension (head count kept)",
            _vit_config,
        ),
        FamilyAdapter(
            "swin",
            "Swin",
            "SwinForImageClassification",
            "embed dim of every stage, MLP width, head dimension (head count kept)",
            _swin_config,
            ignored_parameters=("relative_position_bias_table",),
            channels_last=True,
        ),
        FamilyAdapter(
            "mobilenet_v2",
            "MobileNetV2",
            "MobileNetV2ForImageClassification",
            "all widths via depth_multiplier × (1 − p), with its make_divisible rounding",
            _multiplier_config("depth_multiplier"),
        ),
        FamilyAdapter(
            "regnet",
            "RegNet",
            "RegNetForImageClassification",
            "stem and stage widths (group count kept, group width narrowed)",
            _regnet_config,
        ),
        FamilyAdapter(
            "efficientnet",
            "EfficientNet",
            "EfficientNetForImageClassification",
            "all widths via width_coefficient × (1 − p), with its round_filters rounding",
            _multiplier_config("width_coefficient"),
        ),
    ]
}

# The families `prune_model` supports, in README order; tests iterate over it and
# `support_table_markdown` renders the README table from it, so the two cannot drift.
SUPPORTED_FAMILIES: tuple[str, ...] = tuple(FAMILY_ADAPTERS)


def _detr_config(dense_config, ratio):
    family = type(dense_config).__name__.removesuffix("Config")
    backbone = getattr(dense_config, "backbone_config", None)
    if getattr(dense_config, "use_timm_backbone", False) or getattr(backbone, "model_type", None) != "resnet":
        raise ValueError(
            f"pruning_ratio={ratio} cannot be expressed for this {family} config: only the transformers ResNet "
            "backbone (`use_timm_backbone: false`, `backbone_config` a ResNetConfig) narrows with the model; use such "
            "a config, or pruning_ratio: 0."
        )
    if getattr(dense_config, "position_embedding_type", "sine") != "sine":
        raise ValueError(
            f"pruning_ratio={ratio} cannot be expressed for this {family} config: position_embedding_type "
            f"{dense_config.position_embedding_type!r} has its own tables of d_model / 2; use 'sine', or "
            "pruning_ratio: 0."
        )
    config = copy.deepcopy(dense_config)
    config.backbone_config = _resnet_config(backbone, ratio)
    # Both attention stacks keep their head counts and narrow every head alike; the sine position embedding
    # splits d_model into two halves, so it stays even.
    multiple = math.lcm(dense_config.encoder_attention_heads, dense_config.decoder_attention_heads, 2)
    config.d_model = scaled_width(dense_config.d_model, ratio, family, "d_model", multiple)
    config.encoder_ffn_dim = scaled_width(dense_config.encoder_ffn_dim, ratio, family, "encoder_ffn_dim")
    config.decoder_ffn_dim = scaled_width(dense_config.decoder_ffn_dim, ratio, family, "decoder_ffn_dim")
    return config


_DETR_NARROWS = (
    "ResNet backbone widths, `d_model`, encoder/decoder FFN widths, head dimension (head count kept)"
)
_DETR_KEEPS = (
    "the head counts, `num_queries`, the class head's outputs (classes + no-object), the box head's 4"
)
# Object detectors: the same dataclass, their own registry (the classification families above are what the
# image-classification tests and the trainer iterate over).
DETECTION_ADAPTERS: dict[str, FamilyAdapter] = {
    adapter.model_type: adapter
    for adapter in [
        FamilyAdapter(
            "detr",
            "DETR",
            "DetrForObjectDetection",
            _DETR_NARROWS,
            _detr_config,
            task="object-detection",
            coupling="roles",
            keeps=_DETR_KEEPS,
        ),
        FamilyAdapter(
            "conditional_detr",
            "Conditional DETR",
            "ConditionalDetrForObjectDetection",
            _DETR_NARROWS,
            _detr_config,
            task="object-detection",
            coupling="roles",
            keeps=_DETR_KEEPS + " and the 2 reference-point outputs",
        ),
        FamilyAdapter(
            "yolos",
            "YOLOS",
            "YolosForObjectDetection",
            "hidden size (tokens, position embeddings), MLP width, head dimension (head count kept)",
            _vit_config,
            task="object-detection",
            coupling="roles",
            keeps="the head count, `num_detection_tokens`, the class head's outputs (classes + no-object), the box "
            "head's 4",
        ),
    ]
}
DETECTION_FAMILIES: tuple[str, ...] = tuple(DETECTION_ADAPTERS)

# Every named adapter, whatever its task: what `prune_model` and `check_supported_model` look up.
ADAPTERS: dict[str, FamilyAdapter] = {**FAMILY_ADAPTERS, **DETECTION_ADAPTERS}


@dataclass(frozen=True)
class GeneralFamily:
    """A family pruned by the general path (`pruning/replay.py`) and tested by name.

    Args:
        model_type: The config's `model_type`.
        name: The family's name for people.
        model_class: The image classifier that is tested end to end.
        narrows: What gets narrower.
        keeps: What keeps its dense shape.
    """

    model_type: str
    name: str
    model_class: str
    narrows: str
    keeps: str


_VIT_NARROWS = "hidden size, MLP width, head dimension (every head loses the same positions)"
GENERAL_FAMILIES: dict[str, GeneralFamily] = {
    family.model_type: family
    for family in [
        GeneralFamily(
            "timm_wrapper",
            "timm (ResNet, ConvNeXt, ViT, EfficientNet, MobileNetV3, ...)",
            "TimmWrapperForImageClassification",
            "every conv/linear width Torch-Pruning groups (SE blocks, layer scales, cls token, position embedding)",
            "the head count, the classifier's outputs",
        ),
        GeneralFamily(
            "dinov2",
            "DINOv2",
            "Dinov2ForImageClassification",
            _VIT_NARROWS
            + ", cls token, position embeddings, layer scale, SwiGLU; classifier input (cls ⊕ mean)",
            "the head count, `mask_token` (unused by the classifier)",
        ),
        GeneralFamily(
            "dinov2_with_registers",
            "DINOv2 with registers",
            "Dinov2WithRegistersForImageClassification",
            _VIT_NARROWS + ", cls and register tokens (their count kept), position embeddings, layer scale",
            "the head count, the number of register tokens, `mask_token`",
        ),
        GeneralFamily(
            "siglip",
            "SigLIP",
            "SiglipForImageClassification",
            _VIT_NARROWS + ", position table, the attention-pooling head (probe, its attention and MLP)",
            "the head count",
        ),
        GeneralFamily(
            "clip",
            "CLIP",
            "CLIPForImageClassification",
            _VIT_NARROWS + ", class embedding, position table, pre/post layer norms",
            "the head count",
        ),
        GeneralFamily(
            "beit",
            "BEiT",
            "BeitForImageClassification",
            _VIT_NARROWS + ", cls token, absolute position embeddings, layer scale",
            "the head count, relative position bias tables (one entry per head)",
        ),
        GeneralFamily(
            "data2vec-vision",
            "Data2Vec-Vision",
            "Data2VecVisionForImageClassification",
            _VIT_NARROWS + ", cls token, layer scale",
            "the head count, relative position bias tables",
        ),
        GeneralFamily(
            "swinv2",
            "Swin V2",
            "Swinv2ForImageClassification",
            "embed dim of every stage, patch merging, MLP width, head dimension",
            "the head count, `logit_scale`, the continuous position bias MLP",
        ),
        GeneralFamily(
            "mobilenet_v1",
            "MobileNetV1",
            "MobileNetV1ForImageClassification",
            "every convolution and BatchNorm (depthwise coupled)",
            "the classifier's outputs",
        ),
        GeneralFamily(
            "mobilevit",
            "MobileViT",
            "MobileViTForImageClassification",
            "conv widths, transformer hidden size, MLP width, head dimension",
            "the head count",
        ),
        GeneralFamily(
            "poolformer",
            "PoolFormer",
            "PoolFormerForImageClassification",
            "every width, layer scales",
            "the classifier's outputs",
        ),
        GeneralFamily(
            "mobilevitv2",
            "MobileViT V2",
            "MobileViTV2ForImageClassification",
            "conv widths, MLP width, residual width (fallback: attention outputs kept dense)",
            "the `qkv_proj` outputs (split `[1, d, d]`)",
        ),
        GeneralFamily(
            "levit",
            "LeViT",
            "LevitForImageClassification",
            "residual widths, MLP width (fallback: attention outputs kept dense)",
            "the fused query/key/value outputs, attention biases",
        ),
    ]
}

# Families neither path can prune, with the reason; `pruning_ratio=0` still runs them.
REFUSED_FAMILIES: dict[str, str] = {
    "pvt_v2": (
        "its attention reshapes the spatial-reduction convolution's output with the residual width, which "
        "Torch-Pruning prunes as an independent group (the pruned forward fails or is silently wrong)"
    ),
    "focalnet": "Torch-Pruning 1.6 never finishes building its pruning groups (focal modulation)",
    "cvt": "Torch-Pruning 1.6 cannot infer the channels of its convolutional projections (IndexError in shape inference)",
    # Object detectors without an adapter yet.
    "deformable_detr": (
        "its multi-scale deformable attention (sampling offsets and attention weights per head, level and point) and "
        "per-level input projections have no narrowing rule yet"
    ),
    "rt_detr": (
        "its hybrid encoder's channel lists must stay consistent with the backbone's, which no narrowing rule "
        "writes yet"
    ),
    "rt_detr_v2": (
        "its hybrid encoder's channel lists must stay consistent with the backbone's, which no narrowing rule "
        "writes yet"
    ),
    "d_fine": (
        "its hybrid encoder's channel lists must stay consistent with the backbone's, and its fine-grained "
        "distribution head has no narrowing rule yet"
    ),
}


def get_family_adapter(config) -> FamilyAdapter:
    """The adapter for a config's family, or a `NotImplementedError` naming the family."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise NotImplementedError(
            f"Pruning the '{model_type}' family ({type(config).__name__}) is not supported yet. Supported "
            f"families: {sorted(ADAPTERS)}. Use a model of a supported family (or pruning_ratio=0, "
            "which works for any family), or add a `FamilyAdapter` for this one in "
            "prunefuse_hf/pruning/families.py."
        )
    return ADAPTERS[model_type]


def model_image_size(model: nn.Module) -> int | tuple[int, int] | None:
    """The input size a model is built for: its config's `image_size` (the vision config's for CLIP and SigLIP), or
    for a timm model the size its patch embedding was built for, else its pretrained config's; `None` when none."""
    config = getattr(model.config, "vision_config", None) or model.config
    size = getattr(config, "image_size", None)
    timm_model = getattr(model, "timm_model", None)
    if size is None and timm_model is not None:
        size = getattr(getattr(timm_model, "patch_embed", None), "img_size", None)
        size = size or (getattr(timm_model, "pretrained_cfg", None) or {}).get("input_size", (None,))[-1]
    return tuple(size) if isinstance(size, (list, tuple)) else size


def example_pixel_values(
    model: nn.Module, image_size: int | None = None, batch_size: int = 1
) -> torch.Tensor:
    """A random `pixel_values` batch shaped for `model` (channels from its config), on its device."""
    config = getattr(model.config, "vision_config", None) or model.config
    if image_size is None:
        image_size = model_image_size(model) or DEFAULT_TRACE_IMAGE_SIZE
    if isinstance(image_size, (list, tuple)):
        height, width = image_size
    else:
        height = width = int(image_size)
    num_channels = getattr(config, "num_channels", 3)
    parameter = next(model.parameters())
    return torch.randn(
        batch_size, num_channels, height, width, device=parameter.device, dtype=parameter.dtype
    )


# ----- semantic segmentation -----
# Segmentation models are keyed by model class (SegFormer and MobileNetV2 also have image classifiers, which the
# registries above keep) and, for models built on a `backbone_config` (UperNet), by the backbone's `model_type`.


def _segformer_config(dense_config, ratio):
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


def _upernet_config(dense_config, ratio):
    config = copy.deepcopy(dense_config)
    backbone = dense_config.backbone_config
    # The backbone narrows as its image classifier does; the heads' input widths come from the backbone.
    config.backbone_config = FAMILY_ADAPTERS[backbone.model_type].narrowed_config(backbone, ratio)
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


_UPERNET_NARROWS = (
    "the decoder width (`hidden_size`), the auxiliary head (`auxiliary_channels`), and the backbone: "
)
SEGMENTATION_ADAPTERS: dict[str, FamilyAdapter] = {
    adapter.model_class + (f"/{adapter.backbone_type}" if adapter.backbone_type else ""): adapter
    for adapter in [
        FamilyAdapter(
            "segformer",
            "SegFormer",
            "SegformerForSemanticSegmentation",
            "every stage's hidden size, MLP width, head dimension (head count kept), spatial-reduction convs, "
            "the all-MLP decoder width (`decoder_hidden_size`)",
            _segformer_config,
            output_layers=("decode_head.classifier",),
        ),
        FamilyAdapter(
            "upernet",
            "UperNet (ConvNeXt backbone)",
            "UperNetForSemanticSegmentation",
            _UPERNET_NARROWS + "ConvNeXt stage widths (MLP width follows)",
            _upernet_config,
            output_layers=("decode_head.classifier", "auxiliary_head.classifier"),
            backbone_type="convnext",
        ),
        FamilyAdapter(
            "upernet",
            "UperNet (Swin backbone)",
            "UperNetForSemanticSegmentation",
            _UPERNET_NARROWS + "Swin embed dim of every stage, MLP width, head dimension (head count kept)",
            _upernet_config,
            ignored_parameters=("relative_position_bias_table",),
            channels_last=True,
            output_layers=("decode_head.classifier", "auxiliary_head.classifier"),
            backbone_type="swin",
        ),
    ]
}

# Segmentation classes the general path prunes (no config expresses their narrower widths), keyed by class name.
GENERAL_SEGMENTATION_FAMILIES: dict[str, GeneralFamily] = {
    family.model_class: family
    for family in [
        # The DeepLabV3 head's widths (ASPP, pooling branch, projection: 256) are fixed in the modeling code.
        GeneralFamily(
            "mobilenet_v2",
            "MobileNetV2 + DeepLabV3",
            "MobileNetV2ForSemanticSegmentation",
            "every convolution and BatchNorm of the backbone and of the DeepLabV3 head (ASPP, pooling branch, "
            "projection; depthwise coupled)",
            "`num_labels` (the per-pixel classifier's outputs)",
        ),
    ]
}

# Segmentation classes neither path prunes, with the reason; `pruning_ratio=0` still runs them.
REFUSED_SEGMENTATION_CLASSES: dict[str, str] = {
    "BeitForSemanticSegmentation": (
        "the general path prunes the channels its pyramid-pooling module concatenates but not the bottleneck "
        "convolution that reads them (the pruned forward fails)"
    ),
    "DPTForSemanticSegmentation": (
        "Torch-Pruning 1.6 does not finish building its pruning groups (over 5 minutes on a 4-layer, 32-wide config)"
    ),
}


def segmentation_family(model: nn.Module) -> FamilyAdapter | GeneralFamily | None:
    """The registry entry that prunes `model` (a `*ForSemanticSegmentation`), or `None` when none does.

    Matched by class (a subclass matches) and, for a model built on a `backbone_config`, by the backbone's
    `model_type`.
    """
    import transformers

    backbone = getattr(getattr(model, "config", None), "backbone_config", None)
    backbone_type = getattr(backbone, "model_type", None)
    for entry in [*SEGMENTATION_ADAPTERS.values(), *GENERAL_SEGMENTATION_FAMILIES.values()]:
        if not isinstance(model, getattr(transformers, entry.model_class)):
            continue
        if getattr(entry, "backbone_type", None) in (None, backbone_type):
            return entry
    return None


def segmentation_class_names() -> tuple[str, ...]:
    """Names of the segmentation classes some registry entry prunes."""
    return tuple(
        dict.fromkeys(
            entry.model_class
            for entry in [*SEGMENTATION_ADAPTERS.values(), *GENERAL_SEGMENTATION_FAMILIES.values()]
        )
    )
