"""Where each `TrainingArguments` field of a PruneFuse run applies, and the settings and callbacks refused before any
work.

A run trains many models with inner Trainers (`step_models.train_model`): the surrogate every round, and the final
model (the fused model, or a fresh dense one). Their arguments are copies of the run's config
(`surrogate_training_args`, `dense_training_args`), so a stock `TrainingArguments` field reaches them as a stock
Trainer user expects, or is refused here by name, with the fix, before the pool is decoded and before the run
directory is created.
"""

from __future__ import annotations

import importlib.util

from transformers import EarlyStoppingCallback
from transformers.trainer_utils import HubStrategy, IntervalStrategy, SaveStrategy

# Where each field applies. "every training": every inner Trainer (surrogates and the final model); "final training":
# the final model's trainings only (the surrogates are trained with it off); "run": the PruneFuse trainer itself;
# "task": set by the task; "no effect": not read by any Trainer (scripts read it), as with the stock Trainer;
# "refused": refused before any work, in the cases `check_training_settings` names (else as its other scope says).
TRAINING_ARGUMENT_SCOPES = {
    "output_dir": "run: the run directory; the inner Trainers write to output_dir/trainer_output",
    "per_device_train_batch_size": "every training (surrogate_per_device_train_batch_size for the surrogate)",
    "num_train_epochs": "every training (surrogate_num_train_epochs for the surrogate)",
    "max_steps": "every training (ends each training before num_train_epochs)",
    "learning_rate": "every training (surrogate_learning_rate for the surrogate)",
    "lr_scheduler_type": "every training; refused when the scheduler cannot be built (e.g. missing lr_scheduler_kwargs)",
    "lr_scheduler_kwargs": "every training",
    "warmup_steps": "every training",
    "optim": "every training; refused when the optimizer cannot be built (a missing package)",
    "optim_args": "every training",
    "weight_decay": "every training",
    "adam_beta1": "every training",
    "adam_beta2": "every training",
    "adam_epsilon": "every training",
    "optim_target_modules": "every training (the optimizers that read it)",
    "gradient_accumulation_steps": "every training",
    "average_tokens_across_devices": "every training",
    "max_grad_norm": "every training",
    "label_smoothing_factor": "every training (classification: the cross-entropy term); refused for object detection and segmentation",
    "bf16": "every training",
    "fp16": "every training",
    "bf16_full_eval": "every evaluation",
    "fp16_full_eval": "every evaluation",
    "tf32": "every training (refused by TrainingArguments without an Ampere GPU)",
    "activation_checkpointing": "every training; refused for a model without gradient checkpointing",
    "activation_checkpointing_kwargs": "every training",
    "gradient_checkpointing": "alias of activation_checkpointing",
    "gradient_checkpointing_kwargs": "alias of activation_checkpointing_kwargs",
    "torch_compile": "every training",
    "torch_compile_backend": "every training",
    "torch_compile_mode": "every training",
    "use_liger_kernel": "refused: Liger kernels patch language models",
    "liger_kernel_config": "refused with use_liger_kernel",
    "use_cache": "every training (vision models have no cache)",
    "neftune_noise_alpha": "refused: NEFTune adds noise to token embeddings, which vision models have none of",
    "torch_empty_cache_steps": "every training",
    "auto_find_batch_size": "every training",
    "logging_strategy": "every training (its logs reach the run's callbacks, see PruneFuseTrainer)",
    "logging_steps": "every training",
    "logging_first_step": "every training",
    "log_on_each_node": "every training and the run",
    "logging_nan_inf_filter": "every training",
    "include_num_input_tokens_seen": "every training",
    "log_level": "every training and the run's own log lines",
    "log_level_replica": "every training and the run",
    "disable_tqdm": "every training, scoring and decoding pass",
    "report_to": "run: the integrations get every training's logs, prefixed by the model (surrogate/, fused/)",
    "run_name": "run (report_to integrations)",
    "project": "run (report_to integrations)",
    "trackio_space_id": "run (report_to integrations)",
    "trackio_bucket_id": "run (report_to integrations)",
    "trackio_static_space_id": "run (report_to integrations)",
    "eval_strategy": "final training (the surrogate is evaluated once trained); refused without an evaluation set",
    "eval_steps": "final training",
    "eval_delay": "final training",
    "per_device_eval_batch_size": "every evaluation",
    "prediction_loss_only": "refused: every model's metric is part of the run's results",
    "eval_on_start": "final training; refused without an evaluation set",
    "eval_do_concat_batches": "every evaluation; refused off for classification (set off by object detection)",
    "eval_use_gather_object": "every evaluation",
    "eval_accumulation_steps": "every evaluation",
    "include_for_metrics": "every evaluation",
    "batch_eval_metrics": "refused: the run's metric is computed over the whole evaluation set",
    "save_only_model": "final training",
    "save_strategy": "final training (the run saves the surrogate itself)",
    "save_steps": "final training",
    "save_on_each_node": "final training",
    "save_total_limit": "final training",
    "enable_jit_checkpoint": "refused: a run resumes at its last finished step, never from an inner checkpoint",
    "push_to_hub": "run: the finished run is pushed once, at the end (the inner Trainers never push)",
    "hub_token": "run (the push at the end)",
    "hub_private_repo": "run (the push at the end)",
    "hub_model_id": "run (the push at the end)",
    "hub_strategy": "run: 'end' and 'every_save' push once at the end; 'checkpoint' and 'all_checkpoints' are refused",
    "hub_always_push": "run: no effect (the one push at the end waits for itself)",
    "hub_revision": "run (the push at the end)",
    "load_best_model_at_end": "final training",
    "metric_for_best_model": "final training; refused when the task's evaluation does not report it",
    "greater_is_better": "final training",
    "ignore_data_skip": "refused: a run resumes at its last finished step, never from an inner checkpoint",
    "restore_callback_states_from_checkpoint": "refused: as ignore_data_skip",
    "full_determinism": "every training",
    "seed": "every training (each gets its own seed derived from it) and the run",
    "data_seed": "every training (each gets its own data seed derived from it; unset: from seed)",
    "use_cpu": "every training and the run (set on machines without a GPU)",
    "accelerator_config": "every training and scoring pass",
    "parallelism_config": "refused: tensor and context parallelism are for language models",
    "dataloader_drop_last": "every training",
    "dataloader_num_workers": "every training, evaluation and scoring pass",
    "dataloader_pin_memory": "every training and evaluation",
    "dataloader_persistent_workers": "every training and evaluation; refused without dataloader_num_workers",
    "dataloader_prefetch_factor": "every training and evaluation",
    "dataloader_multiprocessing_context": "every training and evaluation",
    "dataloader_in_order": "every training and evaluation",
    "remove_unused_columns": "no effect on classification's prepared examples; set off by object detection and segmentation",
    "label_names": "refused unless ['labels']: the run's examples carry their labels as `labels`",
    "train_sampling_strategy": "every training; 'group_by_length' is refused (images have no length)",
    "length_column_name": "no effect (only with group_by_length, which is refused)",
    "ddp_find_unused_parameters": "every training",
    "ddp_bucket_cap_mb": "every training",
    "ddp_broadcast_buffers": "every training",
    "ddp_static_graph": "every training",
    "ddp_backend": "every training",
    "ddp_timeout": "every training",
    "fsdp": "every training; refused on a machine without a GPU and in a single process",
    "fsdp_config": "every training (with fsdp)",
    "deepspeed": "refused on a machine without a GPU or without the deepspeed package",
    "debug": "every training",
    "skip_memory_metrics": "every training",
    "do_train": "no effect: read by scripts, not by the Trainer (`prunefuse-hf run` always runs)",
    "do_eval": "no effect: as do_train (evaluation follows eval_dataset / eval_split)",
    "do_predict": "no effect: as do_train",
    "resume_from_checkpoint": "refused: resume a run with `--resume` or `train(resume_from_checkpoint=True)`",
    "local_rank": "every training (set by the launcher)",
}


