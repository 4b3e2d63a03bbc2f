"""`prunefuse-hf label-studio loop`: a recipe with `annotation: human` run to its end through a Label Studio server,
every round pushed, waited on, pulled and resumed without another command."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..constants import (
    LABEL_STUDIO_DOCUMENT_ROOT_ENV,
    LABEL_STUDIO_TOKEN_ENV,
    LABEL_STUDIO_URL_ENV,
    STATE_NAME,
)

LOOP_USAGE = (
    "prunefuse-hf label-studio loop --config RECIPE.yaml [--url URL] [--poll_interval S] [--webhook_port P] "
    "[--field value ...]"
)
LOOP_DESCRIPTION = f"""Run a recipe with `annotation: human` to its end through Label Studio: each round's query is sent
to the run's project, the loop waits until every task has an answer or a skip (a progress line per change), pulls
the labels (answers that disagree: the recipe's annotation_resolve, or named and waited on until fixed in Label
Studio), trains and selects, and sends the next round; after the last round it trains the final model (and pushes
it when the recipe's push_to_hub is set). Stopped at any moment (Ctrl-C), the same command picks up where it was.
The token comes from {LABEL_STUDIO_TOKEN_ENV}. Every recipe field can be given (or overridden) as a flag, as for
`prunefuse-hf run` (see its --help)."""


def _loop_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunefuse-hf label-studio loop", usage=LOOP_USAGE,
                                     description=LOOP_DESCRIPTION, allow_abbrev=False)  # fmt: skip
    parser.add_argument("--url", help=f"The Label Studio server (default: {LABEL_STUDIO_URL_ENV}).")
    parser.add_argument(
        "--document_root",
        help=f"The server's {LABEL_STUDIO_DOCUMENT_ROOT_ENV} (default: that variable): image files under it are "
        "served as local files; other images travel as data: URIs.",
    )
    parser.add_argument("--title", help="Project title (default: 'PruneFuse <run folder>').")
    parser.add_argument(
        "--poll_interval",
        type=float,
        default=30.0,
        help="Seconds between two looks at the project (default 30).",
    )
    parser.add_argument(
        "--retry_for",
        type=float,
        default=1800.0,
        help="Seconds the server may stay unreachable (tried again with backoff) before the loop stops (default "
        "1800); the run stays resumable.",
    )
    parser.add_argument(
        "--webhook_port",
        type=int,
        help="Listen on this port for Label Studio's webhook (registered on the project, removed on exit): every "
        "answer wakes the loop at once; polling goes on beside it. Label Studio calls local or private addresses "
        "only when started with SSRF_PROTECTION_ENABLED=false (else the loop says so and polls).",
    )
    parser.add_argument(
        "--webhook_host",
        default="127.0.0.1",
        help="The address the webhook server listens on, as Label Studio reaches this machine (default 127.0.0.1).",
    )
    parser.add_argument(
        "--requery_skipped",
        action="store_true",
        help="Let later rounds query the images annotators skipped (default: they are not queried again).",
    )
    return parser


def loop_from_command_line(argv: list[str]) -> dict:
    """Entry point of `prunefuse-hf label-studio loop`: the loop's options, then the recipe and its overrides."""
    if any(arg in ("-h", "--help") for arg in argv):
        _loop_parser().print_help()
        sys.exit(0)
    options, rest = _loop_parser().parse_known_args(argv)
    if options.poll_interval <= 0 or options.retry_for < 0:
        raise ValueError(
            f"--poll_interval must be > 0 and --retry_for >= 0, got {options.poll_interval} and {options.retry_for}."
        )
    from ..annotation.loop import label_studio_loop
    from ..utils.hub_ids import check_hub_model
    from .progress import ProgressLine, run_console
    from .run import build_trainer, parse_run_arguments, print_result

    model_args, data_args, config, run_args, recipe = parse_run_arguments(rest)
    if config.annotation != "human":
        raise ValueError(
            f"label-studio loop drives a run whose labels come from people (annotation: human); this recipe has "
            f"annotation: {config.annotation}. Set annotation: human, or run it with `prunefuse-hf run`."
        )
    if run_args.overwrite:
        raise ValueError(
            f"label-studio loop always continues the run in {config.output_dir} (it holds the labels given so far): "
            "to start over, remove that folder or give another output_dir."
        )
    model_field = "model_config" if model_args.model_config is not None else "model_name_or_path"
    if isinstance(model_args.model_source, str):
        check_hub_model(model_field, model_args.model_source)
    if run_args.verbose:
        config.disable_tqdm = False
    run_args.resume = (Path(config.output_dir) / STATE_NAME).is_file()
    command = shlex.join(["prunefuse-hf", "label-studio", "loop", *argv])
    with run_console() as console:
        trainer = build_trainer(model_args, data_args, config, run_args, recipe, command,
                                callbacks=[ProgressLine(console)])  # fmt: skip

        def say(message: str) -> None:
            console.print(message)
            console.flush()

        label_studio_loop(trainer, url=options.url, document_root=options.document_root, title=options.title,
                          poll_interval=options.poll_interval, requery_skipped=options.requery_skipped,
                          retry_for=options.retry_for, webhook_port=options.webhook_port,
                          webhook_host=options.webhook_host, report=say)  # fmt: skip
    return print_result(trainer, config)
