"""Semantic segmentation (`image-segmentation`): `AutoModelForSemanticSegmentation` models (SegFormer, UperNet,
MobileNetV2-DeepLabV3, BEiT, DPT, ...) on datasets in the layout of the transformers semantic-segmentation guide.
What differs from classification: the examples carry a mask through the image processor (`segmentation_maps`), the
per-image acquisition score aggregates per-pixel uncertainty, the pooled features are the encoder's last hidden
state, and the metric is mean IoU."""

from __future__ import annotations

import inspect
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import SEGMENTATION_AGGREGATIONS as PIXEL_AGGREGATIONS
from ..constants import SYNTHETIC_SEGMENTATION
from ..selection.gradient_embedding import last_layer_gradients
from ..selection.strategies import BaldStrategy, UncertaintyStrategy, get_strategy
from .segmentation_annotation import (
    segmentation_label_studio_predictions,
    segmentation_predictions,
    write_segmentation_query,
)
from .segmentation_data import MASK_COLUMN, segmentation_class_names, validate_segmentation_dataset
from .segmentation_loading import load_segmentation_dataset
from .segmentation_masks import IGNORE_INDEX, open_mask, reduce_mask_labels
from .segmentation_metrics import segmentation_compute_metrics
from .segmentation_store import SEGMENTATION_ANSWERS, SegmentationLabelStore, ingest_segmentation_labels
from .segmentation_synthetic import synthetic_segmentation_pool
from .task import CardText, Task

BALD = BaldStrategy.measure


def prepare_segmentation(
    image_processor,
    *,
    image_column: str = "image",
    mask_column: str = MASK_COLUMN,
    reduce_labels: bool | None = None,
    ignore_index: int = IGNORE_INDEX,
    palette=None,
    num_channels: int = 3,
):
    """
    The batch transform of a segmentation dataset (for `dataset.with_transform(...)`), as in the transformers
    semantic-segmentation guide: `image_processor(images=..., segmentation_maps=masks, return_tensors="pt")`, which
    resizes each mask with nearest-neighbor to the pixels' size and returns it as `labels`.

    Masks are decoded as class ids (see `open_mask`: palette indices, never colors) and `reduce_labels` is applied
    here, with the image processors' rule (0 -> ignore index, every other id - 1), so that it works the same with
    every processor; the processor's own `do_reduce_labels` is turned off for the call.

    Args:
        image_processor ([`~transformers.BaseImageProcessor`]): A processor that takes `segmentation_maps`:
            `SegformerImageProcessorPil` (SegFormer, UperNet), `MobileNetV2ImageProcessorPil`, `BeitImageProcessorPil`,
            `DPTImageProcessorPil` (the PIL ones; the fast processors need torchvision).
        image_column (`str`, *optional*, defaults to `"image"`): Column holding the images.
        mask_column (`str`, *optional*, defaults to `"label"`): Column holding the masks; without it in the batch
            (an unlabeled pool), only the pixels are prepared.
        reduce_labels (`bool`, *optional*): Whether 0 is a background that is not a class (ADE20k). Default: the
            processor's `do_reduce_labels` (else `False`).
        ignore_index (`int`, *optional*, defaults to 255): The id `reduce_labels` gives the background.
        palette (*optional*): Colors of the class ids, for RGB masks.
        num_channels (`int`, *optional*, defaults to 3): The model's input channels.

    Returns:
        `Callable[[dict[str, list]], dict[str, list]]`: batch -> `pixel_values` (and `labels` `(H, W)` int64 when the
        batch has masks), one entry per example; collate them with [`collate_segmentation`].

    Raises:
        `ValueError`: a processor that takes no `segmentation_maps`.

    Example:

    ```python
    >>> import PIL.Image
    >>> from transformers import SegformerImageProcessorPil
    >>> transform = prepare_segmentation(SegformerImageProcessorPil(size={"height": 4, "width": 4}))
    >>> mask = PIL.Image.fromarray(np.array([[0, 0, 1, 1]] * 2, dtype=np.uint8))
    >>> batch = transform({"image": [PIL.Image.new("RGB", (4, 2))], "label": [mask]})
    >>> batch["labels"][0].tolist(), tuple(batch["pixel_values"][0].shape)
    ([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]], (3, 4, 4))
    ```
    """
    from ..data.images import open_image, to_model_mode

    if "segmentation_maps" not in inspect.signature(image_processor.preprocess).parameters:
        raise ValueError(
            f"{type(image_processor).__name__} takes no `segmentation_maps`, so it cannot prepare masks. Use the "
            "model's segmentation processor: SegformerImageProcessorPil (SegFormer and UperNet checkpoints use it), "
            "MobileNetV2ImageProcessorPil, BeitImageProcessorPil or DPTImageProcessorPil."
        )
    if reduce_labels is None:
        reduce_labels = bool(getattr(image_processor, "do_reduce_labels", False))
    options = {"return_tensors": "pt"}
    if hasattr(image_processor, "do_reduce_labels"):
        options["do_reduce_labels"] = False

    def transform(batch: dict) -> dict:
        images = [to_model_mode(open_image(value), num_channels) for value in batch[image_column]]
        if mask_column not in batch:
            encoded = image_processor(images=images, **options)
            return {"pixel_values": list(encoded["pixel_values"])}
        indices = batch.get("pool_index", [None] * len(images))
        masks = []
        for value, index in zip(batch[mask_column], indices):
            ids = open_mask(value, pool_index=index, palette=palette)
            if reduce_labels:
                ids = reduce_mask_labels(ids, ignore_index)
            if ids.min(initial=0) < 0 or ids.max(initial=0) > 255:
                raise ValueError(
                    f"pool index {index}: mask ids {int(ids.min())}..{int(ids.max())} do not fit the 0..255 the "
                    "image processors read; check the dataset with validate_segmentation_dataset"
                )
            masks.append(ids.astype(np.uint8))
        encoded = image_processor(images=images, segmentation_maps=masks, **options)
        return {"pixel_values": list(encoded["pixel_values"]), "labels": list(encoded["labels"])}

    return transform


