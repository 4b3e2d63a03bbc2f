"""People label boxes: the detection query batch (images, COCO template, Label Studio import with the surrogate's
boxes) and the boxes read back from Label Studio JSON, JSON_MIN and COCO exports and COCO files; one test against a
real Label Studio server (skipped, saying why, when it is not installed)."""

import base64
import copy
import csv
import hashlib
import io
import json
import re
import zipfile

import datasets
import numpy as np
import PIL.Image
import pytest

from conftest import snapshot
from prunefuse_hf.annotation.labels import LabelError
from prunefuse_hf.annotation.queries import read_query_indices
from prunefuse_hf.tasks import (
    DetectionLabels,
    detection_label_studio_config,
    detection_prediction,
    read_detection_labels,
    write_detection_query,
)

CLASSES = ["cat", "dog", "bird"]
SIZES = [(40, 30), (50, 20), (64, 48), (30, 30), (80, 60), (33, 47)]
QUERIED = [4, 1, 2, 5]
# The surrogate's detections of the queried images (COCO px), inside their images; pool index 2 has none.
PREDICTIONS = {
    4: {
        "boxes": [[10.5, 4.25, 30.0, 20.125], [0.0, 0.0, 80.0, 60.0]],
        "labels": [1, 0],
        "scores": [0.9, 0.25],
    },
    1: {"boxes": [[1.0, 2.0, 3.0, 4.0]], "labels": [2], "scores": [0.5]},
    2: {"boxes": [], "labels": [], "scores": []},
    5: {"boxes": [[3.3, 4.7, 11.1, 22.9]], "labels": [0], "scores": [0.75]},
}


def detection_pool():
    rows = {
        "image": [PIL.Image.new("RGB", size, (20 * i, 90, 200 - 20 * i)) for i, size in enumerate(SIZES)],
        "objects": [{"bbox": [[0.0, 0.0, 5.0, 5.0]], "category": [0]}] * len(SIZES),
    }
    return datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())


def write_query(tmp_path, predictions=True, **kwargs):
    return write_detection_query(tmp_path / "queries" / "round_2", detection_pool(), QUERIED, class_names=CLASSES,
                                 round=2, predictions=[PREDICTIONS[i] for i in QUERIED] if predictions else None,
                                 model_version="run-surrogate-round1", **kwargs)  # fmt: skip


def tasks_of(query):
    return json.loads((query / "label_studio_tasks.json").read_text())


def label_studio_export(tasks, answers=None):
    """A Label Studio JSON export of `tasks`: each task answered by one annotator who accepted the predictions, or
    as `answers[pool_index]` says (a list of annotations: result lists, None for a skip)."""
    exported = []
    for task_id, task in enumerate(tasks, start=1):
        index = task["data"]["pool_index"]
        given = (answers or {}).get(index, [task["predictions"][0]["result"]])
        annotations = [
            {"id": 100 * task_id + k, "completed_by": k + 1, "result": copy.deepcopy(result or []),
             "was_cancelled": result is None, "ground_truth": False,
             "created_at": f"2026-12-05T10:00:0{k}Z", "updated_at": f"2026-12-05T10:00:0{k}Z"}
            for k, result in enumerate(given)
        ]  # fmt: skip
        exported.append({"id": task_id, "data": task["data"], "annotations": annotations})
    return exported


def json_min(exported):
    """The JSON_MIN form of a JSON export, as Label Studio writes it (one record per non-cancelled annotation)."""
    records = []
    for task in exported:
        for annotation in task["annotations"]:
            if annotation["was_cancelled"]:
                continue
            record = {**task["data"], "id": task["id"], "annotator": annotation["completed_by"],
                      "annotation_id": annotation["id"], "created_at": annotation["created_at"],
                      "updated_at": annotation["updated_at"], "lead_time": 1.0}  # fmt: skip
            boxes = [{**r["value"], "original_width": r["original_width"], "original_height": r["original_height"]}
                     for r in annotation["result"]]  # fmt: skip
            if boxes:
                record["label"] = boxes
            records.append(record)
    return records


