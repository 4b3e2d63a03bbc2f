"""The store of the boxes people gave (`RUN/labeled_objects.parquet`): added as a whole or not at all, read back by
`datasets`, never replaced silently, damaged files refused."""

import datasets
import numpy as np
import pytest

from prunefuse_hf.annotation.labels import LabelError
from prunefuse_hf.tasks import DetectionLabels, DetectionLabelStore

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