def collate_segmentation(examples: list[dict]) -> dict:
    """
    Collate prepared segmentation examples: `pixel_values` `[B, C, H, W]`, `labels` `[B, H, W]` int64 when present
    (what the models' losses take), and `pool_index` `[B]` when present. Images of different sizes (a processor that
    keeps the aspect ratio) are zero-padded to the largest, their labels padded with the ignore index 255.
    """
    pixels = [torch.as_tensor(example["pixel_values"]) for example in examples]
    height = max(p.shape[-2] for p in pixels)
    width = max(p.shape[-1] for p in pixels)
    batch = {
        "pixel_values": torch.zeros(len(pixels), pixels[0].shape[0], height, width, dtype=pixels[0].dtype)
    }
    for row, p in enumerate(pixels):
        batch["pixel_values"][row, :, : p.shape[-2], : p.shape[-1]] = p
    if "labels" in examples[0]:
        batch["labels"] = torch.full((len(pixels), height, width), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(examples):
            labels = torch.as_tensor(example["labels"], dtype=torch.long)
            batch["labels"][row, : labels.shape[-2], : labels.shape[-1]] = labels
    if "pool_index" in examples[0]:
        batch["pool_index"] = torch.as_tensor([int(example["pool_index"]) for example in examples])
    return batch


def segmentation_image_scores(
    outputs,
    measure: str = "least_confidence",
    *,
    aggregation: str = "mean",
    target_size: tuple[int, int] | None = None,
    ignore_mask: torch.Tensor | None = None,
    class_weights=None,
) -> torch.Tensor:
    """
    Per-image acquisition scores of a segmenter's outputs: an uncertainty per pixel, aggregated per image, as the
    pixel-wise uncertainty maps of active learning for semantic segmentation are (Mackowiak et al., "CEREALS -
    Cost-Effective REgion-based Active Learning for Semantic Segmentation", BMVC 2018, score regions by the mean
    entropy of their pixels; Kasarla et al., "Region-based Active Learning for Efficient Labeling in Semantic
    Segmentation", WACV 2019, weight that entropy by class to favor rare classes). Here the region is the image.

    1. Each pixel's softmax over the classes is scored with the classification strategy `measure`
       (`least_confidence`, `entropy` or `margin`: the same `compute_scores` as for classification), shifted so that a
       certain pixel (one-hot) scores 0: least confidence `1 - p1` (uniform: `1 - 1/C`), entropy (uniform: `log C`),
       margin `1 - (p1 - p2)` (uniform: 1). With `measure="bald"`, `outputs` are the outputs of MC-dropout passes
       (an iterable, reduced one pass at a time) and a pixel's uncertainty is BALD's mutual information (Houlsby et
       al., 2011; per pixel as in Gal, Islam and Ghahramani, "Deep Bayesian Active Learning with Image Data", ICML
       2017): `H(mean_t p_t) - mean_t H(p_t)`, its predicted class the argmax of `mean_t p_t`.
    2. Pixels in `ignore_mask` are left out (padding, or the ignore index of known labels).
    3. The image's score is the `mean` over its pixels, the `max`, or `class_weighted`: the mean over the classes the
       model predicts in the image of their pixels' mean uncertainty, weighted by `class_weights[c]` (equal weights
       by default), so that a class predicted on few pixels counts as much as one covering the image. An image
       without any counted pixel scores 0.

    Scores are computed at the logits' own resolution (the model's output stride: cheap, and what the pool's
    scoring stores is one scalar per image), or after bilinear upsampling to `target_size` as
    `post_process_semantic_segmentation` does. Higher always means "pick first".

    Args:
        outputs: The segmenter's output (`logits` `[B, C, h, w]`), or the logits tensor itself; for `bald`, an
            iterable of them (one per MC-dropout pass).
        measure (`str`, *optional*, defaults to `"least_confidence"`): A per-example uncertainty strategy name, or
            `"bald"`.
        aggregation (`str`, *optional*, defaults to `"mean"`): `mean`, `max` or `class_weighted`.
        target_size (`tuple[int, int]`, *optional*): `(height, width)` to upsample the logits to first.
        ignore_mask (`torch.Tensor` `[B, H, W]` bool, *optional*): Pixels to leave out (True); resized with
            nearest-neighbor to the scoring resolution when its size differs.
        class_weights (array-like of shape `(C,)`, *optional*): Class weights of `class_weighted` (e.g. the inverse
            pixel frequency of each class in the labeled set).

    Returns:
        `torch.Tensor` of shape `(B,)`, float32.

    Example:

    ```python
    >>> logits = torch.zeros(1, 4, 2, 2)  # uniform over 4 classes everywhere
    >>> segmentation_image_scores(logits, "least_confidence").tolist()
    [0.75]
    >>> segmentation_image_scores([logits, logits], "bald").tolist()  # passes that agree: no mutual information
    [0.0]
    ```
    """
    if aggregation not in PIXEL_AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {list(PIXEL_AGGREGATIONS)}, got {aggregation!r}.")
    if measure == BALD:
        mean_probs, uncertainty = _pixel_mutual_information(outputs, target_size)
        predicted = mean_probs.argmax(1)
    else:
        strategy = get_strategy(measure)
        if not isinstance(strategy, UncertaintyStrategy):
            raise ValueError(
                f"Strategy {measure!r} does not score single examples from their class probabilities; per-pixel "
                "scores use least_confidence, entropy, margin or bald."
            )
        logits = _logits_map(outputs, target_size)
        batch, classes = logits.shape[:2]
        certain = float(strategy.compute_scores(np.eye(1, classes))[0])
        uncertainty = torch.zeros(batch, *logits.shape[2:], dtype=torch.float64)
        # One image at a time: the per-pixel probabilities of a whole batch at full resolution can be large.
        for row in range(batch):
            probs = logits[row].reshape(classes, -1).T.softmax(-1).double().numpy()
            values = np.asarray(strategy.compute_scores(probs), dtype=np.float64) - certain
            uncertainty[row] = torch.from_numpy(values).reshape(logits.shape[2:])
        predicted = logits.argmax(1)
        mean_probs = logits
    batch, classes, height, width = mean_probs.shape
    counted = ~_ignored_pixels(ignore_mask, batch, (height, width))
    weights = None
    if aggregation == "class_weighted":
        weights = torch.ones(classes, dtype=torch.float64)
        if class_weights is not None:
            weights = torch.as_tensor(np.asarray(class_weights, dtype=np.float64))
            if weights.shape != (classes,) or (weights < 0).any():
                raise ValueError(
                    f"class_weights must be {classes} non-negative numbers (one per class), got shape "
                    f"{tuple(weights.shape)}."
                )
    scores = torch.zeros(batch, dtype=torch.float64)
    for row in range(batch):
        keep = counted[row].reshape(-1)
        if not keep.any():
            continue
        values = uncertainty[row].reshape(-1)[keep]
        if aggregation == "mean":
            scores[row] = values.mean()
        elif aggregation == "max":
            scores[row] = values.max()
        else:
            classes_of = predicted[row].reshape(-1)[keep]
            totals = torch.zeros(classes, dtype=torch.float64).index_add_(0, classes_of, values)
            counts = torch.bincount(classes_of, minlength=classes).double()
            present = (counts > 0) & (weights > 0)
            if present.any():
                means = totals[present] / counts[present]
                scores[row] = (weights[present] * means).sum() / weights[present].sum()
    return scores.float()


def _logits_map(outputs, target_size=None) -> torch.Tensor:
    logits = outputs if isinstance(outputs, torch.Tensor) else outputs.logits
    if logits.ndim != 4:
        raise ValueError(
            f"Segmentation logits must be [batch, classes, height, width], got shape {tuple(logits.shape)}."
        )
    # On the CPU: the per-pixel scores go through numpy (a CUDA tensor has no `.numpy()`).
    logits = logits.detach().float().cpu()
    if target_size is not None and tuple(logits.shape[-2:]) != tuple(target_size):
        logits = F.interpolate(logits, size=tuple(target_size), mode="bilinear", align_corners=False)
    return logits


def _ignored_pixels(ignore_mask, batch: int, size: tuple[int, int]) -> torch.Tensor:
    """`[B, h, w]` bool: the pixels of `ignore_mask` at the scoring resolution (nearest-neighbor), none without it."""
    if ignore_mask is None:
        return torch.zeros(batch, *size, dtype=torch.bool)
    ignore = torch.as_tensor(ignore_mask, dtype=torch.bool).cpu()
    if tuple(ignore.shape[-2:]) != tuple(size):
        ignore = F.interpolate(ignore[:, None].float(), size=size, mode="nearest")[:, 0].bool()
    return ignore


def _pixel_mutual_information(passes, target_size=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(mean_t p_t [B, C, h, w], H(mean_t p_t) - mean_t H(p_t) [B, h, w])` in float64, reducing the passes one at a
    time (memory: two maps of the batch, whatever the number of passes)."""
    if isinstance(passes, torch.Tensor) or hasattr(passes, "logits"):
        raise ValueError(
            "measure 'bald' scores the outputs of several MC-dropout passes: pass an iterable of outputs (score_pool's "
            "'mc_scores' does)."
        )
    total_probs, total_entropy, count = None, None, 0
    for output in passes:
        probs = _logits_map(output, target_size).double().softmax(1)
        entropy = _pixel_entropy(probs)
        total_probs = probs if total_probs is None else total_probs.add_(probs)
        total_entropy = entropy if total_entropy is None else total_entropy.add_(entropy)
        count += 1
    if not count:
        raise ValueError("measure 'bald' needs at least one MC-dropout pass, got none.")
    mean_probs = total_probs / count
    return mean_probs, (_pixel_entropy(mean_probs) - total_entropy / count).clamp_min(0.0)


def _pixel_entropy(probs: torch.Tensor) -> torch.Tensor:
    return -torch.where(
        probs > 0, probs * probs.clamp_min(1e-300).log(), torch.zeros((), dtype=probs.dtype)
    ).sum(1)


def segmentation_gradient_embeddings(
    head_input: torch.Tensor,
    head_output: torch.Tensor,
    *,
    ignore_mask: torch.Tensor | None = None,
    **score_options,
) -> torch.Tensor:
    """
    BADGE's gradient embedding of each image (Ash et al., "Deep Batch Active Learning by Diverse, Uncertain Gradient
    Lower Bounds", ICLR 2020), for a segmenter: the gradient, with respect to the weights `W` (`C × D`) of the
    per-pixel classifier (the 1×1 convolution that gives the logits: SegFormer's and UperNet's
    `decode_head.classifier`, DeepLabV3's `segmentation_head.classifier`), of the image's per-pixel cross-entropy
    with hallucinated labels (each pixel's argmax), averaged over its counted pixels:

        g = (1/P) Σ_p (softmax(l_p) − onehot(argmax l_p)) ⊗ h_p

    with `h_p` the classifier's input at pixel `p` and `l_p = W h_p + b` its output, at the classifier's own
    resolution (the logits' resolution before any upsampling, as the per-pixel scores are). This is exactly
    `∂/∂W` of `CrossEntropyLoss(reduction="mean")` over those pixels with the argmax as labels (the tests compare it
    with autograd). Pixels in `ignore_mask` (padding, the ignore index 255 of known labels) are left out of the sum
    and of `P`; the scoring pass reads no labels and the image processors resize every image to one size, so in a
    run every pixel counts. A `C × D` matrix per image, flattened (`C·D` numbers: SegFormer-B0 on ADE20k's 150
    classes, `D = 256`, gives 38,400, 150 KiB per image in float32); no per-pixel map of the pool is kept.

    Args:
        head_input (`torch.Tensor` of shape `(B, D, h, w)`): The classifier's input.
        head_output (`torch.Tensor` of shape `(B, C, h, w)`): Its output (the logits at its resolution).
        ignore_mask (`torch.Tensor` `[B, H, W]` bool, *optional*): Pixels to leave out (True), resized with
            nearest-neighbor to `h × w`.
        **score_options: The run's other [`segmentation_image_scores`] options, which the embedding does not read.

    Returns:
        `torch.Tensor` of shape `(B, C·D)`, float32.

    Raises:
        `ValueError`: maps that are not `[B, ·, h, w]` of the same size.
    """
    if head_input.ndim != 4 or head_output.ndim != 4 or head_input.shape[-2:] != head_output.shape[-2:]:
        raise ValueError(
            "A segmenter's gradient embedding reads the per-pixel classifier's input [B, D, h, w] and output "
            f"[B, C, h, w]; got {tuple(head_input.shape)} and {tuple(head_output.shape)}."
        )
    batch = head_output.shape[0]
    keep = ~_ignored_pixels(ignore_mask, batch, tuple(head_output.shape[-2:])).reshape(batch, -1)
    return last_layer_gradients(head_input.flatten(2).transpose(1, 2), head_output.flatten(2).transpose(1, 2),
                                keep=keep.to(head_output.device))  # fmt: skip


def segmentation_pooled_features(outputs) -> torch.Tensor:
    """
    Pooled features of a segmenter's output, for the diversity strategies (k-center, BADGE, TypiClust): the spatial
    (or token) mean of the last entry of `hidden_states`, the encoder's deepest features (SegFormer's and
    MobileNetV2's last stage, UperNet's backbone's last stage, BEiT's and DPT's last layer). Read from the output
    fields, not from module names: run the model with `output_hidden_states=True`.

    Returns:
        `torch.Tensor` of shape `(B, hidden_size)`, float32.

    Raises:
        `ValueError`: the output holds no `hidden_states`.
    """
    for name in ("hidden_states", "encoder_hidden_states", "last_hidden_state"):
        hidden = outputs.get(name) if hasattr(outputs, "get") else getattr(outputs, name, None)
        if isinstance(hidden, (list, tuple)):
            hidden = hidden[-1] if hidden else None
        if isinstance(hidden, torch.Tensor) and hidden.ndim == 4:  # a feature map [B, C, H, W]
            return hidden.float().mean((2, 3))
        if isinstance(hidden, torch.Tensor) and hidden.ndim == 3:  # tokens [B, L, D]
            return hidden.float().mean(1)
    raise ValueError(
        f"{type(outputs).__name__} has no `hidden_states` to pool; run the segmenter with "
        "`output_hidden_states=True` (pooled features of a segmenter are its encoder's last hidden state)."
    )


def segmentation_run_options(args) -> dict:
    """The `validate` / `prepare` options of a segmentation run's settings: `image_column`, `mask_column` (the run's
    `label_column`: the guide's `label` holds a mask per image) and `reduce_labels`."""
    return {"image_column": args.image_column, "mask_column": args.label_column,
            "reduce_labels": bool(args.reduce_labels)}  # fmt: skip


def segmentation_score_options(args, class_names: list[str]) -> dict:
    """The [`segmentation_image_scores`] options of a segmentation run's settings (`segmentation_aggregation`)."""
    return {"aggregation": args.segmentation_aggregation}


def segmentation_class_counts(
    dataset,
    class_names: list[str],
    *,
    mask_column: str = MASK_COLUMN,
    reduce_labels: bool = False,
    ignore_index: int = IGNORE_INDEX,
    palette=None,
    **options,
) -> Counter:
    """Per class name, the images of `dataset` whose mask holds the class (after `reduce_labels`; the ignore index
    is no class). Every mask of the rows is decoded (a query's rows, not the pool)."""
    import datasets

    rows = dataset.select_columns([mask_column])
    if isinstance(rows.features[mask_column], datasets.Image):
        rows = rows.cast_column(mask_column, datasets.Image(decode=False))
    counts = Counter()
    for value in rows[mask_column]:
        ids = open_mask(value, palette=palette)
        if reduce_labels:
            ids = reduce_mask_labels(ids, ignore_index)
        counts.update(class_names[int(i)] for i in np.unique(ids) if 0 <= i < len(class_names))
    return counts


def load_segmentation_split(data_args, config, split: str):
    """One split of a segmentation recipe's `dataset_name` (masks in `config.label_column`), as `prunefuse-hf run`
    reads it, unchecked: the trainer checks it once, with the run's class names and `reduce_labels`; see
    [`load_segmentation_dataset`]."""
    return load_segmentation_dataset(data_args.dataset_name, split, image_column=config.image_column,
                                     mask_column=config.label_column, revision=data_args.dataset_revision,
                                     validate=False)  # fmt: skip


def _card_quickstart(source: str, *, num_channels: int, labels: list[str]) -> str:
    return (
        "from transformers import pipeline\n\n"
        f'segmenter = pipeline("image-segmentation", model="{source}")\n'
        'for region in segmenter("image.png"):\n'
        '    print(region["label"], region["mask"].size)  # one PIL mask per class found in the image'
    )


SEGMENTATION = Task(
    name="image-segmentation",
    auto_model_class="AutoModelForSemanticSegmentation",
    model_mapping="MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES",
    columns=("image", MASK_COLUMN),
    validate=validate_segmentation_dataset,
    class_names=segmentation_class_names,
    prepare=prepare_segmentation,
    collate=collate_segmentation,
    image_scores=segmentation_image_scores,
    pooled_features=segmentation_pooled_features,
    gradient_embeddings=segmentation_gradient_embeddings,
    per_image_outputs=frozenset({"scores", "mc_scores", "features", "embeddings"}),
    compute_metrics=segmentation_compute_metrics,
    metric_names=("mean_iou", "mean_accuracy", "overall_accuracy"),
    annotation_formats=("mask_folder", "label_studio_brush_labels"),
    label_studio_tag="BrushLabels",
    card_metric="mean_iou",
    card=CardText(
        model_kind="semantic segmentation model",
        variable="segmenter",
        metric_name="mean IoU",
        metric_phrase="a mean IoU",
        loss="the model's own loss",
        quickstart=_card_quickstart,
    ),
    ragged_labels=True,
    # The transform reads the `image` and mask columns, which are no arguments of the model's forward (the guide
    # sets the same).
    training_arguments={"remove_unused_columns": False},
    annotation_option="mask_column",
    run_options=segmentation_run_options,
    score_options=segmentation_score_options,
    class_counts=segmentation_class_counts,
    feature_config={"output_hidden_states": True},
    label_store=SegmentationLabelStore,
    stored_answers=SEGMENTATION_ANSWERS,
    ingest_labels=ingest_segmentation_labels,
    labels_metavar="FILE_OR_FOLDER",
    write_query=write_segmentation_query,
    query_predictions=segmentation_predictions,
    label_studio_predictions=segmentation_label_studio_predictions,
    load_split=load_segmentation_split,
    synthetic_name=SYNTHETIC_SEGMENTATION,
    synthetic_pool=synthetic_segmentation_pool,
)
