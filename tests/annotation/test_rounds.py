"""`skipped_indices` and `annotation_summary`: what the report and the next selection know about a run's rounds."""

import json

from conftest import CLASS_NAMES
from prunefuse_hf.annotation.labels import LabelBatch
from prunefuse_hf.annotation.rounds import annotation_summary, skipped_indices
from prunefuse_hf.annotation.store import LabelStore


def test_summary_counts_agreement_resolutions_and_skips(tmp_path):
    store = LabelStore(tmp_path, CLASS_NAMES)
    store.add(LabelBatch([1, 2], [0, 1], "labels.csv"), round=1)  # a plain file: no annotation facts
    details = {"annotator": ["a@x", "b@x", "a@x", "c@x"], "annotation_id": [1, 2, 3, 4],
               "num_answers": [3, 2, 1, 2], "resolution": ["majority", "agreed", "single", "agreed"]}  # fmt: skip
    store.add(LabelBatch([5, 6, 7, 8], [0, 1, 2, 3], "export.json", details), round=2)
    for round_, indices, requery in ((2, [9, 11], False), (3, [12], True)):
        (tmp_path / "queries" / f"round_{round_}").mkdir(parents=True)
        record = {"pool_index": indices, "source": "export.json", "requery": requery}
        (tmp_path / "queries" / f"round_{round_}" / "skipped.json").write_text(json.dumps(record))
    assert annotation_summary(tmp_path, CLASS_NAMES) == {
        2: {
            "labeled": 4,
            "multi": 3,
            "agreed": 2,
            "resolved": {"majority": 1},
            "annotators": 3,
            "skipped": 2,
        },
        3: {"labeled": 0, "multi": 0, "agreed": 0, "resolved": {}, "annotators": 0, "skipped": 1},
    }
    assert {k: v.tolist() for k, v in skipped_indices(tmp_path).items()} == {2: [9, 11], 3: [12]}
    # Round 3 was ingested with requery_skipped: its skips may be queried again.
    assert {k: v.tolist() for k, v in skipped_indices(tmp_path, for_selection=True).items()} == {2: [9, 11]}
