"""The store of the boxes people gave (`RUN/labeled_objects.parquet`): added as a whole or not at all, read back by
`datasets`, never replaced silently, damaged files refused; boxes edited in Label Studio after they were pulled are
reported."""

import json

import datasets
import numpy as np
import pytest

from prunefuse_hf.annotation.edits import describe_edits, label_edits
from prunefuse_hf.annotation.labels import LabelError
from prunefuse_hf.annotation.queries import query_directory
from prunefuse_hf.tasks import DetectionLabels, DetectionLabelStore, get_task

DETECTION_ANSWERS = get_task("object-detection").stored_answers

CLASSES = ["cat", "dog", "bird"]
BOXES = {4: {"bbox": [[1.0, 2.0, 5.0, 5.0], [0.5, 0.5, 3.0, 2.0]], "category": [1, 2]},
         9: {"bbox": [], "category": []}}  # fmt: skip


def labels(boxes=BOXES, source="coco.json", **details):
    return DetectionLabels(list(boxes), list(boxes.values()), source=source, details=details or None)


def test_boxes_are_stored_read_back_by_datasets_and_not_written_twice(tmp_path):
    store = DetectionLabelStore(tmp_path, CLASSES)
    result = store.add(labels(annotator=["a@x", None], annotation_id=[3, None], num_answers=[1, None],
                              resolution=["single", None]), round=1, expected=[4, 9])  # fmt: skip
    assert (result.added, result.unchanged, result.overwritten) == (2, 0, 0)
    path = tmp_path / "labeled_objects.parquet"
    rows = datasets.Dataset.from_parquet(str(path))
    assert dict(zip(rows["pool_index"], rows["objects"])) == BOXES
    assert rows["annotator"] == ["a@x", None] and rows["round"] == [1, 1]
    assert DetectionLabelStore(tmp_path, CLASSES).annotations([9, 4]) == [BOXES[9], BOXES[4]]
    stamp = path.stat().st_mtime_ns
    again = DetectionLabelStore(tmp_path, CLASSES).add(labels(), round=1, expected=[4, 9])
    assert again.unchanged == 2 and path.stat().st_mtime_ns == stamp  # nothing new: the file is untouched


def test_refusals_store_nothing(tmp_path):
    store = DetectionLabelStore(tmp_path, CLASSES)
    with pytest.raises(LabelError, match=r"coco\.json: pool index 4 has class id \[7\] out of range"):
        store.add(labels({4: {"bbox": [[1, 1, 2, 2]], "category": [7]}}), round=1)
    with pytest.raises(LabelError, match=r"pool index 9 is not part of round 1's query"):
        store.add(labels(), round=1, expected=[4, 5])
    with pytest.raises(
        LabelError, match=r"1 of the 3 images queried in round 1 have no boxes.*allow_partial"
    ):
        store.add(labels(), round=1, expected=[4, 5, 9])
    assert not (tmp_path / "labeled_objects.parquet").exists()
    store.add(labels(), round=1)
    moved = {4: {"bbox": [[2.0, 2.0, 5.0, 5.0]], "category": [1]}}
    with pytest.raises(LabelError, match=r"pool index 4 already has boxes.*overwrite=True"):
        store.add(labels(moved, source="edited.json"), round=1)
    assert store.annotations([4]) == [BOXES[4]]
    assert store.add(labels(moved, source="edited.json"), round=1, overwrite=True).overwritten == 1
    assert DetectionLabelStore(tmp_path, CLASSES).annotations([4]) == [moved[4]]
    with pytest.raises(LabelError, match=r"holds class id 1 but the run has 1 classes"):
        DetectionLabelStore(tmp_path, CLASSES[:1])
    with pytest.raises(LabelError, match=r"holds no boxes for pool index 5"):
        store.annotations([5])
    (tmp_path / "labeled_objects.parquet").write_bytes(b"not parquet")
    with pytest.raises(LabelError, match="not a readable parquet file.*Restore it"):
        DetectionLabelStore(tmp_path, CLASSES)
    assert np.array_equal(store.labeled_indices, [4, 9])


