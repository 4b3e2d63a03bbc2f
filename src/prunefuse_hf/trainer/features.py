"""What a run computes once, before round 1, for selection: the pooled features of the whole pool (one forward pass
per model, kept in the run directory), and the label-free distillation of the dense model into the pruned surrogate.

Pool features are keyed by the pool's pixel-cache key and a digest of the model's weights
(`RUN/pool_features/<role>-<key>.npy` with its cost in `.json` beside it): a resumed run, or a second use of the same
model in one run (the feature proxy at p = 0 and TypiClust both read the dense model's), reads them back instead of
running the pass again, and books the pass's cost once.
"""

from __future__ import annotations

import hashlib
import json
import math
import time

import numpy as np
import torch
from transformers.utils import logging

from ..constants import POOL_FEATURES_DIR
from ..data.pixel_dataset import PixelDataset
from ..pruning.cost import FORWARD_FLOPS_PER_MAC, TRAIN_FLOPS_PER_MAC
from ..selection.scoring import classifier_module, score_pool
from ..utils.io import atomic_write

logger = logging.get_logger(__name__)

# What "the features" are (2: the input of the last linear layer giving the logits, whatever it is called): features
# kept by a run under an earlier definition are computed again when it resumes, not read back with other widths.
FEATURES_VERSION = 2


def weights_digest(model: torch.nn.Module) -> str:
    """A short SHA-256 of a model's parameters and buffers (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def load_pool_features(trainer, file: str) -> np.ndarray:
    """Features written by `pool_features` (`file` is the name its record gives), memory-mapped."""
    return np.load(trainer.run_dir / POOL_FEATURES_DIR / file, mmap_mode="r")


def pool_features(trainer, model, role: str) -> tuple[np.ndarray, dict]:
    """Pooled features of every pool example under `model` (eval mode), computed once and kept in the run directory.

    Args:
        trainer ([`PruneFuseTrainer`]): The run (its pool pixels, preprocessing, accelerator and run directory).
        model (`torch.nn.Module`): An HF image classifier (the input of the layer that gives its logits is the
            feature), or a detector or segmenter (its task's pooled features).
        role (`str`): `"dense"` or `"surrogate"`: which cost of `trainer.progress["costs"]` the pass is booked at.

    Returns:
        `tuple[np.ndarray, dict]`: the features `(len(pool), dim)` float32 in pool-index order, and the pass's cost
        (`seconds`, `flops`, `dense_flops`, `examples`, the `file` name in `RUN/pool_features/`, `reused`); a reused
        file's cost is its original pass's, with `reused=True` (callers book it once).
    """
    # The pool's key: its pixel cache's (classification), else its dataset's fingerprint (detection, segmentation).
    source = trainer.pool_pixels if trainer.pool_pixels is not None else trainer.pool.dataset
    key = hashlib.sha256(
        f"{getattr(source, '_fingerprint', None)}|{weights_digest(model)}|{FEATURES_VERSION}".encode()
    ).hexdigest()[:16]
    directory = trainer.run_dir / POOL_FEATURES_DIR
    path, record_path = directory / f"{role}-{key}.npy", directory / f"{role}-{key}.json"
    if record_path.is_file() and path.is_file():
        record = {**json.loads(record_path.read_text()), "file": path.name, "reused": True}
        return np.load(path), record
    started = time.perf_counter()
    indices = np.arange(len(trainer.pool), dtype=np.int64)
    scores = score_rows(trainer, model, indices, ("features",))
    features = scores.features.numpy().astype(np.float32, copy=False)
    costs = trainer.progress["costs"]
    record = {
        "role": role,
        "examples": len(indices),
        "seconds": time.perf_counter() - started,
        "flops": FORWARD_FLOPS_PER_MAC * costs[role]["macs"] * len(indices),
        "dense_flops": FORWARD_FLOPS_PER_MAC * costs["dense"]["macs"] * len(indices),
    }
    if trainer.is_world_process_zero():
        atomic_write(path, lambda f: np.save(f, features), binary=True)
        # The record last: its presence says the features file is whole.
        atomic_write(record_path, lambda f: f.write(json.dumps(record)))
    trainer.accelerator.wait_for_everyone()
    logger.info(f"Pool features of the {role} model: {features.shape} in {record['seconds']:.1f} s ({path}).")
    return features, {**record, "file": path.name, "reused": False}


def refresh_probe_features(trainer, model) -> dict:
    """The linear probe's features computed again by the dense `model` just fine-tuned (`proxy_refresh_every`): one
    dense pass over the pool, kept in `RUN/pool_features/` and read by the next selections.

    Returns:
        `dict`: the pass's cost record (`seconds`, `flops`, `dense_flops`, `examples`, `file`), booked as selection.
    """
    _, record = pool_features(trainer, model, "dense")
    trainer.progress["probe_features"] = record["file"]
    logger.info(f"Feature proxy refreshed by the fine-tuned dense model: {record['file']}.")
    return {key: record[key] for key in ("seconds", "flops", "dense_flops", "examples", "file")}


def classifier_input_indices(surrogate, plan) -> np.ndarray | None:
    """The dense feature indices the surrogate's pooled features correspond to (the kept input channels of its
    classifier in the pruning plan), or `None` when the classifier's input was not pruned."""
    names = {id(p): n for n, p in surrogate.named_parameters()}
    name = names.get(id(classifier_module(surrogate).weight))
    kept = plan.kept_indices.get(name, {}) if name else {}
    return np.asarray(kept[1], dtype=np.int64) if 1 in kept else None


