"""Model and data arguments of a run (the `# Model arguments` / `# Data arguments` blocks of a recipe)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

from .constants import FASHION_MNIST, SYNTHETIC_DETECTION, SYNTHETIC_SEGMENTATION


@dataclass
class ModelArguments:
    """Which dense model the run starts from.

    Exactly one of `model_name_or_path` (pretrained weights) and `model_config` (random initialization)
    is used; `model_config` wins when both are set.
    """

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub id or local checkpoint directory of the dense model (its pretrained weights are pruned)."
        },
    )
    model_config: dict | str | None = field(
        default=None,
        metadata={
            "help": "Config of a dense model built from scratch: a mapping with `model_type` (e.g. resnet) and the "
            "config fields, a JSON string of one, or a path to a config.json."
        },
    )

    def __post_init__(self):
        if isinstance(self.model_config, str) and self.model_config.lstrip().startswith("{"):
            try:
                self.model_config = json.loads(self.model_config)
            except json.JSONDecodeError as error:
                raise ValueError(f"model_config is not valid JSON ({error}): {self.model_config!r}") from None
        if self.model_name_or_path is None and self.model_config is None:
            raise ValueError(
                "Set model_name_or_path (a Hub id or checkpoint directory) or model_config (e.g. "
                "{model_type: resnet, hidden_sizes: [64, 128, 256, 512], ...}) in the recipe."
            )

    @property
    def model_source(self):
        return self.model_config if self.model_config is not None else self.model_name_or_path


@dataclass
class DataArguments:
    """Which image pool the run selects from and which images it is evaluated on (how images are read and
    preprocessed is `PruneFuseConfig`'s: `image_column`, `label_column`, `image_size`, `augment`)."""

    dataset_name: str = field(
        default=FASHION_MNIST,
        metadata={
            "help": f"The pool: `fashion_mnist` (built in), a Hub dataset id, a `save_to_disk` directory or an "
            f"image folder; for object detection also `{SYNTHETIC_DETECTION}` (built in) or an image folder with a "
            f"COCO JSON file; for semantic segmentation also `{SYNTHETIC_SEGMENTATION}` (built in) or an image folder "
            "with a masks folder."
        },
    )
    annotations_file: str | None = field(
        default=None,
        metadata={
            "help": "Object detection: the COCO JSON file of an image-folder pool (default: the folder's one *.json)."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Hub dataset configuration name."}
    )
    dataset_revision: str | None = field(
        default=None, metadata={"help": "Hub dataset revision (branch, tag, sha)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split used as the selection pool."})
    eval_split: str | None = field(
        default="test",
        metadata={"help": "Split every trained model is evaluated on; null to skip evaluation."},
    )
    max_pool_size: int | None = field(
        default=None,
        metadata={
            "help": "Use a seeded random subset of this many pool examples (quick runs); null for all."
        },
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Evaluate on a seeded random subset of this many examples; null for all."},
    )

    def __post_init__(self):
        for name in ("max_pool_size", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer or null, got {value}.")


def run_data_arguments(recipe: dict | None) -> dict | None:
    """The run's data arguments (recipe values over `DataArguments` defaults), or `None` without a recipe."""

    if recipe is None:
        return None
    return {f.name: recipe.get(f.name, f.default) for f in fields(DataArguments)}
