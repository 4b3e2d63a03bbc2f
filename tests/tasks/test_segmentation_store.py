"""The store of the masks people gave (`RUN/labeled_masks/` + `RUN/labeled_masks.parquet`): added as a whole or not
at all, read back by `datasets`, never replaced silently (a replaced mask is a new file, the old one removed), damaged
or incomplete stores refused; masks edited in Label Studio after they were pulled are reported."""

import json

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest

from prunefuse_hf.annotation.edits import describe_edits, label_edits
from prunefuse_hf.annotation.labels import LabelError
from prunefuse_hf.annotation.queries import query_directory
from prunefuse_hf.tasks import (
    SegmentationLabels,
    SegmentationLabelStore,
    get_task,
    open_mask,
    read_segmentation_labels,
    segmentation_prediction,
)
from prunefuse_hf.tasks.segmentation_store import MaskAnswer, describe_mask, mask_digest, same_mask

SEGMENTATION_ANSWERS = get_task("image-segmentation").stored_answers

CLASSES = ["road", "car", "tree"]
MASKS = {4: np.array([[0, 1, 1], [2, 255, 0]], dtype=np.uint8), 9: np.full((2, 2), 255, dtype=np.uint8)}


def labels(masks=MASKS, source="masks/", **details):
    return SegmentationLabels(list(masks), list(masks.values()), source=source, details=details or None)


def test_masks_are_stored_as_files_indexed_read_back_by_datasets_and_not_written_twice(tmp_path):
    store = SegmentationLabelStore(tmp_path, CLASSES)
    result = store.add(labels(annotator=["a@x", None], annotation_id=[3, None], num_answers=[1, None],
                              resolution=["single", None]), round=1, expected=[4, 9])  # fmt: skip
    assert (result.added, result.unchanged, result.overwritten) == (2, 0, 0)
    rows = datasets.Dataset.from_parquet(str(tmp_path / "labeled_masks.parquet"))
    assert rows["pool_index"] == [4, 9] and rows["annotator"] == ["a@x", None] and rows["round"] == [1, 1]
    assert all(name.startswith(f"labeled_masks/{i}-") and name.endswith(".png")
               for i, name in zip(rows["pool_index"], rows["mask_file"]))  # fmt: skip
    for index, name in zip(rows["pool_index"], rows["mask_file"]):
        assert np.array_equal(open_mask(tmp_path / name), MASKS[index])
    # Read as the run trains on them: `datasets.Image` values of the files.
    reopened = SegmentationLabelStore(tmp_path, CLASSES)
    column = datasets.Dataset.from_dict({"label": reopened.annotations([9, 4])}).cast_column(
        "label", datasets.Image()
    )
    assert [np.asarray(m).tolist() for m in column["label"]] == [MASKS[9].tolist(), MASKS[4].tolist()]
    index = tmp_path / "labeled_masks.parquet"
    stamp = index.stat().st_mtime_ns
    again = reopened.add(labels(), round=1, expected=[4, 9])
    assert again.unchanged == 2 and index.stat().st_mtime_ns == stamp  # nothing new: untouched