def distillation_rows(num_examples: int, epochs: float, seed: int) -> np.ndarray | None:
    """The pool rows a distillation of `epochs` epochs sees: `None` (the whole pool) from one epoch on, else a sorted
    random sample of `ceil(epochs * num_examples)` rows, so that a fraction of an epoch also needs the dense model's
    features of that share only.

    Example:

    ```python
    >>> from prunefuse_hf.trainer.features import distillation_rows
    >>> distillation_rows(1000, 1.0, seed=0) is None, len(distillation_rows(1000, 0.25, seed=0))
    (True, 250)
    ```
    """
    if epochs >= 1:
        return None
    count = max(1, math.ceil(epochs * num_examples))
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_examples, generator=generator)[:count].sort().values.numpy()


def sample_features(trainer, model, rows: np.ndarray) -> tuple[np.ndarray, dict]:
    """Pooled features of the pool `rows` under `model` (not kept: a sample is drawn for one use), and the pass's
    cost record (`seconds`, `flops`, `dense_flops`, `examples`) booked at the dense model."""
    started = time.perf_counter()
    features = score_rows(trainer, model, rows, ("features",)).features.numpy().astype(np.float32, copy=False)
    macs = trainer.progress["costs"]["dense"]["macs"]
    flops = FORWARD_FLOPS_PER_MAC * macs * len(rows)
    record = {
        "seconds": time.perf_counter() - started,
        "flops": flops,
        "dense_flops": flops,
        "examples": len(rows),
    }
    return features, record


