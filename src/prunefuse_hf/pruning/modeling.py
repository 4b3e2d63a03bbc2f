"""Building the dense image classifier from a Hub id, a checkpoint directory or a config."""

from __future__ import annotations

import copy
import os

import transformers
from transformers import AutoConfig, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
from transformers.utils import logging

from ..utils.hub_ids import WEIGHT_FILES, check_hub_model, has_weights, is_hub_id
from .support import classifier_class_name

logger = logging.get_logger(__name__)


def check_model_path(path: str | os.PathLike) -> str:
    """Refuse a local path that does not exist, before it is taken for a Hub id.

    A name that cannot be a Hub id (`org/name`: it starts with `/`, `.` or `~`, has more than one `/` or
    characters ids never have) is a mistyped path when nothing is there.

    Args:
        path (`str` or `os.PathLike`): A Hub id, a checkpoint directory or a `config.json` path.

    Returns:
        `str`: `path` as a string.

    Raises:
        `FileNotFoundError`: a path-like name with nothing at it (the message names the path).

    Example:

    ```python
    >>> check_model_path("microsoft/resnet-50")
    'microsoft/resnet-50'
    ```
    """
    path = os.fspath(path)
    if not os.path.exists(path) and not is_hub_id(path):
        raise FileNotFoundError(
            f"No model at {path!r}: it is not a local checkpoint directory or config.json, and it cannot be a "
            "Hub model id. Fix the path, or give a Hub id such as microsoft/resnet-50."
        )
    return path


