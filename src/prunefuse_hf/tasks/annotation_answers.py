"""People's answers per image, shared by the readers of boxes ([`read_detection_labels`]) and masks
([`read_segmentation_labels`]): how several answers to one image become one ([`resolve_answers`]), the error that
names the images whose answers disagree ([`answers_disagree`], which `label-studio loop` says and waits on), and the
split of an export's images into the answers kept and the images skipped ([`kept_answers`]).

The rule is classification's: answers that agree are one answer; otherwise `resolve="latest"` keeps the newest,
`resolve="ground_truth"` the one marked ground truth (several marked ones must agree), and `None` refuses, naming them.
"""

from __future__ import annotations

from collections.abc import Callable

from ..annotation.label_studio import AnswersDisagree
from ..annotation.labels import LabelError
from ..constants import POOL_INDEX

ANSWER_RESOLUTIONS = ("ground_truth", "latest")


def resolve_answers(answers: list, policy: str | None, same: Callable) -> tuple | None:
    """
    One image's answer: `(answer, how)` with `how` in `single`, `agreed`, `latest`, `ground_truth`, or `None` when
    its answers differ and `policy` does not decide.

    Args:
        answers (`list`): The image's answers (each with `ground_truth`, `stamp` and `order`: newest is the largest
            `(stamp, order)`).
        policy (`str`, *optional*): `None`, `"ground_truth"` or `"latest"`.
        same (`Callable`): `same(a, b) -> bool`: whether two answers say the same (boxes, masks).

    Example:

    ```python
    >>> resolve_answers([answer], None, same_boxes)[1]
    'single'
    ```
    """
    newest = lambda group: max(group, key=lambda a: (a.stamp, a.order))  # noqa: E731
    if len(answers) == 1:
        return answers[0], "single"
    truths = [a for a in answers if a.ground_truth]
    if all(same(a, answers[0]) for a in answers[1:]):
        return newest(truths or answers), "agreed"
    if policy == "latest":
        return newest(answers), "latest"
    if policy == "ground_truth" and truths and all(same(a, truths[0]) for a in truths[1:]):
        return newest(truths), "ground_truth"
    return None


def answers_disagree(name: str, conflicts: list, policy: str | None, *, what: str, describe: Callable,
                     note: str | None = None) -> AnswersDisagree:  # fmt: skip
    """
    The error naming the images of `conflicts` whose answers differ: one line per image (its place, pool index and
    each answer as `describe(answer)` says it), then how to fix them.

    Args:
        name (`str`): The source.
        conflicts (`list`): The images (`ImageAnswers`).
        policy (`str`, *optional*): The policy that did not decide.
        what (`str`): What the answers hold (`"boxes"`, `"masks"`).
        describe (`Callable`): `describe(answer) -> str`.
        note (`str`, *optional*): Said instead of the default reason a policy did not decide.

    Returns:
        [`AnswersDisagree`]: its `conflicts` are the lines, one per image.
    """
    described = [f"{image.place} ({POOL_INDEX} {image.pool_index}): " + ", ".join(map(describe, image.answers))
                 for image in conflicts]  # fmt: skip
    shown = "; ".join(described[:5]) + (f"; and {len(conflicts) - 5} more" if len(conflicts) > 5 else "")
    if note is None:
        note = " No annotation (or more than one that differ) is marked ground truth there." if policy else ""
    return AnswersDisagree(
        f"{name}: {len(conflicts)} images have several answers with different {what}: {shown}.{note} Resolve them in "
        "Label Studio (mark one annotation as ground truth, or delete the others) and export again, or choose a "
        f"policy: resolve={'|'.join(ANSWER_RESOLUTIONS)} (CLI: --resolve).",
        described,
    )


def kept_answers(images: list, name: str, policy: str | None, *, same: Callable, disagree: Callable,
                 pool_size: int | None = None) -> tuple[list, list]:  # fmt: skip
    """
    The answers an export gives: `(kept, skipped)`, `kept` a list of `(image, answer, how)` (one per pool index),
    `skipped` the sorted pool indices whose every answer was cancelled and that no other task answers.

    Args:
        images (`list`): The export's `ImageAnswers`.
        name (`str`): The source, in messages.
        policy (`str`, *optional*): How answers that differ become one (see [`resolve_answers`]).
        same (`Callable`): Whether two answers say the same.
        disagree (`Callable`): `disagree(conflicts) -> Exception`: the error raised when some images' answers differ.
        pool_size (`int`, *optional*): Pool indices must be below it.

    Raises:
        LabelError: answers that differ (`disagree`'s error), a pool index labeled twice or outside the pool.
    """
    kept, conflicts, skipped = [], [], []
    for image in images:
        if not image.answers:
            skipped.append(image.pool_index)
            continue
        resolved = resolve_answers(image.answers, policy, same)
        if resolved is None:
            conflicts.append(image)
        else:
            kept.append((image, *resolved))
    if conflicts:
        raise disagree(conflicts)
    first: dict[int, str] = {}
    for image, _, _ in kept:
        if image.pool_index in first:
            raise LabelError(f"{name}: pool index {image.pool_index} is labeled twice ({first[image.pool_index]} and "
                             f"{image.place}). Keep one task per image and export again.")  # fmt: skip
        if pool_size is not None and not 0 <= image.pool_index < pool_size:
            raise LabelError(f"{name}, {image.place}: pool index {image.pool_index} is out of range; the pool has "
                             f"{pool_size} images. Are these the labels of another pool?")  # fmt: skip
        first[image.pool_index] = image.place
    return kept, sorted(set(skipped) - set(first))  # a skip beside another task's answer: labeled


def answer_details(kept: list) -> dict:
    """Per kept answer, `annotator`, `annotation_id`, `num_answers` and `resolution`, as the stores record them."""
    return {"annotator": [a.annotator for _, a, _ in kept], "annotation_id": [a.annotation_id for _, a, _ in kept],
            "num_answers": [len(image.answers) for image, _, _ in kept], "resolution": [how for _, _, how in kept]}  # fmt: skip