def user_callbacks(callbacks, report_to) -> list:
    """
    The callbacks a user gave (`callbacks=[...]` or `add_callback`), of `callbacks` (instances or classes): not the
    Trainer's own (flow, printer, progress), not the `report_to` integrations, not the run's `RunProgressCallback`.
    They see the final model's training as a stock Trainer's callbacks would (see [`PruneFuseTrainer`]).
    """
    from transformers.integrations import get_reporting_integration_callbacks
    from transformers.trainer_callback import DefaultFlowCallback, PrinterCallback, ProgressCallback

    from .run_progress import RunProgressCallback

    own = (DefaultFlowCallback, PrinterCallback, ProgressCallback, RunProgressCallback,
           *get_reporting_integration_callbacks(report_to))  # fmt: skip
    return [
        c for c in callbacks or [] if not (issubclass(c, own) if isinstance(c, type) else isinstance(c, own))
    ]


def check_training_settings(args, task, *, callbacks=None, has_eval_set: bool) -> None:
    """
    Refuse, before any work, a `TrainingArguments` setting or a callback that would be ignored or stop the run half-way
    (see `TRAINING_ARGUMENT_SCOPES`).

    Args:
        args ([`PruneFuseConfig`]): The run's settings.
        task ([`Task`]): The run's task: what its evaluation reports (`metric_names`), whether its models train with
            a classifier's cross-entropy (`distills`).
        callbacks (`list`, *optional*): The callbacks given to the trainer.
        has_eval_set (`bool`): Whether the run has an evaluation set.

    Raises:
        `ValueError`: naming the field, its value and the fix.
    """
    metric_names = task.metric_names  # the first is the metric the run records for every model
    _refuse(args.train_sampling_strategy == "group_by_length", "train_sampling_strategy: group_by_length groups "
            "examples by their length in tokens; images have none. Use 'random' (the default) or 'sequential'.")  # fmt: skip
    _refuse(args.neftune_noise_alpha is not None, f"neftune_noise_alpha: {args.neftune_noise_alpha} adds noise to a "
            "language model's token embeddings; a vision model has none. Remove neftune_noise_alpha.")  # fmt: skip
    _refuse(args.use_liger_kernel, "use_liger_kernel: true patches language models' layers with Liger kernels; "
            "PruneFuse trains vision models. Set use_liger_kernel: false.")  # fmt: skip
    _refuse(args.parallelism_config is not None, f"parallelism_config: {args.parallelism_config!r} (tensor / context "
            "parallelism) is not supported: a run trains each model with data parallelism (accelerate launch "
            "--multi_gpu). Remove parallelism_config.")  # fmt: skip
    _refuse(args.prediction_loss_only, "prediction_loss_only: true leaves every evaluation without its metric, "
            f"which the run records for every model ({metric_names[0]}). Set prediction_loss_only: false.")  # fmt: skip
    _refuse(args.batch_eval_metrics, "batch_eval_metrics: true computes metrics batch by batch; the run computes "
            f"{metric_names[0]} over the whole evaluation set. Set batch_eval_metrics: false (per_device_eval_batch_size "
            "and eval_accumulation_steps bound the memory).")  # fmt: skip
    _refuse(args.label_names not in (None, ["labels"]), f"label_names: {args.label_names} names inputs the run's "
            "examples do not have: they carry their labels as `labels` (the label_column is read into it). "
            "Remove label_names.")  # fmt: skip
    _refuse(not task.ragged_labels and not args.eval_do_concat_batches, "eval_do_concat_batches: false hands the "
            f"metric a list of batches; {metric_names[0]} reads one array. Set eval_do_concat_batches: true.")  # fmt: skip
    _refuse(args.dataloader_persistent_workers and args.dataloader_num_workers == 0, "dataloader_persistent_workers: "
            "true needs worker processes, but dataloader_num_workers is 0. Set dataloader_num_workers (e.g. 2) or "
            "dataloader_persistent_workers: false.")  # fmt: skip
    for name in ("ignore_data_skip", "restore_callback_states_from_checkpoint", "enable_jit_checkpoint"):
        _refuse(getattr(args, name), f"{name}: true is about resuming a Trainer from its checkpoints; a PruneFuse run "
                f"resumes at its last finished step (`--resume`, `train(resume_from_checkpoint=True)`). Set {name}: "
                "false.")  # fmt: skip
    _refuse(args.push_to_hub and args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS),
            f"hub_strategy: {_value(args.hub_strategy)} pushes training checkpoints; a run pushes the finished run "
            "once, at the end (the fused model, and hub_subset_id / hub_surrogate_id). Set hub_strategy: end.")  # fmt: skip
    _refuse(args.fsdp and (args.use_cpu or args.world_size <= 1), "fsdp shards each model over "
            "several GPUs; this run has "
            f"{'no GPU' if args.use_cpu else 'one process'}. Remove fsdp (several processes train with DDP: accelerate "
            "launch --multi_gpu).")  # fmt: skip
    _refuse(not task.distills and args.label_smoothing_factor,
            f"label_smoothing_factor: {args.label_smoothing_factor} smooths class labels of a classification loss; a "
            f"{task.name} model trains with its own loss, which the Trainer cannot smooth. Set "
            "label_smoothing_factor: 0.")  # fmt: skip
    _check_evaluation(args, metric_names, has_eval_set)
    check_early_stopping(args, callbacks, has_eval_set)


