"""The `prunefuse-hf` command line.

Subcommands:
    run       run a PruneFuse experiment from a YAML recipe (flags override recipe values)
    compare   compare finished runs: accuracy per labeled budget and selection cost
    prune     prune a dense model into a surrogate checkpoint + pruning_plan.json
    fuse      fuse a (trained) surrogate back into its dense model
    push      push a finished run to the Hub: fused model + card, selected subset, surrogate
    label     bring annotators' labels for a run's open query (annotation: human), then resume the run
    label-studio push|pull   send the open query to a running Label Studio / pull its export and ingest it
    label-studio backend     serve a run's surrogate as a Label Studio ML backend (pre-annotations for any task)
    label-studio loop        run a recipe (annotation: human) to its end through Label Studio: push, wait, pull, resume
    cache list|clear         list the pixel caches (size, images, format, last use) / remove old ones

Also runnable as `python -m prunefuse_hf.cli ...` (and so under `accelerate launch -m`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

# Only light modules at the top: each command imports what it needs (torch, transformers, the Hub client), so
# `--help`, `label`, `label-studio` and `cache` start in a fraction of a second.
from ..constants import (
    DENSE_INIT_DIR,
    PIXEL_CACHE_DIR_ENV,
    PIXEL_CACHE_MAX_SIZE_ENV,
    PIXEL_VALUES,
    PRUNING_PATH_REPLAY,
    PRUNING_PLAN_NAME,
)
from ..utils.memory import keep_freed_memory
from .labeling import add_label_parser, add_label_studio_parser


def _add_prune_parser(subparsers) -> None:
    parser = subparsers.add_parser("prune", help="Prune a dense model into a surrogate checkpoint.")
    parser.add_argument("--model", required=True, help="Hub id, checkpoint directory, or config.json path.")
    parser.add_argument(
        "--pruning_ratio", type=float, required=True, help="Fraction of every width to remove."
    )
    parser.add_argument("--output_dir", required=True, help="Where the surrogate and its pruning plan go.")
    parser.add_argument(
        "--num_labels", type=int, help="Number of classes (re-initializes the head if changed)."
    )
    parser.add_argument("--num_channels", type=int, help="Input channels (models built from a config only).")
    parser.add_argument(
        "--image_size",
        type=int,
        default=None,
        help="Input size of the MAC counts and of the image processor saved with the surrogate (the recipe's "
        "image_size). Default: the model's image processor's, else its config's image_size.",
    )
    parser.add_argument("--seed", type=int, default=42, help="Seed of a model built from a config.")
    parser.set_defaults(func=_prune)


def _add_fuse_parser(subparsers) -> None:
    parser = subparsers.add_parser("fuse", help="Fuse a surrogate back into its dense model.")
    parser.add_argument("--dense", required=True, help="Dense checkpoint (its initial weights).")
    parser.add_argument("--surrogate", required=True, help=f"Surrogate checkpoint with {PRUNING_PLAN_NAME}.")
    parser.add_argument("--output_dir", required=True, help="Where the fused checkpoint goes.")
    parser.add_argument(
        "--no_copy_norm_stats", action="store_true", help="Keep the dense BatchNorm running statistics."
    )
    parser.add_argument(
        "--image_size",
        type=int,
        default=None,
        help="Input size of the image processor saved with the fused model when neither checkpoint has one.",
    )
    parser.set_defaults(func=_fuse)


def _prune(args) -> None:
    from transformers import set_seed

    from ..pruning.cost import model_cost
    from ..pruning.modeling import load_image_classifier
    from ..pruning.prune import prune_model
    from ..pruning.replay import save_surrogate
    from ..utils.hub_ids import check_hub_model, has_weights

    set_seed(args.seed)
    # A Hub id the Hub cannot serve is refused in a second (exit status 2), not after the clients' retries.
    check_hub_model("--model", args.model)
    # Path-like names that do not exist are refused here, naming the path (exit status 2).
    dense = load_image_classifier(args.model, num_labels=args.num_labels, num_channels=args.num_channels)
    surrogate, plan = prune_model(dense, args.pruning_ratio)
    plan.dense_name_or_path = plan.dense_name_or_path or os.fspath(args.model)
    save_surrogate(surrogate, plan, args.output_dir)
    built_from_config = not has_weights(os.fspath(args.model)) and os.path.exists(args.model)
    if built_from_config or args.num_labels is not None:
        # A random initialization (or a re-initialized head) exists nowhere else; fusion needs exactly these weights.
        dense_dir = os.path.join(args.output_dir, DENSE_INIT_DIR)
        dense.save_pretrained(dense_dir)
        print(f"dense initialization saved to {dense_dir} (pass it to `prunefuse-hf fuse --dense`)")
    processor, source = _image_processor(dense.config, [args.model], args.image_size)
    if processor is not None:
        # pipeline() and `prunefuse-hf fuse` preprocess as the run would.
        processor.save_pretrained(args.output_dir)
        if built_from_config or args.num_labels is not None:
            processor.save_pretrained(dense_dir)
    size, source = _cost_input_size(processor, source)
    dense_cost, surrogate_cost = model_cost(dense, size), model_cost(surrogate, size)
    print(f"surrogate saved to {args.output_dir} with {PRUNING_PLAN_NAME}")
    print(f"MACs per image at {size[0]}×{size[1]} ({source})")
    print(f"{'':12}{'dense':>14}{'surrogate':>14}{'ratio':>8}")
    for field in ("params", "macs"):
        d, s = getattr(dense_cost, field), getattr(surrogate_cost, field)
        print(f"{field:12}{d:>14,}{s:>14,}{s / d:>8.3f}")


def _fuse(args) -> None:
    import torch

    from ..pruning.fusion import fuse_into_dense
    from ..pruning.modeling import load_image_classifier
    from ..pruning.plan import PruningPlan
    from ..pruning.replay import load_surrogate
    from ..utils.hub_ids import check_hub_model

    check_hub_model("--dense", args.dense)
    plan = PruningPlan.from_pretrained(args.surrogate)
    # Both need weights: a directory with only a config would silently fuse into a random initialization.
    dense = load_image_classifier(args.dense, from_config=False)
    if plan.pruning_path == PRUNING_PATH_REPLAY:
        # No narrowed config: rebuilt from the dense config and the plan's pruning history.
        surrogate = load_surrogate(args.surrogate, plan)
    else:
        surrogate = load_image_classifier(args.surrogate, from_config=False)
    # Refuses (exit status 2) a dense checkpoint of another architecture than the plan's, naming both.
    fused = fuse_into_dense(dense, surrogate, plan, copy_norm_stats=not args.no_copy_norm_stats)
    fused.save_pretrained(args.output_dir)
    processor, _ = _image_processor(dense.config, [args.dense, args.surrogate], args.image_size)
    if processor is not None:
        processor.save_pretrained(args.output_dir)
    else:
        print(f"no image processor saved (neither checkpoint has one and the config gives no image_size): pass "
              f"--image_size so that pipeline() can read {args.output_dir}")  # fmt: skip
    changed = sum(
        not torch.equal(a, b) for a, b in zip(fused.state_dict().values(), dense.state_dict().values())
    )
    print(f"fused model saved to {args.output_dir} ({changed} of {len(dense.state_dict())} tensors changed)")


def _image_processor(config, sources, image_size: int | None):
    """The processor a run of this model would use, and where it comes from: the first checkpoint's own (of
    `sources`), else one built from `image_size` or the config's image_size (as `PruneFuseTrainer` builds it);
    `(None, None)` when nothing gives a size."""
    from ..data.image_processor import build_image_processor, pretrained_image_processor

    for source in sources:
        processor = pretrained_image_processor(os.fspath(source))
        if processor is not None:
            return build_image_processor(config, processor), "the checkpoint's image processor"
    vision_config = getattr(config, "vision_config", None) or config
    if image_size is None and getattr(vision_config, "image_size", None) is None:
        return None, None
    source = "--image_size" if image_size is not None else "the config's image_size"
    return build_image_processor(config, image_size=image_size), source


def _cost_input_size(processor, source: str | None) -> tuple[tuple[int, int], str]:
    """The input size of the MAC counts: the one the run's report would use (its processor's output), and where it
    comes from."""
    import PIL.Image

    from ..pruning.tracing import DEFAULT_TRACE_IMAGE_SIZE

    if processor is not None:
        pixels = processor(PIL.Image.new("RGB", (256, 256)), return_tensors="np")[PIXEL_VALUES]
        return tuple(int(n) for n in pixels.shape[-2:]), source
    size = DEFAULT_TRACE_IMAGE_SIZE
    return (
        size,
        size,
    ), "no size given; pass --image_size (the recipe's image_size) to count at the run's size"


def _add_compare_parser(subparsers) -> None:
    parser = subparsers.add_parser("compare", help="Compare finished runs side by side.")
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR (or RUN_DIR, named after its folder).")
    parser.set_defaults(func=_compare)


def _compare(args) -> None:
    from ..trainer.report import comparison_table
    from ..utils.run_metrics import load_metrics

    runs = {}
    for spec in args.runs:
        name, _, path = (
            spec.rpartition("=") if "=" in spec else (os.path.basename(os.path.normpath(spec)), "", spec)
        )
        runs[name] = load_metrics(path)
    print(comparison_table(runs))


def _add_push_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "push", help="Push a finished run to the Hub (fused model, subset, surrogate)."
    )
    parser.add_argument("run_dir", help="The finished run directory.")
    parser.add_argument("--model_repo_id", required=True, help="Model repo for the fused model (ORG/NAME).")
    parser.add_argument("--subset_repo_id", help="Dataset repo for the selected subset (ORG/NAME).")
    parser.add_argument(
        "--surrogate_repo_id", help="Model repo for the surrogate + pruning_plan.json (ORG/NAME)."
    )
    parser.add_argument("--private", action="store_true", help="Create the repos as private.")
    parser.add_argument("--revision", help="Branch to push to (created from main when missing).")
    parser.add_argument(
        "--include_examples",
        action="store_true",
        help="Also push the selected images and labels (subset repo).",
    )
    parser.set_defaults(func=_push)


def _push(args) -> None:
    from ..hub.push import push_run

    # The token comes from HF_TOKEN or the stored login, never from the command line (shell history, logs).
    result = push_run(
        args.run_dir,
        args.model_repo_id,
        subset_repo_id=args.subset_repo_id,
        surrogate_repo_id=args.surrogate_repo_id,
        private=True if args.private else None,
        revision=args.revision,
        include_examples=args.include_examples,
    )
    for role, url in result.commit_urls.items():
        print(f"{role}: {url}")


def _add_cache_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "cache", help="List the pixel caches of runs (decoded, resized pools) or remove old ones."
    )
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser(
        "list", help="One line per cache: key, size, images, shape, format, last use."
    )
    clear = actions.add_parser(
        "clear", help="Remove caches (a run rebuilds its cache when it needs it): by age, by key, or all."
    )
    for action in (listing, clear):
        action.add_argument(
            "--cache_dir",
            "--cache-dir",
            help=f"Cache folder (default: ${PIXEL_CACHE_DIR_ENV}, else the datasets cache).",
        )
    clear.add_argument("keys", nargs="*", metavar="KEY", help="Keys (or unique prefixes) from `cache list`.")
    clear.add_argument(
        "--older_than",
        "--older-than",
        type=float,
        metavar="DAYS",
        help="Remove caches last used over DAYS ago.",
    )
    clear.add_argument("--all", action="store_true", help="Remove every cache.")
    clear.add_argument("--dry_run", "--dry-run", action="store_true", help="Only show what would be removed.")
    listing.set_defaults(func=_cache_list)
    clear.set_defaults(func=_cache_clear)


def _cache_list(args) -> None:
    from ..data.pixel_cache import format_bytes, list_pixel_caches, resolve_cache_dir, resolve_max_size

    caches = list_pixel_caches(args.cache_dir)
    directory = resolve_cache_dir(args.cache_dir)
    if not caches:
        print(f"no pixel caches in {directory}")
        return
    print(f"{'key':26}{'size':>10}{'images':>11}  {'shape':13}{'format':8}{'last used':18}processor")
    for info in caches:
        shape = "×".join(map(str, info.shape)) if info.shape else "?"
        images = f"{info.num_images:,}" if info.num_images is not None else "?"
        fmt = info.cache_format or "?"
        processor = (
            info.processor if info.complete else "incomplete (a build under way, or an interrupted one)"
        )
        print(f"{info.key:26}{format_bytes(info.size_bytes):>10}{images:>11}  {shape:13}{fmt:8}"
              f"{info.last_used:%Y-%m-%d %H:%M}  {processor}")  # fmt: skip
    print(f"{len(caches)} caches, {format_bytes(sum(i.size_bytes for i in caches))} in {directory}")
    cap = resolve_max_size()
    print(f"cap: {format_bytes(cap)}, least recently used caches removed beyond it" if cap is not None else "cap: none",
          f"(${PIXEL_CACHE_MAX_SIZE_ENV} or pixel_cache_max_size)")  # fmt: skip


def _cache_clear(args) -> None:
    from ..data.pixel_cache import clear_pixel_caches, format_bytes

    if args.older_than is None and not args.keys and not args.all:
        raise ValueError(
            "say which caches to remove: --older_than DAYS, KEY ... (from `prunefuse-hf cache list`), or --all."
        )
    removed = clear_pixel_caches(args.cache_dir, older_than_days=args.older_than, keys=args.keys,
                                 clear_all=args.all, dry_run=args.dry_run)  # fmt: skip
    verb = "would remove" if args.dry_run else "removed"
    for info in removed:
        print(f"{verb} {info.key} ({format_bytes(info.size_bytes)})")
    print(f"{verb} {len(removed)} caches, {format_bytes(sum(i.size_bytes for i in removed))}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunefuse-hf", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    subparsers.add_parser(
        "run", help="Run a PruneFuse experiment: prunefuse-hf run --config RECIPE.yaml [--field value]"
    )
    _add_compare_parser(subparsers)
    _add_prune_parser(subparsers)
    _add_fuse_parser(subparsers)
    _add_push_parser(subparsers)
    add_label_parser(subparsers)
    add_label_studio_parser(subparsers)
    _add_cache_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv else None
    keep_freed_memory()
    try:
        if command == "run":
            from .run import run_from_command_line

            # The run's flags are the recipe's fields, parsed by HfArgumentParser (see run.py).
            run_from_command_line(argv[1:])
        elif command == "label-studio" and argv[1:2] == ["loop"]:
            from .label_studio_loop import loop_from_command_line

            loop_from_command_line(argv[2:])
        else:
            args = build_parser().parse_args(argv)
            # Writing and reading checkpoints shows no progress bars (transformers', huggingface_hub's).
            if command in ("prune", "fuse"):
                from ..trainer.run_logging import quiet_progress_bars

                quiet = quiet_progress_bars(show_inner=True)
            else:
                quiet = contextlib.nullcontext()
            with quiet:
                args.func(args)
    except (ValueError, NotImplementedError, OSError) as error:
        # Every error caused by input (values, files, images, the Hub) is one or two lines, without a traceback.
        print(f"prunefuse-hf {command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prunefuse-hf {command}: interrupted", file=sys.stderr)
        return 130
    return 0