def load_image_classifier(
    model: str | os.PathLike | PretrainedConfig | dict,
    *,
    num_labels: int | None = None,
    num_channels: int | None = None,
    from_config: bool | None = None,
    class_names: list[str] | None = None,
) -> PreTrainedModel:
    """Load or build the `*ForImageClassification` model PruneFuse runs for the model's family.

    The class is the family's supported one (`prunefuse_hf.pruning.classifier_class_name`), whatever class
    a checkpoint was saved from: a DeiT distilled checkpoint (`DeiTForImageClassificationWithTeacher`), a bare
    `*Model`, a backbone or a masked-image-modeling checkpoint loads its encoder weights into the family's image
    classifier, whose head is then initialized.

    Args:
        model (`str`, `os.PathLike`, `PretrainedConfig` or `dict`): A Hub id or checkpoint directory (weights are
            loaded), a `config.json` path or a directory with only a config (random initialization), a
            `PretrainedConfig`, or a dict with a `model_type` key.
        num_labels (`int`, *optional*): Number of classes. When it differs from a checkpoint's, the classifier head
            is re-initialized (the backbone keeps its pretrained weights).
        num_channels (`int`, *optional*): Input channels. Only for models built from a config: pretrained stems are
            not rebuilt; feed such models 3-channel images (data preprocessing repeats gray channels).
        from_config (`bool`, *optional*): `True` builds a random initialization from the config of a Hub id or
            checkpoint; `False` requires weights (a directory with only a config is refused); `None` (default)
            loads weights when there are some.
        class_names (`list[str]`, *optional*): Names of the classes (their count is `num_labels`): the model's
            `id2label`, replacing whatever names a checkpoint brought.

    Returns:
        [`~transformers.PreTrainedModel`]: the model, in train mode, with `config.architectures` naming its class.

    Raises:
        `FileNotFoundError`: a path-like `model` with nothing at it, or `from_config=False` and no weights there.
        `ValueError`: a Hub id that is not in the local cache while the Hub cannot be reached (see
            [`~prunefuse_hf.utils.check_hub_model`]).
        `ValueError`: the config's family has no image classifier in transformers, a dict without `model_type`, or
            `num_channels` differs from a pretrained model's.

    Example:

    ```python
    >>> from transformers import ResNetConfig
    >>> model = load_image_classifier(ResNetConfig(hidden_sizes=[16, 32], depths=[1, 1]), class_names=["cat", "dog"])
    >>> type(model).__name__, model.config.id2label
    ('ResNetForImageClassification', {0: 'cat', 1: 'dog'})
    ```
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
        if from_config is False:
            raise ValueError("from_config=False needs a checkpoint with weights, not a config.")
    else:
        path = check_model_path(model)
        pretrained = not from_config and (has_weights(path) or not os.path.exists(path))
        if from_config is False and not pretrained:
            raise FileNotFoundError(
                f"{path!r} holds a config but no weights ({', '.join(WEIGHT_FILES)}). Pass a checkpoint directory "
                "written by save_pretrained (e.g. a run's dense_init/), or a Hub id."
            )
        # A Hub id the Hub cannot serve is refused here in a second; a cached one is read without network retries.
        local_only = check_hub_model("model", path)
        config = AutoConfig.from_pretrained(path, local_files_only=local_only)
    _check_image_classifier(config)
    model_class = getattr(transformers, classifier_class_name(config.model_type))
    if pretrained:
        if num_channels is not None and num_channels != getattr(config, "num_channels", num_channels):
            raise ValueError(
                f"num_channels={num_channels} differs from the pretrained model's {config.num_channels}; "
                "pretrained stems are not rebuilt. Leave num_channels unset: gray images are repeated to "
                "the model's channel count by the data preprocessing."
            )
        saved_as = (config.architectures or [None])[0]
        if saved_as not in (None, model_class.__name__):
            logger.info(f"{path} was saved as {saved_as}; loading its weights into {model_class.__name__}.")
        loaded = model_class.from_pretrained(
            path, ignore_mismatched_sizes=True, local_files_only=local_only, **overrides
        )
        loaded.config.architectures = [model_class.__name__]
        return loaded
    if num_labels is not None:
        config.num_labels = num_labels  # the setter rebuilds id2label/label2id when the count changes
    if class_names is not None:
        config.id2label, config.label2id = overrides["id2label"], overrides["label2id"]
    if num_channels is not None:
        config.num_channels = num_channels
    # Families with several classifier classes (DeiT: with and without a distillation head) build the class
    # `config.architectures` names; write the one PruneFuse runs.
    config.architectures = [model_class.__name__]
    return AutoModelForImageClassification.from_config(config)


def build_dense_model(model, class_names: list[str], label_column: str) -> PreTrainedModel:
    """
    The dense model of a run, labeled with the dataset's class names.

    Args:
        model ([`~transformers.PreTrainedModel`], `str`, `os.PathLike`, `PretrainedConfig` or `dict`): A model (used
            as it is, its label count checked), or anything [`load_image_classifier`] takes (its head is sized to
            the classes).
        class_names (`list[str]`): The dataset's class names, in id order.
        label_column (`str`): The dataset's label column, named in the error.

    Returns:
        [`~transformers.PreTrainedModel`]: the model, whose `id2label`/`label2id` are `class_names` (replacing
        whatever names a checkpoint brought).

    Raises:
        `ValueError`: a model whose `num_labels` is not the number of classes.

    Example:

    ```python
    >>> from transformers import ResNetConfig
    >>> build_dense_model(ResNetConfig(hidden_sizes=[16, 32], depths=[1, 1]), ["cat", "dog"], "label").config.id2label
    {0: 'cat', 1: 'dog'}
    ```
    """
    if isinstance(model, PreTrainedModel):
        if model.config.num_labels != len(class_names):
            raise ValueError(
                f"The model has {model.config.num_labels} labels but the dataset's '{label_column}' column has "
                f"{len(class_names)} classes. Pass a Hub id, path or config instead (the head is then resized), or "
                "a model built with num_labels matching the data."
            )
        dense = model
    else:
        dense = load_image_classifier(model, class_names=class_names)
    # The dataset's class names replace whatever names a checkpoint brought.
    dense.config.id2label = dict(enumerate(class_names))
    dense.config.label2id = {name: i for i, name in enumerate(class_names)}
    return dense


def _check_image_classifier(config: PretrainedConfig) -> None:
    if config.model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        raise ValueError(
            f"'{config.model_type}' ({type(config).__name__}) has no image-classification model in "
            "transformers, so it cannot be a PruneFuse dense model. Use an image classifier such as a "
            "ResNet (`microsoft/resnet-50` or a ResNetConfig)."
        )