def save(tmp_path, content, name="export.json"):
    path = tmp_path / name
    path.write_text(json.dumps(content))
    return path


def assert_boxes(labels: DetectionLabels, expected: dict):
    """`labels` hold exactly `expected` ({pool index: (boxes, categories)}), boxes to 1e-6 px."""
    assert sorted(labels.pool_indices.tolist()) == sorted(expected)
    for index, objects in zip(labels.pool_indices.tolist(), labels.objects):
        boxes, categories = expected[index]
        assert objects["category"] == categories, index
        np.testing.assert_allclose(
            np.reshape(objects["bbox"], (-1, 4)), np.reshape(boxes, (-1, 4)), atol=1e-6
        )


def predicted(indices=QUERIED):
    return {i: (PREDICTIONS[i]["boxes"], PREDICTIONS[i]["labels"]) for i in indices}


# ----- the query batch -----


def test_query_batch_holds_images_coco_template_and_label_studio_tasks_with_predictions(tmp_path):
    query = write_query(tmp_path)
    assert sorted(p.name for p in query.iterdir()) == [
        "annotations.json", "dataset", "label_studio_config.xml", "label_studio_tasks.json", "labels.csv"
    ]  # fmt: skip
    assert read_query_indices(query).tolist() == QUERIED
    with open(query / "labels.csv", newline="") as f:
        assert list(csv.reader(f))[:2] == [
            ["pool_index", "file_name", "width", "height"],
            ["4", "4.png", "80", "60"],
        ]
    rows = datasets.load_from_disk(str(query / "dataset"))
    assert rows["pool_index"] == QUERIED and "objects" not in rows.column_names  # the pool's boxes stay out
    assert [image.size for image in rows["image"]] == [SIZES[i] for i in QUERIED]

    coco = json.loads((query / "annotations.json").read_text())
    assert coco["images"] == [
        {"id": i, "pool_index": i, "file_name": f"{i}.png", "width": SIZES[i][0], "height": SIZES[i][1]}
        for i in QUERIED
    ]
    assert coco["annotations"] == []
    assert coco["categories"] == [{"id": k, "name": n, "supercategory": ""} for k, n in enumerate(CLASSES)]
    assert (query / "label_studio_config.xml").read_text() == detection_label_studio_config(CLASSES)
    assert '<RectangleLabels name="label" toName="image" canRotate="false">' in detection_label_studio_config(
        CLASSES
    )

    tasks = tasks_of(query)
    assert [t["data"]["pool_index"] for t in tasks] == QUERIED
    for task in tasks:
        data = task["data"]
        assert (data["file_name"], data["round"]) == (f"{data['pool_index']}.png", 2)
        shown = PIL.Image.open(io.BytesIO(base64.b64decode(data["image"].split(",", 1)[1])))
        assert data["image"].startswith("data:image/png;base64,") and shown.size == SIZES[data["pool_index"]]
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "run-surrogate-round1"
        scores = PREDICTIONS[data["pool_index"]]["scores"]
        assert prediction["score"] == pytest.approx(np.mean(scores) if scores else 0.0, abs=1e-4)
        assert len(prediction["result"]) == len(scores)
    first = tasks[0]["predictions"][0]["result"][0]
    assert {k: first[k] for k in ("from_name", "to_name", "type", "original_width", "original_height", "score")} == {
        "from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 80,
        "original_height": 60, "score": 0.9,
    }  # fmt: skip
    value = dict(first["value"])
    assert (value.pop("rotation"), value.pop("rectanglelabels")) == (0, ["dog"])
    assert value == pytest.approx(
        {"x": 10.5 / 80 * 100, "y": 4.25 / 60 * 100, "width": 30 / 80 * 100, "height": 20.125 / 60 * 100}
    )