def check_config_settings(args) -> None:
    """The checks `PruneFuseConfig.__post_init__` runs before `TrainingArguments`' own (whose errors for these name a
    package, not the field)."""
    _refuse(args.resume_from_checkpoint is not None, f"resume_from_checkpoint: {args.resume_from_checkpoint!r} is "
            "not read by a PruneFuse run: it resumes the run in output_dir with `prunefuse-hf run --resume` or "
            "`trainer.train(resume_from_checkpoint=True)`. Remove resume_from_checkpoint.")  # fmt: skip
    if args.deepspeed:
        _refuse(args.use_cpu, f"deepspeed: {args.deepspeed!r} trains on GPUs; this machine has none. Remove "
                "deepspeed.")  # fmt: skip
        _refuse(importlib.util.find_spec("deepspeed") is None, f"deepspeed: {args.deepspeed!r} needs the deepspeed "
                "package: `pip install deepspeed`, or remove deepspeed.")  # fmt: skip


def check_model_settings(model, args) -> None:
    """Refuse gradient checkpointing for a model that does not support it (its surrogate and fused models are of
    the same class), and an optimizer or learning-rate scheduler that cannot be built for it."""
    _check_optimizer_and_scheduler(args, model)
    wanted = args.activation_checkpointing or args.gradient_checkpointing
    _refuse(wanted and not getattr(model, "supports_gradient_checkpointing", False),
            f"gradient_checkpointing: true, but {type(model).__name__} does not support gradient (activation) "
            "checkpointing. Set gradient_checkpointing: false.")  # fmt: skip


