"""Label Studio: the labeling config written with every query, and reading its exports (JSON tasks with
annotations, and the flat JSON_MIN / CSV rows) into label rows.

A task may hold several annotations (several annotators): answers that agree make one label; answers that
disagree are refused unless a policy (`RESOLUTIONS`) decides. Cancelled annotations are skips: a task with
only skips is listed as skipped, not labeled. Classes are read from `Choices`, single-level `Taxonomy` and
`Labels` results; any other result is refused naming its tag.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from ..constants import (
    ANNOTATION_COLUMNS,
    LABEL_STUDIO_TASKS,
    POOL_INDEX,
    RESOLUTIONS,
)
from .labels import (
    LabelError,
    LabelRows,
    image_references,
    truthy,
)

_CLASS_TYPES = ("choices", "taxonomy", "labels")


@dataclass
class _Answer:
    """One non-cancelled annotation's class, with who gave it and when."""

    label: object
    annotator: str | None
    annotation_id: int | None
    ground_truth: bool
    stamp: str
    order: int

    @property
    def key(self) -> str:
        # Answers are compared as written ("Dog" and "dog" agree); class names are checked later, once.
        return json.dumps(self.label, sort_keys=True).strip().casefold()


def _annotator(value) -> str | None:
    """Who answered: Label Studio exports `completed_by` as a user id, or as a user object in older versions."""
    if isinstance(value, dict):
        return value.get("email") or value.get("username") or (str(value["id"]) if "id" in value else None)
    return None if value is None or value == "" else str(value)


def _resolve(answers: list[_Answer], policy: str | None) -> tuple[_Answer, str] | None:
    """The answer kept for one task and how it was chosen; None when answers disagree and `policy` cannot decide."""
    latest = max(answers, key=lambda a: (a.stamp, a.order))
    if len(answers) == 1:
        return latest, "single"
    truths = [a for a in answers if a.ground_truth]
    if len({a.key for a in answers}) == 1:
        return (max(truths, key=lambda a: (a.stamp, a.order)) if truths else latest), "agreed"
    if policy == "latest":
        return latest, "latest"
    if policy == "majority":
        (top, n), *rest = Counter(a.key for a in answers).most_common()
        if not rest or rest[0][1] < n:
            return max((a for a in answers if a.key == top), key=lambda a: (a.stamp, a.order)), "majority"
    # A tie under "majority" is decided by ground truth, like the "ground_truth" policy.
    if policy in ("ground_truth", "majority") and truths and len({a.key for a in truths}) == 1:
        return max(truths, key=lambda a: (a.stamp, a.order)), "ground_truth"
    return None


def _check_policy(policy: str | None) -> str | None:
    if policy is not None and policy not in RESOLUTIONS:
        raise LabelError(
            f"resolve must be one of {list(RESOLUTIONS)} (or None to refuse disagreements), got {policy!r}."
        )
    return policy


class AnswersDisagree(LabelError):
    """Annotators' answers to some tasks disagree and the resolve policy does not decide; `conflicts` describes each
    such task with its answers (one line each)."""

    def __init__(self, message: str, conflicts: list[str]):
        super().__init__(message)
        self.conflicts = conflicts


def _disagreement_error(
    name: str, conflicts: list[tuple[str, list[_Answer]]], policy: str | None
) -> AnswersDisagree:
    described = [
        f"{where}: "
        + ", ".join(
            f"{a.label!r} by {a.annotator or 'unknown'} (annotation {a.annotation_id}"
            + (", ground truth" if a.ground_truth else "")
            + ")"
            for a in answers
        )
        for where, answers in conflicts
    ]
    shown = "; ".join(described[:5]) + (f"; and {len(conflicts) - 5} more" if len(conflicts) > 5 else "")
    why = {
        None: "",
        "ground_truth": " No annotation (or more than one that disagree) is marked ground truth there.",
        "majority": " No answer has a majority there (a tie), and no ground truth decides it.",
    }[policy]
    return AnswersDisagree(
        f"{name}: {len(conflicts)} tasks have answers that disagree: {shown}.{why} Resolve them in Label Studio "
        "(mark one annotation as ground truth, or delete the wrong one) and export again, or choose a policy: "
        f"resolve={'|'.join(RESOLUTIONS)} (CLI: --resolve).",
        described,
    )


