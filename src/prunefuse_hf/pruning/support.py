"""Which image classifiers and object detectors a run can prune, decided before any work: the classes of each family
(named adapter, general path or refused, with the reason and `pruning_ratio: 0`) and the README's support table built
from them."""

from __future__ import annotations

import importlib
import inspect

import torch
from torch import nn

from .families import (
    ADAPTERS,
    DETECTION_FAMILIES,
    GENERAL_FAMILIES,
    GENERAL_SEGMENTATION_FAMILIES,
    REFUSED_FAMILIES,
    REFUSED_SEGMENTATION_CLASSES,
    SEGMENTATION_ADAPTERS,
    SUPPORTED_FAMILIES,
    segmentation_class_names,
    segmentation_family,
)
from .tracing import example_pixel_values

# Why a model class of a supported family other than its `model_class` cannot be a PruneFuse dense model,
# by how the class name ends (first match wins, so the longer endings come first).
_REFUSAL_REASONS = (
    (
        "ForImageClassificationWithTeacher",
        "an inference-only distilled classifier: its forward takes no labels, so it cannot be trained, and it "
        "averages two heads (cls_classifier, distillation_classifier) instead of having one `classifier`",
    ),
    (
        "ForMaskedImageModeling",
        "a masked-image-modeling (pretraining) model: it reconstructs pixels and has no class logits",
    ),
    ("ForSemanticSegmentation", "a semantic-segmentation model: its logits are per pixel, not per image"),
    (
        "ForSegmentation",
        "a panoptic-segmentation model (a mask head on the detector), which PruneFuse does not run",
    ),
    (
        "Backbone",
        "a backbone that returns feature maps for detection or segmentation heads, without a classifier",
    ),
    ("Model", "the bare encoder without a classification head (it returns no logits)"),
)


def family_model_classes(model_type: str) -> tuple[str, ...]:
    """Names of the model classes the installed transformers offers for a family.

    The classes `AutoModelForImageClassification` maps the `model_type` to, then every other public model class
    of the family's modeling module (bare model, backbone, other heads); the `*PreTrainedModel` base is left out.

    Args:
        model_type (`str`): A config `model_type`, e.g. `"deit"`.

    Returns:
        `tuple[str, ...]`: class names, the image classifiers first.

    Example:

    ```python
    >>> family_model_classes("deit")
    ('DeiTForImageClassification', 'DeiTForImageClassificationWithTeacher', 'DeiTForMaskedImageModeling', 'DeiTModel')
    ```
    """
    from transformers import PreTrainedModel
    from transformers.models.auto.configuration_auto import model_type_to_module_name

    names = list(task_model_classes(model_type))
    module_name = model_type_to_module_name(model_type)
    module = importlib.import_module(f"transformers.models.{module_name}.modeling_{module_name}")
    public = getattr(module, "__all__", None) or [
        name
        for name, value in vars(module).items()
        if inspect.isclass(value) and value.__module__ == module.__name__
    ]
    for name in public:
        value = getattr(module, name, None)
        if (
            inspect.isclass(value)
            and issubclass(value, PreTrainedModel)
            and not name.endswith("PreTrainedModel")
            and name not in names
        ):
            names.append(name)
    return tuple(names)


def _mapped_classes(mapping_names: dict, model_type: str) -> tuple[str, ...]:
    # An Auto class's mapping gives one class name or a tuple of them (DeiT: the plain and the distilled classifier).
    classes = mapping_names.get(model_type, ())
    return tuple(classes) if isinstance(classes, (list, tuple)) else (classes,)


def image_classification_classes(model_type: str) -> tuple[str, ...]:
    """The classes `AutoModelForImageClassification` maps `model_type` to (empty when it has none)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    return _mapped_classes(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, model_type)


def object_detection_classes(model_type: str) -> tuple[str, ...]:
    """The classes `AutoModelForObjectDetection` maps `model_type` to (empty when it has none)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES

    return _mapped_classes(MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES, model_type)


def task_model_classes(model_type: str) -> tuple[str, ...]:
    """The image classifiers, then the object detectors, that transformers maps `model_type` to."""
    return image_classification_classes(model_type) + object_detection_classes(model_type)


