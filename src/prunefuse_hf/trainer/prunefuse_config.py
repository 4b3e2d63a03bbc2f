"""`PruneFuseConfig`: every setting of a PruneFuse run, as `TrainingArguments` plus the method's own fields."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field

from transformers import TrainingArguments
from transformers.trainer_utils import SaveStrategy, SchedulerType
from transformers.training_args import OptimizerNames

from ..constants import (
    ANNOTATIONS,
    BBOX_FORMATS,
    DEFAULT_DISTILL_TEMPERATURE,
    DEFAULT_MC_SAMPLES,
    DEFAULT_NUM_ROUNDS,
    DETECTION_AGGREGATIONS,
    FUSION_INITS,
    IMPORTANCES,
    INITIAL_STRATEGIES,
    METHOD_DESCRIPTIONS,
    METHODS,
    PIXEL_CACHE_FORMATS,
    PIXEL_CACHE_SCOPES,
    RESOLUTIONS,
    SEGMENTATION_AGGREGATIONS,
    SELECTORS,
    SURROGATE_INITS,
    TASK_NAMES,
)
from ..selection.dropquery import DROPQUERY_DROPOUT, DROPQUERY_PASSES
from ..selection.strategies import STRATEGIES
from ..utils.checks import (
    check_boolean,
    check_choice,
    check_integer,
    check_number,
    check_size,
    validate_pruning_ratio,
)
from ..utils.hub_ids import validate_hub_id
from .training_settings import check_config_settings


def _names(values) -> str:
    return ", ".join(f"'{v}'" for v in values)


@dataclass
class PruneFuseConfig(TrainingArguments):
    r"""
    Configuration class for [`PruneFuseTrainer`].

    This class includes only the parameters that are specific to PruneFuse. For a full list of training arguments,
    please refer to the [`~transformers.TrainingArguments`] documentation. Note that default values in this class
    may differ from those in [`~transformers.TrainingArguments`].

    Using [`~transformers.HfArgumentParser`] we can turn this class into
    [argparse](https://docs.python.org/3/library/argparse#module-argparse) arguments that can be specified on the
    command line, or parse it from a YAML recipe with `parse_dict` / `parse_yaml_file`.

    Every field is checked when the config is built: a wrong value raises a `ValueError` naming the field, the value
    and what is allowed (Hub ids with `huggingface_hub`'s own validator).

    Example:

    ```python
    >>> from prunefuse_hf import PruneFuseConfig
    >>> args = PruneFuseConfig(output_dir="runs/svp", method="svp", query_size=[500, 1000], num_train_epochs=3)
    >>> args.pruning_ratio, args.fusion, args.num_rounds, args.method_overrides
    (0.5, False, 2, {})
    ```

    Parameters:
        > Parameters that name the method

        method (`str`, *optional*, defaults to `"prunefuse"`):
            The method the run performs; each name sets `pruning_ratio`, `strategy`, `fusion`, `distill_alpha`,
            `selector`, `surrogate_distill_epochs` and `proxy_refresh_every` (see `prunefuse_hf.constants.METHODS`):
            `"prunefuse"` (p = 0.5, least confidence, fusion, KD α = 0.5), `"prunefuse_distilled"` (the same, with the
            surrogate first distilled from the dense model on the unlabeled pool), `"svp"` (the surrogate selects, a
            fresh dense model trains), `"feature_proxy"` (a linear head on the dense model's frozen features selects,
            the dense model trains), `"feature_proxy_refreshed"` (the same, with the features computed again every
            round by the dense model fine-tuned on the labeled set so far), `"dense_al"` (the dense model selects for
            itself, p = 0), `"random"` (random selection).
            Those fields given explicitly win, and the run records them as overrides of the method.

        > Parameters that control the data

        task (`str`, *optional*):
            The task: `"image-classification"`, `"object-detection"` or `"image-segmentation"` (`pipeline()` names).
            Defaults to the model's (a `*ForObjectDetection` model or config runs object detection, a
            `*ForSemanticSegmentation` one semantic segmentation).
        image_column (`str`, *optional*, defaults to `"image"`):
            Column of the pool (and the evaluation set) holding the images.
        label_column (`str`, *optional*, defaults to `"label"`):
            Column holding integer class ids (a `ClassLabel` gives the class names). Semantic segmentation: the column
            holding each image's mask of class ids (the transformers semantic-segmentation guide's `label`;
            scene_parse_150's `annotation`).
        class_names (`list[str]`, *optional*):
            Names of the classes in class-id order, for datasets whose label column has none. They become the
            model's `id2label`.
        image_size (`int`, *optional*):
            Resize images to `image_size × image_size`. Defaults to the image processor's size, the model config's
            `image_size`, or the images' own size.
        augment (`bool`, *optional*, defaults to `False`):
            Random crop (4-pixel zero padding) and horizontal flip of training batches.
        objects_column (`str`, *optional*, defaults to `"objects"`):
            Object detection: the column holding each image's `bbox` and `category` lists (the transformers
            object-detection guide's cppe-5 layout).
        bbox_format (`str`, *optional*, defaults to `"coco"`):
            Object detection: how `bbox` is stored: `"coco"` (`[x, y, width, height]` pixels), `"pascal_voc"`
            (`[x_min, y_min, x_max, y_max]` pixels) or `"yolo"` (normalized `[x_center, y_center, width, height]`).
        reduce_labels (`bool`, *optional*, defaults to `False`):
            Semantic segmentation: the masks use 0 for a background that is not a class (ADE20k, scene_parse_150):
            every id is lowered by one and 0 becomes the ignore index 255, as the image processors'
            `do_reduce_labels` does (the processor's own setting is not read: set this).
        annotation (`str`, *optional*, defaults to `"simulated"`):
            Where labels come from: `"simulated"` reveals the pool's label column; `"human"` stops after every
            selection with the query batch written for annotators, and continues once labels are ingested.
        annotation_resolve (`str`, *optional*):
            How `prunefuse-hf label-studio loop` turns answers that disagree into one label: `"ground_truth"`,
            `"majority"` or `"latest"`. `None` (default) takes none: the loop names the tasks in conflict and waits
            until they are fixed in Label Studio.

        > Parameters that control pruning

        pruning_ratio (`float`, *optional*):
            Fraction of every prunable width (channels, heads, hidden sizes) removed from the dense model to build the
            surrogate, in `[0, 1)`. `0` keeps the dense model as its own selector. Defaults to the method's value.
        importance (`str`, *optional*, defaults to `"l2"`):
            Channel importance used to choose what to prune. Only `"l2"` (L2 norm of each coupled channel group) is
            supported.

        > Parameters that control selection

        strategy (`str`, *optional*):
            Selection strategy, one of the names registered in `prunefuse_hf.selection.strategies.STRATEGIES`. Defaults to the
            method's value.
        initial_labeled_size (`int`, *optional*, defaults to `1000`):
            Size of the first query the first round starts from (with human annotation, the first query to label).
            `0` starts from the seed labels alone.
        initial_strategy (`str`, *optional*, defaults to `"random"`):
            How the first query is drawn: `"random"` (a seeded draw) or `"typiclust"` (Hacohen et al., ICML 2022:
            k-means of the dense model's pooled features into `initial_labeled_size` clusters, the most typical point
            of each; for pretrained models, a cold start better than random). Its cost is booked as selection.
        seed_labels (`str`, *optional*):
            A labels file (CSV, JSON/JSONL, parquet, a Label Studio export or a dataset; see
            `prunefuse_hf.read_labels`) whose examples start labeled, with or instead of the random draw.
            With human annotation, rows of the pool that already have a label are seed labels too.
        query_size (`int` or `list[int]`, *optional*, defaults to `[1000]`):
            Number of examples labeled per round. One value is used for every round; a list gives one value per round.
        num_rounds (`int` or `None`, *optional*, defaults to `None`):
            Number of selection rounds. `None` means the length of `query_size` when it lists several values, else `4`.
            When both are given, a list `query_size` must have exactly `num_rounds` values.
        scoring_batch_size (`int`, *optional*, defaults to `256`):
            Batch size per device when the surrogate scores the unlabeled pool.
        detection_aggregation (`str`, *optional*, defaults to `"max"`):
            Object detection: how the uncertainties of an image's detections (the strategy's measure of each
            detection's class distribution) become the image's score: `"max"`, `"mean"` or `"sum"` (Brust, Käding
            and Denzler, "Active Learning for Deep Object Detection", VISAPP 2019).
        detection_score_threshold (`float`, *optional*, defaults to `0.5`):
            Object detection: the detection score (best real class's probability) a query needs to count as one of
            the image's detections; an image with none is scored by its most likely one.
        segmentation_aggregation (`str`, *optional*, defaults to `"mean"`):
            Semantic segmentation: how the uncertainties of an image's pixels (the strategy's measure of each pixel's
            class distribution) become the image's score: `"mean"`, `"max"` or `"class_weighted"` (the mean over the
            classes predicted in the image of their pixels' mean, so that a small region counts as much as a large
            one). Pixels are scored at the logits' resolution.
        mc_samples (`int`, *optional*):
            Stochastic forward passes per example for the dropout strategies: MC dropout for `bald` (default 10), the
            linear probe's passes with dropout on its input features for `dropquery` (default 3, as Gupte et al.).
        dropquery_dropout (`float`, *optional*, defaults to `0.75`):
            `dropquery`: the probability of zeroing each input feature of the linear probe in its dropout passes, in
            `(0, 1)` (0.75 is Gupte et al.'s).
        selection_seed (`int` or `None`, *optional*, defaults to `None`):
            Seed of the initial random draw and of the random parts of selection. `None` uses `seed`.
        selector (`str`, *optional*):
            What scores the pool each round: `"trained"` (the surrogate trained on the labeled set; at
            `pruning_ratio=0` the dense model itself) or `"linear_probe"` (a logistic-regression head trained each
            round on the surrogate's frozen pooled features, computed once for the whole pool at its initialization
            and kept in `RUN/pool_features/`; with a pretrained model and `pruning_ratio=0`, its pretrained features).
            Defaults to the method's value. `"linear_probe"` works with every strategy but `bald` (a linear head has
            no dropout); `dropquery` works with `"linear_probe"` only (its dropout is on the probe's input features).
        proxy_refresh_every (`int`, *optional*):
            With `selector="linear_probe"` and `pruning_ratio=0`: every `k` rounds from round 2 on (rounds 1 + k,
            1 + 2k, ...) the probe's features are computed again by the dense model fine-tuned on that round's labeled
            set, so that the proxy follows the model the labels train (ASVP, Wen et al., "Feature Alignment:
            Rethinking Efficient Active Learning via Proxy in the Context of Pre-trained Models", TMLR 2024, with a
            fixed schedule instead of their indicator). Each refresh is one dense forward pass over the pool, booked
            as selection, and needs the dense model trained at that round, whose training is booked as selection too
            (as dense AL's selector trainings are). `0` never refreshes. Defaults to the method's
            value (`1` for `feature_proxy_refreshed`, else `0`).

        > Parameters that control surrogate training

        surrogate_init (`str`, *optional*, defaults to `"reinit"`):
            `"reinit"` restarts the surrogate from its pruned initialization every round; `"warm"` continues from
            the previous round's weights.
        surrogate_num_train_epochs (`float` or `None`, *optional*, defaults to `None`):
            Training epochs of the surrogate in each round. `None` uses `num_train_epochs`.
        surrogate_learning_rate (`float` or `None`, *optional*, defaults to `None`):
            Learning rate of the surrogate. `None` uses `learning_rate`.
        surrogate_per_device_train_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Training batch size per device of the surrogate. `None` uses `per_device_train_batch_size`.
        surrogate_distill_epochs (`float`, *optional*):
            Before round 1, epochs of label-free distillation of the dense model into the pruned surrogate on the
            whole pool: the surrogate's pooled features learn the dense model's at the kept channel indices (MSE), so
            it keeps more of a pretrained model's function. `0` skips it. A fraction distils on that share of the
            pool, a random sample, and the dense model's forward pass covers that share only (`0.25` costs about a
            quarter). Its cost is booked as selection. Defaults to the method's value (`1` for
            `prunefuse_distilled`, else `0`).

        > Parameters that control fusion

        fusion (`bool`, *optional*):
            Whether to fuse the trained surrogate into the dense model before the final training. `False` trains a
            fresh dense model on the selected data. Defaults to the method's value.
        fusion_init (`str`, *optional*, defaults to `"dense_init"`):
            Weights the fused model starts from outside the surrogate's kept indices: `"dense_init"` is the dense
            model's initialization θ0, `"fresh"` a new random initialization of the dense model.
        copy_norm_stats (`bool`, *optional*, defaults to `True`):
            Whether the surrogate's normalization running statistics are copied into the fused model.
        sync_every (`int`, *optional*, defaults to `0`):
            Re-synchronization period in rounds: every `sync_every` rounds the surrogate is fused, the fused model
            trained and pruned again into the next surrogate. `0` never re-synchronizes. Requires `fusion=True`.
        eval_dense_every_round (`bool`, *optional*, defaults to `False`):
            Also train the final model (fused, or a fresh dense model when `fusion=False`) at every round's labeled
            budget, for accuracy-per-budget curves. The last round always trains it. With `eval_strategy="steps"` (or
            `"epoch"`) the dense model is also evaluated while it trains and its record gets an accuracy `curve` over
            training steps (the surrogate is evaluated only once trained).

        > Parameters that control distillation

        distill_alpha (`float`, *optional*):
            Weight α of the distillation term in `(1 - α)·CE + α·τ²·KL(surrogate ‖ fused)`, in `[0, 1]`. `0` trains
            the final model with plain cross-entropy. Defaults to the method's value.
        distill_temperature (`float`, *optional*, defaults to `4.0`):
            Softmax temperature τ of the distillation term, greater than `0`.

        > Parameters that control the Hub (with `push_to_hub`, `hub_model_id`, `hub_private_repo`, `hub_token` and
        > `hub_revision` from TrainingArguments: with `push_to_hub`, the finished run is pushed once at the end)

        hub_subset_id (`str` or `None`, *optional*, defaults to `None`):
            Dataset repo for the selected subset (`selection.parquet`, its source record and a dataset card).
        hub_surrogate_id (`str` or `None`, *optional*, defaults to `None`):
            Model repo for the trained surrogate and its `pruning_plan.json`.
        hub_query_id (`str` or `None`, *optional*, defaults to `None`):
            Dataset repo each human-annotation query batch is pushed to (one config per round), for annotators.

        > Parameters that control processes and caching

        sync_batchnorm (`bool`, *optional*, defaults to `True`):
            With several processes, BatchNorm layers normalize over the whole (split) batch, so N processes train
            the same model as one (torch's `SyncBatchNorm` on GPU, an all-reduce of the statistics on CPU).
        cache_pixels (`bool`, *optional*):
            Store the decoded, resized pixels of the pool and the evaluation set once (an Arrow file in the
            `datasets` cache, reused by a second run or a resume). `None` caches when the pixels take at most half of
            the free disk space (their size is logged first).
        pixel_cache_format (`str`, *optional*, defaults to `"auto"`):
            How the cache stores pixels: `"raw"` uint8 (exact, read without decoding, 150 KB per 224 px image),
            `"jpeg"` (quality 90, about a tenth of raw, pixels within a few levels, decoded per batch), `"png"`
            (lossless, decoded per batch) or `"auto"` (raw up to 10 GB, JPEG beyond). Caches are listed and removed
            with `prunefuse-hf cache list|clear`.
        pixel_cache_max_size (`str` or `int`, *optional*):
            Cap on the pixel cache folder (`"50GB"`, `"500MB"`, bytes, or `"none"`). Defaults to
            `$PRUNEFUSE_PIXEL_CACHE_MAX_SIZE`, else 50 GB. Before and after a build, the least recently used caches
            are removed until the folder fits (the log names them and their size); the run's own caches are kept.
            With `cache_pixels` unset, a dataset whose pixels alone exceed the cap is not cached.
        pixel_cache_scope (`str`, *optional*, defaults to `"run"`):
            Which datasets get a pixel cache: `"run"` (the pool and the evaluation set given at construction, read
            again by every round and resume) or `"all"` (also the datasets given to `evaluate()` and `predict()`).
            Outside the scope, images are decoded as batches are read and nothing is left on disk; a dataset that
            already has a cache (the pool's, say) reads it.
        dataset_num_proc (`int`, *optional*):
            Processes that decode the images into the cache (`datasets.map`'s `num_proc`, trl's name). Defaults to
            the usable cores. Without a cache, or with a JPEG/PNG one, `dataloader_num_workers` left at `0` becomes
            the usable cores too, so that decoding keeps up with the forward pass.
        validate_images (`bool`, *optional*, defaults to `True`):
            Without the cache, still decode every image once before the run starts, so a damaged file is reported
            in the first seconds. `False` (huge pools) reports it when a pass first reads it, with the same error.

        > Parameters that control the run directory

        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Replace whatever `output_dir` holds when a new run starts there (without it, a directory that holds
            files is refused; resume a run with `train(resume_from_checkpoint=True)`).

        > Parameters whose default values are overridden from TrainingArguments (so that a run with every field
        > left unset trains a vision model from scratch: the paper's SGD protocol, scaled to small labeled sets)

        output_dir (`str`, *optional*, defaults to `"prunefuse-output"`):
            The run directory; checkpoints, state and reports are written there.
        num_train_epochs (`float`, *optional*, defaults to `5`):
            Instead of `3`.
        learning_rate (`float`, *optional*, defaults to `0.05`):
            Instead of `5e-5` (AdamW's fine-tuning rate): SGD from scratch needs a large rate.
        optim (`str`, *optional*, defaults to `"sgd"`) and optim_args (`str`, *optional*, defaults to `"momentum=0.9"`):
            SGD with momentum 0.9 instead of AdamW.
        weight_decay (`float`, *optional*, defaults to `5e-4`):
            Instead of `0`.
        lr_scheduler_type (`str`, *optional*, defaults to `"cosine"`):
            Instead of `"linear"`.
        per_device_train_batch_size (`int`, *optional*, defaults to `128`) and per_device_eval_batch_size (`int`,
        *optional*, defaults to `512`):
            Instead of `8`: image batches of 128 train well and fast. With several processes the training batch is
            split over them (`accelerator_config.split_batches`), so it is the batch of one optimizer step whatever
            the number of processes.
        accelerator_config (`dict`, *optional*, defaults to `{"split_batches": True}`):
            N processes train on the same batches as one.
        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            The Trainer must keep every column of the prepared datasets.
        save_strategy (`str`, *optional*, defaults to `"no"`):
            The run saves the surrogate and the fused model itself; intermediate checkpoints are opt-in.
        logging_steps (`float`, *optional*, defaults to `10`):
            Labeled sets are small, so the stock `500` would log nothing in most rounds.
        report_to (`str` or `list[str]`, *optional*, defaults to `"none"`):
            No tracking integration unless asked for.
        disable_tqdm (`bool`, *optional*, defaults to `True`):
            A run trains dozens of models: their progress bars (training, scoring, decoding) and log dicts are
            not shown unless set to `False` (the CLI's `--verbose`); the run logs one line per step, and
            [`RunProgressCallback`] follows the whole run.
        use_cpu (`bool`, *optional*, defaults to `False`):
            Set to `True` automatically on machines without a GPU (CUDA, MPS, XPU), so that several processes
            started by `accelerate launch` or `torchrun` form a CPU process group.
    """

    # Overridden TrainingArguments defaults.
    output_dir: str | None = field(
        default="prunefuse-output",
        metadata={
            "help": "The run directory: checkpoints, run state, selections and reports are written there."
        },
    )
    num_train_epochs: float = field(default=5.0, metadata={"help": "Training epochs of every model (5)."})
    learning_rate: float = field(default=0.05, metadata={"help": "Initial learning rate (0.05, for SGD)."})
    optim: OptimizerNames | str = field(default="sgd", metadata={"help": "The optimizer (SGD)."})
    optim_args: str | None = field(default="momentum=0.9", metadata={"help": "Optimizer arguments."})
    weight_decay: float = field(default=5e-4, metadata={"help": "Weight decay (5e-4)."})
    lr_scheduler_type: SchedulerType | str = field(default="cosine", metadata={"help": "Scheduler (cosine)."})
    per_device_train_batch_size: int = field(
        default=128,
        metadata={
            "help": "Training batch size (128). With several processes it is split over them (split_batches), "
            "so it is the batch of one optimizer step whatever the number of processes."
        },
    )
    per_device_eval_batch_size: int = field(default=512, metadata={"help": "Evaluation batch size (512)."})
    accelerator_config: dict | str | None = field(
        default_factory=lambda: {"split_batches": True},
        metadata={
            "help": "Accelerate settings. Defaults to {'split_batches': True}: N processes train on the same "
            "batches as one."
        },
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Whether to drop dataset columns the model's forward does not take (False)."},
    )
    save_strategy: SaveStrategy | str = field(
        default="no",
        metadata={
            "help": "Checkpoint strategy during training: 'no', 'steps', 'epoch' or 'best'. Defaults to 'no' because "
            "the run saves the surrogate and the fused model itself."
        },
    )
    logging_steps: float = field(
        default=10,
        metadata={
            "help": "Log every X update steps (an integer, or a float in [0, 1) for a ratio of the total steps). "
            "Defaults to 10 because labeled sets are small."
        },
    )
    report_to: None | str | list[str] = field(
        default="none",
        metadata={"help": "The integrations to report results and logs to ('all', 'none', or a name)."},
    )
    disable_tqdm: bool | None = field(
        default=True,
        metadata={
            "help": "Whether to hide the inner progress bars (every training, scoring and decoding pass) and the "
            "inner trainings' log dicts (True; the CLI's --verbose sets False)."
        },
    )

    # The method.
    method: str = field(
        default="prunefuse",
        metadata={
            "help": "The method the run performs: "
            + "; ".join(f"'{name}': {text}" for name, text in METHOD_DESCRIPTIONS.items())
            + ". It sets pruning_ratio, strategy, fusion, distill_alpha, selector and surrogate_distill_epochs; those "
            "fields given explicitly win."
        },
    )

    # Data.
    task: str | None = field(
        default=None,
        metadata={"help": f"The task: {_names(TASK_NAMES)} (default: the model's, from its class)."},
    )
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column: str = field(default="label", metadata={"help": "Column holding integer class ids."})
    class_names: list[str] | None = field(
        default=None,
        metadata={
            "help": "Class names in class-id order, for label columns without names (the model's id2label)."
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Resize images to this size (default: the processor's, the config's or the images' own)."
        },
    )
    augment: bool = field(
        default=False, metadata={"help": "Random crop (4-pixel padding) and horizontal flip while training."}
    )
    objects_column: str = field(
        default="objects",
        metadata={"help": "Object detection: column holding each image's `bbox` and `category` lists."},
    )
    bbox_format: str = field(
        default="coco", metadata={"help": f"Object detection: how `bbox` is stored: {_names(BBOX_FORMATS)}."}
    )
    reduce_labels: bool = field(
        default=False,
        metadata={
            "help": "Semantic segmentation: masks use 0 for a background that is not a class (ADE20k): ids are "
            "lowered by one and 0 is ignored (the image processors' do_reduce_labels)."
        },
    )
    annotation: str = field(
        default="simulated",
        metadata={
            "help": f"Where labels come from: {_names(ANNOTATIONS)}. 'human' stops after each selection with the "
            "query batch in output_dir/queries/round_K/ and continues once `prunefuse-hf label` ingested labels."
        },
    )
    annotation_resolve: str | None = field(
        default=None,
        metadata={
            "help": f"How `prunefuse-hf label-studio loop` (and `label-studio pull`, `label`, `trainer.add_labels` "
            f"unless given --resolve) decides between answers that disagree: {_names(RESOLUTIONS)}. Default: none "
            "(the loop names the tasks in conflict and waits until they are fixed in Label Studio; the others refuse)."
        },
    )

    # Pruning.
    pruning_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Fraction of every prunable width removed to build the surrogate, in [0, 1). 0 keeps the dense "
            "model as its own selector. Defaults to the method's value."
        },
    )
    importance: str = field(
        default="l2",
        metadata={"help": f"Channel importance used for pruning: {_names(IMPORTANCES)} (group L2 norm)."},
    )

    # Selection.
    strategy: str | None = field(
        default=None,
        metadata={"help": f"Selection strategy: {_names(STRATEGIES)}. Defaults to the method's value."},
    )
    initial_labeled_size: int = field(
        default=1000,
        metadata={
            "help": "Size of the random draw the first round starts from (with human annotation, the first query). "
            "0 starts from the seed labels alone."
        },
    )
    seed_labels: str | None = field(
        default=None,
        metadata={
            "help": "Labels file whose examples start labeled (CSV, JSON/JSONL, parquet, Label Studio export or "
            "dataset, with pool_index and label columns), with or instead of the random draw."
        },
    )
    query_size: list[int] = field(
        default_factory=lambda: [1000],
        metadata={
            "help": "Examples labeled per round: one value for every round (`query_size: 1000`, `--query_size 1000`) "
            "or one value per round (`query_size: [4000, 5000]`, `--query_size 4000 5000`)."
        },
    )
    num_rounds: int | None = field(
        default=None,
        metadata={
            "help": "Number of selection rounds. Defaults to the length of `query_size` when it lists several "
            f"values, else {DEFAULT_NUM_ROUNDS}."
        },
    )
    scoring_batch_size: int = field(
        default=256,
        metadata={"help": "Batch size per device when the surrogate scores the unlabeled pool."},
    )
    mc_samples: int | None = field(
        default=None,
        metadata={
            "help": "Stochastic forward passes per example for the dropout strategies: MC dropout for bald (default "
            f"{DEFAULT_MC_SAMPLES}), dropout on the linear probe's input for dropquery (default {DROPQUERY_PASSES})."
        },
    )
    dropquery_dropout: float = field(
        default=DROPQUERY_DROPOUT,
        metadata={
            "help": "dropquery: probability of zeroing each input feature of the linear probe in its dropout passes, "
            "in (0, 1)."
        },
    )
    detection_aggregation: str = field(
        default="max",
        metadata={
            "help": f"Object detection: how an image's per-detection uncertainties become its score: "
            f"{_names(DETECTION_AGGREGATIONS)} (Brust et al., VISAPP 2019)."
        },
    )
    detection_score_threshold: float = field(
        default=0.5,
        metadata={
            "help": "Object detection: detection score a query needs to count as a detection when an image is "
            "scored (an image without one is scored by its most likely detection)."
        },
    )
    segmentation_aggregation: str = field(
        default="mean",
        metadata={
            "help": f"Semantic segmentation: how an image's per-pixel uncertainties become its score: "
            f"{_names(SEGMENTATION_AGGREGATIONS)}."
        },
    )
    selection_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the initial random draw and of random selection. Defaults to `seed`."},
    )
    initial_strategy: str = field(
        default="random",
        metadata={
            "help": f"How the first query is drawn: {_names(INITIAL_STRATEGIES)} (a seeded draw, or TypiClust: the "
            "most typical point of each k-means cluster of the dense model's pooled features)."
        },
    )
    selector: str | None = field(
        default=None,
        metadata={
            "help": f"What scores the pool each round: {_names(SELECTORS)} (the surrogate trained on the labeled set, "
            "or a linear head trained on its frozen pooled features, computed once). Defaults to the method's value."
        },
    )
    proxy_refresh_every: int | None = field(
        default=None,
        metadata={
            "help": "With selector linear_probe and pruning_ratio 0: recompute the probe's features with the dense "
            "model fine-tuned at rounds 1 + k, 1 + 2k, ... (one dense pass over the pool each, booked as selection; "
            "ASVP, Wen et al., TMLR 2024). 0 never refreshes. Defaults to the method's value."
        },
    )

    # Surrogate training.
    surrogate_init: str = field(
        default="reinit",
        metadata={
            "help": f"How the surrogate starts each round: {_names(SURROGATE_INITS)} (from its pruned "
            "initialization, or from the previous round's weights)."
        },
    )
    surrogate_num_train_epochs: float | None = field(
        default=None,
        metadata={"help": "Training epochs of the surrogate per round. Defaults to `num_train_epochs`."},
    )
    surrogate_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the surrogate. Defaults to `learning_rate`."},
    )
    surrogate_per_device_train_batch_size: int | None = field(
        default=None,
        metadata={"help": "Training batch size of the surrogate. Defaults to `per_device_train_batch_size`."},
    )
    surrogate_distill_epochs: float | None = field(
        default=None,
        metadata={
            "help": "Before round 1, epochs of label-free distillation of the dense model's pooled features into the "
            "pruned surrogate on the pool (MSE at the kept channels). 0 skips it. Defaults to the method's value."
        },
    )

    # Fusion.
    fusion: bool | None = field(
        default=None,
        metadata={
            "help": "Whether to fuse the trained surrogate into the dense model before the final training. False "
            "trains a fresh dense model on the selected data. Defaults to the method's value."
        },
    )
    fusion_init: str = field(
        default="dense_init",
        metadata={
            "help": f"What the fused model starts from outside the surrogate's weights: {_names(FUSION_INITS)} "
            "(the dense initialization, or a new random initialization)."
        },
    )
    copy_norm_stats: bool = field(
        default=True,
        metadata={
            "help": "Whether to copy the surrogate's normalization running statistics into the fused model."
        },
    )
    sync_every: int = field(
        default=0,
        metadata={
            "help": "Every `sync_every` rounds, fuse the surrogate, train the fused model and prune it again into "
            "the next surrogate. 0 never re-synchronizes."
        },
    )
    eval_dense_every_round: bool = field(
        default=False,
        metadata={
            "help": "Also build and train the final model (fused, or fresh dense with fusion=False) at every round's "
            "labeled budget, for accuracy-per-budget curves. Costs one dense training per round; the last round "
            "always trains it."
        },
    )

    # Distillation.
    distill_alpha: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the distillation term from the surrogate when training the final model, in [0, 1]. "
            "0 means plain cross-entropy. Defaults to the method's value."
        },
    )
    distill_temperature: float = field(
        default=DEFAULT_DISTILL_TEMPERATURE,
        metadata={"help": "Softmax temperature of the distillation term, greater than 0."},
    )

    # Hub (with TrainingArguments' `push_to_hub`, `hub_model_id`, `hub_private_repo`, `hub_token`, `hub_revision`:
    # the finished run is pushed once, at the end; the inner Trainers never push).
    hub_subset_id: str | None = field(
        default=None,
        metadata={
            "help": "Dataset repo the selected subset is pushed to at the end of the run (with push_to_hub). "
            "None pushes no subset."
        },
    )
    hub_surrogate_id: str | None = field(
        default=None,
        metadata={
            "help": "Model repo the trained surrogate and its pruning_plan.json are pushed to at the end of the run "
            "(with push_to_hub). None pushes no surrogate."
        },
    )
    hub_query_id: str | None = field(
        default=None,
        metadata={
            "help": "Dataset repo each human-annotation query batch is pushed to (config round_K), for annotators."
        },
    )

    # Processes and caching.
    sync_batchnorm: bool = field(
        default=True,
        metadata={
            "help": "With several processes, normalize BatchNorm over the whole batch (N processes train as one)."
        },
    )
    cache_pixels: bool | None = field(
        default=None,
        metadata={
            "help": "Store the decoded, resized pixels once (Arrow file in the datasets cache, reused by resumes). "
            "Unset: cache when they take at most half of the free disk space."
        },
    )
    pixel_cache_format: str = field(
        default="auto",
        metadata={
            "help": f"How cached pixels are stored, one of {_names(PIXEL_CACHE_FORMATS)}: raw (exact, decode-free), "
            "jpeg (q90, ~1/10 of raw), png (lossless), auto (raw up to 10 GB, jpeg beyond)."
        },
    )
    pixel_cache_max_size: str | None = field(
        default=None,
        metadata={
            "help": "Cap on the pixel cache folder ('50GB', '500MB', bytes, or 'none'); least recently used caches "
            "are removed beyond it, named in the log. Unset: $PRUNEFUSE_PIXEL_CACHE_MAX_SIZE, else 50GB."
        },
    )
    pixel_cache_scope: str = field(
        default="run",
        metadata={
            "help": f"Which datasets get a pixel cache, one of {_names(PIXEL_CACHE_SCOPES)}: run (the pool and the "
            "evaluation set) or all (also those given to evaluate() / predict(); otherwise decoded as read, "
            "nothing left on disk)."
        },
    )
    dataset_num_proc: int | None = field(
        default=None,
        metadata={
            "help": "Processes that build the pixel cache (datasets.map num_proc). Unset: the usable cores."
        },
    )
    validate_images: bool = field(
        default=True,
        metadata={
            "help": "Without the cache, decode every image once before the run starts (damaged files reported at "
            "once). False reports them when a pass first reads them."
        },
    )

    # The run directory.
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace whatever output_dir holds when a new run starts there."},
    )

    def __post_init__(self):
        # Our fields first, so a wrong recipe value is reported before any TrainingArguments set-up runs.
        self._resolve_method()
        self._validate_prunefuse_fields()
        if not self.use_cpu and not _accelerator_available():
            # Accelerate starts a CPU process group (gloo) only when asked for the CPU; without this a
            # recipe launched with several processes on a CPU-only machine would run them unconnected.
            self.use_cpu = True
        check_config_settings(self)
        if self.selection_seed is None:
            self.selection_seed = self.seed
        super().__post_init__()

    def _resolve_method(self):
        check_choice("method", self.method, tuple(METHODS))
        for name, value in METHODS[self.method].items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    @property
    def method_overrides(self) -> dict:
        """The method's fields this config sets to other values than the method does (recorded with the run)."""
        preset = METHODS[self.method]
        return {name: getattr(self, name) for name in preset if getattr(self, name) != preset[name]}

    def _validate_prunefuse_fields(self):
        self.pruning_ratio = validate_pruning_ratio(self.pruning_ratio)
        check_choice("importance", self.importance, IMPORTANCES)
        check_choice("strategy", self.strategy, tuple(STRATEGIES))
        check_choice("annotation", self.annotation, ANNOTATIONS)
        if self.annotation_resolve is not None:
            check_choice("annotation_resolve", self.annotation_resolve, RESOLUTIONS)
        if self.task is not None:
            check_choice("task", self.task, TASK_NAMES)
        check_choice("bbox_format", self.bbox_format, BBOX_FORMATS)
        check_choice("detection_aggregation", self.detection_aggregation, DETECTION_AGGREGATIONS)
        check_choice("segmentation_aggregation", self.segmentation_aggregation, SEGMENTATION_AGGREGATIONS)
        check_boolean("reduce_labels", self.reduce_labels)
        self.detection_score_threshold = check_number(
            "detection_score_threshold",
            self.detection_score_threshold,
            lambda v: 0 <= v <= 1,
            "a number in [0, 1]",
        )
        check_boolean("augment", self.augment)
        if self.image_size is not None:
            self.image_size = check_integer("image_size", self.image_size, minimum=1)
        if self.class_names is not None:
            if not isinstance(self.class_names, (list, tuple)) or not all(
                isinstance(name, str) and name for name in self.class_names
            ):
                raise ValueError(
                    f"class_names must be a list of non-empty strings, got {self.class_names!r}."
                )
            duplicates = sorted({n for n in self.class_names if list(self.class_names).count(n) > 1})
            if duplicates:
                raise ValueError(f"class_names must be distinct; {duplicates} appear more than once.")
            self.class_names = list(self.class_names)
        self.initial_labeled_size = check_integer(
            "initial_labeled_size", self.initial_labeled_size, minimum=0
        )
        self.query_size, self.num_rounds = _resolve_rounds(self.query_size, self.num_rounds)
        self.scoring_batch_size = check_integer("scoring_batch_size", self.scoring_batch_size, minimum=1)
        if self.mc_samples is None:
            self.mc_samples = DROPQUERY_PASSES if self.strategy == "dropquery" else DEFAULT_MC_SAMPLES
        self.mc_samples = check_integer("mc_samples", self.mc_samples, minimum=1)
        self.dropquery_dropout = check_number(
            "dropquery_dropout", self.dropquery_dropout, lambda v: 0 < v < 1, "a number in (0, 1)"
        )
        if self.selection_seed is not None:
            self.selection_seed = check_integer("selection_seed", self.selection_seed, minimum=0)
        check_choice("initial_strategy", self.initial_strategy, INITIAL_STRATEGIES)
        check_choice("selector", self.selector, SELECTORS)
        if self.selector == "linear_probe" and self.strategy == "bald":
            raise ValueError(
                "strategy 'bald' needs MC-dropout passes of a trained model, but selector='linear_probe' scores with "
                "a linear head (no dropout); choose another strategy or selector='trained'."
            )
        if self.strategy == "dropquery" and self.selector != "linear_probe":
            raise ValueError(
                f"strategy 'dropquery' drops out the input features of the linear probe, but selector="
                f"'{self.selector}'; set selector='linear_probe' (method 'feature_proxy' or 'feature_proxy_refreshed')."
            )
        self.proxy_refresh_every = check_integer("proxy_refresh_every", self.proxy_refresh_every, minimum=0)
        if self.proxy_refresh_every > 0:
            if self.selector != "linear_probe" or self.pruning_ratio != 0:
                raise ValueError(
                    f"proxy_refresh_every={self.proxy_refresh_every} refreshes the linear probe's dense-model "
                    f"features, but selector='{self.selector}' and pruning_ratio={self.pruning_ratio}; set "
                    "selector='linear_probe' and pruning_ratio=0 (method 'feature_proxy'), or proxy_refresh_every=0."
                )
            if not STRATEGIES[self.strategy].needs:
                raise ValueError(
                    f"proxy_refresh_every={self.proxy_refresh_every} refreshes features that strategy "
                    f"'{self.strategy}' never reads; choose a model-based strategy or proxy_refresh_every=0."
                )
        self.surrogate_distill_epochs = check_number(
            "surrogate_distill_epochs",
            self.surrogate_distill_epochs,
            lambda v: v >= 0,
            "a number >= 0 (0 = none)",
        )
        if self.surrogate_distill_epochs > 0 and self.pruning_ratio == 0:
            raise ValueError(
                f"surrogate_distill_epochs={self.surrogate_distill_epochs} needs a pruned surrogate, but "
                "pruning_ratio is 0 (the dense model is its own selector); set pruning_ratio > 0 or "
                "surrogate_distill_epochs: 0."
            )

        check_choice("surrogate_init", self.surrogate_init, SURROGATE_INITS)
        if self.surrogate_num_train_epochs is not None:
            self.surrogate_num_train_epochs = check_number(
                "surrogate_num_train_epochs",
                self.surrogate_num_train_epochs,
                lambda v: v > 0,
                "a number > 0 or None",
            )
        if self.surrogate_learning_rate is not None:
            self.surrogate_learning_rate = check_number(
                "surrogate_learning_rate",
                self.surrogate_learning_rate,
                lambda v: v > 0,
                "a number > 0 or None",
            )
        if self.surrogate_per_device_train_batch_size is not None:
            self.surrogate_per_device_train_batch_size = check_integer(
                "surrogate_per_device_train_batch_size", self.surrogate_per_device_train_batch_size, minimum=1
            )

        check_boolean("fusion", self.fusion)
        check_choice("fusion_init", self.fusion_init, FUSION_INITS)
        check_boolean("copy_norm_stats", self.copy_norm_stats)
        check_boolean("eval_dense_every_round", self.eval_dense_every_round)
        check_boolean("overwrite_output_dir", self.overwrite_output_dir)
        check_boolean("sync_batchnorm", self.sync_batchnorm)
        check_boolean("validate_images", self.validate_images)
        if self.cache_pixels is not None:
            check_boolean("cache_pixels", self.cache_pixels)
        check_choice("pixel_cache_format", self.pixel_cache_format, PIXEL_CACHE_FORMATS)
        check_size("pixel_cache_max_size", self.pixel_cache_max_size)
        check_choice("pixel_cache_scope", self.pixel_cache_scope, PIXEL_CACHE_SCOPES)
        if self.dataset_num_proc is not None:
            self.dataset_num_proc = check_integer("dataset_num_proc", self.dataset_num_proc, minimum=1)
        self.sync_every = check_integer("sync_every", self.sync_every, minimum=0)
        if self.sync_every > 0 and not self.fusion:
            raise ValueError(
                f"sync_every must be 0 when fusion is False, got sync_every={self.sync_every}: re-synchronizing "
                "fuses the surrogate into the dense model, which fusion=False never does."
            )

        self.distill_alpha = check_number(
            "distill_alpha", self.distill_alpha, lambda v: 0 <= v <= 1, "a number in [0, 1]"
        )
        # Hub ids are checked when the recipe is read, not after the run's training.
        validate_hub_id("hub_model_id", self.hub_model_id)
        validate_hub_id("hub_subset_id", self.hub_subset_id, repo_type="dataset")
        validate_hub_id("hub_surrogate_id", self.hub_surrogate_id)
        validate_hub_id("hub_query_id", self.hub_query_id, repo_type="dataset")
        self.distill_temperature = check_number(
            "distill_temperature", self.distill_temperature, lambda v: v > 0, "a number > 0"
        )

    def refreshes_proxy(self, round_: int) -> bool:
        """Whether the linear probe's features are computed again, by the dense model trained at `round_`, before
        that round's selection (`proxy_refresh_every`: rounds 1 + k, 1 + 2k, ... up to the last selecting round)."""
        k = self.proxy_refresh_every
        return k > 0 and 1 < round_ <= self.num_rounds and (round_ - 1) % k == 0

    @property
    def needs_teacher(self) -> bool:
        """Whether the final model needs the trained surrogate (to fuse it, or to distill from it)."""
        return self.fusion or self.distill_alpha > 0

    def query_sizes(self, num_rounds: int | None = None) -> list[int]:
        """
        The number of examples to label in each round.

        Args:
            num_rounds (`int`, *optional*):
                Number of rounds to plan for; defaults to `self.num_rounds`. A single `query_size` is repeated for
                every round; a per-round list must have exactly this many values.

        Returns:
            `list[int]`: one query size per round.
        """
        if num_rounds is None:
            num_rounds = self.num_rounds
        sizes, _ = _resolve_rounds(self.query_size, num_rounds)
        return sizes if len(sizes) == num_rounds else sizes * num_rounds

    def surrogate_training_args(self, output_dir: str) -> PruneFuseConfig:
        """
        Training arguments of the surrogate: a copy of this config writing to `output_dir`, with the `surrogate_*`
        overrides applied to `num_train_epochs`, `learning_rate` and `per_device_train_batch_size`, and without
        evaluations or checkpoints while it trains (`eval_strategy`, `eval_on_start`, `load_best_model_at_end` and
        `save_strategy` are the final model's; see `trainer.training_settings.TRAINING_ARGUMENT_SCOPES`).

        Args:
            output_dir (`str`):
                Where the surrogate's Trainer writes its logs.

        Returns:
            [`PruneFuseConfig`]: a new config (a [`~transformers.TrainingArguments`]); `self` is not modified.
        """
        # The surrogate is evaluated once it is trained; `eval_strategy` curves are for the dense model.
        # Checkpoints are the final model's (the run saves the surrogate itself).
        overrides = {"output_dir": output_dir, "eval_strategy": "no", "eval_on_start": False,
                     "load_best_model_at_end": False, "save_strategy": "no", **_INTERNAL_TRAINER_OVERRIDES}  # fmt: skip
        if self.surrogate_num_train_epochs is not None:
            overrides["num_train_epochs"] = self.surrogate_num_train_epochs
        if self.surrogate_learning_rate is not None:
            overrides["learning_rate"] = self.surrogate_learning_rate
        if self.surrogate_per_device_train_batch_size is not None:
            overrides["per_device_train_batch_size"] = self.surrogate_per_device_train_batch_size
        return dataclasses.replace(self, **overrides)

    def dense_training_args(self, output_dir: str) -> PruneFuseConfig:
        """
        Training arguments of the fused (or fresh dense) model: a copy of this config writing to `output_dir`.

        Args:
            output_dir (`str`):
                Where the dense model's Trainer writes checkpoints and logs.

        Returns:
            [`PruneFuseConfig`]: a new config (a [`~transformers.TrainingArguments`]); `self` is not modified.
        """
        return dataclasses.replace(self, output_dir=output_dir, **_INTERNAL_TRAINER_OVERRIDES)


# The inner Trainers train intermediate models: they never push (the finished run is pushed once, by
# `prunefuse_hf.hub.push_run`) and report through the PruneFuse trainer, which forwards their logs.
_INTERNAL_TRAINER_OVERRIDES = {"push_to_hub": False, "report_to": "none"}


def _accelerator_available() -> bool:
    import torch

    xpu = getattr(torch, "xpu", None)
    return (
        torch.cuda.is_available()
        or torch.backends.mps.is_available()
        or bool(xpu is not None and xpu.is_available())
    )


def _resolve_rounds(query_size, num_rounds) -> tuple[list[int], int]:
    """Normalize `query_size` to a list and settle `num_rounds` (see the `PruneFuseConfig` docstring)."""
    if num_rounds is not None:
        num_rounds = check_integer("num_rounds", num_rounds, minimum=1)
    # A YAML or Python int means "this many every round"; the command line (nargs="+") always gives a list.
    sizes = [query_size] if isinstance(query_size, numbers.Integral) else query_size
    if not isinstance(sizes, (list, tuple)) or len(sizes) == 0:
        raise ValueError(
            f"query_size must be an integer >= 1 or a non-empty list of them, got {query_size!r}."
        )
    sizes = [check_integer("query_size", size, minimum=1) for size in sizes]
    if len(sizes) == 1:
        return sizes, num_rounds if num_rounds is not None else DEFAULT_NUM_ROUNDS
    if num_rounds is not None and num_rounds != len(sizes):
        raise ValueError(
            f"query_size lists {len(sizes)} per-round sizes {sizes} but num_rounds={num_rounds}; give one size per "
            "round, a single size for every round, or leave num_rounds unset."
        )
    return sizes, len(sizes)
