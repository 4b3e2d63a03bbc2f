"""`prunefuse-hf run`: a YAML recipe plus command-line overrides in, a finished run directory out."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shlex
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args, get_type_hints

import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.utils import logging

from ..annotation.queries import query_contents, query_directory
from ..arguments import DataArguments, ModelArguments
from ..constants import STATE_NAME
from ..data.loading import load_run_datasets, resolve_dataset_revision
from ..trainer.annotated_run import annotated_task
from ..trainer.prunefuse_config import PruneFuseConfig
from ..trainer.prunefuse_trainer import PruneFuseTrainer
from ..trainer.report import comparison_table
from ..utils.hub_ids import check_hub_model
from .progress import ProgressLine, run_console

logger = logging.get_logger(__name__)


@dataclass
class RunArguments:
    """How this invocation treats the run directory."""

    config: str | None = field(
        default=None, metadata={"help": "YAML recipe; other flags override its values."}
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue the run in output_dir from its last finished step."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace whatever output_dir holds."})
    verbose: bool = field(
        default=False,
        metadata={
            "help": "Also show the inner progress bars (every training, scoring and decoding pass) and the trainings' "
            "loss logs (every logging_steps); the same as disable_tqdm: false."
        },
    )


ARGUMENT_CLASSES = (RunArguments, ModelArguments, DataArguments, PruneFuseConfig)


def parse_run_arguments(
    argv: list[str],
) -> tuple[ModelArguments, DataArguments, PruneFuseConfig, RunArguments, dict]:
    """Parse `--config RECIPE.yaml` and flag overrides into the run's dataclasses.

    Recipe values become the parser's defaults, so a flag always wins over the recipe. Unknown recipe
    keys and unknown flags are errors naming the key.

    Returns:
        The four argument dataclasses and the effective recipe (recipe values with overrides applied).
    """
    parser = RunArgumentParser()
    argv, nulls = _null_flags(argv)
    recipe_path = _recipe_path(argv)
    recipe = {}
    if recipe_path is not None:
        if not os.path.isfile(recipe_path):
            raise FileNotFoundError(
                f"--config {recipe_path}: no such recipe file. Give the path of a YAML recipe, e.g. "
                "recipes/fashion-mnist-resnet/prunefuse.yaml."
            )
        with open(recipe_path) as f:
            recipe = yaml.safe_load(f) or {}
        if not isinstance(recipe, dict):
            raise ValueError(
                f"The recipe {recipe_path} must be a mapping of field: value, got {type(recipe).__name__}."
            )
        known = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)}
        unknown = sorted(set(recipe) - known)
        if unknown:
            raise ValueError(
                f"Unknown key(s) in recipe {recipe_path}: {unknown}. Check the spelling against "
                "`prunefuse-hf run --help` (model, data, PruneFuseConfig and TrainingArguments fields)."
            )
        parser.set_defaults(**recipe)
    parser.set_defaults(**nulls)
    # Unknown flags (a typo such as --confg) and a missing recipe are named before any field is checked.
    namespace, remaining = parser.parse_known_args(args=argv)
    if remaining:
        raise ValueError(f"Unknown argument(s): {remaining}. See `prunefuse-hf run --help`.")
    if recipe_path is None and namespace.model_name_or_path is None and namespace.model_config is None:
        raise ValueError(
            f"No recipe: {RUN_USAGE} (or give --model_name_or_path / --model_config and the fields)."
        )
    run_args, model_args, data_args, config = parser.parse_args_into_dataclasses(args=argv)
    effective = {**recipe, **_overridden_fields(namespace, argv), **nulls}
    return model_args, data_args, config, run_args, effective


# What a recipe's YAML `null` is on the command line.
NULL_VALUES = ("null", "None")


def _null_flags(argv: list[str]) -> tuple[list[str], dict]:
    """`argv` without its `--field null` / `--field=None` pairs for fields that allow `None`, and those fields set
    to `None`: argparse would hand the field the string (`--eval_split null` reads a split named "null") or refuse it
    (`--max_eval_samples None` is no int)."""
    nullable = _nullable_fields()
    kept, nulls, i = [], {}, 0
    while i < len(argv):
        name, equals, value = argv[i][2:].partition("=") if argv[i].startswith("--") else ("", "", "")
        if not equals and i + 1 < len(argv):
            value = argv[i + 1]
        if name.replace("-", "_") in nullable and value in NULL_VALUES:
            nulls[name.replace("-", "_")] = None
            i += 1 if equals else 2
            continue
        kept.append(argv[i])
        i += 1
    return kept, nulls


@functools.cache
def _nullable_fields() -> frozenset[str]:
    names = set()
    for cls in ARGUMENT_CLASSES:
        hints = get_type_hints(cls)
        names.update(
            entry.name for entry in dataclasses.fields(cls) if type(None) in get_args(hints.get(entry.name))
        )
    return frozenset(names)


def _recipe_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _overridden_fields(namespace: argparse.Namespace, argv: list[str]) -> dict:
    # Record the flags given on the command line next to the recipe (for the report and resume).
    flags = {arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")}
    return {
        k: v
        for k, v in vars(namespace).items()
        if k in flags and k not in ("config", "resume", "overwrite", "verbose")
    }


def run_from_command_line(argv: list[str]) -> dict:
    """Entry point of `prunefuse-hf run`; prints the result table and where the outputs are."""
    if "--help-all" in argv:
        RunArgumentParser(every_field=True).parse_args_into_dataclasses(args=["--help"])
    if any(arg in ("-h", "--help") for arg in argv):
        RunArgumentParser(every_field=False).parse_args_into_dataclasses(args=["--help"])
    model_args, data_args, config, run_args, recipe = parse_run_arguments(argv)
    if run_args.overwrite:
        config.overwrite_output_dir = True
    # A Hub model the Hub cannot serve is named in a second, before the data is read.
    model_field = "model_config" if model_args.model_config is not None else "model_name_or_path"
    if isinstance(model_args.model_source, str):
        check_hub_model(model_field, model_args.model_source)
    if run_args.verbose:
        config.disable_tqdm = False
    with run_console() as console:
        trainer = _train(model_args, data_args, config, run_args, recipe, argv, console)
    return print_result(trainer, config)


def _train(model_args, data_args, config, run_args, recipe, argv, console) -> PruneFuseTrainer:
    trainer = build_trainer(model_args, data_args, config, run_args, recipe, resume_command_line(argv),
                            callbacks=[ProgressLine(console)])  # fmt: skip
    trainer.train(resume_from_checkpoint=True if run_args.resume else None)
    return trainer


def build_trainer(
    model_args, data_args, config, run_args, recipe, resume_command, callbacks
) -> PruneFuseTrainer:
    """The run's trainer: the pool and evaluation set loaded as the recipe says (a resumed run at the dataset
    commit it started with)."""
    # The run (and the subset it publishes) reads a Hub dataset at one commit: later commits to the dataset repo
    # do not change its pool. A resumed run keeps the commit it started with.
    revision = data_args.dataset_revision or _recorded_revision(config.output_dir, run_args.resume)
    data_args.dataset_revision = resolve_dataset_revision(data_args.dataset_name, revision)
    if data_args.dataset_revision is not None:
        recipe["dataset_revision"] = data_args.dataset_revision
    task = annotated_task(model_args.model_source, config)
    if task is None:
        pool, eval_dataset = load_run_datasets(
            data_args, config.image_column, config.label_column, seed=config.seed
        )
    else:
        pool, eval_dataset = _annotated_datasets(data_args, config, task)
    return PruneFuseTrainer(
        model_args.model_source,
        args=config,
        train_dataset=pool,
        eval_dataset=eval_dataset,
        recipe=recipe,
        resume_command=resume_command,
        callbacks=callbacks,
    )


def _annotated_datasets(data_args, config, task):
    """The pool and evaluation set of an object-detection or semantic-segmentation run: the task's built-in synthetic
    pool (`max_pool_size` images of Fashion-MNIST's train items, default 1,000; `max_eval_samples` of its test items,
    default 200), or the splits the task loads (`Task.load_split`), subsampled like classification's. The pool is read
    by `Task.load_pool_split`, as a subset of the run rebuilds it."""
    from ..constants import SYNTHETIC_EVAL_SIZE
    from ..data.loading import check_distinct_splits, subsample

    pool = task.load_pool_split(data_args, config)
    if not data_args.eval_split:
        return subsample(pool, data_args.max_pool_size, config.seed), None
    if data_args.dataset_name == task.synthetic_name:
        eval_dataset = task.synthetic_pool(
            data_args.max_eval_samples or SYNTHETIC_EVAL_SIZE, split="test", seed=config.seed + 1
        )
    else:
        eval_dataset = task.load_split(data_args, config, data_args.eval_split)
        check_distinct_splits(pool, eval_dataset, data_args)
    return (
        subsample(pool, data_args.max_pool_size, config.seed),
        subsample(eval_dataset, data_args.max_eval_samples, config.seed + 1),
    )


def print_result(trainer: PruneFuseTrainer, config: PruneFuseConfig) -> dict:
    metrics = trainer.metrics
    if trainer.is_world_process_zero():
        if trainer.awaiting_labels is not None:
            round_ = trainer.awaiting_labels
            count = len(trainer.progress["queries"][str(round_)]["pool_indices"])
            directory = query_directory(trainer.run_dir.path, round_)
            print(f"label the {count:,} images in {directory} ({query_contents(directory)}), then:")
            print(
                f"prunefuse-hf label {trainer.run_dir.path} --labels {trainer.task.labels_metavar} && "
                f"{trainer.resume_command}"
            )
            return metrics
        if not trainer.done:
            print(
                f"stopped after step {trainer.progress['completed'][-1]}; resume with: {trainer.resume_command}"
            )
            return metrics
        print(comparison_table({os.path.basename(os.path.normpath(config.output_dir)): metrics}))
        final, metric = metrics["final"], metrics["metric"]
        if final.get(metric) is not None:
            print(f"final model: {final['labeled']} labeled examples, {metric} {final[metric]:.4f}")
        else:
            print(f"final model: {final['labeled']} labeled examples; no evaluation set (eval_split: null), so no "
                  "accuracy was measured")  # fmt: skip
        print(f"report: {trainer.run_dir.report_path}\nfused model: {trainer.run_dir.fused_dir}")
    return metrics


def resume_command_line(argv: list[str]) -> str:
    """The command that resumes a run started with `argv` (the CLI's arguments): the same, plus `--resume`."""
    kept = [arg for arg in argv if arg not in ("--resume", "--overwrite")]
    return shlex.join(["prunefuse-hf", "run", *kept, "--resume"])


def _recorded_revision(output_dir: str, resume: bool) -> str | None:
    state = Path(output_dir) / STATE_NAME
    if not (resume and state.is_file()):
        return None
    return (json.loads(state.read_text()).get("recipe") or {}).get("dataset_revision")


class RunArgumentParser(HfArgumentParser):
    """The parser of `prunefuse-hf run`: this command's options, then the model, data and PruneFuse fields, then
    the `TrainingArguments` fields, each under its own heading in `--help`.

    Args:
        every_field (`bool`, *optional*, defaults to `True`): Whether `--help` lists every `TrainingArguments`
            field (`--help-all`) or only those whose default PruneFuseConfig changes (`--help`); every field is
            parsed either way.
    """

    def __init__(self, every_field: bool = True):
        self.every_field = every_field
        self.hidden: list[str] = []  # fields left out of the short help
        super().__init__(ARGUMENT_CLASSES, prog="prunefuse-hf run", usage=RUN_USAGE, description=RUN_DESCRIPTION,
                         formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        if not every_field:
            names = textwrap.fill(
                ", ".join(self.hidden), width=110, initial_indent="  ", subsequent_indent="  "
            )
            self.epilog = SHORT_HELP_EPILOG.format(names=names)

    def _add_dataclass_arguments(self, dtype):
        type_hints = get_type_hints(dtype)
        inherited = (
            {f.name for f in dataclasses.fields(TrainingArguments)} if dtype is PruneFuseConfig else set()
        )
        own_group = self.add_argument_group(GROUP_TITLES[dtype.__name__])
        fields = [f for f in dataclasses.fields(dtype) if f.init]
        # The class's own fields first, then the TrainingArguments fields (those it changes the default of first).
        own = [f for f in fields if f.name not in inherited]
        changed = [f for f in fields if f.name in inherited and f.name in dtype.__annotations__]
        rest = [f for f in fields if f.name in inherited and f.name not in dtype.__annotations__]
        training_group = self.add_argument_group(GROUP_TITLES["TrainingArguments"]) if inherited else None
        for group, group_fields in ((own_group, own), (training_group, changed + rest)):
            for field_ in group_fields:
                field_.type = type_hints[field_.name]
                before = len(self._actions)
                self._parse_dataclass_field(group, field_)
                if not self.every_field and dtype is PruneFuseConfig and field_.name not in MAIN_FIELDS:
                    for action in self._actions[before:]:
                        action.help = argparse.SUPPRESS
                    if field_ in own:
                        self.hidden.append(field_.name)


RUN_USAGE = "prunefuse-hf run --config RECIPE.yaml [--field value ...] [--resume | --overwrite]"
RUN_DESCRIPTION = """Run PruneFuse from a YAML recipe; every field can also be given (or overridden) as a flag.

  prunefuse-hf run --config recipes/fashion-mnist-resnet/prunefuse.yaml [--field value ...] [--resume | --overwrite]
"""
# The fields `prunefuse-hf run --help` describes; `--help-all` describes every field.
MAIN_FIELDS = ("method", "pruning_ratio", "strategy", "initial_labeled_size", "query_size", "num_rounds", "annotation",
               "image_size", "output_dir", "num_train_epochs", "learning_rate", "per_device_train_batch_size",
               "logging_steps", "seed")  # fmt: skip
SHORT_HELP_EPILOG = """more PruneFuse fields (flags and recipe keys alike):
{names}
and every transformers.TrainingArguments field (bf16, gradient_accumulation_steps, eval_strategy, report_to, ...).
`prunefuse-hf run --help-all` describes them all.
"""
GROUP_TITLES = {
    "RunArguments": "this command",
    "ModelArguments": "model (ModelArguments)",
    "DataArguments": "data (DataArguments)",
    "PruneFuseConfig": "PruneFuse (PruneFuseConfig)",
    "TrainingArguments": "training (transformers.TrainingArguments, as extended by PruneFuseConfig)",
}
