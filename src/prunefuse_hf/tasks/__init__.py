"""Tasks: what differs between image classification, object detection and semantic segmentation, behind one
[`Task`] dataclass; chosen from the model class or by `pipeline()` task name.

Example:

```python
>>> from transformers import DetrConfig, ResNetConfig
>>> from prunefuse_hf.tasks import get_task, task_for_model
>>> get_task("object-detection").auto_model_class
'AutoModelForObjectDetection'
>>> task_for_model(DetrConfig(use_timm_backbone=False, backbone_config=ResNetConfig())).name
'object-detection'
```
"""

from __future__ import annotations

from .annotation_store import AnnotationStore, ingest_task_labels
from .classification import CLASSIFICATION, classification_image_scores
from .detection import (
    AGGREGATIONS,
    DETECTION,
    collate_detection,
    detection_annotation,
    detection_gradient_embeddings,
    detection_image_scores,
    detection_pooled_features,
    detection_probs,
    prepare_detection,
)
from .detection_annotation import (
    detection_label_studio_config,
    detection_prediction,
    detection_predictions,
    write_detection_query,
)
from .detection_data import (
    BBOX_FORMATS,
    convert_bbox,
    detection_class_names,
    detection_features,
    validate_detection_dataset,
)
from .detection_labels import DetectionLabels, read_detection_labels
from .detection_loading import coco_json_from_dataset, dataset_from_coco_json, load_detection_dataset
from .detection_metrics import detection_compute_metrics, mean_average_precision
from .detection_store import DetectionLabelStore, ingest_detection_labels
from .detection_synthetic import synthetic_detection_pool
from .segmentation import (
    PIXEL_AGGREGATIONS,
    SEGMENTATION,
    collate_segmentation,
    prepare_segmentation,
    segmentation_gradient_embeddings,
    segmentation_image_scores,
    segmentation_pooled_features,
)
from .segmentation_annotation import segmentation_predictions, write_segmentation_query
from .segmentation_brush import (
    decode_brush_rle,
    encode_brush_rle,
    segmentation_label_studio_config,
    segmentation_prediction,
)
from .segmentation_data import read_id2label, segmentation_class_names, validate_segmentation_dataset
from .segmentation_labels import SegmentationLabels, read_segmentation_labels
from .segmentation_loading import load_segmentation_dataset
from .segmentation_masks import open_mask, reduce_mask_labels
from .segmentation_metrics import mean_iou, segmentation_compute_metrics, segmentation_preprocess_logits
from .segmentation_store import SegmentationLabelStore, ingest_segmentation_labels
from .segmentation_synthetic import synthetic_segmentation_pool
from .task import CardText, Task

TASKS: dict[str, Task] = {task.name: task for task in (CLASSIFICATION, DETECTION, SEGMENTATION)}


def get_task(name: str) -> Task:
    """
    The task named `name` (a `pipeline()` task name).

    Args:
        name (`str` or [`Task`]): `image-classification`, `object-detection` or `image-segmentation` (a `Task` is
            returned as is).

    Returns:
        [`Task`]

    Raises:
        `ValueError`: an unknown name (the known ones are listed).

    Example:

    ```python
    >>> task = get_task("object-detection")
    >>> task.columns, task.label_studio_tag, task.metric_names[0]
    (('image', 'objects'), 'RectangleLabels', 'map')
    ```
    """
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; the tasks are {sorted(TASKS)}.")
    return TASKS[name]


def task_for_model(model_or_config) -> Task:
    """
    The task of a model, a config or a model class, inferred as `pipeline()` does: from the model's class name
    (`DetrForObjectDetection` -> `object-detection`), else the config's `architectures`, else its `model_type` in
    the Auto classes' mappings (`AutoModelForObjectDetection` -> `object-detection`).

    Args:
        model_or_config: A `PreTrainedModel`, a model class, or a `PretrainedConfig`.

    Returns:
        [`Task`]

    Raises:
        `ValueError`: no task, or several, claim the model (then set `task:` to one of them).

    Example:

    ```python
    >>> from transformers import ResNetConfig, YolosConfig
    >>> task_for_model(YolosConfig()).name, task_for_model(ResNetConfig()).name
    ('object-detection', 'image-classification')
    ```
    """
    config = getattr(model_or_config, "config", None) if not isinstance(model_or_config, type) else None
    if isinstance(model_or_config, type):
        class_names = [model_or_config.__name__]
    elif config is not None:
        class_names = [type(model_or_config).__name__]
    else:
        config = model_or_config
        class_names = list(getattr(config, "architectures", None) or [])
    for class_name in class_names:
        found = [task for task in TASKS.values() if class_name.endswith(task.class_suffix)]
        found = found or [task for task in TASKS.values() if class_name in task.model_types().values()]
        if len(found) == 1:
            return found[0]
    model_type = getattr(config, "model_type", None) if config is not None else None
    found = [task for task in TASKS.values() if model_type is not None and model_type in task.model_types()]
    if len(found) == 1:
        return found[0]
    what = class_names[0] if class_names else f"model type {model_type!r}"
    if found:
        raise ValueError(
            f"{what} serves several tasks ({[task.name for task in found]}); set `task` to the one you mean."
        )
    raise ValueError(
        f"No task handles {what}: prunefuse-hf runs {sorted(TASKS)} with the models of "
        f"{[task.auto_model_class for task in TASKS.values()]}. Set `task`, or use one of those models."
    )


__all__ = [
    "AGGREGATIONS",
    "AnnotationStore",
    "BBOX_FORMATS",
    "CLASSIFICATION",
    "CardText",
    "DETECTION",
    "DetectionLabelStore",
    "DetectionLabels",
    "PIXEL_AGGREGATIONS",
    "SEGMENTATION",
    "SegmentationLabelStore",
    "SegmentationLabels",
    "TASKS",
    "Task",
    "classification_image_scores",
    "coco_json_from_dataset",
    "collate_detection",
    "collate_segmentation",
    "convert_bbox",
    "dataset_from_coco_json",
    "decode_brush_rle",
    "detection_annotation",
    "detection_class_names",
    "detection_compute_metrics",
    "detection_features",
    "detection_gradient_embeddings",
    "detection_image_scores",
    "detection_label_studio_config",
    "detection_pooled_features",
    "detection_prediction",
    "detection_predictions",
    "detection_probs",
    "encode_brush_rle",
    "get_task",
    "ingest_detection_labels",
    "ingest_segmentation_labels",
    "ingest_task_labels",
    "load_detection_dataset",
    "load_segmentation_dataset",
    "mean_average_precision",
    "mean_iou",
    "open_mask",
    "prepare_detection",
    "prepare_segmentation",
    "read_detection_labels",
    "read_id2label",
    "read_segmentation_labels",
    "reduce_mask_labels",
    "segmentation_class_names",
    "segmentation_compute_metrics",
    "segmentation_gradient_embeddings",
    "segmentation_image_scores",
    "segmentation_label_studio_config",
    "segmentation_pooled_features",
    "segmentation_prediction",
    "segmentation_predictions",
    "segmentation_preprocess_logits",
    "synthetic_detection_pool",
    "synthetic_segmentation_pool",
    "task_for_model",
    "validate_detection_dataset",
    "validate_segmentation_dataset",
    "write_detection_query",
    "write_segmentation_query",
]
