"""`DistillationTrainer`: the stock `Trainer` plus knowledge distillation from a teacher (the trained surrogate)."""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import EvalPrediction, has_length
from transformers.utils import logging

from ..constants import DEFAULT_DISTILL_ALPHA, DEFAULT_DISTILL_TEMPERATURE, LABELS, PIXEL_VALUES
from ..metrics import load_accuracy

if TYPE_CHECKING:
    from .prunefuse_config import PruneFuseConfig

logger = logging.get_logger(__name__)


@functools.lru_cache(maxsize=1)
def _accuracy_metric():
    # In memory: every process gets the gathered predictions from the Trainer and computes alone, so there is
    # nothing to share through evaluate's cache files (which several processes would otherwise write at once).
    return load_accuracy(keep_in_memory=True)


def compute_accuracy(eval_pred: EvalPrediction) -> dict[str, float]:
    """
    Top-1 accuracy of classification logits, computed with `evaluate`'s accuracy metric (loaded offline).

    The default `compute_metrics` of [`DistillationTrainer`]; the Trainer reports it as `eval_accuracy`.

    Args:
        eval_pred ([`~transformers.EvalPrediction`]):
            `predictions` are logits of shape `(num_examples, num_labels)` (or a tuple whose first element is),
            or class ids when `preprocess_logits_for_metrics` already took the argmax; `label_ids` are class ids.

    Returns:
        `dict[str, float]`: `{"accuracy": value}`.

    Example:

    ```python
    >>> import numpy as np
    >>> from transformers.trainer_utils import EvalPrediction
    >>> compute_accuracy(EvalPrediction(predictions=np.array([[0.1, 0.9], [0.8, 0.2]]), label_ids=np.array([1, 1])))
    {'accuracy': 0.5}
    ```
    """
    predictions, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim == labels.ndim + 1:
        predictions = predictions.argmax(axis=-1)
    return _accuracy_metric().compute(predictions=predictions.reshape(-1), references=labels.reshape(-1))


