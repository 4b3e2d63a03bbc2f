"""`prunefuse-hf run`: a YAML recipe plus command-line overrides in, a finished run directory out."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import yaml
from transformers import AutoImageProcessor, HfArgumentParser
from transformers.utils import logging

from .arguments import DataArguments, ModelArguments
from .config import PruneFuseConfig
from .data import load_run_datasets
from .loop import PruneFuseLoop
from .modeling import has_weights
from .report import comparison_table

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


ARGUMENT_CLASSES = (ModelArguments, DataArguments, PruneFuseConfig, RunArguments)


def parse_run_arguments(
    argv: list[str],
) -> tuple[ModelArguments, DataArguments, PruneFuseConfig, RunArguments, dict]:
    """Parse `--config RECIPE.yaml` and flag overrides into the run's dataclasses.

    Recipe values become the parser's defaults, so a flag always wins over the recipe. Unknown recipe
    keys and unknown flags are errors naming the key.

    Returns:
        The four argument dataclasses and the effective recipe (recipe values with overrides applied).
    """
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    recipe_path = _recipe_path(argv)
    recipe = {}
    if recipe_path is not None:
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
    model_args, data_args, config, run_args, remaining = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    if remaining:
        raise ValueError(f"Unknown argument(s): {remaining}. See `prunefuse-hf run --help`.")
    effective = {**recipe, **_overridden_fields(parser, argv)}
    return model_args, data_args, config, run_args, effective


def _recipe_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _overridden_fields(parser, argv: list[str]) -> dict:
    # Record the flags given on the command line next to the recipe (for the report and resume).
    namespace, _ = parser.parse_known_args(argv)
    flags = {arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")}
    return {
        k: v for k, v in vars(namespace).items() if k in flags and k not in ("config", "resume", "overwrite")
    }


def run_from_command_line(argv: list[str]) -> dict:
    """Entry point of `prunefuse-hf run`; prints the result table and where the outputs are."""
    if any(arg in ("-h", "--help") for arg in argv):
        HfArgumentParser(ARGUMENT_CLASSES).parse_args_into_dataclasses(args=["--help"])
    model_args, data_args, config, run_args, recipe = parse_run_arguments(argv)
    pool, eval_dataset = load_run_datasets(data_args, seed=config.seed)
    loop = PruneFuseLoop(
        model_args.model_source,
        pool,
        config,
        eval_dataset=eval_dataset,
        image_processor=_image_processor(model_args),
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        image_size=model_args.image_size,
        augment=data_args.augment,
        resume=run_args.resume,
        overwrite=run_args.overwrite,
        recipe=recipe,
    )
    metrics = loop.run()
    if loop.state.is_main_process:
        print(comparison_table({os.path.basename(os.path.normpath(config.output_dir)): metrics}))
        final = metrics["final"]
        if final.get("accuracy") is not None:
            print(f"final model: {final['labeled']} labeled examples, accuracy {final['accuracy']:.4f}")
        print(f"report: {loop.run_dir.report_path}\nfused model: {loop.run_dir.fused_dir}")
    return metrics


def _image_processor(model_args: ModelArguments):
    """The pretrained model's image processor, when the dense model comes with one."""
    source = model_args.model_name_or_path
    if model_args.model_config is not None or source is None:
        return None
    if os.path.isdir(source) and not has_weights(source):
        return None
    try:
        return AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError) as error:
        logger.warning(
            "No image processor for %s (%s); resizing and normalizing with defaults.", source, error
        )
        return None
