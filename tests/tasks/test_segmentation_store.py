"""The store of the masks people gave (`RUN/labeled_masks/` + `RUN/labeled_masks.parquet`): added as a whole or not
at all, read back by `datasets`, never replaced silently (a replaced mask is a new file, the old one removed), damaged
or incomplete stores refused."""

import datasets
import numpy as np
import pytest

from prunefuse_hf.annotation.labels import LabelError
from prunefuse_hf.tasks import SegmentationLabels, SegmentationLabelStore, open_mask

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