def classifier_class_name(model_type: str) -> str:
    """The class PruneFuse builds and loads for `model_type`: the supported family's `model_class`, otherwise the
    first (plain) image classifier transformers maps the type to (DeiT-like families also map to a distilled
    variant second)."""
    if model_type in ADAPTERS:
        return ADAPTERS[model_type].model_class
    classes = image_classification_classes(model_type)
    if not classes:
        raise ValueError(f"'{model_type}' has no image-classification model in transformers.")
    return classes[0]


def refused_model_classes() -> dict[str, tuple[str, ...]]:
    """`{model_type: class names}` of the supported families' classes that `check_supported_model` refuses (image
    classification families, then object detection ones)."""
    return {
        model_type: tuple(
            name
            for name in family_model_classes(model_type)
            if name != ADAPTERS[model_type].model_class and name not in segmentation_class_names()
        )
        for model_type in SUPPORTED_FAMILIES + DETECTION_FAMILIES
    }


def check_supported_model(model: nn.Module, *, pruning_ratio: float | None = None) -> None:
    """Refuse, before a run starts, a model PruneFuse cannot run end to end, naming its class and what to use.

    In a supported family only the family's `model_class` (its `*ForImageClassification`, or a subclass) works:
    it prunes into a surrogate of the same class, fuses back exactly and is scored through its `classifier`.
    Every other class of the family (bare `*Model`, `*Backbone`, `*ForMaskedImageModeling`,
    `*ForSemanticSegmentation`, `DeiTForImageClassificationWithTeacher`) is refused. A model of another family
    is refused when it is to be pruned (no adapter); with `pruning_ratio=0` (the dense model selects for
    itself) any image classifier of transformers whose forward takes `labels` is accepted.

    The object detectors of `DETECTION_FAMILIES` work the same way (their `*ForObjectDetection` class; `*Model` and
    `*ForSegmentation` are refused by name). Any other object detector transformers offers is refused when it is to
    be pruned, naming its class and `pruning_ratio=0`, with which it is accepted.

    Args:
        model (`nn.Module`): The dense model a run would start from.
        pruning_ratio (`float`, *optional*): The run's ratio. `None` (default) or a ratio above 0 means the model
            will be pruned, so its family must be supported.

    Raises:
        `ValueError`: the class is not an image classifier PruneFuse can train (the message names the class, the
            family and the class to use instead).
        `NotImplementedError`: the family has no pruning support and `pruning_ratio` is not 0.

    Example:

    ```python
    >>> from transformers import ViTConfig, ViTModel
    >>> check_supported_model(ViTModel(ViTConfig(num_hidden_layers=1)))
    Traceback (most recent call last):
    ValueError: ViTModel (ViT family, model_type 'vit') cannot be a PruneFuse dense model: it is the bare encoder ...
    ```
    """
    class_name = type(model).__name__
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise ValueError(
            f"{class_name} is not a transformers model (it has no config with a model_type), so it cannot be a "
            "PruneFuse dense model. Use an HF image classifier such as ResNetForImageClassification."
        )
    if class_name.endswith("ForSemanticSegmentation"):
        _check_segmentation_model(model, model_type, pruning_ratio)
        return
    adapter = ADAPTERS.get(model_type)
    if adapter is None:
        to_prune = pruning_ratio is None or pruning_ratio > 0
        if model_type in REFUSED_FAMILIES and to_prune:
            raise NotImplementedError(
                f"{class_name} (model_type '{model_type}') cannot be pruned: {REFUSED_FAMILIES[model_type]}. "
                "Use pruning_ratio=0 (the dense model selects for itself) to run PruneFuse with it."
            )
        if class_name in object_detection_classes(model_type):
            if to_prune:
                # The general path traces class logits; a detector's outputs are per query (logits and boxes).
                raise NotImplementedError(
                    f"{class_name} (model_type '{model_type}') cannot be pruned: object detectors prune only "
                    f"through a named adapter ({', '.join(ADAPTERS[t].model_class for t in DETECTION_FAMILIES)}). "
                    "Use pruning_ratio=0 (the dense model selects for itself) to run PruneFuse with it."
                )
            return
        # Any other image classifier takes the general path (`pruning/replay.py`).
        _check_trainable_image_classifier(model, model_type)
        return
    import transformers

    if isinstance(model, getattr(transformers, adapter.model_class)):
        return
    reason = next(
        (why for ending, why in _REFUSAL_REASONS if class_name.endswith(ending)),
        f"not the {adapter.task} model of the {adapter.name} family",
    )
    raise ValueError(
        f"{class_name} ({adapter.name} family, model_type '{model_type}') cannot be a PruneFuse dense model: it is "
        f"{reason}. Use {adapter.model_class} instead: pass the checkpoint's Hub id or directory (prunefuse-hf "
        f"loads it as {adapter.model_class}; the encoder weights load and the classification head is trained by the "
        f"run), or load it yourself with `{adapter.model_class}.from_pretrained(...)`."
    )