def test_refusals_store_nothing_and_a_replaced_mask_is_a_new_file(tmp_path):
    store = SegmentationLabelStore(tmp_path, CLASSES)
    with pytest.raises(LabelError, match=r"masks/: pool index 4 has mask value \[7\], neither a class id of the run's "
                                         r"3 classes .* nor 255 \(not labeled\)\. Paint with class ids"):  # fmt: skip
        store.add(labels({4: np.array([[0, 7]], dtype=np.uint8)}), round=1)
    with pytest.raises(LabelError, match=r"pool index 4 has a mask of shape \(2, 2, 3\)"):
        store.add(labels({4: np.zeros((2, 2, 3), dtype=np.uint8)}), round=1)
    with pytest.raises(LabelError, match=r"pool index 9 is not part of round 1's query"):
        store.add(labels(), round=1, expected=[4, 5])
    with pytest.raises(
        LabelError, match=r"1 of the 3 images queried in round 1 have no masks.*allow_partial"
    ):
        store.add(labels(), round=1, expected=[4, 5, 9])
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    store.add(labels(), round=1)
    old = tmp_path / store.table().column("mask_file").to_pylist()[0]
    edited = {4: np.zeros((2, 3), dtype=np.uint8)}
    with pytest.raises(
        LabelError, match=r"pool index 4 already has a mask .*labeled_masks/4-.*overwrite=True"
    ):
        store.add(labels(edited, source="edited/"), round=1)
    assert store.add(labels(edited, source="edited/"), round=2, overwrite=True).overwritten == 1
    reopened = SegmentationLabelStore(tmp_path, CLASSES)
    assert np.array_equal(open_mask(reopened.annotations([4])[0]["path"]), edited[4])
    assert not old.exists() and len(list((tmp_path / "labeled_masks").iterdir())) == 2
    with pytest.raises(LabelError, match=r"holds no masks for pool index 5"):
        reopened.annotations([5])
    next((tmp_path / "labeled_masks").glob("9-*.png")).unlink()
    with pytest.raises(LabelError, match=r"names 1 mask files that are missing .*9-.*Restore them"):
        SegmentationLabelStore(tmp_path, CLASSES)


def _mask_task(annotations, size=(8, 6)):
    """A Label Studio task of round 1, pool index 2, on an 8 x 6 image: `(id, mask or polygon results, updated_at)`,
    a mask painted as one brush stroke per class (Label Studio's RLE)."""

    def results(answer):
        if isinstance(answer, list):
            return answer
        return segmentation_prediction(answer, CLASSES)["result"]

    return {"id": 31, "data": {"pool_index": 2, "round": 1},
            "annotations": [{"id": i, "completed_by": {"id": 1, "email": "b@x"}, "updated_at": at,
                             "result": results(answer)} for i, answer, at in annotations]}  # fmt: skip


def test_masks_edited_in_label_studio_after_the_pull_are_reported(tmp_path):
    """`label_edits` with the segmentation task's `stored_answers`: the mask stored from the pulled export is
    compared by the digest its file is named after with the mask each annotation paints (the reader's rule), so the
    same strokes are no edit, and a changed stroke, a changed class, an answer without strokes and a deleted answer
    are each named with the classes' pixel counts; the stored mask stays."""
    run_dir = tmp_path / "run"
    query_directory(run_dir, 1).mkdir(parents=True)
    (run_dir / "state.json").write_text(json.dumps({"class_names": CLASSES}))
    painted = np.full((6, 8), 255, dtype=np.uint8)
    painted[:3] = 0  # road on the top half
    painted[4:, 2:5] = 1  # a car
    pulled = [_mask_task([(10, painted, "2026-12-05T12:00:00Z")])]
    (query_directory(run_dir, 1) / "label_studio_export.json").write_text(json.dumps(pulled))
    read = read_segmentation_labels(pulled, class_names=CLASSES)
    SegmentationLabelStore(run_dir, CLASSES).add(read, round=1)
    stored = SegmentationLabelStore(run_dir, CLASSES)._stored[2]
    assert stored == f"labeled_masks/2-{mask_digest(painted)}.png"
    assert label_edits(run_dir, pulled, answers=SEGMENTATION_ANSWERS) == []
    # The same mask answered again later (its strokes listed in another order): the same label, not an edit.
    again = segmentation_prediction(painted, CLASSES)["result"][::-1]
    assert label_edits(run_dir, [_mask_task([(10, painted, "2026-12-05T12:00:00Z"),
                                             (11, again, "2026-12-05T13:00:00Z")])],
                       answers=SEGMENTATION_ANSWERS) == []  # fmt: skip

    stroke = painted.copy()
    stroke[5, 7] = 1  # one more pixel of car
    relabeled = np.where(painted == 1, 2, painted)  # the car is a tree
    exported = [_mask_task([(10, stroke, "2026-12-05T12:30:00Z"), (12, relabeled, "2026-12-05T12:40:00Z"),
                            (13, [], "2026-12-05T12:50:00Z")])]  # fmt: skip
    (line,) = label_edits(run_dir, exported, answers=SEGMENTATION_ANSWERS)
    assert line.startswith(
        "task 31 (pool_index 2, round 1): stored a 8x6 mask [road 24 px, car 6 px, unlabeled 18 px] by b@x "
        "(annotation 10); since then "
    ), line
    assert (
        "edited to a 8x6 mask [road 24 px, car 7 px, unlabeled 17 px] by b@x (annotation 10, 2026-12-05T12:30:00Z)"
        in line
    )
    assert "answered a 8x6 mask [road 24 px, tree 6 px, unlabeled 18 px] by b@x (annotation 12" in line
    assert "answered no mask (nothing painted) by b@x (annotation 13" in line
    (line,) = label_edits(
        run_dir, [_mask_task([(11, painted, "2026-12-05T13:00:00Z")])], answers=SEGMENTATION_ANSWERS
    )
    assert "annotation 10 was deleted" in line and "answered" not in line
    message = describe_edits(run_dir, [line], SEGMENTATION_ANSWERS)
    assert "label its queries with the corrected masks" in message and "stored labels stay" in message
    assert np.array_equal(open_mask(run_dir / stored), painted)  # the stored mask stays
    # Without the task's answers, the class labels' store is read: a segmentation run has none.
    assert label_edits(run_dir, exported) == []


