"""The general pruning path: prune any image classifier Torch-Pruning can prune, and rebuild it from its history.

A family whose config cannot express narrower widths (DINOv2, SigLIP, CLIP, BEiT, timm models, ...) is pruned
in place by Torch-Pruning's `BasePruner`, which records its own history (`[root module, output side, indices]`
per group). The surrogate is saved as safetensors + the dense `config.json` + `pruning_plan.json` (which holds that
history): no pickle, no `trust_remote_code`. `load_surrogate` rebuilds it by building the dense architecture from
the config, replaying the history with `DependencyGraph.load_pruning_history` and loading the weights strictly.

The plan's kept dense indices come from the same replay, on a float64 copy of the dense model in which every entry
holds its own flat index: the values that survive are the kept indices, for every tensor the replay touches
(grouped convolutions, fused qkv, concatenations, tokens, layer scales alike).
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn
from transformers.utils import logging

from ..constants import PRUNING_PATH_REPLAY, PRUNING_PLAN_NAME, SURROGATE_WEIGHTS_NAME
from .graph import attention_attributes, build_pruner, fix_attention_attributes, patched_torch_pruning
from .support import classifier_class_name, is_segmentation_plan, plan_model_class_name
from .tracing import materialize_inputs

logger = logging.get_logger(__name__)


def prune_general(model: nn.Module, pruning_ratio: float, spec: dict) -> tuple[nn.Module, list, bool]:
    """Prune a copy of `model` (left untouched) with the general path.

    Returns `(surrogate, history as JSON, attention_outputs_dense)`.

    First with attention heads split (head dimensions pruned); when the pruned model's forward fails, again on a
    fresh copy with the attention outputs (and every split output) kept dense. Raises a `NotImplementedError`
    naming the model class and both errors when neither works.
    """
    errors = []
    for attention_outputs_dense in (False, True):
        # Tracing runs forward passes: in train mode they would move BatchNorm running statistics.
        candidate = copy.deepcopy(model).eval()
        inputs = materialize_inputs(spec, candidate)
        try:
            before = attention_attributes(candidate)
            with patched_torch_pruning():
                pruner = build_pruner(
                    candidate, inputs, pruning_ratio, attention_outputs_dense=attention_outputs_dense
                )
                for group in pruner.step(interactive=True):
                    group.prune()
            fix_attention_attributes(candidate, before)
            with torch.no_grad():
                logits = candidate(**inputs).logits
            # Classes are the last axis of image logits, axis 1 of per-pixel (batch, classes, height, width) ones.
            classes = logits.shape[1] if logits.ndim == 4 else logits.shape[-1]
            if classes != model.config.num_labels or not torch.isfinite(logits).all():
                raise RuntimeError(f"the pruned model returns logits of shape {list(logits.shape)}")
        except Exception as error:  # noqa: BLE001 - any failure is reported with the model class below
            errors.append(f"{type(error).__name__}: {str(error)[:200]}")
            continue
        history = [
            [name, bool(out), [int(getattr(i, "idx", i)) for i in idxs]]
            for name, out, idxs in pruner.pruning_history()
        ]
        if attention_outputs_dense:
            logger.warning(
                "%s: pruning the attention heads failed (%s); pruned with the attention outputs kept dense.",
                type(model).__name__,
                errors[0],
            )
        return candidate, history, attention_outputs_dense
    raise NotImplementedError(
        f"{type(model).__name__} (model_type '{model.config.model_type}') cannot be pruned by the general path: "
        f"with heads split: {errors[0]}; with attention outputs kept dense: {errors[1]}. Use pruning_ratio=0 (the "
        "dense model selects for itself) to run PruneFuse with this model."
    )


def replay_history(model: nn.Module, history: list, spec: dict, attention_outputs_dense: bool) -> nn.Module:
    """Apply a recorded pruning history to a dense model of the same architecture, in place; returns it."""
    inputs = materialize_inputs(spec, model)
    before = attention_attributes(model)
    with patched_torch_pruning():
        pruner = build_pruner(model, inputs, 0.0, attention_outputs_dense=attention_outputs_dense)
        pruner.DG.load_pruning_history([list(entry) for entry in history])
    fix_attention_attributes(model, before)
    return model


def kept_indices_by_replay(
    dense: nn.Module, history: list, spec: dict, attention_outputs_dense: bool
) -> dict[str, dict[int, list[int]]]:
    """`{tensor: {dim: kept dense indices}}`: replay the history on a float64 copy whose entries are their index."""
    coded = copy.deepcopy(dense).double().eval()
    dense_shapes = {name: tuple(t.shape) for name, t in coded.state_dict().items()}
    with torch.no_grad():
        for t in coded.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.arange(t.numel(), dtype=torch.float64, device=t.device).view(t.shape))
    replay_history(coded, history, spec, attention_outputs_dense)
    kept = {}
    for name, t in coded.state_dict().items():
        shape = dense_shapes[name]
        if tuple(t.shape) == shape:
            continue
        if not t.is_floating_point():
            raise RuntimeError(f"The general path pruned the integer tensor '{name}'; please report it.")
        coords = torch.unravel_index(t.reshape(-1).long().cpu(), shape)
        kept[name] = {
            dim: coords[dim].view(t.shape).movedim(dim, 0).reshape(size, -1)[:, 0].tolist()
            for dim, (dense_size, size) in enumerate(zip(shape, t.shape))
            if dense_size != size
        }
    return kept


def rebuild_surrogate(plan, device: torch.device | str | None = None) -> nn.Module:
    """The surrogate's architecture (untrained weights): the dense class from the plan's config, history replayed."""
    import transformers

    if plan.pruning_path != PRUNING_PATH_REPLAY:
        raise ValueError(
            f"This pruning plan takes the '{plan.pruning_path}' path: its surrogate reloads with "
            "AutoModelForImageClassification.from_pretrained, there is nothing to replay."
        )
    # The family's plain image classifier (a config may map to several, e.g. LeViT's distilled variant), or the
    # dense segmentation class.
    model_class = getattr(transformers, plan_model_class_name(plan))
    model = model_class(plan.dense_model_config())
    model.to(device or "cpu").eval()
    return replay_history(model, plan.pruning_history, plan.trace_inputs, plan.attention_outputs_dense)


def save_surrogate(model: nn.Module, plan, directory: str | os.PathLike) -> None:
    """Save a surrogate and its plan so that `load_surrogate` reads them back, whichever path its family takes.

    A config-path surrogate is a plain `save_pretrained` checkpoint. A general-path one is its `state_dict` as
    `model.safetensors` under the module's own names (transformers' `save_pretrained` may rename keys to a
    checkpoint layout that only its own loader, with the narrowed shapes it cannot build, maps back), the dense
    `config.json` (with the run's class names) and `pruning_plan.json`.

    Args:
        model (`nn.Module`): The surrogate `prune_model` returned (trained or not).
        plan ([`PruningPlan`]): Its plan.
        directory (`str` or `os.PathLike`): Created if missing.

    Example:

    ```python
    >>> from transformers import MobileNetV1Config, MobileNetV1ForImageClassification
    >>> from prunefuse_hf import load_surrogate, prune_model, save_surrogate
    >>> dense = MobileNetV1ForImageClassification(MobileNetV1Config(depth_multiplier=0.25, num_labels=3))
    >>> surrogate, plan = prune_model(dense, 0.5)
    >>> save_surrogate(surrogate, plan, "surrogate")
    >>> type(load_surrogate("surrogate")).__name__
    'MobileNetV1ForImageClassification'
    ```
    """
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    if plan.pruning_path != PRUNING_PATH_REPLAY:
        model.save_pretrained(directory)
    else:
        # Cloned: tied tensors share storage, which safetensors refuses; loading fills each of them.
        state = {name: t.detach().cpu().clone().contiguous() for name, t in model.state_dict().items()}
        save_file(state, os.path.join(directory, SURROGATE_WEIGHTS_NAME), metadata={"format": "pt"})
        model.config.save_pretrained(directory)
    plan.save_pretrained(directory)


def load_surrogate(
    directory: str | os.PathLike, plan=None, device: torch.device | str | None = None
) -> nn.Module:
    """Load a surrogate that prunefuse-hf saved, whichever path its family takes.

    A config-path surrogate (narrowed config) loads with `from_pretrained` of its family's class (what
    `AutoModelForImageClassification` or `AutoModelForObjectDetection` loads); a
    general-path one is rebuilt from its dense config and the plan's pruning history, then its safetensors are
    loaded strictly (every tensor, every shape).

    Args:
        directory (`str` or `os.PathLike`): A directory holding `config.json`, `model.safetensors` and, unless
            `plan` is given, `pruning_plan.json`.
        plan ([`PruningPlan`], *optional*): The plan, when it lives elsewhere (a run's `surrogate_init`).
        device (`str` or `torch.device`, *optional*): Where to build the model (default CPU).

    Returns:
        [`~transformers.PreTrainedModel`]: the surrogate in eval mode, with the saved config (class names) attached.

    Raises:
        `FileNotFoundError`: no plan, or no `model.safetensors` for a general-path surrogate.

    Example:

    ```python
    >>> surrogate = load_surrogate("run/surrogate")
    ```
    """
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSemanticSegmentation

    from .plan import PruningPlan

    plan = plan or PruningPlan.from_pretrained(directory)
    if plan.pruning_path != PRUNING_PATH_REPLAY:
        if is_segmentation_plan(plan):
            return AutoModelForSemanticSegmentation.from_pretrained(directory).to(device or "cpu")
        # The family's class (an image classifier or an object detector), as its Auto class would load it.
        model_class = getattr(transformers, classifier_class_name(plan.model_type))
        return model_class.from_pretrained(directory).to(device or "cpu")
    weights = os.path.join(directory, SURROGATE_WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"No {SURROGATE_WEIGHTS_NAME} in {directory}: a surrogate of the general pruning path is its weights + "
            f"config.json + {PRUNING_PLAN_NAME}; save it with `save_surrogate(surrogate, plan, dir)`."
        )
    model = rebuild_surrogate(plan, device)
    model.load_state_dict(load_file(weights, device=str(device or "cpu")), strict=True)
    # The saved config carries the run's class names; the architecture fields are the plan's.
    saved = AutoConfig.from_pretrained(directory)
    model.config.id2label, model.config.label2id = saved.id2label, saved.label2id
    return model
