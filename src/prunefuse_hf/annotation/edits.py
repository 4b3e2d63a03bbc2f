"""Labels changed in Label Studio after the run stored them: the answers a run stored from its Label Studio project
(class labels, or a task's own, such as object detection's boxes) compared with the project's export at each pull.

A task says how its stored answers and Label Studio's annotations compare with a [`StoredAnswers`] (its
`stored_answers`): the store file, how to read an answer from a stored row and from an annotation, when two answers
are the same, and how to name one in a message. [`CLASS_ANSWERS`] is image classification's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from ..constants import LABEL_STUDIO_EXPORT, LABELS_NAME, POOL_INDEX
from .label_studio import annotation_class
from .queries import query_directory, read_run_state


@dataclass(frozen=True)
class StoredAnswers:
    """
    How the answers a task stores from Label Studio compare with the annotations of its project.

    Args:
        file_name (`str`): The store under the run directory (a parquet file with one row per labeled pool index and
            the columns `pool_index`, `round`, `labeled_at`, `annotator`, `annotation_id`).
        stored (`Callable[[dict, list[str]], object]`): `stored(row, class_names)`: the answer of a stored row.
        answer (`Callable[[dict, list[str]], object]`): `answer(annotation, class_names)`: the answer of a Label
            Studio annotation, or `None` when it holds none that can be read (a skip, another kind of result).
        same (`Callable[[object, object], bool]`): Whether two answers are the same label.
        describe (`Callable[[object, list[str]], str]`): `describe(answer, class_names)`: an answer, as a message
            names it.
        retrain (`str`): How to train on the new answers, for the message.

    Example:

    ```python
    >>> CLASS_ANSWERS.same("Cat", "cat"), CLASS_ANSWERS.describe("cat", ["cat", "dog"])
    (True, "'cat'")
    ```
    """

    file_name: str
    stored: Callable
    answer: Callable
    same: Callable
    describe: Callable
    retrain: str = "start a new run with the corrected labels as its seed_labels"


CLASS_ANSWERS = StoredAnswers(
    file_name=LABELS_NAME,
    stored=lambda row, names: names[row["label"]] if 0 <= row["label"] < len(names) else row["label"],
    answer=lambda annotation, names: annotation_class(annotation),
    same=lambda a, b: str(a).casefold() == str(b).casefold(),
    describe=lambda answer, names: repr(answer),
)


def label_edits(
    run_dir: str | os.PathLike,
    exported: list[dict],
    users: dict[int, str] | None = None,
    *,
    answers: StoredAnswers | None = None,
) -> list[str]:
    """
    The labels stored from Label Studio that its project no longer agrees with: for each, one line naming the task,
    the pool index and round, the stored answer and who gave it, and what changed since it was stored (its
    annotation edited or deleted, or another answer given since, that differs).

    "Since" is judged against the export the run pulled for that round (`queries/round_K/label_studio_export.json`):
    an answer is new or edited when its annotation id is not in that export or its `updated_at` differs from the
    one pulled, so the server's and this machine's clocks never need to agree. For labels ingested from an export
    file downloaded by hand (no pulled export for the round), an answer counts as later when Label Studio dated it
    at least a second after the label was stored (`labeled_at` has whole seconds).

    Args:
        run_dir (`str` or `os.PathLike`): The run.
        exported (`list[dict]`): The project's JSON export (every task, with `completed_by` as user objects or ids).
        users (`dict[int, str]`, *optional*): `{user id: e-mail}`, to name who edited an answer.
        answers ([`StoredAnswers`], *optional*): How the run's task stores answers (object detection's boxes:
            `get_task("object-detection").stored_answers`); default: class labels ([`CLASS_ANSWERS`]).

    Returns:
        `list[str]`: one line per changed label (empty when nothing changed).

    Example:

    ```python
    >>> label_edits("runs/annotated", exported)[0]  # doctest: +SKIP
    "task 31 (pool_index 2, round 1): stored 'circle' by a@x (annotation 10); since then edited to 'cross' by ..."
    ```
    """
    import pyarrow.parquet as pq

    answers = answers or CLASS_ANSWERS
    path = Path(run_dir) / answers.file_name
    if not path.is_file():
        return []
    users = users or {}
    class_names = read_run_state(run_dir).get("class_names") or []
    tasks = {}
    for task in exported:
        data = task.get("data") or {}
        if "round" in data and POOL_INDEX in data:
            tasks[(data["round"], data[POOL_INDEX])] = task
    edits, pulled = [], {}
    for row in pq.read_table(path).to_pylist():
        task = tasks.get((row["round"], row[POOL_INDEX]))
        if row.get("annotation_id") is None or task is None:
            continue  # not from this Label Studio project
        if row["round"] not in pulled:
            pulled[row["round"]] = _pulled_answers(run_dir, row["round"])
        as_pulled = (pulled[row["round"]] or {}).get(row[POOL_INDEX])
        stored = answers.stored(row, class_names)
        stored_at = _moment(row["labeled_at"])
        annotations = {a.get("id"): a for a in task.get("annotations") or []}
        changes = []
        if row["annotation_id"] not in annotations:
            changes.append(f"annotation {row['annotation_id']} was deleted")
        for annotation in annotations.values():
            answer = answers.answer(annotation, class_names)
            if answer is None or answers.same(answer, stored):
                continue
            if as_pulled is not None:
                if as_pulled.get(annotation.get("id"), _NOT_PULLED) == annotation.get("updated_at"):
                    continue  # this answer was in the pulled export as it is now
            else:
                when = _moment(annotation.get("updated_at") or annotation.get("created_at"))
                if not when or not stored_at or when < stored_at + timedelta(seconds=1):
                    continue
            who = annotation.get("updated_by") or annotation.get("completed_by")
            who = who.get("email") if isinstance(who, dict) else users.get(who, who)
            verb = "edited to" if annotation.get("id") == row["annotation_id"] else "answered"
            changes.append(f"{verb} {answers.describe(answer, class_names)} by {who} (annotation {annotation.get('id')}, "
                           f"{annotation.get('updated_at')})")  # fmt: skip
        if changes:
            edits.append(
                f"task {task.get('id')} (pool_index {row[POOL_INDEX]}, round {row['round']}): stored "
                f"{answers.describe(stored, class_names)} by {row.get('annotator')} (annotation {row['annotation_id']}); since "
                "then " + "; ".join(changes)
            )
    return edits


def describe_edits(run_dir: str | os.PathLike, edits: list[str], answers: StoredAnswers | None = None) -> str:
    """The message of [`label_edits`]' lines: what changed, that the stored labels stay, and what to do."""
    answers = answers or CLASS_ANSWERS
    lines = "\n".join(f"  {line}" for line in edits)
    return (
        f"{len(edits)} labels of earlier rounds were changed in Label Studio after they were pulled:\n{lines}\n"
        f"The stored labels stay: the rounds trained so far used them, and the run in {run_dir} keeps them (a label "
        f"it used is never replaced behind its back). To train on the new answers, {answers.retrain}; to silence this "
        "message, restore the answers in Label Studio."
    )


_NOT_PULLED = object()


def _pulled_answers(run_dir: Path, round_: int) -> dict[int, dict] | None:
    """`{pool index: {annotation id: updated_at}}` of the export pulled for `round_`, or `None` when that round's
    labels did not come through `pull_export` here."""
    path = query_directory(run_dir, round_) / LABEL_STUDIO_EXPORT
    try:
        tasks = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    answers = {}
    for task in tasks if isinstance(tasks, list) else []:
        index = (task.get("data") or {}).get(POOL_INDEX)
        if index is not None:
            answers[index] = {a.get("id"): a.get("updated_at") for a in task.get("annotations") or []}
    return answers


def _moment(text):
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
