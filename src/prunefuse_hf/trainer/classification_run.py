"""How `PruneFuseTrainer` sets up an image classification run (the other tasks': `annotated_run`). Every check that
can run before anything is built or written comes first: the pool and its labels, the seed labels, the evaluation
set's labels, the budget, the model (its family, its settings, what the strategy needs of it) and its pruning at the
run's ratio; then the pool is decoded once (the check that every image decodes) with the run's image processor, and
the `Trainer` is built with the run's [`PixelExamples`].
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from transformers import PreTrainedModel, Trainer, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils import logging

from ..constants import PIXEL_VALUES
from ..data.image_processor import build_image_processor, model_num_channels, pretrained_image_processor
from ..data.images import first_image
from ..data.pixel_cache_build import usable_cores
from ..data.pixel_dataset import PixelDataset
from ..data.preprocessing import ImagePreprocessor
from ..data.validation import check_batchnorm_batch_sizes, check_input_size, check_labeling_budget
from ..pruning.modeling import build_dense_model
from ..pruning.prune import prune_model
from ..pruning.support import check_supported_model
from ..selection.scoring import active_dropout_layers, classifier_module
from ..selection.strategies import get_strategy
from ..tasks.classification import CLASSIFICATION
from .distillation_trainer import compute_accuracy
from .inputs import labeled_rows, pixel_cache_options, prepare_eval_dataset, prepare_pool, seed_labels
from .run_logging import quiet_progress_bars
from .run_state import initialized_run
from .task_examples import PixelExamples
from .training_settings import check_model_settings

logger = logging.get_logger(__name__)

# Below this pool size, starting DataLoader workers (about a second per loader) costs more than they save.
WORKERS_MIN_IMAGES = 4096


def init_classification_run(trainer, model, args, train_dataset, eval_dataset, processing_class, callbacks,
                            compute_metrics, *, recipe, resume_command) -> None:  # fmt: skip
    """`PruneFuseTrainer.__init__` for image classification: every check first, then the pruned surrogate, the
    decoded pool, then the `Trainer`."""
    trainer.task = CLASSIFICATION
    pool, trainer.class_names, trainer.pool_labels = prepare_pool(train_dataset, args)
    trainer.initial_labels = seed_labels(args, pool, trainer.pool_labels, trainer.class_names)
    if eval_dataset is not None and not isinstance(eval_dataset, PixelDataset):
        # Checked before anything is decoded; decoded below with the run's processor.
        eval_dataset, _ = labeled_rows(eval_dataset, args, trainer.class_names, what="the evaluation set")
    check_labeling_budget(args, len(pool) - len(trainer.initial_labels))
    trainer.strategy = get_strategy(args.strategy)

    set_seed(args.seed)
    if isinstance(model, PreTrainedModel):
        # Before its label count is compared: a ViTModel or a backbone is refused by its class, not its labels.
        check_supported_model(model, pruning_ratio=args.pruning_ratio)
    dense = build_dense_model(model, trainer.class_names, args.label_column)
    check_supported_model(dense, pruning_ratio=args.pruning_ratio)
    _check_model_needs(dense, args, trainer.strategy)
    # Pruning θ0 is a new run's first step; a model that cannot be pruned at this ratio (the general path fails
    # on some architectures) is refused here, before the pool is decoded and the run directory is created. The
    # `init` step uses this surrogate. A run whose `init` is done (a resume) pruned this model already.
    trainer.pruned_at_init = None
    if args.pruning_ratio > 0 and not initialized_run(args):
        with torch.random.fork_rng():
            trainer.pruned_at_init = prune_model(dense, args.pruning_ratio, importance=args.importance)
    processor = processing_class if processing_class is not None else pretrained_image_processor(model)
    channels = model_num_channels(dense.config)
    if channels == 1:
        logger.warning(
            "The model reads one channel (num_channels: 1). Its checkpoints load with AutoImageProcessor and "
            "AutoModelForImageClassification (the card shows how); pipeline('image-classification') converts "
            "images to RGB and cannot feed it. For a pipeline-ready copy of the finished model run "
            "`prunefuse_hf.export_rgb_checkpoint(RUN/fused, OUT)` (the input convolution reads RGB through the "
            "gray conversion: same predictions on gray images), or train with num_channels: 3 (gray images are "
            "repeated)."
        )
    image = first_image(pool.dataset, args.image_column)
    sized_by_first_image = (
        processor is None and args.image_size is None and not getattr(dense.config, "image_size", None)
    )
    processor = build_image_processor(dense.config, processor, image_size=args.image_size, image=image)
    # Without any size given, the first image's size is the run's: a pool of mixed sizes is refused, not
    # silently resized (the evaluation set and predict() inputs are resized, as pipeline() does).
    trainer.preprocessor = ImagePreprocessor(processor, channels, args.image_column, augment=args.augment)
    pool_preprocessor = dataclasses.replace(
        trainer.preprocessor, uniform_size=image.size if sized_by_first_image else None
    )
    # Decoding every image once is also the check that every image decodes (the error names the file).
    with _main_process_first(args), quiet_progress_bars(show_inner=not args.disable_tqdm):
        trainer.pool_pixels = pool_preprocessor.pixel_dataset(pool.dataset, **pixel_cache_options(args),
                                                              desc="Decoding the pool")  # fmt: skip
        prepared_eval = None
        if eval_dataset is not None:
            prepared_eval, eval_dataset = prepare_eval_dataset(eval_dataset, trainer.preprocessor, args,
                                                               trainer.class_names)  # fmt: skip
    input_shape = tuple(trainer.pool_pixels[0][PIXEL_VALUES].shape)
    decodes = PixelDataset(trainer.pool_pixels, [0]).decodes_per_batch
    if args.dataloader_num_workers == 0 and decodes and len(pool) >= WORKERS_MIN_IMAGES:
        # Batches are decoded (no cache, or a JPEG/PNG one): workers keep decoding off the forward pass's core.
        args.dataloader_num_workers = usable_cores()
        logger.info(
            f"Decoding batches in {args.dataloader_num_workers} DataLoader workers (dataloader_num_workers)"
        )
    # Settings the model cannot train with: inputs too small for the model, and batches of one example where
    # BatchNorm sees a single value per channel.
    check_batchnorm_batch_sizes(args, check_input_size(dense, input_shape, image_size_field="image_size"))

    Trainer.__init__(trainer, model=dense, args=args, eval_dataset=prepared_eval, processing_class=processor,
                     callbacks=callbacks,
                     compute_metrics=compute_metrics if compute_metrics is not None else compute_accuracy)  # fmt: skip
    # Per-step facts are logged in one line each; the inner trainers show their own progress bars.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.examples = PixelExamples(
        trainer.pool_pixels, trainer.preprocessor, pool, args.label_column, trainer.class_names
    )
    trainer.init_run_fields(pool, eval_dataset, input_shape, recipe, resume_command)


def _check_model_needs(dense: PreTrainedModel, args, strategy) -> None:
    """Refuse, naming the model, settings it cannot run: the trainer's (`check_model_settings`), a strategy that
    samples dropout without dropout layers, and features (diversity strategies, TypiClust, the linear probe,
    distillation of the surrogate) without a classifier head to read them at."""
    check_model_settings(dense, args)
    if "mc_probs" in strategy.needs and args.selector == "trained":
        # (The linear probe makes its own dropout passes, on its input features: dropquery.)
        active_dropout_layers(dense)  # raises, naming the model, when there is none
    if (
        "features" in strategy.needs
        or args.initial_strategy == "typiclust"
        or (args.selector == "linear_probe" or args.surrogate_distill_epochs > 0)
    ):
        classifier_module(
            dense
        )  # raises, naming the model and what runs without features, when it has no head


def _main_process_first(args):
    from accelerate import PartialState

    state = PartialState(cpu=args.use_cpu)
    return state.main_process_first() if state.num_processes > 1 else contextlib.nullcontext()