class DistillationTrainer(Trainer):
    """
    [`~transformers.Trainer`] for the models of a PruneFuse run, with optional knowledge distillation.

    With a `teacher_model` (the trained surrogate) and `distill_alpha > 0` the loss is

        (1 - α) · CE(labels, z_F) + α · τ² · KL(softmax(z_S / τ) ‖ softmax(z_F / τ))

    where z_F are the logits of the model being trained and z_S the teacher's. Without a teacher, or with α = 0,
    it is exactly the cross-entropy the model itself computes, so the same trainer trains surrogates, fused models
    and dense baselines. The cross-entropy and distillation terms are logged as `ce_loss` and `kd_loss`
    (`eval_ce_loss`, `eval_kd_loss` in evaluation) next to the stock `loss` when distilling.

    Args:
        model ([`~transformers.PreTrainedModel`] or `torch.nn.Module`):
            The image classifier to train; it is called as `model(pixel_values=...)` and must return `logits`.
        args ([`PruneFuseConfig`] or [`~transformers.TrainingArguments`]):
            Training arguments. α and τ are read from a [`PruneFuseConfig`].
        teacher_model (`torch.nn.Module`, *optional*):
            The model to distill from. It is moved to the training device, put in eval mode and frozen.
        distill_alpha (`float`, *optional*):
            α; overrides `args.distill_alpha`. Defaults to `0.5` when `args` is a plain `TrainingArguments`.
        distill_temperature (`float`, *optional*):
            τ; overrides `args.distill_temperature`. Defaults to `4.0` when `args` is a plain `TrainingArguments`.
        preprocessor ([`~prunefuse_hf.data.ImagePreprocessor`], *optional*):
            When the datasets give `uint8` pixels (decoded once, see `prunefuse_hf.data.preprocessing`), normalizes
            (and, in training, augments) each batch on the training device.
        trainer_kwargs:
            Passed to [`~transformers.Trainer`] (`train_dataset`, `eval_dataset`, `data_collator`,
            `processing_class`, `callbacks`, ...). `compute_metrics` defaults to [`compute_accuracy`]; pass
            `compute_metrics=None` to evaluate the loss only.

    Example:

    ```python
    >>> import torch
    >>> from transformers import ResNetConfig, ResNetForImageClassification, TrainingArguments
    >>> from prunefuse_hf import DistillationTrainer, prune_model
    >>> model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))
    >>> surrogate, plan = prune_model(model, 0.5)
    >>> labeled = [{"pixel_values": torch.randn(3, 32, 32), "labels": i % 2} for i in range(16)]
    >>> args = TrainingArguments("distill", num_train_epochs=1, per_device_train_batch_size=8, report_to="none",
    ...                          use_cpu=True, save_strategy="no")
    >>> trainer = DistillationTrainer(model, args, teacher_model=surrogate, distill_alpha=0.5,
    ...                               train_dataset=labeled, eval_dataset=labeled)
    >>> trainer.train().global_step  # the Trainer also prints its log dicts
    {'train_runtime': ...}
    2
    >>> 0.0 <= trainer.evaluate()["eval_accuracy"] <= 1.0
    True
    ```
    """

    # compute_loss returns a per-batch mean that ignores num_items_in_batch, so the Trainer must divide it by the
    # gradient accumulation steps itself (HF vision models accept **kwargs, which would make it assume otherwise).
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: nn.Module,
        args: PruneFuseConfig | TrainingArguments | None = None,
        *,
        teacher_model: nn.Module | None = None,
        distill_alpha: float | None = None,
        distill_temperature: float | None = None,
        preprocessor=None,
        **trainer_kwargs,
    ):
        if trainer_kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "DistillationTrainer computes its own loss (cross-entropy plus distillation); compute_loss_func is "
                "not supported."
            )
        if "compute_metrics" not in trainer_kwargs:
            trainer_kwargs["compute_metrics"] = compute_accuracy
        if distill_alpha is None:
            distill_alpha = getattr(args, "distill_alpha", DEFAULT_DISTILL_ALPHA)
        if distill_temperature is None:
            distill_temperature = getattr(args, "distill_temperature", DEFAULT_DISTILL_TEMPERATURE)
        if not 0 <= distill_alpha <= 1:
            raise ValueError(f"distill_alpha must be in [0, 1], got {distill_alpha}.")
        if not distill_temperature > 0:
            raise ValueError(f"distill_temperature must be > 0, got {distill_temperature}.")
        _check_same_labels(model, teacher_model)

        super().__init__(model=model, args=args, **trainer_kwargs)

        self.preprocessor = preprocessor
        self.distill_alpha = float(distill_alpha)
        self.distill_temperature = float(distill_temperature)
        self.teacher_model = teacher_model
        if teacher_model is not None:
            teacher_model.to(self.accelerator.device)
            teacher_model.eval()
            teacher_model.requires_grad_(False)
        self._loss_terms = {"train": defaultdict(list), "eval": defaultdict(list)}

    @property
    def distilling(self) -> bool:
        """Whether the loss has a distillation term (a teacher is set and `distill_alpha > 0`)."""
        return self.teacher_model is not None and self.distill_alpha > 0

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        # Only pixel_values go in: with remove_unused_columns=False a batch may carry extra columns (pool_index),
        # and the labels stay out so the model does not compute a loss we would throw away.
        pixel_values = inputs[PIXEL_VALUES]
        labels = inputs[LABELS]
        outputs = model(pixel_values=pixel_values)
        logits = outputs.logits
        # The same call as the HF classification loss (mean over the batch, ignore_index=-100); stock Trainer's
        # label smoothing is the same as cross_entropy's.
        ce_loss = F.cross_entropy(
            logits.view(-1, logits.shape[-1]),
            labels.view(-1),
            label_smoothing=self.args.label_smoothing_factor,
        )
        if not self.distilling:
            loss = ce_loss
        else:
            with torch.no_grad():
                teacher_logits = self.teacher_model(pixel_values=pixel_values).logits
            tau = self.distill_temperature
            kd_loss = F.kl_div(
                F.log_softmax(logits.float() / tau, dim=-1),
                F.log_softmax(teacher_logits.float() / tau, dim=-1),
                log_target=True,
                reduction="batchmean",
            )
            loss = (1 - self.distill_alpha) * ce_loss + self.distill_alpha * tau**2 * kd_loss
            mode = "train" if model.training else "eval"
            self._loss_terms[mode]["ce_loss"].append(ce_loss.detach())
            self._loss_terms[mode]["kd_loss"].append(kd_loss.detach())
        return (loss, outputs) if return_outputs else loss

    def _prepare_inputs(self, inputs: dict) -> dict:
        # uint8 pixels travel to the device as they are (4x fewer bytes) and are normalized there.
        inputs = super()._prepare_inputs(inputs)
        if self.preprocessor is not None and PIXEL_VALUES in inputs:
            inputs[PIXEL_VALUES] = self.preprocessor.normalize(
                inputs[PIXEL_VALUES], train=self.model.training
            )
        return inputs

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Same pattern as trl: average what compute_loss collected since the last log, over steps and processes
        # (log runs on every process, so the collective reduce is safe), then hand everything to the stock log.
        mode = "train" if self.model.training else "eval"
        terms = self._loss_terms[mode]
        if terms:
            prefix = "eval_" if mode == "eval" else ""
            for name, values in terms.items():
                mean = self.accelerator.reduce(torch.stack(values).mean(), reduction="mean")
                logs[prefix + name] = mean.item()
            terms.clear()
        super().log(logs, start_time)

    def get_train_dataloader(self):
        # A final batch of exactly one example breaks BatchNorm in training mode when the last feature map is 1x1
        # ("Expected more than 1 value per channel"), which tiny labeled sets hit easily. Dropping that one example
        # (a different one each epoch, since the sampler shuffles) is the least intrusive fix. It only happens
        # with one process: with several, Accelerate's default even_batches=True refills every process's last
        # batch to full size with examples from the start of the epoch, so no singleton batch exists and nothing
        # should be dropped. A one-example dataset is left alone: dropping it would leave nothing to train on.
        if not self._last_batch_is_singleton():
            return super().get_train_dataloader()
        self.args.dataloader_drop_last = True
        try:
            return super().get_train_dataloader()
        finally:
            self.args.dataloader_drop_last = False

    def _last_batch_is_singleton(self) -> bool:
        dataset = self.train_dataset
        if dataset is None or not has_length(dataset) or self.args.dataloader_drop_last:
            return False
        if self.accelerator.num_processes > 1 and self.accelerator.even_batches:
            return False
        return len(dataset) > 1 and len(dataset) % self._train_batch_size == 1


def _check_same_labels(model: nn.Module, teacher_model: nn.Module | None) -> None:
    if teacher_model is None:
        return
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    teacher_num_labels = getattr(getattr(teacher_model, "config", None), "num_labels", None)
    if num_labels is not None and teacher_num_labels is not None and num_labels != teacher_num_labels:
        raise ValueError(
            f"teacher_model has {teacher_num_labels} labels but model has {num_labels}; distillation needs the "
            "same label set."
        )
