"""Building the dense image classifier from a Hub id, a checkpoint directory or a config."""

from __future__ import annotations

import copy
import os

from transformers import AutoConfig, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
from transformers.utils import logging

logger = logging.get_logger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def has_weights(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in WEIGHT_FILES)


def load_image_classifier(
    model: str | os.PathLike | PretrainedConfig | dict,
    *,
    num_labels: int | None = None,
    num_channels: int | None = None,
    from_config: bool | None = None,
    class_names: list[str] | None = None,
) -> PreTrainedModel:
    """Load or build a `*ForImageClassification` model.

    Args:
        model: A Hub id or checkpoint directory (weights are loaded), a `config.json` path or a
            directory with only a config (random initialization), a `PretrainedConfig`, or a dict
            with a `model_type` key.
        num_labels: Number of classes. When it differs from a checkpoint's, the classifier head is
            re-initialized (the backbone keeps its pretrained weights).
        num_channels: Input channels. Only for models built from a config: pretrained stems are not
            rebuilt; feed such models 3-channel images (data preprocessing repeats gray channels).
        from_config: Force random initialization from the config of a Hub id or checkpoint.
        class_names: Names of the classes (their count is `num_labels`): the model's `id2label`, replacing
            whatever names a checkpoint brought.

    Returns:
        The model, in train mode.
    """
    overrides = {}
    if class_names is not None:
        num_labels = len(class_names)
        overrides["id2label"] = dict(enumerate(class_names))
        overrides["label2id"] = {name: i for i, name in enumerate(class_names)}
    if num_labels is not None:
        overrides["num_labels"] = num_labels
    if isinstance(model, dict):
        values = dict(model)
        model_type = values.pop("model_type", None)
        if model_type is None:
            raise ValueError("A model given as a dict needs a 'model_type' key (e.g. 'resnet').")
        model = AutoConfig.for_model(model_type, **values)
    if isinstance(model, PretrainedConfig):
        config, pretrained = copy.deepcopy(model), False
    else:
        path = os.fspath(model)
        if not os.path.exists(path) and (path.startswith(("/", ".", "~")) or path.count("/") > 1):
            raise FileNotFoundError(
                f"No model at {path!r}: it is not a local checkpoint directory or config.json, and it cannot be a "
                "Hub model id. Fix the path, or give a Hub id such as microsoft/resnet-50."
            )
        pretrained = not from_config and (has_weights(path) or not os.path.exists(path))
        config = AutoConfig.from_pretrained(path)
    _check_image_classifier(config)
    if pretrained:
        if num_channels is not None and num_channels != getattr(config, "num_channels", num_channels):
            raise ValueError(
                f"num_channels={num_channels} differs from the pretrained model's {config.num_channels}; "
                "pretrained stems are not rebuilt. Leave num_channels unset: gray images are repeated to "
                "the model's channel count by the data preprocessing."
            )
        return AutoModelForImageClassification.from_pretrained(
            path, ignore_mismatched_sizes=True, **overrides
        )
    if num_labels is not None:
        config.num_labels = num_labels  # the setter rebuilds id2label/label2id when the count changes
    if class_names is not None:
        config.id2label, config.label2id = overrides["id2label"], overrides["label2id"]
    if num_channels is not None:
        config.num_channels = num_channels
    classes = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES[config.model_type]
    if isinstance(classes, (list, tuple)) and not config.architectures:
        # Families with several classifier classes (DeiT: with and without a distillation head) need
        # the choice written down; the first one is the plain classifier.
        config.architectures = [classes[0]]
    return AutoModelForImageClassification.from_config(config)


def _check_image_classifier(config: PretrainedConfig) -> None:
    if config.model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        raise ValueError(
            f"'{config.model_type}' ({type(config).__name__}) has no image-classification model in "
            "transformers, so it cannot be a PruneFuse dense model. Use an image classifier such as a "
            "ResNet (`microsoft/resnet-50` or a ResNetConfig)."
        )