def _check_evaluation(args, metric_names, has_eval_set: bool) -> None:
    if not has_eval_set:
        for name, on in (("eval_strategy", args.eval_strategy != IntervalStrategy.NO),
                         ("eval_on_start", args.eval_on_start),
                         ("load_best_model_at_end", args.load_best_model_at_end)):  # fmt: skip
            _refuse(on, f"{name}: {_value(getattr(args, name))} evaluates the final model while it trains, but the "
                    "run has no evaluation set. Give one (eval_dataset, or eval_split in a recipe) or set "
                    f"{name}: {'no' if name == 'eval_strategy' else 'false'}.")  # fmt: skip
    uses_metric = args.load_best_model_at_end or args.save_strategy == SaveStrategy.BEST
    _refuse(uses_metric and args.metric_for_best_model is None, f"save_strategy: {_value(args.save_strategy)} needs "
            f"metric_for_best_model: one of {_metric_choices(metric_names)}.")  # fmt: skip
    if args.metric_for_best_model is not None:
        name = args.metric_for_best_model.removeprefix("eval_")
        _refuse(name not in ("loss", *metric_names), f"metric_for_best_model: {args.metric_for_best_model!r} is not "
                f"reported by this run's evaluation; use one of {_metric_choices(metric_names)}.")  # fmt: skip


def _metric_choices(metric_names) -> str:
    return ", ".join(repr(name) for name in (*metric_names, "loss"))


def check_early_stopping(args, callbacks, has_eval_set: bool) -> None:
    """Refuse an `EarlyStoppingCallback` among `callbacks` that the run's settings would make fail or do nothing."""
    stoppers = [c for c in callbacks or [] if isinstance(c, EarlyStoppingCallback)
                or (isinstance(c, type) and issubclass(c, EarlyStoppingCallback))]  # fmt: skip
    if not stoppers:
        return
    needs = "EarlyStoppingCallback stops the final model's training when its evaluations stop improving"
    _refuse(not has_eval_set, f"{needs}, but the run has no evaluation set. Give one (eval_dataset, or eval_split in a "
            "recipe).")  # fmt: skip
    _refuse(args.eval_strategy == IntervalStrategy.NO, f"{needs}: eval_strategy: no never evaluates. Set "
            "eval_strategy: epoch (or steps) and save_strategy to the same.")  # fmt: skip
    _refuse(not args.load_best_model_at_end, f"{needs}: load_best_model_at_end: false keeps the last weights, not the "
            "best. Set load_best_model_at_end: true (with save_strategy equal to eval_strategy).")  # fmt: skip
    _refuse(args.metric_for_best_model is None, f"{needs}: metric_for_best_model is not set. Set it (e.g. "
            "accuracy, or loss).")  # fmt: skip


def _check_optimizer_and_scheduler(args, model) -> None:
    import torch
    from transformers import Trainer, get_scheduler

    try:
        Trainer.get_optimizer_cls_and_kwargs(args, model)
    except (ImportError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"optim: {_value(args.optim)} (optim_args: {args.optim_args!r}) cannot be built: {error}"
        ) from None
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    try:
        get_scheduler(args.lr_scheduler_type, optimizer=optimizer, num_warmup_steps=args.get_warmup_steps(100),
                      num_training_steps=100, scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})  # fmt: skip
    except (ImportError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"lr_scheduler_type: {_value(args.lr_scheduler_type)} (lr_scheduler_kwargs: "
                         f"{args.lr_scheduler_kwargs!r}) cannot be built: {error}") from None  # fmt: skip


def _value(value) -> str:
    if isinstance(value, list):
        return " ".join(_value(v) for v in value)
    return str(getattr(value, "value", value))


def _refuse(condition, message: str) -> None:
    if condition:
        raise ValueError(message)