def test_the_same_query_is_kept_and_another_refused(tmp_path):
    query = write_query(tmp_path)
    before = snapshot(query)
    assert write_query(tmp_path) == query and snapshot(query) == before
    with pytest.raises(LabelError, match="already holds a different query"):
        write_detection_query(query, detection_pool(), [0, 1], class_names=CLASSES, round=2)
    assert sorted(p.name for p in query.parent.iterdir()) == ["round_2"]  # no staging folder left behind


def test_percent_coordinates_against_hand_computed_values():
    prediction = detection_prediction({"boxes": [[10, 5, 20, 10], [30, -2, 20, 30]], "labels": [1, 0],
                                       "scores": [0.8, 0.4]}, ["cat", "dog"], (40, 20))  # fmt: skip
    first, clipped = (r["value"] for r in prediction["result"])
    assert first == {
        "x": 25.0,
        "y": 25.0,
        "width": 50.0,
        "height": 50.0,
        "rotation": 0,
        "rectanglelabels": ["dog"],
    }
    assert clipped == {"x": 75.0, "y": 0.0, "width": 25.0, "height": 100.0, "rotation": 0,
                       "rectanglelabels": ["cat"]}  # the box is clipped to the 40x20 image  # fmt: skip
    assert prediction["score"] == 0.6
    # Label Studio's own example: 12.5 %, 10 %, 50 %, 40 % of a 40x30 image is [5, 3, 20, 12] px (its COCO export).
    result = {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 40,
              "original_height": 30, "value": {"x": 12.5, "y": 10.0, "width": 50.0, "height": 40.0, "rotation": 0,
                                               "rectanglelabels": ["cat"]}}  # fmt: skip
    export = [{"id": 1, "data": {"pool_index": 0}, "annotations": [{"id": 1, "result": [result]}]}]
    labels = read_detection_labels(export, class_names=CLASSES)
    assert labels.objects == [{"bbox": [[5.0, 3.0, 20.0, 12.0]], "category": [0]}]


def test_prediction_refusals(tmp_path):
    with pytest.raises(LabelError, match=r"3 predictions for 4 queried pool indices"):
        write_detection_query(tmp_path / "q", detection_pool(), QUERIED, class_names=CLASSES, round=2,
                              predictions=[PREDICTIONS[i] for i in QUERIED[:3]])  # fmt: skip
    bad = {**PREDICTIONS, 1: {"boxes": [[1, 2, 3, 4]], "labels": [3], "scores": [0.5]}}
    with pytest.raises(
        LabelError, match=r"prediction for pool index 1: class id \[3\] is out of range for 3"
    ):
        write_detection_query(tmp_path / "q", detection_pool(), QUERIED, class_names=CLASSES, round=2,
                              predictions=[bad[i] for i in QUERIED])  # fmt: skip
    assert not (tmp_path / "q").exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(LabelError, match=r"2 boxes, 1 labels and 1 scores"):
        detection_prediction({"boxes": [[0, 0, 1, 1]] * 2, "labels": [0], "scores": [1.0]}, CLASSES, (4, 4))


# ----- reading exports -----


def test_label_studio_json_round_trip_with_background_and_skip(tmp_path):
    query = write_query(tmp_path)
    export = label_studio_export(tasks_of(query), answers={5: [None]})  # pool index 5 skipped
    labels = read_detection_labels(save(tmp_path, export), class_names=CLASSES, query=query)
    assert_boxes(labels, predicted([4, 1, 2]))
    assert labels.objects[QUERIED.index(2)] == {"bbox": [], "category": []}  # background: labeled, no boxes
    assert labels.skipped.tolist() == [5]
    assert labels.details["resolution"] == ["single"] * 3 and labels.details["annotator"] == ["1"] * 3
    assert labels.references[0]["file_name"] == "4.png" and labels.references[0]["image"].startswith("data:")
    assert labels.places[0] == "Label Studio task 1 (item 0)"


def test_json_min_round_trip(tmp_path):
    query = write_query(tmp_path)
    records = json_min(label_studio_export(tasks_of(query)))
    assert "label" not in records[2]  # Label Studio writes no box list for an answer without boxes
    labels = read_detection_labels(save(tmp_path, records), class_names=CLASSES, dataset=detection_pool())
    assert_boxes(labels, predicted())
    assert labels.skipped.tolist() == [] and labels.details["annotation_id"] == [100, 200, 300, 400]


