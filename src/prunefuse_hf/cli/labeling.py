"""The labeling commands of `prunefuse-hf`: `label` (a label file or export for a run's open query) and
`label-studio push|pull|backend` (the open query to a running Label Studio and its answers back, or the run's
surrogate as an ML backend). `label-studio loop` has its own module (`label_studio_loop`).

Each command imports what it needs when it runs: `label` and `label-studio` start without the training stack.
"""

from __future__ import annotations

from ..constants import (
    LABEL_STUDIO_DOCUMENT_ROOT_ENV,
    LABEL_STUDIO_TOKEN_ENV,
    LABEL_STUDIO_URL_ENV,
    RESOLUTIONS,
    TASK_NAMES,
)


def add_label_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "label", help="Ingest annotators' labels for a run's open query; then resume the run with --resume."
    )
    parser.add_argument("run_dir", help="The run directory that stopped with a query batch.")
    parser.add_argument(
        "--labels",
        required=True,
        help="Classification: CSV/TSV, JSON/JSONL, parquet, a Label Studio export (JSON, JSON_MIN, CSV), a dataset "
        "folder or a Hub dataset id, with pool_index and label (class name or id) columns. Object detection: the "
        "query's annotations.json filled in, or a Label Studio JSON, JSON_MIN or COCO export. Semantic segmentation: "
        "the query's masks/ folder painted with class ids, or a Label Studio JSON export.",
    )
    parser.add_argument(
        "--allow_partial", action="store_true", help="Continue with the labeled part of the query."
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="Replace stored labels the file contradicts."
    )
    parser.add_argument(
        "--label_column", help="Column holding the labels (default: label, class, choice, ...)."
    )
    parser.add_argument("--index_column", help="Column holding the pool indices (default: pool_index).")
    _add_ingest_arguments(parser)
    parser.set_defaults(func=_label)


def _add_ingest_arguments(parser) -> None:
    parser.add_argument(
        "--resolve",
        choices=RESOLUTIONS,
        help="How an image that annotators answered differently gets its label: the annotation marked ground truth, "
        "the majority answer (a tie goes to ground truth or is refused), or the latest. Default: the run's "
        "annotation_resolve, else refuse, naming them.",
    )
    parser.add_argument(
        "--requery_skipped",
        action="store_true",
        help="Let later rounds query the images annotators skipped (default: they are not queried again).",
    )


def _label(args) -> None:
    _ingest(args, args.labels, _task_ingest(args.run_dir))


def _task_ingest(run_dir):
    """The ingest of the run's task: image classification's (`ingest_labels`, without the training stack), or the
    task's own (boxes: `ingest_detection_labels`, masks: `ingest_segmentation_labels`)."""
    from ..annotation.labels import LabelError
    from ..annotation.queries import read_run_state

    task = read_run_state(run_dir).get("task") or TASK_NAMES[0]
    if task == TASK_NAMES[0]:
        from ..annotation.store import ingest_labels

        return ingest_labels
    from ..tasks import get_task

    if get_task(task).ingest_labels is None:
        raise LabelError(
            f"{run_dir} is a {task} run: its labels cannot be brought by people yet (annotation: human)."
        )
    return get_task(task).ingest_labels


def run_task(run_dir):
    """
    The task of the run in `run_dir` when it is not image classification, else `None` (classification is served
    without importing the tasks and the training stack; so is a directory that holds no run, which the command then
    names).

    Example:

    ```python
    >>> run_task("runs/boxes").name, run_task("runs/my-pool")
    ('object-detection', None)
    ```
    """
    from ..utils.run_directory import RunDirectory

    run = RunDirectory(run_dir)
    state = run.read_state() if run.state_path.is_file() else {}
    task = state.get("task") or (state.get("settings") or {}).get("task") or TASK_NAMES[0]
    if task == TASK_NAMES[0]:
        return None
    from ..tasks import get_task

    return get_task(task)


def _ingest(args, source, ingest_labels) -> None:
    from ..annotation.queries import open_query, read_run_state
    from ..utils.run_directory import RunDirectory

    query = open_query(args.run_dir)
    resolve = args.resolve
    if resolve is None:  # the run's recipe decides, as it does for the loop
        state = read_run_state(args.run_dir)  # (runs started before the policy was recorded: their recipe's)
        resolve = state.get("annotation_resolve", (state.get("recipe") or {}).get("annotation_resolve"))
        if resolve is not None:
            print(f"answers that disagree: the run's annotation_resolve ({resolve}) decides")
    result = ingest_labels(args.run_dir, source, allow_partial=args.allow_partial, overwrite=args.overwrite,
                           label_column=args.label_column, index_column=args.index_column, resolve=resolve,
                           requery_skipped=args.requery_skipped)  # fmt: skip
    round_, expected = query
    answered = len(expected) - result.missing.size
    print(
        f"round {round_}: {result.added} labels added, {result.unchanged} already stored, {result.overwritten} "
        f"replaced; {answered - result.skipped.size} of {len(expected)} queried examples labeled, "
        f"{result.skipped.size} skipped"
        + (" (they may be queried again)" if result.skipped.size and args.requery_skipped else "")
        + (f" ({result.missing.size} go back to the pool)" if result.missing.size else "")
    )
    state = RunDirectory(args.run_dir).read_state()
    print(
        f"next: {state.get('resume_command') or 'resume the run (trainer.train(resume_from_checkpoint=True))'}"
    )