def _class_answer(annotation: dict, label_column, where: str):
    """The class of one annotation (a Choices, single-level Taxonomy or Labels result), or None."""
    results = [r for r in annotation.get("result") or [] if label_column in (None, r.get("from_name"))]
    classes = [r for r in results if r.get("type") in _CLASS_TYPES]
    if not classes:
        others = sorted({f"{r.get('type')} {r.get('from_name')!r}" for r in results})
        if others:
            raise LabelError(
                f"{where}: the answer is a {', '.join(others)} result, not an image class. PruneFuse reads a "
                "Choices, a single-level Taxonomy or a Labels tag: use the labeling config PruneFuse writes "
                "(label_studio_config.xml), or pass label_column=<the name of the class tag> (CLI: --label_column)."
            )
        return None
    tags = sorted({f"{r.get('type')} {r.get('from_name')!r}" for r in classes})
    if len(tags) > 1:
        raise LabelError(
            f"{where} holds several class results ({', '.join(tags)}). Pass label_column=<the name of the class "
            "tag> (CLI: --label_column)."
        )
    values = []
    for result in classes:
        kind, value = result["type"], result.get("value") or {}
        if kind == "taxonomy":
            for path in value.get("taxonomy") or []:
                if len(path) != 1:
                    raise LabelError(
                        f"{where}: Taxonomy {result.get('from_name')!r} answer {path} has {len(path)} levels; "
                        "PruneFuse reads a single-level Taxonomy (one class per answer). Use a flat Taxonomy or "
                        "Choices."
                    )
                values.append(path[0])
        else:
            values.extend(value.get(kind) or [])
    values = list(dict.fromkeys(values))
    if len(values) > 1:
        raise LabelError(
            f'{where}: more than one choice {values}. Keep one class per image (choice="single" in the labeling '
            "config) and export again."
        )
    return values[0] if values else None


def annotation_class(annotation: dict, label_column=None):
    """The class one Label Studio annotation answers, or `None` (a skip, no class result, or an answer PruneFuse
    cannot read as one class)."""
    if truthy(annotation.get("was_cancelled")) or truthy(annotation.get("skipped")):
        return None
    try:
        return _class_answer(annotation, label_column, f"annotation {annotation.get('id')}")
    except LabelError:
        return None


def is_label_studio_tasks(items: list[dict]) -> bool:
    """Whether JSON items are Label Studio tasks (each holds a `data` dict), not a flat annotation export."""
    return all(isinstance(item.get("data"), dict) for item in items)


def rows_from_label_studio(
    tasks: list[dict], name: str, label_column, index_column, resolve=None
) -> LabelRows:
    """Rows of a Label Studio JSON export: one per task with a class answer, resolved over its annotations;
    tasks whose every annotation was cancelled (skipped) are listed apart."""
    resolve = _check_policy(resolve)
    index_key = index_column or POOL_INDEX
    rows = LabelRows([], [], None, len(tasks), {key: [] for key in ANNOTATION_COLUMNS}, references=[])
    positions, conflicts = [], []

    def describe_task(j: int) -> str:
        task_id = tasks[j].get("id")
        return (
            f"Label Studio task {task_id} (item {j})"
            if task_id is not None
            else f"Label Studio task at item {j}"
        )

    for j, task in enumerate(tasks):
        data = task["data"]
        if index_key not in data:
            raise LabelError(
                f"{name}: {describe_task(j)} has no data.{index_key}; data fields found: {list(data)}. Import the "
                f"tasks from PruneFuse's {LABEL_STUDIO_TASKS} (its data carries {POOL_INDEX!r}), or pass "
                "index_column=<the data field that holds the pool index> (CLI: --index_column)."
            )
        annotations = task.get("annotations", task.get("completions")) or []
        answers, cancelled = [], 0
        for k, annotation in enumerate(annotations):
            if truthy(annotation.get("was_cancelled")) or truthy(annotation.get("skipped")):
                cancelled += 1
                continue
            where = f"{name}, {describe_task(j)}, annotation {annotation.get('id')}"
            label = _class_answer(annotation, label_column, where)
            if label is not None:
                answers.append(_Answer(label, _annotator(annotation.get("completed_by")), annotation.get("id"),
                                       truthy(annotation.get("ground_truth")),
                                       str(annotation.get("updated_at") or annotation.get("created_at") or ""), k))  # fmt: skip
        if not answers:
            if cancelled:
                rows.skipped.append(data[index_key])
            continue
        resolved = _resolve(answers, resolve)
        if resolved is None:
            conflicts.append((f"{describe_task(j)} ({index_key} {data[index_key]})", answers))
            continue
        _append(rows, data[index_key], resolved, len(answers))
        rows.references.append(image_references(data))
        positions.append(j)
    if conflicts:
        raise _disagreement_error(name, conflicts, resolve)
    rows.describe = lambda k: describe_task(positions[k])
    return rows