def test_coco_template_filled_in_by_a_coco_tool(tmp_path):
    query = write_query(tmp_path)
    coco = json.loads((query / "annotations.json").read_text())
    for i in QUERIED:
        for box, label in zip(*predicted()[i]):
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "category_id": label,
                                        "bbox": box, "area": box[2] * box[3], "iscrowd": 0})  # fmt: skip
    assert_boxes(read_detection_labels(save(tmp_path, coco), class_names=CLASSES), predicted())
    # A tool that renumbers images (CVAT starts at 1) and drops extra fields: file names find the pool indices.
    renumbered = copy.deepcopy(coco)
    new_ids = {image["id"]: k + 1 for k, image in enumerate(renumbered["images"])}
    for image in renumbered["images"]:
        del image["pool_index"]
        image["id"] = new_ids[image["id"]]
    for annotation in renumbered["annotations"]:
        annotation["image_id"] = new_ids[annotation["image_id"]]
    labels = read_detection_labels(save(tmp_path, renumbered), class_names=CLASSES, query=query)
    assert_boxes(labels, predicted())
    labels = read_detection_labels(save(tmp_path, renumbered), class_names=CLASSES, dataset=detection_pool())
    assert_boxes(labels, predicted())  # the pool's names (<pool_index>.png for images without a file) do too
    renumbered["images"][0]["pool_index"] = 1
    with pytest.raises(LabelError, match=r"image 1 \('4.png'\): the entry says pool index 1, but its file name "
                                         r"'4.png' is pool index 4"):  # fmt: skip
        read_detection_labels(save(tmp_path, renumbered), class_names=CLASSES, query=query)


def test_label_studio_coco_export_is_matched_through_the_query(tmp_path):
    query = write_query(tmp_path)
    tasks = tasks_of(query)
    images, annotations = [], []
    for task in tasks:  # what Label Studio's COCO export writes for tasks whose image is a data: URI
        index = task["data"]["pool_index"]
        mangled = task["data"]["image"].split("/")[-1][:60]
        name = f"images/{hashlib.md5(task['data']['image'].encode()).hexdigest()[:8]}__{mangled}"
        images.append(
            {"width": SIZES[index][0], "height": SIZES[index][1], "id": len(images), "file_name": name}
        )
        for box, label in zip(*predicted()[index]):
            annotations.append({"id": len(annotations), "image_id": images[-1]["id"], "category_id": label,
                                "bbox": box, "area": box[2] * box[3], "ignore": 0, "iscrowd": 0})  # fmt: skip
    coco = {"images": images, "categories": [{"id": k, "name": n} for k, n in enumerate(CLASSES)],
            "annotations": annotations, "info": {"contributor": "Label Studio"}}  # fmt: skip
    archive = tmp_path / "project-1-coco.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("result.json", json.dumps(coco))
        z.writestr("images/", "")
    assert_boxes(read_detection_labels(archive, class_names=CLASSES, query=query), predicted())
    (tmp_path / "folder").mkdir()
    save(tmp_path / "folder", coco, "result.json")
    assert_boxes(read_detection_labels(tmp_path / "folder", class_names=CLASSES, query=query), predicted())
    with pytest.raises(LabelError, match=r"numbers its images from 0, so the pool index comes from the file name: "
                                         r"pass query=<the query directory>"):  # fmt: skip
        read_detection_labels(archive, class_names=CLASSES)
    # Local files keep their names: the pool's file names find them without the query.
    folder = tmp_path / "pool"
    folder.mkdir()
    for i, size in enumerate(SIZES):
        PIL.Image.new("RGB", size).save(folder / f"img_{i}.png")
    pool = datasets.Dataset.from_dict(
        {"image": [str(folder / f"img_{i}.png") for i in range(6)]}
    ).cast_column("image", datasets.Image())
    for image, index in zip(coco["images"], QUERIED):
        image["file_name"] = f"images/0123abcd__img_{index}.png"
    assert_boxes(read_detection_labels(coco, class_names=CLASSES, dataset=pool), predicted())


