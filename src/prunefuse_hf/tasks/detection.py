"""Object detection (`object-detection`): `AutoModelForObjectDetection` models (DETR, Conditional DETR, YOLOS,
RT-DETR, ...) on datasets in the cppe-5 layout. What differs from classification: the examples carry boxes through
the image processor, the per-image acquisition score aggregates the uncertainty of the image's detections, the
pooled features are the decoder's queries, and the metric is COCO mAP."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from ..constants import DETECTION_AGGREGATIONS as AGGREGATIONS
from ..constants import SYNTHETIC_DETECTION
from ..selection.gradient_embedding import last_layer_gradients
from ..selection.strategies import UncertaintyStrategy, get_strategy
from .detection_annotation import (
    detection_label_studio_predictions,
    detection_predictions,
    write_detection_query,
)
from .detection_data import (
    BBOX_KEY,
    CATEGORY_KEY,
    OBJECTS_COLUMN,
    convert_bbox,
    detection_class_names,
    objects_as_columns,
    validate_detection_dataset,
)
from .detection_loading import load_detection_dataset
from .detection_metrics import COCO_STAT_NAMES, detection_compute_metrics
from .detection_store import DETECTION_ANSWERS, DetectionLabelStore, ingest_detection_labels
from .detection_synthetic import synthetic_detection_pool
from .task import CardText, Task

DEFAULT_SCORE_THRESHOLD = 0.5
DEFAULT_FALLBACK_TOP_K = 1


def prepare_detection(
    image_processor,
    *,
    image_column: str = "image",
    objects_column: str = OBJECTS_COLUMN,
    bbox_format: str = "coco",
    num_channels: int = 3,
):
    """
    The batch transform of a detection dataset (for `dataset.with_transform(...)`), as in the transformers
    object-detection guide: each image with its objects as a COCO annotation (boxes converted to COCO pixels and
    clipped to the image) goes through `image_processor(images=..., annotations=..., return_tensors="pt")`.

    Args:
        image_processor ([`~transformers.BaseImageProcessor`]): The detector's processor, e.g.
            `DetrImageProcessorPil` (the PIL path; the fast processors need torchvision).
        image_column (`str`, *optional*, defaults to `"image"`): Column holding the images.
        objects_column (`str`, *optional*, defaults to `"objects"`): Column holding `bbox` and `category` lists;
            without it in the batch (an unlabeled pool), only the pixels are prepared.
        bbox_format (`str`, *optional*, defaults to `"coco"`): Format of the stored boxes.
        num_channels (`int`, *optional*, defaults to 3): The model's input channels (images become "RGB" or "L").

    Returns:
        `Callable[[dict[str, list]], dict[str, list]]`: batch -> `pixel_values` (and `pixel_mask` when the processor
        pads, `labels` when the batch has objects), one entry per example; collate them with [`collate_detection`].

    Example:

    ```python
    >>> import PIL.Image
    >>> from transformers import DetrImageProcessorPil
    >>> transform = prepare_detection(DetrImageProcessorPil(size={"height": 64, "width": 64}))
    >>> batch = transform({"image": [PIL.Image.new("RGB", (80, 60))],
    ...                    "objects": [{"bbox": [[10, 10, 20, 15]], "category": [1]}]})
    >>> batch["labels"][0]["class_labels"].tolist(), tuple(batch["pixel_values"][0].shape)
    ([1], (3, 64, 64))
    ```
    """
    from ..data.images import open_image, to_model_mode

    def transform(batch: dict) -> dict:
        images = [to_model_mode(open_image(value), num_channels) for value in batch[image_column]]
        if objects_column not in batch:
            encoded = image_processor(images=images, return_tensors="pt")
            return _per_example(encoded, len(images))
        image_ids = batch.get("pool_index", batch.get("image_id", list(range(len(images)))))
        annotations = [
            detection_annotation(image_id, objects, image.size, bbox_format)
            for image_id, objects, image in zip(image_ids, batch[objects_column], images)
        ]
        encoded = image_processor(images=images, annotations=annotations, return_tensors="pt")
        return _per_example(encoded, len(images))

    return transform


def detection_annotation(
    image_id: int, objects, image_size: tuple[int, int], bbox_format: str = "coco"
) -> dict:
    """One image's objects as the COCO-detection annotation an image processor takes: `{"image_id", "annotations":
    [{"bbox" (COCO px, clipped to the image), "category_id", "area", "iscrowd"}]}`."""
    objects = objects_as_columns(objects)
    width, height = image_size
    boxes = convert_bbox(objects[BBOX_KEY], bbox_format, "pascal_voc", image_size)
    boxes = np.clip(boxes, 0, [width, height, width, height])
    boxes = convert_bbox(boxes, "pascal_voc", "coco")
    annotations = [
        {
            "bbox": [float(v) for v in box],
            "category_id": int(category),
            "area": float(box[2] * box[3]),
            "iscrowd": 0,
        }
        for box, category in zip(boxes, objects[CATEGORY_KEY])
    ]
    return {"image_id": int(image_id), "annotations": annotations}


def _per_example(encoded, size: int) -> dict:
    out = {"pixel_values": list(encoded["pixel_values"])}
    if "pixel_mask" in encoded:
        out["pixel_mask"] = list(encoded["pixel_mask"])
    if "labels" in encoded:
        out["labels"] = list(encoded["labels"])
    return out


def collate_detection(examples: list[dict]) -> dict:
    """
    Collate prepared detection examples: `pixel_values` `[B, C, H, W]`, `pixel_mask` `[B, H, W]` when present,
    `labels` (a list of dicts, what detectors' losses take) when present, and `pool_index` `[B]` when present.
    Images of different sizes are zero-padded to the largest (with the mask marking the real pixels).
    """
    pixels = [torch.as_tensor(example["pixel_values"]) for example in examples]
    masks = (
        [torch.as_tensor(example["pixel_mask"]) for example in examples]
        if "pixel_mask" in examples[0]
        else None
    )
    height = max(p.shape[-2] for p in pixels)
    width = max(p.shape[-1] for p in pixels)
    batch = {
        "pixel_values": torch.zeros(len(pixels), pixels[0].shape[0], height, width, dtype=pixels[0].dtype)
    }
    padded = any(p.shape[-2:] != (height, width) for p in pixels)
    if masks is not None or padded:
        batch["pixel_mask"] = torch.zeros(len(pixels), height, width, dtype=torch.long)
    for row, p in enumerate(pixels):
        h, w = p.shape[-2:]
        batch["pixel_values"][row, :, :h, :w] = p
        if "pixel_mask" in batch:
            batch["pixel_mask"][row, :h, :w] = masks[row][:h, :w] if masks is not None else 1
    if "labels" in examples[0]:
        batch["labels"] = [example["labels"] for example in examples]
    if "pool_index" in examples[0]:
        batch["pool_index"] = torch.as_tensor([int(example["pool_index"]) for example in examples])
    return batch


def detection_probs(logits: torch.Tensor, num_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Per-query class distributions `[B, Q, C + 1]` (the last column is "no object") and detection scores `[B, Q]`
    (the best real class's probability, what `post_process_object_detection` thresholds).

    - Softmax heads (DETR, YOLOS: `C + 1` logits): the model's own softmax over the classes and "no object".
    - Sigmoid heads (Conditional / Deformable DETR, RT-DETR, D-FINE: `C` logits, one sigmoid per class): the
      detection score is `s = max_c sigmoid(l_c)`; the distribution gives "no object" `1 - s` and shares `s` among
      the classes in proportion to their sigmoids, so that it sums to one like the softmax heads'.
    """
    logits = logits.float()
    if logits.shape[-1] == num_labels + 1:
        probs = logits.softmax(-1)
        return probs, probs[..., :-1].max(-1).values
    if logits.shape[-1] != num_labels:
        raise ValueError(
            f"Detection logits have {logits.shape[-1]} classes; expected {num_labels} (sigmoid heads) or "
            f"{num_labels + 1} (softmax heads with a no-object class) for num_labels={num_labels}."
        )
    sigmoids = logits.sigmoid()
    scores = sigmoids.max(-1).values
    shares = sigmoids / sigmoids.sum(-1, keepdim=True).clamp_min(1e-12)
    return torch.cat([shares * scores.unsqueeze(-1), (1 - scores).unsqueeze(-1)], dim=-1), scores


def detection_image_scores(
    outputs,
    measure: str = "least_confidence",
    *,
    num_labels: int,
    aggregation: str = "max",
    threshold: float = DEFAULT_SCORE_THRESHOLD,
    fallback_top_k: int = DEFAULT_FALLBACK_TOP_K,
) -> torch.Tensor:
    """
    Per-image acquisition scores of a detector's outputs, as Brust, Käding and Denzler, "Active Learning for Deep
    Object Detection" (VISAPP 2019) define them: an uncertainty per detection, aggregated per image.

    1. Each query's class distribution (see [`detection_probs`]: for DETR the softmax over the `C` classes and
       "no object") is scored with the classification strategy `measure` (`least_confidence`, `entropy` or
       `margin`, the same functions as for classification), shifted so that a certain detection (a one-hot
       distribution) scores 0: least confidence `1 - p1`, entropy, margin `1 - (p1 - p2)` (Brust's "1-vs-2").
    2. The detections kept are the queries whose detection score (best real class) is `>= threshold`; an image
       with none falls back to its `fallback_top_k` highest-scoring queries (a detector that finds nothing sure
       in an image is still asked about what it found most likely).
    3. The kept detections' uncertainties are aggregated with `max`, `mean` or `sum` (sum favours images with
       many uncertain objects).

    With `fallback_top_k=0`, an image without any kept detection scores 0, the value of a fully certain detection:
    the detector claims nothing there, so nothing is uncertain; such images still enter through `random` and the
    diversity strategies. Higher always means "pick first".

    Args:
        outputs: The detector's output (`logits` `[B, Q, C + 1]` or `[B, Q, C]`), or the logits tensor itself.
        measure (`str`, *optional*, defaults to `"least_confidence"`): A per-example uncertainty strategy name.
        num_labels (`int`): The model's number of classes (`config.num_labels`).
        aggregation (`str`, *optional*, defaults to `"max"`): `max`, `mean` or `sum`.
        threshold (`float`, *optional*, defaults to 0.5): Detection score a query needs to count as a detection.
        fallback_top_k (`int`, *optional*, defaults to 1): Queries scored for an image without kept detections.

    Returns:
        `torch.Tensor` of shape `(B,)`, float32.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}.")
    if fallback_top_k < 0:
        raise ValueError(f"fallback_top_k must be >= 0, got {fallback_top_k}.")
    strategy = get_strategy(measure)
    if not isinstance(strategy, UncertaintyStrategy):
        raise ValueError(
            f"Strategy {measure!r} does not score single examples from their class probabilities; per-detection "
            "scores use least_confidence, entropy or margin."
        )
    logits = outputs if isinstance(outputs, torch.Tensor) else outputs.logits
    logits = (
        logits.detach().cpu()
    )  # the per-detection scores go through numpy (a CUDA tensor has no `.numpy()`)
    probs, detection_scores = detection_probs(logits, num_labels)
    batch, queries, classes = probs.shape
    flat = probs.reshape(-1, classes).double().numpy()
    certain = np.eye(1, classes)
    uncertainty = strategy.compute_scores(flat) - strategy.compute_scores(certain)[0]
    uncertainty = torch.from_numpy(np.asarray(uncertainty, dtype=np.float64)).reshape(batch, queries)
    kept = detection_scores >= threshold
    if fallback_top_k:
        top = detection_scores.topk(min(fallback_top_k, queries), dim=-1).indices
        fallback = torch.zeros_like(kept).scatter_(1, top, True)
        kept = torch.where(kept.any(-1, keepdim=True), kept, fallback)
    counts = kept.sum(-1)
    masked = uncertainty.where(kept, torch.zeros((), dtype=uncertainty.dtype))
    if aggregation == "max":
        scores = masked.max(-1).values  # uncertainties are >= 0, so the masked zeros never win
    elif aggregation == "sum":
        scores = masked.sum(-1)
    else:
        scores = masked.sum(-1) / counts.clamp_min(1)
    return scores.where(counts > 0, torch.zeros((), dtype=scores.dtype)).float()


def detection_pooled_features(outputs) -> torch.Tensor:
    """
    Pooled features of a detector's output, for the diversity strategies (k-center, BADGE, TypiClust): the mean over
    the sequence of `last_hidden_state` (the decoder's queries for DETR-style models, the encoder's tokens for
    YOLOS), else of `encoder_last_hidden_state`. Read from the output fields, not from module names.

    Returns:
        `torch.Tensor` of shape `(B, hidden_size)`, float32.
    """
    for name in ("last_hidden_state", "encoder_last_hidden_state"):
        hidden = outputs.get(name) if hasattr(outputs, "get") else getattr(outputs, name, None)
        if isinstance(hidden, (list, tuple)):
            hidden = hidden[-1] if hidden else None
        if isinstance(hidden, torch.Tensor) and hidden.ndim == 3:
            return hidden.float().mean(1)
        if isinstance(hidden, torch.Tensor) and hidden.ndim == 4:  # a feature map [B, C, H, W]
            return hidden.float().mean((2, 3))
    raise ValueError(
        f"{type(outputs).__name__} has no `last_hidden_state` or `encoder_last_hidden_state` to pool; pooled "
        "features of a detector come from these output fields."
    )


def detection_gradient_embeddings(
    head_input: torch.Tensor, head_output: torch.Tensor, *, num_labels: int | None = None, **score_options
) -> torch.Tensor:
    """
    BADGE's gradient embedding of each image (Ash et al., "Deep Batch Active Learning by Diverse, Uncertain Gradient
    Lower Bounds", ICLR 2020), for a DETR-style detector: the gradient, with respect to the weights `W` (`K × D`) of
    the class head (the linear layer that gives the logits: DETR's and Conditional DETR's `class_labels_classifier`,
    the last layer of YOLOS's), of the classification loss of the image's decoder queries with hallucinated labels
    (each query's argmax, "no object" included), averaged over the `Q` queries:

        g = (1/Q) Σ_q (p_q − onehot(argmax_q)) ⊗ h_q

    with `h_q` the head's input for query `q` (the decoder's output). Softmax heads (`K = C + 1` logits, DETR,
    YOLOS): `p_q` is the softmax and `g` is exactly `∂/∂W` of the mean cross-entropy over the queries (DETR's loss
    weights "no object" by `eos_coefficient`; the embedding does not, every query counts once). Sigmoid heads
    (`K = C`, Conditional / Deformable DETR, RT-DETR): `p_q` is the per-class sigmoid and `g` the gradient of the
    per-class binary cross-entropy. Queries are not matched to objects (there are no labels); every query counts.
    A `K × D` matrix per image, flattened (`K·D`: DETR on 91 COCO classes, `D = 256`, gives 23,552, 92 KiB per image
    in float32); no per-query map of the pool is kept.

    Args:
        head_input (`torch.Tensor` of shape `(B, Q, D)`): The class head's input.
        head_output (`torch.Tensor` of shape `(B, Q, K)`): Its output (the logits).
        num_labels (`int`, *optional*): The model's classes: `K == num_labels` means sigmoid outputs (default:
            softmax).
        **score_options: The run's other [`detection_image_scores`] options, which the embedding does not read.

    Returns:
        `torch.Tensor` of shape `(B, K·D)`, float32.
    """
    if head_input.ndim != 3 or head_output.ndim != 3:
        raise ValueError(
            "A detector's gradient embedding reads the class head's input [B, Q, D] and output [B, Q, K]; got "
            f"{tuple(head_input.shape)} and {tuple(head_output.shape)}."
        )
    activation = "sigmoid" if head_output.shape[-1] == num_labels else "softmax"
    return last_layer_gradients(head_input, head_output, activation=activation)


def detection_run_options(args) -> dict:
    """The `validate` / `prepare` options of a detection run's settings: `image_column`, `objects_column`,
    `bbox_format`."""
    return {
        "image_column": args.image_column,
        "objects_column": args.objects_column,
        "bbox_format": args.bbox_format,
    }


def detection_score_options(args, class_names: list[str]) -> dict:
    """The [`detection_image_scores`] options of a detection run's settings (`detection_aggregation`,
    `detection_score_threshold`) and classes."""
    return {"num_labels": len(class_names), "aggregation": args.detection_aggregation,
            "threshold": args.detection_score_threshold}  # fmt: skip


def detection_class_counts(
    dataset, class_names: list[str], *, objects_column: str = OBJECTS_COLUMN, **options
) -> Counter:
    """Annotated objects per class name in the rows of `dataset`."""
    objects = dataset.select_columns([objects_column])[objects_column]
    return Counter(class_names[int(c)] for row in objects for c in objects_as_columns(row)[CATEGORY_KEY])


def load_detection_split(data_args, config, split: str):
    """One split of a detection recipe's `dataset_name` (with `annotations_file`, `bbox_format`, `class_names` and
    the columns of `config`), as `prunefuse-hf run` reads it; see [`load_detection_dataset`]."""
    return load_detection_dataset(data_args.dataset_name, split, annotations=data_args.annotations_file,
                                  class_names=config.class_names, bbox_format=config.bbox_format,
                                  image_column=config.image_column, objects_column=config.objects_column,
                                  revision=data_args.dataset_revision)  # fmt: skip


def _card_quickstart(source: str, *, num_channels: int, labels: list[str]) -> str:
    example = f'  # a class name, e.g. "{labels[0]}"' if labels else ""
    return (
        "from transformers import pipeline\n\n"
        f'detector = pipeline("object-detection", model="{source}")\n'
        'for found in detector("image.png", threshold=0.5):\n'
        '    print(found["label"], round(found["score"], 3), found["box"])' + example
    )


DETECTION = Task(
    name="object-detection",
    auto_model_class="AutoModelForObjectDetection",
    model_mapping="MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES",
    columns=("image", OBJECTS_COLUMN),
    validate=validate_detection_dataset,
    class_names=detection_class_names,
    prepare=prepare_detection,
    collate=collate_detection,
    image_scores=detection_image_scores,
    pooled_features=detection_pooled_features,
    gradient_embeddings=detection_gradient_embeddings,
    per_image_outputs=frozenset({"scores", "features", "embeddings"}),
    compute_metrics=detection_compute_metrics,
    metric_names=COCO_STAT_NAMES,
    annotation_formats=("coco_json", "label_studio_rectangle_labels"),
    label_studio_tag="RectangleLabels",
    card_metric="map",
    card=CardText(
        model_kind="object detector",
        variable="detector",
        metric_name="mAP",
        metric_phrase="a COCO mAP (IoU 0.50:0.95)",
        loss="the model's own loss",
        quickstart=_card_quickstart,
    ),
    ragged_labels=True,
    training_arguments={"remove_unused_columns": False, "eval_do_concat_batches": False},
    annotation_option="objects_column",
    run_options=detection_run_options,
    score_options=detection_score_options,
    class_counts=detection_class_counts,
    label_store=DetectionLabelStore,
    stored_answers=DETECTION_ANSWERS,
    ingest_labels=ingest_detection_labels,
    write_query=write_detection_query,
    query_predictions=detection_predictions,
    label_studio_predictions=detection_label_studio_predictions,
    load_split=load_detection_split,
    synthetic_name=SYNTHETIC_DETECTION,
    synthetic_pool=synthetic_detection_pool,
)
