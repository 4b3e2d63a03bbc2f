"""Checks of settings against the model and the pool, run before any training: a setting the run cannot work
with is refused in the first seconds, naming the field, the value and the fix, instead of failing later."""

from __future__ import annotations

import copy

import torch
from torch import nn

# Input sizes tried to tell the smallest one a model takes.
_CANDIDATE_SIZES = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 512)


def check_input_size(
    model: nn.Module, input_shape: tuple[int, int, int], *, image_size_field: str = "image_size"
) -> int | None:
    """
    Run the model once on a batch of zeros of `input_shape` (eval mode, no gradients) and return the smallest
    number of values per channel any BatchNorm layer sees per example.

    A model that cannot take the size is refused with the size that works: the smallest larger size it runs at
    (inputs too small for a convolution's kernel), or the `image_size` of its config when that is the only size
    it takes (ViT and DeiT position embeddings, Swin windows are built for the config's size).

    Args:
        model (`nn.Module`): The image classifier.
        input_shape (`tuple[int, int, int]`): `(C, H, W)` of the run's inputs.
        image_size_field (`str`, *optional*, defaults to `"image_size"`): The setting named in the error.

    Returns:
        `int` or `None`: the smallest `H × W` (or length) a BatchNorm layer normalizes over, per example; `None`
        when the model has no BatchNorm.

    Raises:
        `ValueError`: the model cannot take inputs of that size; the message names `image_size_field` and the
            size to set.

    Example:

    ```python
    >>> from transformers import ResNetConfig, ResNetForImageClassification
    >>> check_input_size(ResNetForImageClassification(ResNetConfig(hidden_sizes=[16, 32], depths=[1, 1])), (3, 32, 32))
    16
    ```
    """
    seen: list[int] = []
    hooks = [
        module.register_forward_pre_hook(lambda _m, args: seen.append(int(args[0][0, 0].numel())))
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]
    try:
        _forward(model, input_shape)
    except (RuntimeError, ValueError) as error:
        # RuntimeError: torch (a kernel larger than the feature map); ValueError: the modeling code's own
        # check (ViT: "Input image size (16*16) doesn't match model (32*32).").
        reason = str(error).splitlines()[0].rstrip(".")
        raise ValueError(
            f"{type(model).__name__} cannot take {input_shape[1]}×{input_shape[2]} inputs ({reason}): "
            f"{_size_hint(model, input_shape, image_size_field)}."
        ) from None
    finally:
        for hook in hooks:
            hook.remove()
    return min(seen) if seen else None


def _size_hint(model: nn.Module, input_shape, field: str) -> str:
    channels, height, width = input_shape
    configured = getattr(getattr(model, "config", None), "image_size", None)
    if isinstance(configured, (list, tuple)):
        configured = configured[0] if len(set(configured)) == 1 else None
    # Candidates below the configured size only: at the configured size (or above) the config's size is the
    # better advice, since models with position embeddings take no other.
    smallest = next(
        (
            size
            for size in _CANDIDATE_SIZES
            if size > min(height, width)
            and (configured is None or size < configured)
            and _runs(model, (channels, size, size))
        ),
        None,
    )
    if smallest is not None:
        return f"set {field} to at least {smallest}"
    if configured and _runs(model, (channels, configured, configured)):
        return f"set {field} to {configured}, the model's config.image_size"
    return f"use another {field} (none of {list(_CANDIDATE_SIZES)} works for this model)"


def check_batchnorm_batch_sizes(args, smallest_per_example: int | None) -> None:
    """
    Refuse training batches in which a BatchNorm layer would see one value per channel (torch raises "Expected
    more than 1 value per channel when training" inside the first step).

    Args:
        args ([`PruneFuseConfig`]): The run's settings (`per_device_train_batch_size`,
            `surrogate_per_device_train_batch_size`, `initial_labeled_size`).
        smallest_per_example (`int` or `None`): From [`check_input_size`]; `None` (no BatchNorm) accepts any batch.

    Raises:
        `ValueError`: naming the field, its value and the fix.

    Example:

    ```python
    >>> from prunefuse_hf import PruneFuseConfig
    >>> check_batchnorm_batch_sizes(PruneFuseConfig(output_dir="run", per_device_train_batch_size=1), 1)
    Traceback (most recent call last):
    ValueError: per_device_train_batch_size: 1 cannot train this model: ...
    ```
    """
    if smallest_per_example is None or smallest_per_example > 1:
        return
    reason = (
        "its BatchNorm layers normalize 1×1 feature maps, so a batch of one example gives one value per channel and "
        "torch refuses to train on it"
    )
    for name in ("per_device_train_batch_size", "surrogate_per_device_train_batch_size"):
        value = getattr(args, name, None)
        if value is not None and value < 2:
            raise ValueError(
                f"{name}: {value} cannot train this model: {reason}. Use a batch size of at least 2."
            )
    if args.initial_labeled_size < 2:
        raise ValueError(
            f"initial_labeled_size: {args.initial_labeled_size} cannot train this model: {reason}. Start from at "
            "least 2 labeled examples."
        )


def check_labeling_budget(args, pool_size: int) -> None:
    """
    Refuse a labeling budget larger than the pool: the initial draw plus every round's query must fit in it.

    Args:
        args ([`PruneFuseConfig`]): The run's settings (`initial_labeled_size`, `query_size`, `num_rounds`).
        pool_size (`int`): Number of examples the run can select from (seed labels excluded).

    Raises:
        `ValueError`: naming each part of the budget, its total and the pool size.

    Example:

    ```python
    >>> from prunefuse_hf import PruneFuseConfig
    >>> check_labeling_budget(PruneFuseConfig(output_dir="run", initial_labeled_size=16, query_size=[50, 50]), 96)
    Traceback (most recent call last):
    ValueError: The labeling budget is larger than the pool: initial_labeled_size (16) + query_size over 2 rounds ...
    ```
    """
    sizes = args.query_sizes()
    total = args.initial_labeled_size + sum(sizes)
    if total > pool_size:
        raise ValueError(
            f"The labeling budget is larger than the pool: initial_labeled_size ({args.initial_labeled_size}) + "
            f"query_size over {args.num_rounds} rounds ({sum(sizes)}) = {total}, but the pool has {pool_size} "
            "examples. Lower initial_labeled_size, query_size or num_rounds, or select from a larger pool."
        )


def _forward(model: nn.Module, input_shape) -> None:
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters())
        with torch.no_grad():
            model(pixel_values=torch.zeros((2, *input_shape), device=parameter.device, dtype=parameter.dtype))
    finally:
        model.train(was_training)


def _runs(model: nn.Module, input_shape) -> bool:
    """Whether a fresh model of the same class and config takes `input_shape`, tried on the meta device.

    The meta device costs no memory and no compute, and a fresh model per try keeps state the forward changes
    out of the answer (Swin shrinks a window for good once it sees a feature map smaller than it).
    """
    config = getattr(model, "config", None)
    if config is None:
        return _forward_runs(model, input_shape, device=next(model.parameters()).device)
    with torch.device("meta"):
        probe = type(model)(copy.deepcopy(config))
    return _forward_runs(probe, input_shape, device="meta")


def _forward_runs(model: nn.Module, input_shape, device) -> bool:
    model.eval()
    try:
        with torch.no_grad():
            model(pixel_values=torch.zeros((2, *input_shape), device=device))
    except (RuntimeError, ValueError, NotImplementedError):
        return False
    return True
