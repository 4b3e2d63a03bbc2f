"""Reading real Label Studio 1.23 exports (fixtures/label_studio/: JSON, JSON_MIN and CSV of one project where
ann 2 labeled pool 0-9, ann 3 labeled 5-11 and disagrees on 5, ann 4 marked 12 as ground truth and skipped 13;
and Taxonomy and RectangleLabels projects), the labeling config and the predictions PruneFuse writes."""

import copy
import json
from pathlib import Path

import pytest

from prunefuse_hf.annotation.label_studio import label_studio_prediction
from prunefuse_hf.annotation.labels import LabelError
from prunefuse_hf.annotation.readers import read_labels

FIXTURES = Path(__file__).parent / "fixtures" / "label_studio"
CLASSES = ["cat", "dog"]
# What the annotators answered, per pool index, in choices_* (pool 5: the latest answer, by ann 3).
LATEST = {0: 0, 1: 1, 2: 0, 3: 1, 4: 0, 5: 0, 6: 0, 7: 1, 8: 0, 9: 1, 10: 0, 11: 1, 12: 0}


def _labels(batch) -> dict[int, int]:
    return dict(zip(batch.pool_indices.tolist(), batch.labels.tolist()))


@pytest.mark.parametrize("name", ["choices_JSON.json", "choices_JSON_MIN.json", "choices_CSV.csv"])
def test_a_disagreement_is_refused_by_default_naming_the_task_and_the_answers(name):
    with pytest.raises(LabelError) as error:
        read_labels(FIXTURES / name, CLASSES)
    message = str(error.value)
    assert "1 tasks have answers that disagree" in message and "(pool_index 5): " in message
    assert "'dog' by 2 (annotation 6)" in message and "'cat' by 3 (annotation 11)" in message
    assert "resolve=ground_truth|majority|latest (CLI: --resolve)" in message


@pytest.mark.parametrize("name", ["choices_JSON.json", "choices_JSON_MIN.json", "choices_CSV.csv"])
def test_latest_resolves_and_every_format_reads_the_same_labels(name):
    batch = read_labels(FIXTURES / name, CLASSES, resolve="latest")
    assert _labels(batch) == LATEST
    details = dict(zip(batch.pool_indices.tolist(), zip(*batch.details.values())))
    assert details[5] == ("3", 11, 2, "latest")
    assert details[6] == ("3", 12, 2, "agreed")
    assert details[0] == ("2", 1, 1, "single")
    # Only the JSON export carries skips: pool 13 was skipped by its only annotator.
    assert batch.skipped.tolist() == ([13] if name.endswith("JSON.json") else [])


def test_ground_truth_and_majority(tmp_path):
    tasks = json.loads((FIXTURES / "choices_JSON.json").read_text())
    with pytest.raises(LabelError, match="No annotation .* is marked ground truth there"):
        read_labels(FIXTURES / "choices_JSON.json", CLASSES, resolve="ground_truth")
    with pytest.raises(LabelError, match=r"No answer has a majority there \(a tie\)"):
        read_labels(FIXTURES / "choices_JSON.json", CLASSES, resolve="majority")
    task = next(t for t in tasks if t["data"]["pool_index"] == 5)
    task["annotations"][0]["ground_truth"] = True  # ann 2's 'dog', the older answer
    (tmp_path / "gt.json").write_text(json.dumps(tasks))
    batch = read_labels(tmp_path / "gt.json", CLASSES, resolve="ground_truth")
    assert _labels(batch)[5] == 1 and batch.details["resolution"][5] == "ground_truth"
    # A tie under "majority" goes to ground truth.
    assert _labels(read_labels(tmp_path / "gt.json", CLASSES, resolve="majority"))[5] == 1
    # A third annotator agrees with ann 3: 'cat' has the majority, over the ground truth.
    third = copy.deepcopy(task["annotations"][1])
    third.update(id=99, completed_by=7)
    task["annotations"].append(third)
    (tmp_path / "three.json").write_text(json.dumps(tasks))
    batch = read_labels(tmp_path / "three.json", CLASSES, resolve="majority")
    assert _labels(batch)[5] == 0 and batch.details["num_answers"][5] == 3
    assert batch.details["resolution"][5] == "majority"


def test_taxonomy_and_labels_answers_are_read():
    batch = read_labels(FIXTURES / "taxonomy_JSON.json", CLASSES)
    assert _labels(batch) == {0: 1} and batch.skipped.tolist() == [1]
    for name in ("taxonomy_JSON_MIN.json", "taxonomy_CSV.csv"):
        assert _labels(read_labels(FIXTURES / name, CLASSES, label_column="tax")) == {0: 1}


def test_labels_tag_and_refusals_name_the_tag(tmp_path):
    tasks = json.loads((FIXTURES / "choices_JSON.json").read_text())[:3]
    for task in tasks:
        for annotation in task["annotations"]:
            for result in annotation["result"]:
                result.update(type="labels", value={"labels": result["value"]["choices"]})
    (tmp_path / "labels.json").write_text(json.dumps(tasks))
    assert _labels(read_labels(tmp_path / "labels.json", CLASSES)) == {0: 0, 1: 1, 2: 0}

    with pytest.raises(LabelError, match="the answer is a rectanglelabels 'box' result, not an image class"):
        read_labels(FIXTURES / "rectlabels_JSON.json", CLASSES)
    taxonomy = json.loads((FIXTURES / "taxonomy_JSON.json").read_text())
    taxonomy[0]["annotations"][0]["result"][0]["value"]["taxonomy"] = [["animal", "dog"]]
    (tmp_path / "deep.json").write_text(json.dumps(taxonomy))
    with pytest.raises(
        LabelError, match=r"answer \['animal', 'dog'\] has 2 levels; PruneFuse reads a single-level"
    ):
        read_labels(tmp_path / "deep.json", CLASSES)


def test_an_export_with_only_skips_is_not_called_empty(tmp_path, caplog):
    tasks = json.loads((FIXTURES / "choices_JSON.json").read_text())
    (tmp_path / "skips.json").write_text(json.dumps([t for t in tasks if t["data"]["pool_index"] == 13]))
    batch = read_labels(tmp_path / "skips.json", CLASSES)
    assert len(batch) == 0 and batch.skipped.tolist() == [13]
    assert "holds no labels" not in caplog.text


def test_prediction_matches_the_labeling_config():
    prediction = label_studio_prediction("dog", 0.87654, "run-surrogate-round1")
    assert prediction == {
        "model_version": "run-surrogate-round1",
        "score": 0.8765,
        "result": [
            {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["dog"]}}
        ],
    }