def test_several_answers_are_refused_or_resolved(tmp_path):
    query = write_query(tmp_path)
    tasks = tasks_of(query)
    moved = copy.deepcopy(tasks[0]["predictions"][0]["result"])
    moved[0]["value"]["x"] += 5.0
    export = label_studio_export(tasks, answers={4: [tasks[0]["predictions"][0]["result"], moved]})
    path = save(tmp_path, export)
    with pytest.raises(LabelError) as refused:
        read_detection_labels(path, class_names=CLASSES)
    assert re.search(r"1 images have several answers with different boxes: Label Studio task 1 \(item 0\) "
                     r"\(pool_index 4\): annotation 100 by 1 \(2 boxes\), annotation 101 by 2 \(2 boxes\)\. .*"
                     r"resolve=ground_truth\|latest \(CLI: --resolve\)", str(refused.value))  # fmt: skip
    latest = read_detection_labels(path, class_names=CLASSES, resolve="latest")
    assert latest.objects[0]["bbox"][0][0] == pytest.approx(10.5 + 4.0)  # 5 % of 80 px
    assert (latest.details["resolution"][0], latest.details["num_answers"][0]) == ("latest", 2)
    with pytest.raises(LabelError, match="No annotation .* is marked ground truth there"):
        read_detection_labels(path, class_names=CLASSES, resolve="ground_truth")
    export[0]["annotations"][0]["ground_truth"] = True
    truth = read_detection_labels(export, class_names=CLASSES, resolve="ground_truth")
    assert truth.objects[0]["bbox"][0][0] == pytest.approx(10.5) and truth.details["annotation_id"][0] == 100
    with pytest.raises(LabelError, match="resolve must be one of \\['ground_truth', 'latest'\\] for boxes"):
        read_detection_labels(export, class_names=CLASSES, resolve="majority")
    # The same boxes twice agree; JSON_MIN has no ground truth but knows the newest.
    same = label_studio_export(tasks, answers={4: [tasks[0]["predictions"][0]["result"]] * 2})
    assert read_detection_labels(same, class_names=CLASSES).details["resolution"][0] == "agreed"
    records = json_min(label_studio_export(tasks, answers={4: [tasks[0]["predictions"][0]["result"], moved]}))
    with pytest.raises(
        LabelError, match=r"item 0 \(Label Studio task 1\) \(pool_index 4\): annotation 100 by 1"
    ):
        read_detection_labels(records, class_names=CLASSES)
    assert (
        read_detection_labels(records, class_names=CLASSES, resolve="latest").details["annotation_id"][0]
        == 101
    )


def test_coco_entries_of_one_image_are_several_answers(tmp_path):
    query = write_query(tmp_path)
    coco = json.loads((query / "annotations.json").read_text())
    coco["images"].append({**coco["images"][0], "id": 99})  # a second answer for pool index 4, with no boxes
    coco["annotations"] = [{"id": 1, "image_id": 4, "category_id": 2, "bbox": [1, 1, 5, 5]}]
    with pytest.raises(
        LabelError, match=r"image 4 \('4.png'\) \(pool_index 4\): an entry \(1 boxes\), an entry \(0 "
    ):
        read_detection_labels(coco, class_names=CLASSES)
    with pytest.raises(LabelError, match="A COCO export holds no ground-truth marks"):
        read_detection_labels(coco, class_names=CLASSES, resolve="ground_truth")
    labels = read_detection_labels(
        coco, class_names=CLASSES, resolve="latest"
    )  # Label Studio lists newest first
    assert labels.objects[0] == {"bbox": [[1.0, 1.0, 5.0, 5.0]], "category": [2]}