# ----- semantic segmentation -----


def segmentation_classes(model_type: str) -> tuple[str, ...]:
    """The classes `AutoModelForSemanticSegmentation` maps `model_type` to (empty when it has none)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES

    return _mapped_classes(MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES, model_type)


def is_segmentation_plan(plan) -> bool:
    """Whether a plan's dense model is a semantic-segmentation model (its surrogate reloads with
    `AutoModelForSemanticSegmentation`)."""
    return bool(plan.model_class) and plan.model_class in segmentation_classes(plan.model_type)


def plan_model_class_name(plan) -> str:
    """The class a plan's surrogate is rebuilt as: the dense segmentation class, else the family's classifier."""
    return plan.model_class if is_segmentation_plan(plan) else classifier_class_name(plan.model_type)


def _describe_segmentation_support() -> str:
    names = []
    for entry in [*SEGMENTATION_ADAPTERS.values(), *GENERAL_SEGMENTATION_FAMILIES.values()]:
        backbone = getattr(entry, "backbone_type", None)
        names.append(f"{entry.model_class}{f' ({backbone} backbone)' if backbone else ''}")
    return ", ".join(names)


def _check_segmentation_model(model: nn.Module, model_type: str, pruning_ratio: float | None) -> None:
    """A `*ForSemanticSegmentation` model: a registry entry prunes it, or it is refused by name unless the ratio
    is 0 (the dense model selects for itself, which any trainable segmentation model of transformers can)."""
    class_name = type(model).__name__
    if class_name not in segmentation_classes(model_type) and segmentation_family(model) is None:
        raise ValueError(
            f"{class_name} (model_type '{model_type}') is not a semantic-segmentation model of transformers, so it "
            f"cannot be a PruneFuse dense model. Use one of: {_describe_segmentation_support()}."
        )
    if pruning_ratio == 0 or (
        segmentation_family(model) is not None and class_name not in REFUSED_SEGMENTATION_CLASSES
    ):
        return
    backbone = getattr(getattr(model.config, "backbone_config", None), "model_type", None)
    what = f"{class_name} (model_type '{model_type}'{f', {backbone} backbone' if backbone else ''})"
    reason = REFUSED_SEGMENTATION_CLASSES.get(class_name, "no tested pruning rule covers it")
    raise NotImplementedError(
        f"{what} cannot be pruned: {reason}. Use pruning_ratio: 0 (the dense model selects for itself) to run "
        f"PruneFuse with it, or a segmentation model that prunes: {_describe_segmentation_support()}."
    )


def _check_trainable_image_classifier(model: nn.Module, model_type: str) -> None:
    import transformers

    class_name = type(model).__name__
    classes = image_classification_classes(model_type)
    # Only a class that trains can be offered instead (never the refused class itself).
    usable = [
        name
        for name in classes
        if name != class_name
        and hasattr(transformers, name)
        and "labels" in inspect.signature(getattr(transformers, name).forward).parameters
    ]
    way_out = (
        f"Use {' or '.join(usable)} (pass the checkpoint's Hub id or directory; it is loaded as that class)."
        if usable
        else f"transformers has no trainable image classifier of the '{model_type}' family, so there is no class "
        "of it to use: choose a model of another family (the README lists the supported ones, e.g. "
        "ResNetForImageClassification)."
    )
    if class_name not in classes:
        raise ValueError(
            f"{class_name} (model_type '{model_type}') is not an image classifier, so it cannot be a PruneFuse dense "
            f"model. {way_out}"
        )
    if "labels" not in inspect.signature(type(model).forward).parameters:
        raise ValueError(
            f"{class_name} (model_type '{model_type}') cannot be trained: its forward takes no labels (at any "
            f"pruning_ratio, dense_al included). {way_out}"
        )
    _check_reads_images(model, model_type)


def _check_reads_images(model: nn.Module, model_type: str) -> None:
    """One forward pass of the model on a random image at its config's size, in eval mode and without gradients:
    a classifier that needs more than `pixel_values` (text tokens, patch positions) or gives no `(1, num_labels)`
    logits is refused now, not when its surrogate or its selection first runs."""
    class_name = type(model).__name__
    if any(parameter.is_meta for parameter in model.parameters()):
        return  # weights not materialized (meta device): there is nothing to run yet
    was_training = model.training
    model.eval()
    problem = None
    try:
        with torch.no_grad():
            logits = getattr(model(pixel_values=example_pixel_values(model)), "logits", None)
        if logits is None or tuple(logits.shape) != (1, model.config.num_labels):
            shape = None if logits is None else tuple(logits.shape)
            problem = f"on one image it gives logits of shape {shape}, not (1, {model.config.num_labels})"
    except torch.OutOfMemoryError:
        raise  # the machine's answer, not the model's
    except (
        Exception
    ) as error:  # any other failure of the forward pass is the model's answer to "images alone"
        problem = (
            f"its forward pass on a batch of images alone fails ({type(error).__name__}: "
            + (str(error).strip().splitlines() or [""])[0][:200]
            + ")"
        )
    finally:
        model.train(was_training)
    if problem is not None:
        raise ValueError(
            f"{class_name} (model_type '{model_type}') cannot run on images alone: {problem}. PruneFuse gives a "
            "classifier nothing but pixel_values, so no setting runs it (pruning_ratio: 0 and every method "
            "included): choose a model of another family (the README lists the supported ones, e.g. "
            "ResNetForImageClassification)."
        )


def support_table_markdown() -> str:
    """The README's support table: one row per tested model class with the path its surrogate takes, then the
    families neither path prunes and the classes that are refused.

    Returns:
        `str`: a Markdown table (family, `model_type`, model class, path, what narrows by 1 − p, what is kept)
        followed by the refused families (with the reason) and a line listing every other class transformers offers
        for the named-adapter families, which `check_supported_model` refuses by name.
    """
    rows = [
        "| family | `model_type` | model class | surrogate path | what narrows by 1 − p | what is kept |",
        "|---|---|---|---|---|---|",
    ]
    for model_type in SUPPORTED_FAMILIES + DETECTION_FAMILIES:
        adapter = ADAPTERS[model_type]
        rows.append(
            f"| {adapter.name} | `{model_type}` | `{adapter.model_class}` | narrowed config | {adapter.narrows} "
            f"| {adapter.keeps} |"
        )
    for family in GENERAL_FAMILIES.values():
        rows.append(
            f"| {family.name} | `{family.model_type}` | `{family.model_class}` | general (replay) | "
            f"{family.narrows} | {family.keeps} |"
        )
    # Semantic segmentation (the class-output layers are the per-pixel classifiers; their outputs are kept).
    for adapter in SEGMENTATION_ADAPTERS.values():
        rows.append(
            f"| {adapter.name} | `{adapter.model_type}` | `{adapter.model_class}` | narrowed config | "
            f"{adapter.narrows} | the head count; `num_labels` (the per-pixel classifiers' outputs) |"
        )
    for family in GENERAL_SEGMENTATION_FAMILIES.values():
        rows.append(
            f"| {family.name} | `{family.model_type}` | `{family.model_class}` | general (replay) | "
            f"{family.narrows} | {family.keeps} |"
        )
    refused = [name for names in refused_model_classes().values() for name in names]
    rows += [
        "",
        "Not prunable (refused by name before a run starts; `pruning_ratio: 0` runs them): "
        + "; ".join(
            [f"`{task_model_classes(model_type)[0]}`: {why}" for model_type, why in REFUSED_FAMILIES.items()]
            + [f"`{name}`: {why}" for name, why in REFUSED_SEGMENTATION_CLASSES.items()]
        )
        + ".",
        "",
        "Refused by name before a run starts (bare encoders, backbones, other heads; the error names the class "
        "to use instead): " + ", ".join(f"`{name}`" for name in refused) + ".",
    ]
    return "\n".join(rows)