def distill_surrogate(
    trainer, surrogate, plan, dense_features: np.ndarray, epochs: float, rows: np.ndarray | None = None
) -> dict:
    """Train the surrogate's body so its pooled features match the dense model's at the kept channel indices
    (mean squared error), on the pool without labels, for `epochs` epochs (Adam, learning rate 1e-3, the run's
    training batch size and seed). The classifier is left as it is, and so are the normalization layers' statistics:
    the surrogate runs in eval mode, normalizing as the dense model does (a short pass would otherwise leave the
    running statistics half-updated, and the features it is scored with would be worse than before).

    Args:
        trainer ([`PruneFuseTrainer`]): The run (pool pixels, preprocessing, seed, batch size, costs).
        surrogate (`torch.nn.Module`): The pruned surrogate, trained in place.
        plan ([`PruningPlan`]): Its pruning plan (which dense features its pooled features are).
        dense_features (`np.ndarray` of shape `(len(rows), dense_dim)`): The dense model's pooled features of `rows`
            (of the whole pool when `rows` is `None`).
        epochs (`float`): Passes over the pool (a fraction trains on one pass over `rows`, that share of the pool).
        rows (`np.ndarray` or `None`, *optional*): The pool rows distilled on (`distillation_rows`); `None`: all.

    Returns:
        `dict`: the cost record (`seconds`, `flops`, `dense_flops`, `examples`) and the feature error before and
        after (`mse_before`, `mse_after`, on the same fixed 1,024 of the rows).

    Raises:
        `ValueError`: the surrogate's feature width matches neither the kept indices nor the dense width.
    """
    kept = classifier_input_indices(surrogate, plan)
    targets = torch.from_numpy(dense_features if kept is None else dense_features[:, kept])
    width = classifier_module(surrogate).in_features
    if width != targets.shape[1]:
        raise ValueError(
            f"The surrogate's pooled features have {width} values but the dense model's (at the kept indices) "
            f"{targets.shape[1]}; label-free distillation cannot pair them (set surrogate_distill_epochs: 0)."
        )
    rows = np.arange(len(targets)) if rows is None else np.asarray(rows, dtype=np.int64)
    generator = torch.Generator().manual_seed(trainer.args.seed)
    num_examples = len(rows)  # positions into `rows` and `targets`
    batch_size = trainer.args.per_device_train_batch_size
    steps_total = max(1, math.ceil(max(epochs, 1.0) * num_examples / batch_size))
    device = trainer.accelerator.device
    surrogate.to(device)
    probe = torch.randperm(num_examples, generator=generator)[:1024].sort().values.numpy()
    mse_before = _feature_error(trainer, surrogate, rows[probe], targets[probe])
    head = {id(p) for p in classifier_module(surrogate).parameters()}
    body = [p for p in surrogate.parameters() if id(p) not in head]
    optimizer = torch.optim.Adam(body, lr=1e-3)
    seen: list[torch.Tensor] = []
    hook = classifier_module(surrogate).register_forward_pre_hook(
        lambda m, args: seen.append(args[0].flatten(1))
    )
    pixels = PixelDataset(trainer.pool_pixels, np.arange(len(trainer.pool)))
    started = time.perf_counter()
    surrogate.eval()
    step, order = 0, torch.randperm(num_examples, generator=generator)
    try:
        while step < steps_total:
            position = (step * batch_size) % num_examples
            if position + batch_size > num_examples:
                order = torch.randperm(num_examples, generator=generator)
            positions = order[position : position + batch_size].sort().values
            batch = trainer.preprocessor.normalize(pixels.batch(rows[positions.numpy()]).to(device))
            seen.clear()
            surrogate(pixel_values=batch)
            loss = torch.nn.functional.mse_loss(seen[-1], targets[positions].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    finally:
        hook.remove()
    seconds = time.perf_counter() - started
    examples = steps_total * batch_size
    costs = trainer.progress["costs"]
    mse_after = _feature_error(trainer, surrogate, rows[probe], targets[probe])
    logger.info(
        f"Surrogate distilled from the dense model's features on {num_examples} pool examples: {epochs:g} epochs, "
        f"{steps_total} steps, {seconds:.1f} s; feature MSE {mse_before:.4f} -> {mse_after:.4f}."
    )
    return {
        "seconds": seconds,
        "examples": examples,
        "flops": TRAIN_FLOPS_PER_MAC * costs["surrogate"]["macs"] * examples,
        "dense_flops": TRAIN_FLOPS_PER_MAC * costs["dense"]["macs"] * examples,
        "mse_before": mse_before,
        "mse_after": mse_after,
    }


def score_rows(trainer, model, pool_indices: np.ndarray, outputs: tuple[str, ...], gather: bool = True):
    """`score_pool` of `model` on the run's pool rows `pool_indices`, with the run's examples, batch size, processes,
    workers, MC samples and the strategy's measure."""
    return trainer.examples.score(model, pool_indices, outputs, args=trainer.args, accelerator=trainer.accelerator,
                                  gather=gather, measure=trainer.strategy.measure)  # fmt: skip


def _feature_error(trainer, surrogate, rows: np.ndarray, targets: torch.Tensor) -> float:
    """Mean squared error between the surrogate's pooled features of the pool `rows` and `targets` (one per row)."""
    scores = score_pool(
        surrogate,
        PixelDataset(trainer.pool_pixels, rows),
        rows,
        batch_size=trainer.args.scoring_batch_size,
        outputs=("features",),
        preprocess=trainer.preprocessor.normalize,
        show_progress=False,
    )
    return float(torch.nn.functional.mse_loss(scores.features, targets))