def _append(rows: LabelRows, index, resolved: tuple[_Answer, str], num_answers: int) -> None:
    answer, how = resolved
    rows.indices.append(index)
    rows.labels.append(answer.label)
    rows.details["annotator"].append(answer.annotator)
    rows.details["annotation_id"].append(None if answer.annotation_id is None else int(answer.annotation_id))
    rows.details["num_answers"].append(num_answers)
    rows.details["resolution"].append(how)


def rows_from_flat_annotations(records: list[dict], name: str, describe, label_column: str, index_column: str,
                                resolve=None) -> LabelRows:  # fmt: skip
    """Rows of a Label Studio JSON_MIN/CSV export (one record per non-cancelled annotation): grouped by pool
    index and resolved like the JSON export, except that these formats carry no ground truth and no skips."""
    resolve = _check_policy(resolve)
    groups: dict[str, list[tuple[int, _Answer]]] = {}
    for j, record in enumerate(records):
        if truthy(record.get("was_cancelled")):
            continue
        label = record.get(label_column)
        if label is None or (isinstance(label, str) and not label.strip()):
            continue
        annotation_id = record.get("annotation_id")
        answer = _Answer(label, _annotator(record.get("annotator")),
                         int(annotation_id) if str(annotation_id or "").strip().isdigit() else None, False,
                         str(record.get("updated_at") or record.get("created_at") or ""), j)  # fmt: skip
        groups.setdefault(str(record.get(index_column)).strip(), []).append((j, answer))
    rows = LabelRows([], [], None, len(records), {key: [] for key in ANNOTATION_COLUMNS}, references=[])
    positions, conflicts = [], []
    for key, group in groups.items():
        answers = [answer for _, answer in group]
        resolved = _resolve(answers, resolve)
        if resolved is None:
            conflicts.append((f"{describe(group[0][0])} ({index_column} {key})", answers))
            continue
        _append(rows, records[group[0][0]].get(index_column), resolved, len(answers))
        rows.references.append(image_references(records[resolved[0].order]))
        positions.append(resolved[0].order)
    if conflicts:
        raise _disagreement_error(name, conflicts, resolve)
    rows.describe = lambda k: describe(positions[k])
    return rows


def label_studio_config(class_names: list[str]) -> str:
    """
    A Label Studio labeling config for single-label image classification.

    Args:
        class_names (`list[str]`): The class names, in id order.

    Returns:
        `str`: the XML; its `<Choices name="label">` makes exports carry the class name in a `label` field.

    Example:

    ```python
    >>> print(label_studio_config(["cat", "dog"]))  # doctest: +NORMALIZE_WHITESPACE
    <View>
      <Image name="image" value="$image"/>
      <Choices name="label" toName="image" choice="single" showInLine="true">
        <Choice value="cat"/>
        <Choice value="dog"/>
      </Choices>
    </View>
    ```
    """
    choices = "".join(f"    <Choice value={quoteattr(name)}/>\n" for name in class_names)
    return (
        "<View>\n"
        '  <Image name="image" value="$image"/>\n'
        '  <Choices name="label" toName="image" choice="single" showInLine="true">\n'
        f"{choices}"
        "  </Choices>\n"
        "</View>\n"
    )


def label_studio_prediction(class_name: str, score: float, model_version: str | None) -> dict:
    """
    A Label Studio prediction (pre-annotation) of one image's class, for the config of [`label_studio_config`].

    Args:
        class_name (`str`): The predicted class.
        score (`float`): The model's probability of it.
        model_version (`str`, *optional*): Names the model, e.g. `"<run>-round2"`.

    Returns:
        `dict`: `{"model_version", "score", "result": [<a choices result on "label">]}`.

    Example:

    ```python
    >>> label_studio_prediction("dog", 0.8, "demo-round2")["result"][0]["value"]
    {'choices': ['dog']}
    ```
    """
    return {
        "model_version": model_version or "prunefuse",
        "score": round(float(score), 4),
        "result": [
            {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [class_name]}}
        ],
    }
