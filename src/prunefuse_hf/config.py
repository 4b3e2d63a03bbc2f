"""`PruneFuseConfig`: every setting of a PruneFuse run, as `TrainingArguments` plus the method's own fields."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

from transformers import TrainingArguments
from transformers.trainer_utils import SaveStrategy

IMPORTANCES = ("l2",)
SURROGATE_INITS = ("reinit", "warm")
FUSION_INITS = ("dense_init", "fresh")
# Used only when `prunefuse_hf.strategies` cannot be imported (it owns the authoritative registry).
FALLBACK_STRATEGIES = ("random", "least_confidence", "entropy", "margin", "kcenter_greedy")
DEFAULT_NUM_ROUNDS = 4


def available_strategies() -> tuple[str, ...]:
    """Names accepted by `strategy`: the keys of `prunefuse_hf.strategies.STRATEGIES`, or a fixed fallback list."""
    try:
        from .strategies import STRATEGIES
    except ModuleNotFoundError as error:
        # Only a missing strategies module falls back; a broken one must surface its own error.
        if error.name != f"{__package__}.strategies":
            raise
        return FALLBACK_STRATEGIES
    return tuple(STRATEGIES)


@dataclass
class PruneFuseConfig(TrainingArguments):
    r"""
    Configuration class for [`PruneFuseTrainer`] and the PruneFuse selection loop.

    This class includes only the parameters that are specific to PruneFuse. For a full list of training arguments,
    please refer to the [`~transformers.TrainingArguments`] documentation. Note that default values in this class
    may differ from those in [`~transformers.TrainingArguments`].

    Using [`~transformers.HfArgumentParser`] we can turn this class into
    [argparse](https://docs.python.org/3/library/argparse#module-argparse) arguments that can be specified on the
    command line, or parse it from a YAML recipe with `parse_dict` / `parse_yaml_file`.

    Parameters:
        > Parameters that control pruning

        pruning_ratio (`float`, *optional*, defaults to `0.5`):
            Fraction of every prunable width (channels, heads, hidden sizes) removed from the dense model to build the
            surrogate, in `[0, 1)`. `0` keeps the dense model as its own selector (the dense-selector active learning
            baseline).
        importance (`str`, *optional*, defaults to `"l2"`):
            Channel importance used to choose what to prune. Only `"l2"` (L2 norm of each coupled channel group) is
            supported.

        > Parameters that control selection

        strategy (`str`, *optional*, defaults to `"least_confidence"`):
            Selection strategy, one of the names registered in `prunefuse_hf.strategies.STRATEGIES`.
        initial_labeled_size (`int`, *optional*, defaults to `1000`):
            Size of the random labeled set the first round starts from.
        query_size (`int` or `list[int]`, *optional*, defaults to `[1000]`):
            Number of examples labeled per round. One value is used for every round; a list gives one value per round.
        num_rounds (`int` or `None`, *optional*, defaults to `None`):
            Number of selection rounds. `None` means the length of `query_size` when it lists several values, else `4`.
            When both are given, a list `query_size` must have exactly `num_rounds` values.
        scoring_batch_size (`int`, *optional*, defaults to `256`):
            Batch size per device when the surrogate scores the unlabeled pool.
        mc_samples (`int`, *optional*, defaults to `10`):
            Stochastic forward passes per example for MC-dropout strategies (`bald`).
        selection_seed (`int` or `None`, *optional*, defaults to `None`):
            Seed of the initial random draw and of the random parts of selection. `None` uses `seed`.

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

        > Parameters that control fusion

        fusion (`bool`, *optional*, defaults to `True`):
            Whether to fuse the trained surrogate into the dense model before the final training. `False` trains a
            fresh dense model on the selected data (the SVP-style baseline).
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

        distill_alpha (`float`, *optional*, defaults to `0.5`):
            Weight α of the distillation term in `(1 - α)·CE + α·τ²·KL(surrogate ‖ fused)`, in `[0, 1]`. `0` trains
            the fused model with plain cross-entropy.
        distill_temperature (`float`, *optional*, defaults to `4.0`):
            Softmax temperature τ of the distillation term, greater than `0`.

        > Parameters that control the Hub (with `push_to_hub`, `hub_model_id`, `hub_private_repo`, `hub_token` and
        > `hub_revision` from TrainingArguments: with `push_to_hub`, the finished run is pushed once at the end)

        hub_subset_id (`str` or `None`, *optional*, defaults to `None`):
            Dataset repo for the selected subset (`selection.parquet`, its source record and a dataset card).
        hub_surrogate_id (`str` or `None`, *optional*, defaults to `None`):
            Model repo for the trained surrogate and its `pruning_plan.json`.

        > Parameters whose default values are overridden from TrainingArguments

        output_dir (`str`, *optional*, defaults to `"prunefuse-output"`):
            The run directory; checkpoints, state and reports are written there.
        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Our datasets decode images on the fly with `with_transform`, so the Trainer must not drop the image
            column before the transform has produced `pixel_values`.
        save_strategy (`str`, *optional*, defaults to `"no"`):
            The loop saves the surrogate and the fused model itself; intermediate checkpoints are opt-in.
        logging_steps (`float`, *optional*, defaults to `10`):
            Labeled sets are small, so the stock `500` would log nothing in most rounds.
        report_to (`str` or `list[str]`, *optional*, defaults to `"none"`):
            No tracking integration unless asked for.
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
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Whether to drop dataset columns the model's forward does not take. Defaults to False because "
            "images are decoded on the fly by `with_transform`, which needs the raw image column."
        },
    )
    save_strategy: SaveStrategy | str = field(
        default="no",
        metadata={
            "help": "Checkpoint strategy during training: 'no', 'steps', 'epoch' or 'best'. Defaults to 'no' because "
            "the loop saves the surrogate and the fused model itself."
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

    # Pruning.
    pruning_ratio: float = field(
        default=0.5,
        metadata={
            "help": "Fraction of every prunable width removed to build the surrogate, in [0, 1). 0 keeps the dense "
            "model as its own selector (dense-selector active learning baseline)."
        },
    )
    importance: str = field(
        default="l2",
        metadata={"help": "Channel importance used for pruning. Only 'l2' (group L2 norm) is supported."},
    )

    # Selection.
    strategy: str = field(
        default="least_confidence",
        metadata={
            "help": "Selection strategy: random, least_confidence, entropy, margin, kcenter_greedy, or any name "
            "registered in prunefuse_hf.strategies.STRATEGIES."
        },
    )
    initial_labeled_size: int = field(
        default=1000,
        metadata={"help": "Size of the random labeled set the first round starts from."},
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
    mc_samples: int = field(
        default=10,
        metadata={"help": "Stochastic forward passes per example for MC-dropout strategies (bald)."},
    )
    selection_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the initial random draw and of random selection. Defaults to `seed`."},
    )

    # Surrogate training.
    surrogate_init: str = field(
        default="reinit",
        metadata={
            "help": "How the surrogate starts each round: 'reinit' (from its pruned initialization) or 'warm' "
            "(from the previous round's weights)."
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
        metadata={
            "help": "Training batch size per device of the surrogate. Defaults to `per_device_train_batch_size`."
        },
    )

    # Fusion.
    fusion: bool = field(
        default=True,
        metadata={
            "help": "Whether to fuse the trained surrogate into the dense model before the final training. False "
            "trains a fresh dense model on the selected data (SVP-style baseline)."
        },
    )
    fusion_init: str = field(
        default="dense_init",
        metadata={
            "help": "What the fused model starts from outside the surrogate's weights: 'dense_init' (the dense "
            "initialization) or 'fresh' (a new random initialization)."
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
    distill_alpha: float = field(
        default=0.5,
        metadata={
            "help": "Weight of the distillation term from the surrogate when training the fused model, in [0, 1]. "
            "0 means plain cross-entropy."
        },
    )
    distill_temperature: float = field(
        default=4.0,
        metadata={"help": "Softmax temperature of the distillation term, greater than 0."},
    )

    # Hub (with TrainingArguments' `push_to_hub`, `hub_model_id`, `hub_private_repo`, `hub_token`, `hub_revision`:
    # the loop pushes the finished run once, at the end; its internal Trainers never push).
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

    def __post_init__(self):
        # Our fields first, so a wrong recipe value is reported before any TrainingArguments set-up runs.
        self._validate_prunefuse_fields()
        if not self.use_cpu and not _accelerator_available():
            # Accelerate starts a CPU process group (gloo) only when asked for the CPU; without this a
            # recipe launched with several processes on a CPU-only machine would run them unconnected.
            self.use_cpu = True
        if self.selection_seed is None:
            self.selection_seed = self.seed
        super().__post_init__()

    def _validate_prunefuse_fields(self):
        self.pruning_ratio = _number(
            "pruning_ratio",
            self.pruning_ratio,
            lambda v: 0 <= v < 1,
            "a number in [0, 1) (0 = dense selector)",
        )
        _choice("importance", self.importance, IMPORTANCES)
        _choice("strategy", self.strategy, available_strategies())
        self.initial_labeled_size = _integer("initial_labeled_size", self.initial_labeled_size, minimum=1)
        self.query_size, self.num_rounds = _resolve_rounds(self.query_size, self.num_rounds)
        self.scoring_batch_size = _integer("scoring_batch_size", self.scoring_batch_size, minimum=1)
        self.mc_samples = _integer("mc_samples", self.mc_samples, minimum=1)
        if self.selection_seed is not None:
            self.selection_seed = _integer("selection_seed", self.selection_seed, minimum=0)

        _choice("surrogate_init", self.surrogate_init, SURROGATE_INITS)
        if self.surrogate_num_train_epochs is not None:
            self.surrogate_num_train_epochs = _number(
                "surrogate_num_train_epochs",
                self.surrogate_num_train_epochs,
                lambda v: v > 0,
                "a number > 0 or None",
            )
        if self.surrogate_learning_rate is not None:
            self.surrogate_learning_rate = _number(
                "surrogate_learning_rate",
                self.surrogate_learning_rate,
                lambda v: v > 0,
                "a number > 0 or None",
            )
        if self.surrogate_per_device_train_batch_size is not None:
            self.surrogate_per_device_train_batch_size = _integer(
                "surrogate_per_device_train_batch_size", self.surrogate_per_device_train_batch_size, minimum=1
            )

        _boolean("fusion", self.fusion)
        _choice("fusion_init", self.fusion_init, FUSION_INITS)
        _boolean("copy_norm_stats", self.copy_norm_stats)
        _boolean("eval_dense_every_round", self.eval_dense_every_round)
        self.sync_every = _integer("sync_every", self.sync_every, minimum=0)
        if self.sync_every > 0 and not self.fusion:
            raise ValueError(
                f"sync_every must be 0 when fusion is False, got sync_every={self.sync_every}: re-synchronizing "
                "fuses the surrogate into the dense model, which fusion=False never does."
            )

        self.distill_alpha = _number(
            "distill_alpha", self.distill_alpha, lambda v: 0 <= v <= 1, "a number in [0, 1]"
        )
        self.distill_temperature = _number(
            "distill_temperature", self.distill_temperature, lambda v: v > 0, "a number > 0"
        )

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
        overrides applied to `num_train_epochs`, `learning_rate` and `per_device_train_batch_size`.

        Args:
            output_dir (`str`):
                Where the surrogate's Trainer writes checkpoints and logs.

        Returns:
            [`PruneFuseConfig`]: a new config (a [`~transformers.TrainingArguments`]); `self` is not modified.
        """
        # The surrogate is evaluated once it is trained; `eval_strategy` curves are for the dense model.
        overrides = {"output_dir": output_dir, "eval_strategy": "no", "load_best_model_at_end": False,
                     **_INTERNAL_TRAINER_OVERRIDES}  # fmt: skip
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


# The loop's Trainers train intermediate models: they must never create repos or push (the finished run is
# pushed once, by `prunefuse_hf.hub.push_from_config`).
_INTERNAL_TRAINER_OVERRIDES = {"push_to_hub": False}


def _accelerator_available() -> bool:
    import torch

    xpu = getattr(torch, "xpu", None)
    return (
        torch.cuda.is_available()
        or torch.backends.mps.is_available()
        or bool(xpu is not None and xpu.is_available())
    )


def _choice(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}.")


def _boolean(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}.")


def _integer(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _number(name: str, value, check, allowed: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or math.isnan(value)
        or not check(value)
    ):
        raise ValueError(f"{name} must be {allowed}, got {value!r}.")
    return float(value)


def _resolve_rounds(query_size, num_rounds) -> tuple[list[int], int]:
    """Normalize `query_size` to a list and settle `num_rounds` (see the `PruneFuseConfig` docstring)."""
    if num_rounds is not None:
        num_rounds = _integer("num_rounds", num_rounds, minimum=1)
    # A YAML or Python int means "this many every round"; the command line (nargs="+") always gives a list.
    sizes = [query_size] if isinstance(query_size, numbers.Integral) else query_size
    if not isinstance(sizes, (list, tuple)) or len(sizes) == 0:
        raise ValueError(
            f"query_size must be an integer >= 1 or a non-empty list of them, got {query_size!r}."
        )
    sizes = [_integer("query_size", size, minimum=1) for size in sizes]
    if len(sizes) == 1:
        return sizes, num_rounds if num_rounds is not None else DEFAULT_NUM_ROUNDS
    if num_rounds is not None and num_rounds != len(sizes):
        raise ValueError(
            f"query_size lists {len(sizes)} per-round sizes {sizes} but num_rounds={num_rounds}; give one size per "
            "round, a single size for every round, or leave num_rounds unset."
        )
    return sizes, len(sizes)