def _one_box(tmp_path, query, change, index=4):
    tasks = tasks_of(query)
    result = copy.deepcopy(tasks[QUERIED.index(index)]["predictions"][0]["result"][:1])
    change(result)
    return save(tmp_path, label_studio_export(tasks, answers={index: [result]}))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r[0]["value"].update(rectanglelabels=["wolf"]),
         r"task 1 \(item 0\) \(pool_index 4\), box 0: unknown class name 'wolf'\. Valid names: \['cat', 'dog', "),
        (lambda r: r[0]["value"].update(x=90.0),
         r"task 1 \(item 0\): pool index 4, object 0: bbox \[72\.0, 4\.25, 30\.0, 20\.125\] \(coco\) is outside the "
         r"80x60 image; clip it to the image .* Fix the boxes in Label Studio"),
        (lambda r: r[0]["value"].update(width=0.0),
         r"pool index 4, object 0: bbox \[10\.5, 4\.25, 0\.0, 20\.125\] \(coco\) has zero area .*drop the box or fix"),
        (lambda r: r[0]["value"].update(rotation=30),
         r"annotation 100, box 0: the box .* has rotation 30; detectors take upright boxes\. Turn it back to 0"),
        (lambda r: r[0]["value"].update(rectanglelabels=["cat", "dog"]),
         r"box 0: the box has several classes \['cat', 'dog'\]; give every box exactly one class"),
        (lambda r: r[0].update(type="polygonlabels"),
         r"a polygonlabels result \('label'\) is not a box\. Object detection reads RectangleLabels"),
        (lambda r: r[0].pop("original_width"),
         r"no original_width/original_height, so its percents cannot be turned into pixels"),
        (lambda r: r[0].update(original_width=160, original_height=120),
         r"the boxes were drawn on a 160x120 image, but pool index 4 is 80x60: the task shows another image"),
    ],
    ids=["unknown-class", "outside", "zero-area", "rotated", "two-classes", "polygon", "no-size", "other-size"],
)  # fmt: skip
def test_refused_boxes_name_pool_index_value_and_fix(tmp_path, change, message):
    query = write_query(tmp_path)
    with pytest.raises(LabelError, match=message):
        read_detection_labels(_one_box(tmp_path, query, change), class_names=CLASSES, query=query)


def test_refused_sources_and_tasks(tmp_path):
    query = write_query(tmp_path)
    tasks = tasks_of(query)
    export = label_studio_export(tasks)
    with pytest.raises(
        LabelError, match=r"Label Studio task 1 \(item 0\) has no data.pool_index; data fields found"
    ):
        read_detection_labels([{**export[0], "data": {"image": "x.png"}}], class_names=CLASSES)
    with pytest.raises(
        LabelError, match=r"pool index 4 is labeled twice \(Label Studio task 1 \(item 0\) and "
    ):
        read_detection_labels(export + [{**export[0], "id": 9}], class_names=CLASSES)
    small = detection_pool().select(range(3))
    with pytest.raises(LabelError, match=r"pool index 4 is out of range; the pool has 3 images"):
        read_detection_labels(export, class_names=CLASSES, dataset=small)
    with pytest.raises(LabelError, match=r"Label file .*missing.json not found"):
        read_detection_labels(tmp_path / "missing.json", class_names=CLASSES)
    (tmp_path / "labels.csv").write_text("pool_index,label\n")
    with pytest.raises(LabelError, match=r"boxes are read from a .json file"):
        read_detection_labels(tmp_path / "labels.csv", class_names=CLASSES)
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    with pytest.raises(LabelError, match=r"broken.zip: not a readable COCO export \(BadZipFile"):
        read_detection_labels(tmp_path / "broken.zip", class_names=CLASSES)
    with pytest.raises(LabelError, match=r"neither a Label Studio export .* nor COCO JSON"):
        read_detection_labels({"images": []}, class_names=CLASSES)
    with pytest.raises(
        LabelError, match=r"query_dir/annotations.json not found: .* is not a detection query"
    ):
        read_detection_labels(export, class_names=CLASSES, query=tmp_path / "query_dir")


