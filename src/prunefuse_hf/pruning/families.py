"""What pruning needs to know about each model family: registry data only.

One table per task says which families prune how (Torch-Pruning's `PrunerBox` way: the rules live elsewhere, the
tables say who uses which). `FAMILY_ADAPTERS` (image classifiers), `DETECTION_ADAPTERS` and `SEGMENTATION_ADAPTERS`
hold the families whose narrower widths a config of the same family can express: each `FamilyAdapter` names its
model class, its config rule (`pruning/narrowing.py`), how its coupled groups are found (traced, or by role:
`pruning/roles.py`) and what never narrows. `GENERAL_FAMILIES` and `GENERAL_SEGMENTATION_FAMILIES` name the tested
families the general path prunes (`pruning/replay.py`); `REFUSED_FAMILIES` and `REFUSED_SEGMENTATION_CLASSES` those
neither path prunes, with the reason. Families without an entry are refused with an error naming them.

Each supported family has one model class that PruneFuse runs end to end (its `*ForImageClassification`);
`check_supported_model` (`pruning/support.py`) refuses every other class transformers offers for the family (bare
encoders, backbones, masked-image-modeling and segmentation heads, DeiT's inference-only distilled classifier) by
name, before a run starts, saying which class to use instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .narrowing import (
    narrow_by_multiplier,
    narrow_convnext_config,
    narrow_deformable_detr_config,
    narrow_detr_config,
    narrow_regnet_config,
    narrow_resnet_config,
    narrow_rt_detr_config,
    narrow_segformer_config,
    narrow_swin_config,
    narrow_upernet_config,
    narrow_vit_config,
)


@dataclass(frozen=True)
class FamilyAdapter:
    """How to prune one family.

    Args:
        model_type: The config's `model_type`.
        name: The family's name for people (README table, error messages).
        model_class: The transformers class PruneFuse runs for this family (prunes, fuses, scores); every
            other class of the family is refused by `check_supported_model`.
        narrows: What gets narrower, in words.
        narrowed_config: `(dense_config, pruning_ratio) -> surrogate config`, a rule of `pruning/narrowing.py`.
            Raises a `ValueError` naming the family, the ratio and what would work when a width would vanish.
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
        traced_modules: For `coupling="roles"`, dotted paths of the modules Torch-Pruning traces with the
            convolutional backbone (RT-DETR's hybrid encoder and its input projections): their widths are coupled by
            the model's convolutions, concatenations and sums, not by role.
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
    traced_modules: tuple[str, ...] = ()

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


FAMILY_ADAPTERS: dict[str, FamilyAdapter] = {
    adapter.model_type: adapter
    for adapter in [
        FamilyAdapter(
            "resnet",
            "ResNet",
            "ResNetForImageClassification",
            "stem and stage widths (basic and bottleneck)",
            narrow_resnet_config,
        ),
        FamilyAdapter(
            "convnext",
            "ConvNeXt",
            "ConvNextForImageClassification",
            "stage widths (MLP width follows)",
            narrow_convnext_config,
        ),
        FamilyAdapter(
            "convnextv2",
            "ConvNeXt V2",
            "ConvNextV2ForImageClassification",
            "stage widths (MLP and GRN follow)",
            narrow_convnext_config,
        ),
        FamilyAdapter(
            "vit",
            "ViT",
            "ViTForImageClassification",
            "hidden size, MLP width, head dimension (head count kept)",
            narrow_vit_config,
        ),
        FamilyAdapter(
            "deit",
            "DeiT",
            "DeiTForImageClassification",
            "hidden size, MLP width, head dimension (head count kept)",
            narrow_vit_config,
        ),
        FamilyAdapter(
            "swin",
            "Swin",
            "SwinForImageClassification",
            "embed dim of every stage, MLP width, head dimension (head count kept)",
            narrow_swin_config,
            ignored_parameters=("relative_position_bias_table",),
            channels_last=True,
        ),
        FamilyAdapter(
            "mobilenet_v2",
            "MobileNetV2",
            "MobileNetV2ForImageClassification",
            "all widths via depth_multiplier × (1 − p), with its make_divisible rounding",
            narrow_by_multiplier("depth_multiplier"),
        ),
        FamilyAdapter(
            "regnet",
            "RegNet",
            "RegNetForImageClassification",
            "stem and stage widths (group count kept, group width narrowed)",
            narrow_regnet_config,
        ),
        FamilyAdapter(
            "efficientnet",
            "EfficientNet",
            "EfficientNetForImageClassification",
            "all widths via width_coefficient × (1 − p), with its round_filters rounding",
            narrow_by_multiplier("width_coefficient"),
        ),
    ]
}

# The families `prune_model` supports, in README order; tests iterate over it and
# `support_table_markdown` renders the README table from it, so the two cannot drift.
SUPPORTED_FAMILIES: tuple[str, ...] = tuple(FAMILY_ADAPTERS)


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
            narrow_detr_config,
            task="object-detection",
            coupling="roles",
            keeps=_DETR_KEEPS,
        ),
        FamilyAdapter(
            "conditional_detr",
            "Conditional DETR",
            "ConditionalDetrForObjectDetection",
            _DETR_NARROWS,
            narrow_detr_config,
            task="object-detection",
            coupling="roles",
            keeps=_DETR_KEEPS + " and the 2 reference-point outputs",
        ),
        FamilyAdapter(
            "yolos",
            "YOLOS",
            "YolosForObjectDetection",
            "hidden size (tokens, position embeddings), MLP width, head dimension (head count kept)",
            narrow_vit_config,
            task="object-detection",
            coupling="roles",
            keeps="the head count, `num_detection_tokens`, the class head's outputs (classes + no-object), the box "
            "head's 4",
        ),
        FamilyAdapter(
            "deformable_detr",
            "Deformable DETR",
            "DeformableDetrForObjectDetection",
            "ResNet backbone widths, `d_model` (per-level input projections, value and output projections of the "
            "deformable attention), encoder/decoder FFN widths, head dimension (head count kept); one stage, with or "
            "without box refinement",
            narrow_deformable_detr_config,
            task="object-detection",
            coupling="roles",
            keeps="the head counts, levels and sampling points (the sampling offsets' and attention weights' outputs), "
            "`num_queries`, the class head's outputs, the box head's 4 and the 2 reference-point outputs",
        ),
        *(
            FamilyAdapter(
                model_type,
                name,
                model_class,
                "ResNet backbone widths, the hybrid encoder (`encoder_in_channels` follow the backbone, "
                "`encoder_hidden_dim`, CSP/RepVGG blocks, AIFI FFN width and head dimension), `decoder_in_channels`, "
                "`d_model`, decoder FFN width, head dimension (head counts kept)",
                narrow_rt_detr_config,
                task="object-detection",
                coupling="roles",
                keeps="the head counts, levels and sampling points, `num_queries`, the denoising settings, the class "
                "heads' outputs, the box heads' 4",
                traced_modules=("model.encoder_input_proj", "model.encoder"),
            )
            for model_type, name, model_class in [
                ("rt_detr", "RT-DETR", "RTDetrForObjectDetection"),
                ("rt_detr_v2", "RT-DETR v2", "RTDetrV2ForObjectDetection"),
            ]
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
    # D-FINE: what its config would have to keep consistent that neither the traced part nor a role couples.
    "d_fine": (
        "its decoder reads the hybrid encoder's output maps as its memory (the decoder input projections are "
        "identities when d_model equals the encoder's width, as in the released checkpoints) and its deformable "
        "attention splits that memory into heads without a value projection, so the encoder's output maps (independent "
        "channel groups) and the decoder's residual would have to keep the same per-head positions, which no rule "
        "couples; its HGNetV2 backbone's channel lists have no narrowing rule either"
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


# ----- semantic segmentation -----
# Segmentation models are keyed by model class (SegFormer and MobileNetV2 also have image classifiers, which the
# registries above keep) and, for models built on a `backbone_config` (UperNet), by the backbone's `model_type`.


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
            narrow_segformer_config,
            output_layers=("decode_head.classifier",),
        ),
        FamilyAdapter(
            "upernet",
            "UperNet (ConvNeXt backbone)",
            "UperNetForSemanticSegmentation",
            _UPERNET_NARROWS + "ConvNeXt stage widths (MLP width follows)",
            narrow_upernet_config(narrow_convnext_config),
            output_layers=("decode_head.classifier", "auxiliary_head.classifier"),
            backbone_type="convnext",
        ),
        FamilyAdapter(
            "upernet",
            "UperNet (Swin backbone)",
            "UperNetForSemanticSegmentation",
            _UPERNET_NARROWS + "Swin embed dim of every stage, MLP width, head dimension (head count kept)",
            narrow_upernet_config(narrow_swin_config),
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