def add_label_studio_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "label-studio",
        help=f"Send a run's open query to a running Label Studio (push), or pull the answers and ingest them (pull). "
        f"The token comes from {LABEL_STUDIO_TOKEN_ENV}.",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    push = actions.add_parser(
        "push", help="Create/update the run's project and import the open query's tasks."
    )
    pull = actions.add_parser(
        "pull", help="Download the project's JSON export and ingest the open round's labels."
    )
    for action in (push, pull):
        action.add_argument("run_dir", help="The run directory that stopped with a query batch.")
        action.add_argument("--url", help=f"The Label Studio server (default: {LABEL_STUDIO_URL_ENV}).")
    push.add_argument(
        "--document_root",
        help=f"The server's {LABEL_STUDIO_DOCUMENT_ROOT_ENV} (default: that variable): image files under it are "
        "served as local files; other images travel as data: URIs.",
    )
    push.add_argument("--title", help="Project title (default: 'PruneFuse <run folder>').")
    push.set_defaults(func=_label_studio_push)
    pull.add_argument(
        "--allow_partial", action="store_true", help="Continue with the answered part of the query."
    )
    pull.add_argument(
        "--overwrite", action="store_true", help="Replace stored labels the export contradicts."
    )
    pull.add_argument("--label_column", help="The name of the class tag when the config has several.")
    pull.set_defaults(func=_label_studio_pull, index_column=None)
    _add_ingest_arguments(pull)
    backend = actions.add_parser(
        "backend",
        help="Serve the run's latest trained surrogate as a Label Studio ML backend (Settings -> Model -> Connect "
        "model): pre-annotations for any task of the project, tasks imported by hand included.",
    )
    backend.add_argument(
        "run_dir",
        help="The run directory (annotation: human): image classification (Choices), object detection "
        "(RectangleLabels boxes) or semantic segmentation (BrushLabels masks).",
    )
    backend.add_argument("--port", type=int, required=True, help="The port the backend listens on.")
    backend.add_argument(
        "--host",
        default="127.0.0.1",
        help="The address it listens on, as Label Studio reaches it (default 127.0.0.1).",
    )
    backend.add_argument(
        "--url",
        help=f"The Label Studio server, to fetch images it serves (default: the run's project, or "
        f"{LABEL_STUDIO_URL_ENV}).",
    )
    backend.add_argument(
        "--document_root",
        help=f"The server's {LABEL_STUDIO_DOCUMENT_ROOT_ENV} (default: that variable): local-file images are read "
        "from it directly.",
    )
    backend.add_argument(
        "--wake_url",
        help="Pass every webhook Label Studio sends to the backend's /webhook on to this address: a running "
        "`label-studio loop --webhook_port P` listens on http://127.0.0.1:P/ and wakes at once.",
    )
    backend.set_defaults(func=_label_studio_backend)
    # Parsed by cli/label_studio_loop.py (the recipe's fields are its flags); listed here for `label-studio --help`.
    actions.add_parser(
        "loop",
        help="Run a recipe (annotation: human) to its end: push each round, wait for the annotators, pull, resume. "
        "prunefuse-hf label-studio loop --config RECIPE.yaml [--url URL] [--poll_interval S] [--field value ...]",
    )


def _label_studio_push(args) -> None:
    from ..annotation.label_studio_api import push_query

    result = push_query(args.run_dir, url=args.url, document_root=args.document_root, title=args.title)
    print(
        f"round {result['round']}: {result['imported']} tasks imported into {result['project_url']} "
        f"({result['already']} were already there; {result['local_files']} images served as local files)"
    )
    print(f"next, once annotated: prunefuse-hf label-studio pull {args.run_dir}")


def _label_studio_backend(args) -> None:
    from ..annotation.backend import serve_label_studio_backend

    serve_label_studio_backend(args.run_dir, host=args.host, port=args.port, task=run_task(args.run_dir),
                               url=args.url, document_root=args.document_root, wake_url=args.wake_url,
                               report=lambda message: print(message, flush=True))  # fmt: skip


def _label_studio_pull(args) -> None:
    from ..annotation.label_studio_api import pull_export

    ingest_labels = _task_ingest(args.run_dir)
    # How the task compares its stored answers with the project's (boxes: the detection task's; None: class labels).
    answers = getattr(run_task(args.run_dir), "stored_answers", None)
    path = pull_export(args.run_dir, url=args.url, report=print, answers=answers)
    print(f"export saved to {path}")
    _ingest(args, path, ingest_labels)
