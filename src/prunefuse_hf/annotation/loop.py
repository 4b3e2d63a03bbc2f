"""The live active-learning loop with Label Studio: one call drives a run with `annotation="human"` to its end.

Whenever the run stops for labels, [`label_studio_loop`] sends the round's query to the run's Label Studio project
([`push_query`]: tasks already there are not imported twice), polls the project until every task of the round has
an answer or a skip, pulls the export and ingests it ([`pull_export`], then the run's `add_labels` with its
`annotation_resolve` policy), and resumes the run (train, select), which stops at the next round's query or
finishes: the final model, and the Hub push when the run's `push_to_hub` is set.

The loop keeps nothing that the run directory and the Label Studio project do not hold: stopped at any moment
(Ctrl-C, a crash, a reboot), it is called again and picks up where it was. A server that cannot be reached is
tried again with backoff (each try said plainly); answers that disagree under the default policy are named and
waited on until they are fixed in Label Studio; labels of earlier rounds edited in Label Studio after they were
pulled are reported (they stay as stored). With a webhook port, Label Studio's webhook (registered on the
project, removed on exit) wakes the loop at every annotation; polling goes on beside it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from transformers.utils import logging

from .label_studio import AnswersDisagree
from .label_studio_api import (
    LabelStudioClient,
    LabelStudioUnreachable,
    project_record,
    pull_export,
    push_query,
)
from .labels import LabelError

logger = logging.get_logger(__name__)

_RUN_POLICY = object()  # `resolve` not given: the run's `annotation_resolve`
_BACKOFF_START, _BACKOFF_MAX = 1.0, 60.0  # seconds between tries while the server cannot be reached
_POLLED_FIELDS = "id,total_annotations,cancelled_annotations,annotators"
# What changes a round's answers: every such event wakes the loop (the payload is not needed, only the nudge).
_WEBHOOK_ACTIONS = ["ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
                    "TASKS_DELETED"]  # fmt: skip


@dataclass
class RoundProgress:
    """
    Where the annotators are with one round's tasks.

    Args:
        round (`int`): The round whose query is being labeled.
        total (`int`): Its tasks in the project.
        annotated (`int`): Tasks with at least one answer.
        skipped (`int`): Tasks whose every annotation is a skip.
        annotators (`list[str]`): Who answered or skipped tasks of the round so far (e-mails).
        missing (`int`): Tasks of the round no longer in the project (deleted there; imported again).
    """

    round: int
    total: int
    annotated: int = 0
    skipped: int = 0
    annotators: list[str] = field(default_factory=list)
    missing: int = 0

    @property
    def complete(self) -> bool:
        """Every task of the round has an answer or a skip."""
        return self.total > 0 and self.missing == 0 and self.annotated + self.skipped >= self.total

    def describe(self) -> str:
        left = self.total - self.annotated - self.skipped
        who = ", ".join(self.annotators) if self.annotators else "none yet"
        return (
            f"round {self.round}: {self.annotated} annotated, {self.skipped} skipped of {self.total} tasks "
            f"({left} to go); annotators: {who}"
        )


def label_studio_loop(
    trainer,
    *,
    url: str | None = None,
    token: str | None = None,
    document_root: str | os.PathLike | None = None,
    title: str | None = None,
    poll_interval: float = 30.0,
    resolve=_RUN_POLICY,
    requery_skipped: bool = False,
    retry_for: float = 1800.0,
    webhook_port: int | None = None,
    webhook_host: str = "127.0.0.1",
    report: Callable[[str], None] | None = None,
):
    """
    Drive a run with human annotation to its end through Label Studio: push each round's query, wait for the
    annotators, pull and ingest their labels, resume the run; return once the run is finished.

    Args:
        trainer ([`PruneFuseTrainer`]): The run (`args.annotation="human"`): image classification (`Choices`
            tasks), object detection (`RectangleLabels` tasks; the boxes go to `RUN/labeled_objects.parquet`)
            or semantic segmentation (`BrushLabels` tasks; the masks go to `RUN/labeled_masks/`). Its `output_dir` may be empty (the run
            starts), hold a run waiting for labels, or a run stopped anywhere (it continues).
        url, token (`str`, *optional*): The server and API token (default: `$LABEL_STUDIO_URL`,
            `$LABEL_STUDIO_API_KEY`; later rounds default to the project's recorded address).
        document_root (`str` or `os.PathLike`, *optional*): The server's `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`
            (see [`push_query`]).
        title (`str`, *optional*): The project title (default: `PruneFuse <run folder name>`).
        poll_interval (`float`, *optional*, defaults to 30): Seconds between two looks at the project.
        resolve (`str` or `None`, *optional*): How answers that disagree become one label (`"ground_truth"`,
            `"majority"`, `"latest"`; boxes and masks: `"ground_truth"`, `"latest"`), or `None` to
            wait until they are fixed in Label Studio. Defaults to the run's `annotation_resolve`.
        requery_skipped (`bool`, *optional*, defaults to `False`): Let later rounds query skipped images again.
        retry_for (`float`, *optional*, defaults to 1800): Seconds the server may stay unreachable (tried again
            with backoff) before the loop gives up; the run is whole either way.
        webhook_port (`int`, *optional*): Listen on this port for Label Studio's webhook: it is registered on the
            project (and removed on exit), and every annotation created, updated or deleted wakes the loop at once;
            polling goes on beside it, every `poll_interval` seconds. Default: polling only.
        webhook_host (`str`, *optional*, defaults to `"127.0.0.1"`): The address the webhook server listens on,
            which Label Studio must reach (this machine's address on the server's network when they differ).
        report (`Callable[[str], None]`, *optional*): Receives each message (progress of a round, conflicts,
            retries); default: this module's logger. The CLI prints them.

    Returns:
        [`~transformers.trainer_utils.TrainOutput`]: the last `trainer.train` call's output (the final model's,
        once the run is finished).

    Raises:
        LabelError: Label Studio refused a call (a bad token, a refused request), the labels were refused for
            another reason than a disagreement, or the server stayed unreachable for `retry_for` seconds
            ([`LabelStudioUnreachable`]). The run directory is whole: call again to pick up.
        KeyboardInterrupt: the same; nothing is lost.

    Example:

    ```python
    >>> trainer = PruneFuseTrainer(model, args=PruneFuseConfig(..., annotation="human"), train_dataset=pool)
    >>> label_studio_loop(trainer, url="http://localhost:8080", poll_interval=10)
    >>> trainer.done
    True
    ```
    """
    say = report or logger.info
    policy = getattr(trainer.args, "annotation_resolve", None) if resolve is _RUN_POLICY else resolve
    retry = _Retry(say, retry_for)
    run_dir = trainer.run_dir.path
    # A run directory that holds a run is continued; an empty one starts the run.
    resume = trainer.run_dir.state_path.is_file()
    webhook = _Webhook(webhook_host, webhook_port, token, say) if webhook_port is not None else None
    try:
        while True:
            output = trainer.train(resume_from_checkpoint=True if resume else None)
            resume = True
            round_ = trainer.awaiting_labels
            if trainer.done or round_ is None:  # finished, or stopped by a callback: so is the loop
                return output
            _label_round(trainer, round_, retry, say, url=url, token=token, document_root=document_root,
                         title=title, poll_interval=poll_interval, policy=policy,
                         requery_skipped=requery_skipped, webhook=webhook)  # fmt: skip
    except KeyboardInterrupt:
        say(f"Stopped. The run in {run_dir} is whole: start the loop again to pick up where it was.")
        raise
    finally:
        if webhook is not None:
            webhook.close()


def _label_round(trainer, round_: int, retry: _Retry, say, *, url, token, document_root, title, poll_interval,
                 policy, requery_skipped, webhook: _Webhook | None) -> None:  # fmt: skip
    """Push the round, wait until every task is answered or skipped, then ingest its labels."""
    run_dir = trainer.run_dir.path

    def push() -> dict:
        return push_query(run_dir, url=url, token=token, document_root=document_root, title=title)

    pushed = retry("sending the query", push)
    say(
        f"round {round_}: {pushed['imported']} tasks sent to {pushed['project_url']} ({pushed['already']} were "
        f"already there); waiting for the annotators"
    )
    record = project_record(run_dir)
    client = retry("connecting", lambda: LabelStudioClient(record["url"], token))
    project = record["project"]
    task_ids = retry("listing the round's tasks", lambda: _round_task_ids(client, project, round_))
    if webhook is not None:
        retry("registering the webhook", lambda: webhook.register(client, project))
    users: dict[int, str] = {}
    shown, conflicts = None, None
    said: set[str] = set()

    # Labels of earlier rounds edited after their pull: said once per round, not at every poll.
    def say_once(message: str) -> None:
        if message not in said:
            said.add(message)
            say(message)

    while True:
        progress = retry(
            "polling the project", partial(_round_progress, client, project, round_, task_ids, users)
        )
        if progress.missing:
            say(
                f"round {round_}: {progress.missing} tasks were deleted from the project; importing them again"
            )
            retry("sending the query", push)
            task_ids = retry("listing the round's tasks", lambda: _round_task_ids(client, project, round_))
            continue
        if progress.describe() != shown:
            shown = progress.describe()
            say(shown)
        if progress.complete:
            export = retry(
                "pulling the export",
                lambda: pull_export(
                    run_dir, url=client.url, token=token, report=say_once, answers=trainer.task.stored_answers
                ),
            )
            try:
                result = trainer.add_labels(export, resolve=policy, requery_skipped=requery_skipped)
            except AnswersDisagree as error:
                if error.conflicts != conflicts:  # said once per state of the conflicts
                    conflicts = error.conflicts
                    say(_describe_conflicts(round_, error.conflicts, pushed["project_url"]))
            else:
                say(
                    f"round {round_}: {result.added} labels added, {result.skipped.size} skipped; resuming the run"
                )
                return
        if webhook is not None:
            webhook.wait(poll_interval)
        else:
            time.sleep(poll_interval)


def _describe_conflicts(round_: int, conflicts: list[str], project_url: str) -> str:
    tasks = "\n".join(f"  {line}" for line in conflicts)
    return (
        f"round {round_}: {len(conflicts)} tasks have answers that disagree (no resolve policy):\n{tasks}\n"
        f"Fix them in Label Studio ({project_url}): delete or correct the wrong answer. Or set annotation_resolve "
        "(ground_truth, latest; majority for class labels) and start the loop again. Waiting."
    )


def _round_task_ids(client: LabelStudioClient, project: int, round_: int) -> set[int]:
    return {task["id"] for task in client.tasks(project) if task.get("data", {}).get("round") == round_}


def _round_progress(
    client: LabelStudioClient, project: int, round_: int, task_ids: set[int], users: dict[int, str]
) -> RoundProgress:
    # Only the counts and the annotators: a task's data may carry its whole image.
    tasks = [t for t in client.tasks(project, fields="all", include=_POLLED_FIELDS) if t["id"] in task_ids]
    progress = RoundProgress(round_, len(task_ids), missing=len(task_ids) - len(tasks))
    seen = set()
    for task in tasks:
        if task.get("total_annotations"):
            progress.annotated += 1
        elif task.get("cancelled_annotations"):
            progress.skipped += 1
        seen.update(task.get("annotators") or [])
    if seen - set(users):
        users.update(client.users())
    progress.annotators = sorted(users.get(who, str(who)) for who in seen)
    return progress


class _Webhook:
    """A small HTTP server whose every request (Label Studio's webhook) wakes the loop, and its registration on the
    project (once; one left behind by a loop that was killed is replaced)."""

    def __init__(self, host: str, port: int, token: str | None, say):
        self.woken = threading.Event()
        self.url = f"http://{host}:{port}/"
        self.token, self.say = token, say
        self.registered: tuple[str, int, int] | None = None  # server, project, webhook id
        self.refused = False
        woken = self.woken

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.end_headers()
                woken.set()

            do_GET = do_POST

            def log_message(self, *args):  # every annotation: not worth a line
                pass

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as error:
            raise OSError(
                f"The webhook server cannot listen on {host}:{port} ({error}): choose another port."
            ) from error
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def register(self, client: LabelStudioClient, project: int) -> None:
        if self.registered is not None and self.registered[:2] == (client.url, project):
            return
        if self.refused:
            return
        try:
            for hook in client.get("/api/webhooks/", params={"project": project}):
                if hook.get("url") == self.url and hook.get("project") == project:
                    client.request("DELETE", f"/api/webhooks/{hook['id']}/")
            hook = client.post(
                "/api/webhooks/",
                {"project": project, "url": self.url, "send_payload": False, "send_for_all_actions": False,
                 "actions": _WEBHOOK_ACTIONS, "is_active": True},
            )  # fmt: skip
        except LabelStudioUnreachable:
            raise
        except LabelError as error:
            # Label Studio refuses webhooks to loopback and private addresses unless started with
            # SSRF_PROTECTION_ENABLED=false: the loop polls instead of stopping.
            self.refused = True
            self.say(
                f"Label Studio refused the webhook to {self.url} ({error}). A server that should call this machine "
                "on a local or private address needs SSRF_PROTECTION_ENABLED=false at its start. Polling only."
            )
            return
        self.registered = (client.url, project, hook["id"])
        self.say(
            f"Label Studio's webhook for project {project} calls {self.url}: the loop wakes at every answer."
        )

    def wait(self, timeout: float) -> None:
        self.woken.wait(timeout)
        self.woken.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.registered is None:
            return
        url, project, hook = self.registered
        try:
            LabelStudioClient(url, self.token, timeout=10).request("DELETE", f"/api/webhooks/{hook}/")
        except LabelError as error:
            self.say(
                f"The webhook {hook} of project {project} stays registered ({error}); the next loop replaces it."
            )


class _Retry:
    """Runs a call to Label Studio, trying again with backoff while the server cannot be reached, for at most
    `retry_for` seconds in a row; says each failed try and the recovery."""

    def __init__(self, say, retry_for: float):
        self.say, self.retry_for = say, retry_for

    def __call__(self, what: str, call):
        since, delay = None, _BACKOFF_START
        while True:
            try:
                result = call()
            except LabelStudioUnreachable as error:
                now = time.monotonic()
                since = now if since is None else since
                if now - since >= self.retry_for:
                    raise LabelStudioUnreachable(
                        f"{error} Gave up {what} after {now - since:.0f} s of tries. Nothing is lost: once the server "
                        "answers, start the loop again (it picks up where it was)."
                    ) from error
                delay = min(delay, max(self.retry_for - (now - since), 0.1))
                self.say(f"{error} Trying again in {delay:.0f} s ({what}; unreachable for {now - since:.0f} s, "
                         f"giving up after {self.retry_for:.0f} s).")  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            if since is not None:
                self.say(f"Label Studio answers again ({what}).")
            return result
