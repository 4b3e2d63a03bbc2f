"""Label Studio: the labeling config written with every query, and reading its exports (JSON tasks with
annotations, and the flat JSON_MIN / CSV rows) into label rows."""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from ..constants import (
    LABEL_STUDIO_TASKS,
    POOL_INDEX,
)
from .labels import (
    LabelError,
    _Rows,
    _truthy,
)


def _latest_flat_annotations(records: list[dict], index_column: str) -> list[int]:
    """Positions of the rows to keep in a Label Studio JSON_MIN/CSV export: one row per annotation there, so
    keep, per task, the most recent annotation that was not cancelled (the last one on a tie)."""
    latest: dict[str, tuple[str, int]] = {}
    for j, record in enumerate(records):
        if _truthy(record.get("was_cancelled")):
            continue
        key = str(record.get(index_column)).strip()
        stamp = str(record.get("updated_at") or record.get("created_at") or "")
        if key not in latest or (stamp, j) >= latest[key]:
            latest[key] = (stamp, j)
    return sorted(j for _, j in latest.values())


def _is_label_studio_tasks(items: list[dict]) -> bool:
    return all(isinstance(item.get("data"), dict) for item in items)


def _rows_from_label_studio(tasks: list[dict], name: str, label_column, index_column) -> _Rows:
    index_key = index_column or POOL_INDEX
    indices, labels, positions = [], [], []

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
        annotation = _latest_annotation(task.get("annotations", task.get("completions")) or [])
        if annotation is None:
            continue
        results = [
            result
            for result in annotation.get("result") or []
            if result.get("type") == "choices" and label_column in (None, result.get("from_name"))
        ]
        if not results:
            continue
        if len(results) > 1:
            from_names = [result.get("from_name") for result in results]
            raise LabelError(
                f"{name}: {describe_task(j)} holds several Choices results ({from_names}). Pass "
                "label_column=<the from_name of the class choice>."
            )
        choices = (results[0].get("value") or {}).get("choices") or []
        if len(choices) > 1:
            raise LabelError(
                f"{name}: {describe_task(j)}, annotation {annotation.get('id')}: more than one choice {choices}. "
                'Keep one class per image (choice="single" in the labeling config) and export again.'
            )
        if not choices:
            continue
        indices.append(data[index_key])
        labels.append(choices[0])
        positions.append(j)
    return _Rows(indices, labels, lambda k: describe_task(positions[k]), len(tasks))


def _latest_annotation(annotations: list[dict]) -> dict | None:
    """The most recent annotation that was not cancelled (by updated_at, then created_at, then list order)."""
    kept = [
        (str(a.get("updated_at") or a.get("created_at") or ""), j, a)
        for j, a in enumerate(annotations)
        if not (_truthy(a.get("was_cancelled")) or _truthy(a.get("skipped")))
    ]
    return max(kept, key=lambda item: item[:2])[2] if kept else None


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
