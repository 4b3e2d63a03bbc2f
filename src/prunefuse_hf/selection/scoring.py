"""Forward passes over (part of) the pool: class probabilities and penultimate features per example.

The pool is streamed in batches (memory is bounded by the batch plus the per-example outputs kept),
every batch carries the examples' global pool indices, and under Accelerate each process scores a
disjoint shard of whole batches (round-robin); the shards are gathered so that every requested index is scored exactly
once and every process ends up with the same, pool-index-ordered result.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers.utils import logging

from ..constants import PIXEL_VALUES
from .gradient_embedding import HeadCalls
from .shards import gather_variable_rows

logger = logging.get_logger(__name__)

OUTPUTS = ("probs", "features", "mc_probs", "scores", "mc_scores", "embeddings")


@dataclass
class PoolScores:
    """Model outputs on a set of pool examples, sorted by pool index.

    Args:
        pool_indices: Global pool indices (int64, ascending).
        probs: Softmax probabilities `[N, num_labels]` (float32), when asked for.
        features: Penultimate features (the classifier's input, flattened) `[N, D]`, when asked for.
        mc_probs: Probabilities of `mc_samples` MC-dropout passes `[N, mc_samples, num_labels]`, when asked for.
        scores: Per-example acquisition scores `[N]` of `image_scores` (float32), when asked for.
        mc_scores: Per-example scores `[N]` of `image_scores` over `mc_samples` MC-dropout passes (float32), when
            asked for.
        embeddings: Per-example BADGE gradient embeddings `[N, C·D]` of `gradient_embeddings` (float32), when asked
            for.
    """

    pool_indices: np.ndarray
    probs: torch.Tensor | None = None
    features: torch.Tensor | None = None
    mc_probs: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    mc_scores: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.pool_indices)


def score_pool(
    model: torch.nn.Module,
    dataset,
    pool_indices: np.ndarray | None = None,
    *,
    batch_size: int = 256,
    outputs: tuple[str, ...] = ("probs",),
    accelerator=None,
    num_workers: int = 0,
    show_progress: bool = True,
    gather: bool = True,
    mc_samples: int = 10,
    preprocess=None,
    collate=None,
    image_scores=None,
    pooled_features=None,
    gradient_embeddings=None,
) -> PoolScores:
    """
    Run `model` over (part of) the pool in eval mode and collect per-example outputs, batch by batch, with every
    example's global pool index carried through: memory is bounded by the batch plus the outputs kept.

    Under Accelerate each process scores a disjoint shard of whole batches (dealt round-robin), so every index is
    scored exactly once and in the same batch as with one process; the shards are then gathered (or kept, with
    `gather=False`). Under the accelerator's mixed precision (bf16/fp16 in the run's `TrainingArguments`) the
    forward passes run in autocast; on a GPU, batches are loaded in pinned memory and copied without blocking
    while the loader prepares the next one.

    Args:
        model (`torch.nn.Module`):
            An HF image classifier (`model(pixel_values=...).logits`); the input of the layer that gives its logits
            ([`classifier_module`]), flattened, is taken as the features.
        dataset ([`~prunefuse_hf.data.PixelDataset`] or `datasets.Dataset`):
            Row `i` holds pool example `pool_indices[i]`: a `PixelDataset` (read a batch at a time), or any dataset
            that returns a batch with `pixel_values` when indexed with a list of rows.
        pool_indices (`np.ndarray` of shape `(len(dataset),)`, *optional*):
            Global pool index of every row (default `0..len(dataset)-1`).
        batch_size (`int`, *optional*, defaults to 256):
            Examples per forward pass on each process.
        outputs (`tuple[str, ...]`, *optional*, defaults to `("probs",)`):
            Any of `"probs"`, `"features"` and `"mc_probs"` (MC dropout: the model's dropout layers are active for
            `mc_samples` extra passes, everything else stays in eval mode), and for a task whose example holds many
            predictions `"scores"` (`image_scores`), `"mc_scores"` (`image_scores` over MC-dropout passes) and
            `"embeddings"` (`gradient_embeddings`).
        accelerator (`accelerate.Accelerator`, *optional*):
            With several processes, each scores its shard; its device and mixed precision are used.
        num_workers (`int`, *optional*, defaults to 0):
            DataLoader workers reading batches ahead.
        show_progress (`bool`, *optional*, defaults to `True`):
            A progress bar on the main process.
        gather (`bool`, *optional*, defaults to `True`):
            Gather every process's results. With `False` each process returns only the examples it scored, for the
            strategies that select from shards (`SelectionStrategy.shardable`): no process holds the whole pool's
            features.
        mc_samples (`int`, *optional*, defaults to 10):
            Stochastic forward passes per example for `"mc_probs"`.
        preprocess (`Callable`, *optional*):
            Applied to each batch's `pixel_values` on the device (e.g. `ImagePreprocessor.normalize`, which turns
            uint8 pixels into normalized floats).
        collate (`Callable[[list[dict]], dict]`, *optional*):
            For a `datasets.Dataset` whose rows are prepared examples (a task's `prepare` transform): builds the
            model's inputs from a batch of rows (e.g. `tasks.collate_detection`: `pixel_values`, `pixel_mask`).
        image_scores (`Callable[[ModelOutput], torch.Tensor]`, *optional*):
            Per-example acquisition scores `[B]` of a batch's model output, for `"scores"` (a task's
            `image_scores` with its measure bound, e.g. a detector's aggregated per-detection uncertainty). For
            `"mc_scores"` it is called once per batch with an iterator over the model outputs of `mc_samples`
            MC-dropout passes, which it reduces pass by pass (a segmenter's BALD over pixels).
        pooled_features (`Callable[[ModelOutput], torch.Tensor]`, *optional*):
            The features `[B, D]` of a batch's model output, for `"features"`, instead of the classifier's input
            (a task's `pooled_features`, e.g. a detector's decoder queries).
        gradient_embeddings (`Callable[[torch.Tensor, torch.Tensor], torch.Tensor]`, *optional*):
            For `"embeddings"`: BADGE's per-example gradient embedding `[B, E]` from the input and output of the
            last-layer call that gave the logits ([`HeadCalls`]; a task's `gradient_embeddings`). Only `[B, E]` is
            kept per batch.

    Returns:
        [`PoolScores`]: on the CPU, ordered by pool index: `pool_indices` `(N,)` int64, `probs` `(N, num_labels)`
        float32, `features` `(N, D)` float32, `mc_probs` `(N, mc_samples, num_labels)` (those asked for).

    Raises:
        `ValueError`: an unknown output, `pool_indices` of another length than the dataset, a model without a
            linear layer that gives its logits (features, embeddings) or without active dropout (`mc_probs`,
            `mc_scores`).

    Example:

    ```python
    >>> import datasets, numpy as np
    >>> from PIL import Image
    >>> from transformers import ResNetConfig, ResNetForImageClassification
    >>> from prunefuse_hf import score_pool
    >>> from prunefuse_hf.data import ImagePreprocessor, PixelDataset, build_image_processor
    >>> model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))
    >>> pool = datasets.Dataset.from_dict({"image": [Image.new("RGB", (32, 32), (i, 0, 0)) for i in range(20)]})
    >>> preprocessor = ImagePreprocessor(build_image_processor(model.config, image_size=32), num_channels=3)
    >>> unlabeled = np.arange(4, 20)
    >>> pixels = PixelDataset(preprocessor.pixel_dataset(pool, cache=False), rows=unlabeled)
    >>> scores = score_pool(model, pixels, unlabeled, batch_size=8, outputs=("probs", "features"),
    ...                     preprocess=preprocessor.normalize)
    >>> tuple(scores.probs.shape), tuple(scores.features.shape)
    ((16, 2), (16, 16))
    ```
    """
    unknown = set(outputs) - set(OUTPUTS)
    if unknown:
        raise ValueError(f"outputs may contain {list(OUTPUTS)}, got {sorted(unknown)}.")
    for name, function, what in (("scores", image_scores, "image_scores"), ("mc_scores", image_scores, "image_scores"),
                                 ("embeddings", gradient_embeddings, "gradient_embeddings")):  # fmt: skip
        if name in outputs and function is None:
            raise ValueError(
                f"outputs {name!r} needs `{what}`, the function that computes it from a batch's outputs."
            )
    dropout_layers = active_dropout_layers(model) if {"mc_probs", "mc_scores"} & set(outputs) else []
    if pool_indices is None:
        pool_indices = np.arange(len(dataset))
    pool_indices = np.asarray(pool_indices, dtype=np.int64)
    if len(pool_indices) != len(dataset):
        raise ValueError(
            f"pool_indices has {len(pool_indices)} entries but the dataset has {len(dataset)} rows."
        )

    rank, world_size = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = accelerator.device if accelerator else next(model.parameters()).device
    batches = [
        list(range(start, min(start + batch_size, len(dataset))))
        for start in range(0, len(dataset), batch_size)
    ]
    shard = batches[rank::world_size]

    collected = _forward_shard(
        model,
        dataset,
        shard,
        pool_indices,
        outputs,
        device,
        num_workers,
        show_progress and rank == 0,
        dropout_layers,
        mc_samples,
        preprocess,
        accelerator,
        collate,
        image_scores,
        pooled_features,
        gradient_embeddings,
    )
    if world_size > 1 and gather:
        collected = {key: gather_variable_rows(accelerator, value) for key, value in collected.items()}
    order = torch.argsort(collected["pool_indices"])
    return PoolScores(
        pool_indices=collected["pool_indices"][order].numpy(),
        probs=collected["probs"][order] if "probs" in outputs else None,
        features=collected["features"][order] if "features" in outputs else None,
        mc_probs=collected["mc_probs"][order] if "mc_probs" in outputs else None,
        scores=collected["scores"][order] if "scores" in outputs else None,
        mc_scores=collected["mc_scores"][order] if "mc_scores" in outputs else None,
        embeddings=collected["embeddings"][order] if "embeddings" in outputs else None,
    )


def _forward_shard(
    model,
    dataset,
    batches,
    pool_indices,
    outputs,
    device,
    num_workers,
    show_progress,
    dropout_layers,
    mc_samples,
    preprocess,
    accelerator,
    collate=None,
    image_scores=None,
    pooled_features=None,
    gradient_embeddings=None,
):
    on_gpu = torch.device(device).type == "cuda"
    # Each item is a whole batch of rows read at once (one Arrow read or one batched transform). Loader workers
    # read ahead; without them the batches are read in the loop (a loader would only add its own overhead).
    loader = _Batches(dataset, batches, collate)
    if num_workers or on_gpu:
        loader = DataLoader(loader, batch_size=None, num_workers=num_workers,
                            worker_init_fn=_single_threaded_worker, pin_memory=on_gpu)  # fmt: skip
    features_seen: list[torch.Tensor] = []
    head_input: list[torch.Tensor] = []  # what the head read in the current batch's forward pass
    hook = None
    if "features" in outputs and pooled_features is None:
        hook = classifier_module(model).register_forward_pre_hook(
            lambda module, args: head_input.append(args[0])
        )
    autocast = accelerator.autocast() if accelerator is not None else contextlib.nullcontext()
    head_calls = HeadCalls(model) if "embeddings" in outputs else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    probs, mc_probs, scores, mc_scores, embeddings = [], [], [], [], []
    try:
        with torch.inference_mode(), autocast, head_calls:
            progress = tqdm(loader, desc="Scoring pool", disable=not show_progress, unit="batch")
            for inputs in progress:
                if isinstance(inputs, torch.Tensor):
                    inputs = {PIXEL_VALUES: inputs}
                inputs = {key: value.to(device, non_blocking=on_gpu) for key, value in inputs.items()}
                if preprocess is not None:
                    inputs[PIXEL_VALUES] = preprocess(inputs[PIXEL_VALUES])
                pixel_values = inputs[PIXEL_VALUES]
                head_input.clear()
                if "embeddings" in outputs:
                    head_calls.clear()
                model_output = model(**inputs)
                logits = model_output.logits
                if hook is not None:
                    features_seen.append(_head_features(model, head_input, len(logits)))
                if "scores" in outputs:
                    scores.append(image_scores(model_output).float().cpu())
                if "features" in outputs and pooled_features is not None:
                    features_seen.append(pooled_features(model_output).detach().float().cpu())
                if "embeddings" in outputs:
                    head = head_calls.producing(logits)
                    embeddings.append(gradient_embeddings(*head).float().cpu())
                    head_calls.clear()
                if "probs" in outputs:
                    probs.append(torch.softmax(logits.float(), dim=-1).cpu())
                if "mc_scores" in outputs:
                    passes = _mc_dropout_passes(
                        model, inputs, dropout_layers, mc_samples, batches[len(mc_scores)][0]
                    )
                    mc_scores.append(image_scores(passes).float().cpu())
                if "mc_probs" in outputs:
                    first_row = batches[len(mc_probs)][0]
                    mc_probs.append(
                        _mc_dropout_probs(model, pixel_values, dropout_layers, mc_samples, first_row)
                    )
    finally:
        model.train(was_training)
        if hook is not None:
            hook.remove()
    rows = (
        np.concatenate([np.asarray(b, dtype=np.int64) for b in batches]) if batches else np.zeros(0, np.int64)
    )
    collected = {"pool_indices": torch.from_numpy(pool_indices[rows])}
    num_labels = model.config.num_labels
    if "probs" in outputs:
        collected["probs"] = torch.cat(probs) if probs else torch.empty(0, num_labels)
    if "features" in outputs:
        collected["features"] = torch.cat(features_seen) if features_seen else torch.empty(0, 0)
    if "mc_probs" in outputs:
        collected["mc_probs"] = torch.cat(mc_probs) if mc_probs else torch.empty(0, mc_samples, num_labels)
    if "scores" in outputs:
        collected["scores"] = torch.cat(scores) if scores else torch.empty(0)
    if "mc_scores" in outputs:
        collected["mc_scores"] = torch.cat(mc_scores) if mc_scores else torch.empty(0)
    if "embeddings" in outputs:
        collected["embeddings"] = torch.cat(embeddings) if embeddings else torch.empty(0, 0)
    return collected


def _head_features(model, head_input: list[torch.Tensor], batch_size: int) -> torch.Tensor:
    # The last call is the one whose output became the logits (a head applied more than once keeps the last).
    if not head_input:
        raise ValueError(
            f"{type(model).__name__}'s forward pass never ran the linear layer that gives its class logits, so its "
            "pooled features cannot be read; use a strategy on probabilities (least_confidence, entropy, margin) or "
            "random, with initial_strategy: random, selector: trained and surrogate_distill_epochs: 0."
        )
    features = head_input[-1].detach().float()
    return features.reshape(batch_size, -1).cpu()


class _Batches(torch.utils.data.Dataset):
    """Item k is the `pixel_values` of batch k of rows, or with `collate` the model inputs it builds from the
    batch's prepared rows (so a loader worker reads whole batches ahead)."""

    def __init__(self, dataset, batches, collate=None):
        self.dataset, self.batches, self.collate = dataset, batches, collate

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> torch.Tensor:
        rows = self.batches[k]
        if self.collate is not None:
            columns = self.dataset[rows]
            return self.collate([dict(zip(columns, values)) for values in zip(*columns.values())])
        if hasattr(self.dataset, "batch"):
            return self.dataset.batch(rows)
        return self.dataset[rows][PIXEL_VALUES]


def active_dropout_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Dropout and stochastic-depth layers with a non-zero rate (the ones MC dropout can sample).

    Raises:
        `ValueError`: there is none, naming the model and the config settings of its class that add such layers
            ([`dropout_settings`]), or saying that its class has none (then `bald` cannot run on it).
    """
    layers = _dropout_layers(model)
    if not layers:
        settings = dropout_settings(model)
        way_out = (
            f"Build the model with one of {', '.join(settings)} above 0 in its config (a recipe's model_config, or "
            f"`from_pretrained(..., {settings[0].split('.')[-1]}=0.1)`; for a nested field set it in that sub-config) "
            "or choose another strategy."
            if settings
            else f"No setting of {type(model).__name__}'s config adds dropout layers (any dropout it has is applied "
            "without a layer that MC dropout can switch on), so bald cannot run on it: choose another strategy "
            "(least_confidence, entropy, margin, kcenter_greedy, badge, cluster_margin or random)."
        )
        raise ValueError(
            f"{type(model).__name__} has no active dropout, so MC-dropout scores (strategy 'bald') would all be "
            f"zero. {way_out}"
        )
    return layers


def _dropout_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [
        module
        for module in model.modules()
        if (isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0)
        or getattr(module, "drop_prob", 0) > 0
    ]


def dropout_settings(model: torch.nn.Module) -> list[str]:
    """The config fields of `model`'s class that, set above 0, give it layers MC dropout can sample.

    Each rate-like field of the config (and of its `vision_config`) whose name speaks of dropping is tried in turn
    on a copy of the class built without weights (so this costs no memory and little time, even for a large model);
    a field is listed when that copy has active dropout layers.

    Returns:
        `list[str]`: field names (`vision_config.` before a nested one), in the config's order; empty when none
        works (the class applies its dropout without layers, or has none).
    """
    import copy

    from accelerate import init_empty_weights

    config = getattr(model, "config", None)
    if config is None:
        return []
    found = []
    for prefix, sub in (("", config), ("vision_config.", getattr(config, "vision_config", None))):
        if sub is None or not hasattr(sub, "to_dict"):
            continue
        for name, value in sub.to_dict().items():
            rates = value if isinstance(value, (list, tuple)) else [value]  # per-stage rates (CvT) are lists
            if "drop" not in name or not rates or not all(_is_rate(rate) for rate in rates):
                continue
            trial = copy.deepcopy(config)
            try:
                setattr(
                    trial.vision_config if prefix else trial,
                    name,
                    [0.1] * len(rates) if rates is value else 0.1,
                )
                with init_empty_weights():
                    built = type(model)(trial)
            except Exception:  # a value the class cannot take: not a way out
                continue
            if _dropout_layers(built):
                found.append(prefix + name)
    return found


def _is_rate(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _mc_dropout_probs(model, pixel_values, dropout_layers, mc_samples, batch_start: int) -> torch.Tensor:
    # Dropout masks are seeded by the batch's first row, so they do not depend on how many processes
    # share the pool; fork_rng leaves the caller's random state as it was.
    devices = [pixel_values.device] if pixel_values.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(batch_start)
        return _sample_with_dropout(model, pixel_values, dropout_layers, mc_samples)


def _sample_with_dropout(model, pixel_values, dropout_layers, mc_samples) -> torch.Tensor:
    for layer in dropout_layers:
        layer.train()
    try:
        samples = [
            torch.softmax(model(pixel_values=pixel_values).logits.float(), dim=-1).cpu()
            for _ in range(mc_samples)
        ]
    finally:
        for layer in dropout_layers:
            layer.eval()
    return torch.stack(samples, dim=1)


def _mc_dropout_passes(model, inputs, dropout_layers, mc_samples, batch_start: int):
    """The model outputs of `mc_samples` passes with the dropout layers active, one at a time (a generator: the
    caller reduces each pass before the next runs), seeded by the batch's first row as `_mc_dropout_probs` is."""
    devices = [inputs[PIXEL_VALUES].device] if inputs[PIXEL_VALUES].device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(batch_start)
        for layer in dropout_layers:
            layer.train()
        try:
            for _ in range(mc_samples):
                yield model(**inputs)
        finally:
            for layer in dropout_layers:
                layer.eval()


def _single_threaded_worker(_worker_id: int) -> None:
    # Decoding workers share the cores with the forward pass; their own thread pools would oversubscribe them.
    torch.set_num_threads(1)


def classifier_module(model: torch.nn.Module) -> torch.nn.Linear:
    """
    The layer that turns the model's pooled penultimate features into its logits: its input (flattened) is what
    feature-based strategies read. It is found from what the model computes, never from an attribute name: the last
    linear layer with one output per class. That is the head whatever it is called (`classifier`, `head`, `fc`, a
    timm model's head), the linear layer inside a head that normalizes first (LeViT's `classifier`), the `fc` beside a
    `classifier` that only pools (HGNetV2, TextNet), and the last of two heads that read the same features and whose
    logits are averaged (SwiftFormer's `head` and `dist_head`).

    Raises:
        `ValueError`: the model has no such layer, naming the class, the settings that need features and what
            works without them.
    """
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == num_labels]
    if heads:
        return heads[-1]
    raise ValueError(
        f"{type(model).__name__} has no linear layer that gives its {num_labels} class logits, so its pooled "
        "features cannot be read: the strategies and settings that use features (kcenter_greedy, badge, cluster_margin, "
        "initial_strategy: typiclust, selector: linear_probe, surrogate_distill_epochs > 0) cannot run on it. Use a "
        "strategy on probabilities (least_confidence, entropy, margin) or random, with initial_strategy: random, "
        "selector: trained and surrogate_distill_epochs: 0."
    )
