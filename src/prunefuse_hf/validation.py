"""Checks of settings against the model, run before any training: a setting the model cannot train with is
refused in the first seconds, naming the field, the value and the fix, instead of failing inside torch later."""

from __future__ import annotations

import torch
from torch import nn

# Input sizes tried to tell the smallest one a model takes.
_CANDIDATE_SIZES = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 512)


def check_input_size(
    model: nn.Module, input_shape: tuple[int, int, int], *, image_size_field: str = "image_size"
):
    """
    Run the model once on a batch of zeros of `input_shape` (eval mode, no gradients) and return the smallest
    number of values per channel any BatchNorm layer sees per example.

    Args:
        model (`nn.Module`): The image classifier.
        input_shape (`tuple[int, int, int]`): `(C, H, W)` of the run's inputs.
        image_size_field (`str`, *optional*): The setting named in the error.

    Returns:
        `int` or `None`: the smallest `H × W` (or length) a BatchNorm layer normalizes over, per example; `None`
        when the model has no BatchNorm.

    Raises:
        `ValueError`: the model cannot take inputs of that size (the message gives the smallest size that works).

    Example:

    ```python
    >>> check_input_size(ResNetForImageClassification(ResNetConfig()), (3, 32, 32))
    1
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
    except RuntimeError as error:
        channels, height, width = input_shape
        working = next(
            (
                size
                for size in _CANDIDATE_SIZES
                if size > min(height, width) and _runs(model, (channels, size, size))
            ),
            None,
        )
        hint = (
            f"set {image_size_field} to at least {working}" if working else f"use a larger {image_size_field}"
        )
        reason = str(error).splitlines()[0]
        raise ValueError(
            f"{type(model).__name__} cannot take {height}×{width} inputs ({reason}): {hint}."
        ) from None
    finally:
        for hook in hooks:
            hook.remove()
    return min(seen) if seen else None


def check_batchnorm_batch_sizes(args, smallest_per_example: int | None) -> None:
    """
    Refuse training batches in which a BatchNorm layer would see one value per channel (torch raises "Expected
    more than 1 value per channel when training" inside the first step).

    Args:
        args ([`PruneFuseConfig`]): The run's settings (`per_device_train_batch_size`,
            `surrogate_per_device_train_batch_size`, `initial_labeled_size`).
        smallest_per_example (`int` or `None`): From [`check_input_size`].

    Raises:
        `ValueError`: naming the field, its value and the fix.
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
    try:
        _forward(model, input_shape)
    except RuntimeError:
        return False
    return True