def _box_task(annotations):
    """A Label Studio task of round 1, pool index 2, on a 40 x 20 image: `(id, [(class, x, y, w, h) px], updated_at)`."""

    def result(name, x, y, w, h):
        return {"type": "rectanglelabels", "from_name": "label", "to_name": "image", "original_width": 40,
                "original_height": 20, "value": {"x": x / 40 * 100, "y": y / 20 * 100, "width": w / 40 * 100,
                                                 "height": h / 20 * 100, "rectanglelabels": [name]}}  # fmt: skip

    return {"id": 31, "data": {"pool_index": 2, "round": 1},
            "annotations": [{"id": i, "completed_by": {"id": 1, "email": "b@x"}, "updated_at": at,
                             "result": [result(*box) for box in boxes]} for i, boxes, at in annotations]}  # fmt: skip


def test_boxes_edited_in_label_studio_after_the_pull_are_reported(tmp_path):
    """`label_edits` with the detection task's `stored_answers`: an annotation whose boxes changed since the export
    the run pulled, a new answer with other boxes and a deleted answer are each named; the same boxes (in another
    order, to 1e-3 px) are not an edit."""
    run_dir = tmp_path / "run"
    query_directory(run_dir, 1).mkdir(parents=True)
    (run_dir / "state.json").write_text(json.dumps({"class_names": CLASSES}))
    stored = {"bbox": [[4.0, 6.0, 10.0, 8.0], [20.0, 2.0, 8.0, 8.0]], "category": [1, 0]}
    labels = DetectionLabels([2], [stored], source="label_studio_export.json",
                             details={"annotator": ["a@x"], "annotation_id": [10], "num_answers": [1],
                                      "resolution": ["single"]})  # fmt: skip
    DetectionLabelStore(run_dir, CLASSES).add(labels, round=1)
    drawn = [(CLASSES[1], 4, 6, 10, 8), (CLASSES[0], 20, 2, 8, 8)]
    pulled = [_box_task([(10, drawn, "2026-12-05T12:00:00Z")])]
    (query_directory(run_dir, 1) / "label_studio_export.json").write_text(json.dumps(pulled))
    assert label_edits(run_dir, pulled, answers=DETECTION_ANSWERS) == []
    # The same boxes listed in another order, answered again later: the same label, not an edit.
    assert label_edits(run_dir, [_box_task([(10, drawn, "2026-12-05T12:00:00Z"),
                                            (11, drawn[::-1], "2026-12-05T13:00:00Z")])], answers=DETECTION_ANSWERS) == []  # fmt: skip

    moved = [(CLASSES[1], 5, 6, 10, 8), (CLASSES[0], 20, 2, 8, 8)]
    relabeled = [(CLASSES[1], 4, 6, 10, 8), (CLASSES[2], 20, 2, 8, 8)]
    exported = [_box_task([(10, moved, "2026-12-05T12:30:00Z"), (12, relabeled, "2026-12-05T12:40:00Z"),
                           (13, [], "2026-12-05T12:50:00Z")])]  # fmt: skip
    (line,) = label_edits(run_dir, exported, answers=DETECTION_ANSWERS)
    assert line.startswith(
        f"task 31 (pool_index 2, round 1): stored 2 boxes [{CLASSES[1]} (4, 6, 10, 8), {CLASSES[0]} (20, 2, 8, 8)] by a@x "
        "(annotation 10); since then "
    )
    assert (
        f"edited to 2 boxes [{CLASSES[1]} (5, 6, 10, 8), {CLASSES[0]} (20, 2, 8, 8)] by b@x (annotation 10"
        in line
    )
    assert (
        f"answered 2 boxes [{CLASSES[1]} (4, 6, 10, 8), {CLASSES[2]} (20, 2, 8, 8)] by b@x (annotation 12"
        in line
    )
    assert "answered 0 boxes [] by b@x (annotation 13" in line  # no boxes is an answer too
    (line,) = label_edits(
        run_dir, [_box_task([(11, drawn, "2026-12-05T13:00:00Z")])], answers=DETECTION_ANSWERS
    )
    assert "annotation 10 was deleted" in line and "answered" not in line
    # The message says what to do for boxes (seed_labels is refused for detection).
    message = describe_edits(run_dir, [line], DETECTION_ANSWERS)
    assert "label its queries with the corrected boxes" in message and "stored labels stay" in message
    # Without the task's answers, the class labels' store is read: a detection run has none.
    assert label_edits(run_dir, exported) == []