# ----- a real Label Studio server -----


def test_label_studio_server_shows_predictions_and_exports_boxes_read_back(label_studio, tmp_path):
    from prunefuse_hf.annotation.label_studio_api import LabelStudioClient

    server = label_studio
    query = write_query(tmp_path)
    client = LabelStudioClient(server.url, token=server.token)
    config = (query / "label_studio_config.xml").read_text()
    project = client.post("/api/projects", {"title": "PruneFuse boxes", "label_config": config})["id"]
    client.post(f"/api/projects/{project}/import", tasks_of(query))
    tasks = sorted(client.tasks(project), key=lambda task: task["data"]["pool_index"])
    assert [t["data"]["pool_index"] for t in tasks] == sorted(QUERIED)
    by_index = {t["data"]["pool_index"]: t for t in tasks}
    for index, task in by_index.items():  # the surrogate's boxes are on the server, in percent
        (prediction,) = client.get(f"/api/tasks/{task['id']}")["predictions"]
        assert prediction["model_version"] == "run-surrogate-round1"
        scale = [[r["original_width"], r["original_height"]] * 2 for r in prediction["result"]]
        percents = [[r["value"][k] for k in ("x", "y", "width", "height")] for r in prediction["result"]]
        boxes = np.multiply(percents, scale) / 100 if percents else []
        np.testing.assert_allclose(
            np.reshape(boxes, (-1, 4)), np.reshape(PREDICTIONS[index]["boxes"], (-1, 4))
        )

    # Annotators: one accepts the boxes of 4 and fixes a class, one draws a box on 1, 2 is background, 5 skipped.
    users = [server.user(email) for email in ("box1@example.com", "box2@example.com")]
    accepted = copy.deepcopy(client.get(f"/api/tasks/{by_index[4]['id']}")["predictions"][0]["result"])
    accepted[1]["value"]["rectanglelabels"] = ["bird"]
    drawn = [{"id": "drawn-1", "from_name": "label", "to_name": "image", "type": "rectanglelabels",
              "original_width": 50, "original_height": 20, "image_rotation": 0,
              "value": {"x": 12.5, "y": 10.0, "width": 50.0, "height": 40.0, "rotation": 0,
                        "rectanglelabels": ["cat"]}}]  # fmt: skip
    for index, user, result in ((4, users[0], accepted), (1, users[1], drawn), (2, users[0], [])):
        client.post(f"/api/tasks/{by_index[index]['id']}/annotations",
                    {"completed_by": user, "result": result, "lead_time": 2.0})  # fmt: skip
    client.request("POST", f"/api/tasks/{by_index[5]['id']}/annotations", params={"was_cancelled": 1},
                   json={"completed_by": users[1], "result": [], "was_cancelled": True, "lead_time": 1.0})  # fmt: skip
    expected = {4: (PREDICTIONS[4]["boxes"], [1, 2]), 1: ([[6.25, 2.0, 25.0, 8.0]], [0]), 2: ([], [])}

    def export(kind):
        answer = client.request("GET", f"/api/projects/{project}/export",
                                params={"exportType": kind, "download_all_tasks": "false"})  # fmt: skip
        path = tmp_path / f"export.{'zip' if kind == 'COCO' else 'json'}"
        path.write_bytes(answer.content)
        return path

    full = read_detection_labels(export("JSON"), class_names=CLASSES, query=query)
    assert_boxes(full, expected)
    assert full.skipped.tolist() == [5]
    annotators = dict(zip(full.pool_indices.tolist(), full.details["annotator"]))
    assert annotators == {4: str(users[0]), 1: str(users[1]), 2: str(users[0])}
    assert_boxes(read_detection_labels(export("JSON_MIN"), class_names=CLASSES, query=query), expected)
    coco = read_detection_labels(export("COCO"), class_names=CLASSES, query=query)
    assert_boxes(coco, expected)
    with pytest.raises(LabelError, match="pass query=<the query directory>"):
        read_detection_labels(tmp_path / "export.zip", class_names=CLASSES)
