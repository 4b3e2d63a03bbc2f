"""Image classification (`image-classification`): the package's first task, described by the functions that
already implement it (nothing here changes how classification runs)."""

from __future__ import annotations

import numpy as np
import torch
from transformers import default_data_collator

from ..data.labels import resolve_class_names
from ..data.loading import validate_image_dataset
from ..data.preprocessing import ImagePreprocessor
from ..selection.strategies import UncertaintyStrategy, get_strategy
from .task import CardText, Task


def classification_image_scores(outputs, measure: str = "least_confidence", **_) -> torch.Tensor:
    """
    Per-image acquisition scores of a classifier's outputs: the strategy `measure`'s score of the softmax of the
    logits (see `prunefuse_hf.selection.strategies`), higher = pick first.

    Args:
        outputs: The classifier's output (`logits` `[B, num_labels]`), or the logits tensor itself.
        measure (`str`, *optional*, defaults to `"least_confidence"`): `least_confidence`, `entropy` or `margin`.

    Returns:
        `torch.Tensor` of shape `(B,)`, float32.
    """
    strategy = get_strategy(measure)
    if not isinstance(strategy, UncertaintyStrategy):
        raise ValueError(
            f"Strategy {measure!r} does not score single examples from their class probabilities."
        )
    logits = outputs if isinstance(outputs, torch.Tensor) else outputs.logits
    probs = torch.softmax(logits.float(), dim=-1).numpy()
    return torch.from_numpy(np.asarray(strategy.compute_scores(probs), dtype=np.float32))


def _card_quickstart(source: str, *, num_channels: int, labels: list[str]) -> str:
    example = f'  # a class name, e.g. "{labels[0]}"' if labels else ""
    if num_channels != 1:
        return (
            "from transformers import pipeline\n\n"
            f'classifier = pipeline("image-classification", model="{source}")\n'
            f'print(classifier("image.png")[0]["label"]){example}'
        )
    # `pipeline()` converts every image to RGB, which a one-channel model cannot take.
    return (
        "import torch\nfrom PIL import Image\n"
        "from transformers import AutoImageProcessor, AutoModelForImageClassification\n\n"
        f'processor = AutoImageProcessor.from_pretrained("{source}")\n'
        f'model = AutoModelForImageClassification.from_pretrained("{source}").eval()\n'
        "# The model reads one-channel images: convert to grayscale first (pipeline() would feed RGB).\n"
        'image = Image.open("image.png").convert("L")\n'
        "with torch.no_grad():\n"
        '    logits = model(**processor(images=image, return_tensors="pt")).logits\n'
        f"print(model.config.id2label[logits.argmax(-1).item()]){example}"
    )


CLASSIFICATION = Task(
    name="image-classification",
    auto_model_class="AutoModelForImageClassification",
    model_mapping="MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    columns=("image", "label"),
    validate=validate_image_dataset,
    class_names=resolve_class_names,
    prepare=ImagePreprocessor,
    collate=default_data_collator,
    image_scores=classification_image_scores,
    # The classifier's input, read by a hook in `selection.score_pool` (outputs="features").
    pooled_features=None,
    # The trainer's default, `compute_accuracy` (evaluate's accuracy, shipped with the package).
    compute_metrics=None,
    metric_names=("accuracy",),
    annotation_formats=("csv", "jsonl", "parquet", "label_studio_choices"),
    label_studio_tag="Choices",
    card_metric="accuracy",
    card=CardText(
        model_kind="image classifier",
        variable="classifier",
        metric_name="accuracy",
        metric_phrase="an accuracy",
        loss="plain cross-entropy",
        quickstart=_card_quickstart,
    ),
    distills=True,
)