def test_a_polygon_answer_compares_as_the_reader_paints_it(tmp_path):
    """A polygon answer stored through the reader is the same mask when read again, whoever answers it; an answer
    with a class the run does not have, or a skip, is no answer to compare; nothing painted equals an all-unlabeled
    mask."""
    polygon = [{"id": "p", "type": "polygonlabels", "from_name": "polygon", "to_name": "image", "original_width": 8,
                "original_height": 6, "value": {"points": [[0, 0], [50, 0], [50, 50]], "polygonlabels": ["tree"]}}]  # fmt: skip
    run_dir = tmp_path / "run"
    query_directory(run_dir, 1).mkdir(parents=True)
    (run_dir / "state.json").write_text(json.dumps({"class_names": CLASSES}))
    task = _mask_task([(10, polygon, "2026-12-05T12:00:00Z")])
    SegmentationLabelStore(run_dir, CLASSES).add(
        read_segmentation_labels([task], class_names=CLASSES), round=1
    )
    later = [_mask_task([(10, polygon, "2026-12-05T12:00:00Z"), (11, polygon, "2026-12-05T13:00:00Z")])]
    assert label_edits(run_dir, later, answers=SEGMENTATION_ANSWERS) == []  # no pulled export: judged by time
    unknown = [{**polygon[0], "value": {**polygon[0]["value"], "polygonlabels": ["boat"]}}]
    assert SEGMENTATION_ANSWERS.answer({"id": 12, "result": unknown}, CLASSES) is None
    assert SEGMENTATION_ANSWERS.answer({"id": 12, "result": polygon, "was_cancelled": True}, CLASSES) is None
    nothing = SEGMENTATION_ANSWERS.answer({"id": 12, "result": []}, CLASSES)
    assert (
        nothing is not None
        and nothing.digest is None
        and describe_mask(nothing) == "no mask (nothing painted)"
    )
    polygon_answer = SEGMENTATION_ANSWERS.answer({"id": 10, "result": polygon}, CLASSES)
    assert describe_mask(polygon_answer, CLASSES) == "a 8x6 mask [tree 12 px, unlabeled 36 px]"
    (row,) = pq.read_table(run_dir / "labeled_masks.parquet").to_pylist()
    stored = SEGMENTATION_ANSWERS.stored(row, CLASSES, run_dir)
    assert stored.digest == polygon_answer.digest and np.array_equal(stored.mask, polygon_answer.mask)
    assert not same_mask(nothing, polygon_answer)
    assert same_mask(nothing, MaskAnswer(mask_digest(np.full((6, 8), 255, dtype=np.uint8)),
                                         pixels=np.full((6, 8), 255, dtype=np.uint8)))  # fmt: skip
