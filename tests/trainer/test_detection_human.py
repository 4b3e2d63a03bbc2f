"""People label boxes in a detection run: `annotation="human"` stops at each round with the query for boxes (COCO
template, Label Studio RectangleLabels import, the surrogate's boxes as predictions from round 2), the boxes come back
from a COCO file and from a real Label Studio server, are stored in the run and checked against the images, and the
fused detector is trained on them; bad answers are refused before anything is stored."""

import json

import datasets
import pytest
import torch

from conftest import detection_items, tiny_detr
from detection_human_run import (
    INITIAL,
    POOL_SIZE,
    QUERY,
    filled_coco,
    human_config,
    human_pools,
    same_boxes,
    stored_objects,
)
from prunefuse_hf import PruneFuseTrainer
from prunefuse_hf.annotation.labels import LabelError
from prunefuse_hf.tasks import DETECTION, detection_prediction, synthetic_detection_pool


@pytest.fixture(scope="module")
def pools():
    return human_pools()


def test_two_rounds_labeled_from_coco_then_label_studio_train_the_fused_detector(
    tmp_path, pools, label_studio
):
    from prunefuse_hf.annotation.label_studio_api import LabelStudioClient, pull_export, push_query

    pool, test, names, truth = pools
    run = tmp_path / "run"
    trainer = PruneFuseTrainer(
        tiny_detr(), args=human_config(tmp_path, names), train_dataset=pool, eval_dataset=test
    )
    trainer.train()
    assert trainer.awaiting_labels == 1 and not trainer.done
    query = run / "queries" / "round_1"
    assert "RectangleLabels" in (query / "label_studio_config.xml").read_text()
    first = json.loads((query / "label_studio_tasks.json").read_text())
    assert len(first) == INITIAL and all(
        "predictions" not in task for task in first
    )  # no surrogate trained yet
    coco = json.loads((query / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == names and not coco["annotations"]

    result = trainer.add_labels(filled_coco(query, truth))
    assert result.added == INITIAL
    stored = stored_objects(run)
    assert sorted(stored) == sorted(t["data"]["pool_index"] for t in first)
    same_boxes(stored, truth)

    trainer.train(resume_from_checkpoint=True)
    assert trainer.awaiting_labels == 2
    second = run / "queries" / "round_2"
    tasks = json.loads((second / "label_studio_tasks.json").read_text())
    assert len(tasks) == QUERY and not set(t["data"]["pool_index"] for t in tasks) & set(stored)
    # The round-1 surrogate's boxes ride along as predictions, in percent of each image.
    assert all(len(task["predictions"]) == 1 for task in tasks)
    assert sum(len(task["predictions"][0]["result"]) for task in tasks) > 0
    assert {r["type"] for task in tasks for r in task["predictions"][0]["result"]} == {"rectanglelabels"}
    assert tasks[0]["predictions"][0]["model_version"] == "run-surrogate-round1"

    # Round 2 through a real Label Studio: push the RectangleLabels project, annotators draw the boxes, pull.
    server = label_studio
    pushed = push_query(run, url=server.url, token=server.token)
    assert pushed["imported"] == QUERY
    client = LabelStudioClient(server.url, token=server.token)
    project_config = client.get(f"/api/projects/{pushed['project']}")["label_config"]
    assert "RectangleLabels" in project_config
    user = server.user("boxes@example.com")
    # The annotator draws the true boxes, calls one image background (no boxes) and skips another.
    expected = {i: truth[i] for i in stored}
    background, skipped = sorted(client.tasks(pushed["project"]), key=lambda t: t["id"])[:2]
    for task in client.tasks(pushed["project"]):
        index = task["data"]["pool_index"]
        if task["id"] == skipped["id"]:
            client.request("POST", f"/api/tasks/{task['id']}/annotations", params={"was_cancelled": 1},
                           json={"completed_by": user, "result": [], "was_cancelled": True})  # fmt: skip
            continue
        objects = {"bbox": [], "category": []} if task["id"] == background["id"] else truth[index]
        drawn = detection_prediction({"boxes": objects["bbox"], "labels": objects["category"]}, names,
                                     (48, 48))["result"]  # fmt: skip
        client.post(f"/api/tasks/{task['id']}/annotations", {"completed_by": user, "result": drawn})
        expected[index] = objects
    export = pull_export(run, url=server.url, token=server.token)
    result = trainer.add_labels(export)
    assert result.added == QUERY - 1 and result.skipped.tolist() == [skipped["data"]["pool_index"]]

    used = []
    labeled_rows = trainer.examples.labeled_rows

    def recording(indices):  # what the trainings of round 2 (surrogate and fused detector) train on
        rows = labeled_rows(indices)
        used.append(dict(zip(rows.add_column("i", list(indices))["i"], rows["objects"])))
        return rows

    trainer.examples.labeled_rows = recording
    trainer.train(resume_from_checkpoint=True)
    assert trainer.done
    stored = stored_objects(run)
    assert sorted(stored) == sorted(expected) and stored[background["data"]["pool_index"]]["bbox"] == []
    same_boxes(stored, expected)
    assert used and used[-1] == stored  # the fused detector trained on exactly the stored boxes
    annotators = set(datasets.Dataset.from_parquet(str(run / "labeled_objects.parquet"))["annotator"])
    assert annotators == {None, "boxes@example.com"}  # a COCO file names nobody; Label Studio who drew
    dense_init = DETECTION.model_class().from_pretrained(run / "dense_init")
    fused = DETECTION.model_class().from_pretrained(run / "fused")
    assert any(not torch.equal(a, b) for a, b in zip(dense_init.parameters(), fused.parameters()))
    assert trainer.metrics["final"]["labeled"] == INITIAL + QUERY - 1  # the skipped image is not labeled


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, pools):
    """A human detection run stopped at its first query (refused answers leave it as it is)."""
    pool, test, names, _ = pools
    tmp_path = tmp_path_factory.mktemp("stopped")
    trainer = PruneFuseTrainer(
        tiny_detr(), args=human_config(tmp_path, names), train_dataset=pool, eval_dataset=test
    )
    trainer.train()
    return trainer, tmp_path / "run" / "queries" / "round_1"


def _move_first_box(coco):
    coco["annotations"][0]["bbox"] = [40.0, 40.0, 20.0, 20.0]  # past the 48 x 48 image


def _unknown_category(coco):
    coco["categories"][0]["name"] = "zebra"


def _another_image(coco):
    coco["images"][0]["file_name"] = "someone_elses.png"


def _half_labeled(coco):
    kept = {image["id"] for image in coco["images"][:3]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in kept]
    coco["images"] = coco["images"][:3]


@pytest.mark.parametrize(
    "change, message",
    [
        (_move_first_box, r"filled_round_1\.json, .*pool index \d+.*\[40\.0, 40\.0, 20\.0, 20\.0\].*Fix the boxes"),
        (_unknown_category, r"filled_round_1\.json.*'zebra'"),
        (_another_image, r"filled_round_1\.json: 1 labels refer to other images than this run's query.*"
                         r"someone_elses\.png.*ingest the labels of this run's query"),
        (_half_labeled, r"5 of the 8 images queried in round 1 have no boxes.*allow_partial"),
    ],
)  # fmt: skip
def test_refused_answers_name_file_image_value_and_fix_and_store_nothing(stopped, pools, change, message):
    trainer, query = stopped
    run = query.parents[1]
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(LabelError, match=message):
        trainer.add_labels(filled_coco(query, pools[3], change))
    assert sorted(p.name for p in run.iterdir()) == before  # no labeled_objects.parquet


def test_an_export_of_another_runs_images_is_refused(stopped, pools, tmp_path):
    from prunefuse_hf.tasks import write_detection_query

    trainer, query = stopped
    names, truth = pools[2], pools[3]
    other_pool = synthetic_detection_pool(
        POOL_SIZE, items=detection_items(), image_size=48, scales=(16, 24), seed=7
    )
    indices = trainer.progress["queries"]["1"]["pool_indices"]
    other = write_detection_query(tmp_path / "other", other_pool, indices, class_names=names, round=1)
    tasks = json.loads((other / "label_studio_tasks.json").read_text())
    for task in tasks:  # annotated in another project: same pool indices, other images
        index = task["data"]["pool_index"]
        result = detection_prediction({"boxes": truth[index]["bbox"], "labels": truth[index]["category"]}, names,
                                      (48, 48))["result"]  # fmt: skip
        task["annotations"] = [{"id": index + 1, "result": result, "completed_by": 1}]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    with pytest.raises(LabelError, match=r"export\.json: 8 labels refer to other images than this run's query.*"
                                         r"an image \(its data: URI\) with other pixels"):  # fmt: skip
        trainer.add_labels(export)
    with pytest.raises(LabelError, match="a majority of box sets is not defined"):
        trainer.add_labels(filled_coco(query, truth), resolve="majority")


def test_settings_refused_before_any_work(tmp_path, pools):
    pool, test, names, _ = pools
    with pytest.raises(ValueError, match=r"class_names: None.*no 'objects' column.*Set class_names"):
        PruneFuseTrainer(tiny_detr(), args=human_config(tmp_path, None), train_dataset=pool)
    with pytest.raises(
        ValueError, match=r"seed_labels: .* is for image classification runs.*initial_labeled_size"
    ):
        PruneFuseTrainer(
            tiny_detr(), args=human_config(tmp_path, names, seed_labels="seeds.csv"), train_dataset=pool
        )
    with pytest.raises(
        ValueError, match=r"annotation_resolve: 'majority' is for image classification runs.*latest"
    ):
        PruneFuseTrainer(
            tiny_detr(), args=human_config(tmp_path, names, annotation_resolve="majority"), train_dataset=pool
        )
    with pytest.raises(
        ValueError, match=r"evaluation set.*objects"
    ):  # the evaluation set still needs its boxes
        PruneFuseTrainer(
            tiny_detr(), args=human_config(tmp_path, names), train_dataset=pool, eval_dataset=pool
        )
    assert not (tmp_path / "run").exists()
