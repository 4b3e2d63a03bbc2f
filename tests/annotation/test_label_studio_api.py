"""A real Label Studio server (started by the tests from the virtualenv `scripts/setup.sh` installs): the run's
query goes in with viewable images and the surrogate's guesses, three annotators answer (one disagrees, one
skips), the export comes back and the run resumes. Skipped, saying why, when Label Studio is not installed."""

import base64
import io
import json
import re
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage

from conftest import make_image_dataset, tiny_resnet_config
from prunefuse_hf.annotation.label_studio_api import pull_export, push_query
from prunefuse_hf.annotation.labels import LabelError
from prunefuse_hf.annotation.store import ingest_labels

CLASSES = ["circle", "cross", "square", "triangle"]
TEAM = ["ann1@example.com", "ann2@example.com", "ann3@example.com"]


def _human_run(pool, output_dir):
    from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer

    args = PruneFuseConfig(output_dir=str(output_dir), annotation="human", class_names=CLASSES,
                           initial_labeled_size=8, query_size=6, num_rounds=1, num_train_epochs=1,
                           per_device_train_batch_size=8, disable_tqdm=True)  # fmt: skip
    trainer = PruneFuseTrainer(tiny_resnet_config(num_labels=4), args=args, train_dataset=pool)
    trainer.train()
    return trainer


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(data)).convert("RGB"))


def _shown_image(server, task) -> bytes:
    """The bytes a browser gets for the task's image (local-file serving, or the data: URI itself)."""
    image = task["data"]["image"]
    if image.startswith("data:"):
        return base64.b64decode(image.split(",", 1)[1])
    answer = server.session.get(server.url + image)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("image/"), image
    return answer.content


def _team_answers(server, tasks, truth, ground_truth=False):
    """ann1 answers all but the last task; ann2 the first three, wrong on the first; ann3 the first (right, as
    ground truth when asked) and skips the last. Returns the disputed and the skipped pool index."""
    users = [server.user(email) for email in TEAM]
    for task in tasks[:-1]:
        server.annotate(task["id"], users[0], truth[task["data"]["pool_index"]])
    for k, task in enumerate(tasks[:3]):
        right = truth[task["data"]["pool_index"]]
        server.annotate(task["id"], users[1], CLASSES[(CLASSES.index(right) + 1) % 4] if k == 0 else right)
    server.annotate(
        tasks[0]["id"], users[2], truth[tasks[0]["data"]["pool_index"]], ground_truth=ground_truth
    )
    server.annotate(tasks[-1]["id"], users[2], None)
    return tasks[0]["data"]["pool_index"], tasks[-1]["data"]["pool_index"]


def test_image_folder_pool_two_rounds_with_three_annotators(label_studio, tmp_path, monkeypatch, capsys):
    from prunefuse_hf.cli.main import main

    server = label_studio
    folder = server.document_root / "pool"
    pool_data = make_image_dataset(40, num_classes=4, size=16, mode="RGB", seed=3)
    folder.mkdir(parents=True)
    truth = {}
    for i, row in enumerate(pool_data):
        row["image"].save(folder / f"img_{i:03d}.png")
    pool = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
    paths = [item["path"] for item in pool.cast_column("image", datasets.Image(decode=False))["image"]]
    truth = {i: CLASSES[pool_data[int(Path(p).stem.split("_")[1])]["label"]] for i, p in enumerate(paths)}
    run_dir = tmp_path / "run"
    trainer = _human_run(pool, run_dir)
    assert trainer.awaiting_labels == 1
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(server.document_root))

    assert main(["label-studio", "push", str(run_dir), "--url", server.url]) == 0
    assert "8 tasks imported" in capsys.readouterr().out
    assert main(["label-studio", "push", str(run_dir), "--url", server.url]) == 0  # again: nothing twice
    assert "0 tasks imported" in capsys.readouterr().out
    project = json.loads((run_dir / "label_studio.json").read_text())["project"]
    tasks = server.round_tasks(project, 1)
    assert len(tasks) == 8
    for task in tasks:  # every image shows: served from the pool folder, byte for byte
        assert task["data"]["image"].startswith("/data/local-files/?d=pool/img_")
        assert _shown_image(server, task) == Path(paths[task["data"]["pool_index"]]).read_bytes()
    disputed, skipped = _team_answers(server, tasks, truth)

    before = sorted(p.name for p in run_dir.iterdir())
    assert main(["label-studio", "pull", str(run_dir), "--url", server.url]) == 2
    error = capsys.readouterr().err
    assert f"(pool_index {disputed}): " in error and "ann2@example.com" in error and "--resolve" in error
    assert sorted(p.name for p in run_dir.iterdir()) == before  # refused: no labels.parquet

    assert main(["label-studio", "pull", str(run_dir), "--url", server.url, "--resolve", "majority"]) == 0
    out = capsys.readouterr().out
    assert "7 labels added" in out and "7 of 8 queried examples labeled, 1 skipped" in out
    rows = {row["pool_index"]: row for row in pq.read_table(run_dir / "labels.parquet").to_pylist()}
    assert {i: CLASSES[row["label"]] for i, row in rows.items()} == {i: truth[i] for i in rows}
    assert rows[disputed]["num_answers"] == 3 and rows[disputed]["resolution"] == "majority"
    assert rows[disputed]["annotator"] == "ann3@example.com"  # the latest of the two who agree
    assert [rows[t["data"]["pool_index"]]["resolution"] for t in tasks[1:3]] == ["agreed", "agreed"]
    assert [rows[t["data"]["pool_index"]]["resolution"] for t in tasks[3:-1]] == ["single"] * 4
    assert skipped not in rows

    trainer.train(resume_from_checkpoint=True)
    assert trainer.awaiting_labels == 2
    query = trainer.progress["queries"]["2"]
    assert skipped not in query["pool_indices"]  # a skipped image is not queried again
    assert main(["label-studio", "push", str(run_dir), "--url", server.url]) == 0
    assert "6 tasks imported" in capsys.readouterr().out
    tasks = server.round_tasks(project, 2)
    run_name = run_dir.name
    for task in tasks:  # each task carries the surrogate's guess and score
        (prediction,) = server.session.get(f"{server.url}/api/tasks/{task['id']}").json()["predictions"]
        j = query["pool_indices"].index(task["data"]["pool_index"])
        assert prediction["model_version"] == f"{run_name}-surrogate-round1"
        assert prediction["result"][0]["value"]["choices"] == [CLASSES[query["predictions"][j]]]
        assert prediction["score"] == pytest.approx(query["prediction_scores"][j], abs=1e-4)
    disputed, skipped_2 = _team_answers(server, tasks, truth, ground_truth=True)
    assert main(["label-studio", "pull", str(run_dir), "--url", server.url, "--resolve", "ground_truth"]) == 0
    assert "5 of 6 queried examples labeled, 1 skipped" in capsys.readouterr().out
    rows = {row["pool_index"]: row for row in pq.read_table(run_dir / "labels.parquet").to_pylist()}
    assert rows[disputed]["resolution"] == "ground_truth" and rows[disputed]["round"] == 2

    trainer.train(resume_from_checkpoint=True)
    assert trainer.done
    report = (run_dir / "report.md").read_text()
    assert "| 1 | 7 | 3 | 3 | 2 (67%) | majority 1 | 1 |" in report, report
    assert "| 2 | 5 | 3 | 3 | 2 (67%) | ground_truth 1 | 1 |" in report


def test_dataset_pool_images_travel_as_data_uris(label_studio, tmp_path, monkeypatch):
    server = label_studio
    pool_data = make_image_dataset(32, num_classes=4, size=16, mode="RGB", seed=5)
    truth = {i: CLASSES[y] for i, y in enumerate(pool_data["label"])}
    pool = pool_data.remove_columns("label")
    run_dir = tmp_path / "run"
    _human_run(pool, run_dir)
    # A personal access token this time: exchanged for a short-lived access token by the client.
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.personal_access_token())
    monkeypatch.delenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", raising=False)

    result = push_query(run_dir, url=server.url, title="dataset pool")
    assert (result["round"], result["imported"], result["local_files"]) == (1, 8, 0)
    tasks = server.round_tasks(result["project"], 1)
    for task in tasks:
        shown = _shown_image(server, task)
        expected = pool_data[task["data"]["pool_index"]]["image"].convert("RGB")
        np.testing.assert_array_equal(_decoded(shown), np.asarray(expected))
    disputed, skipped = _team_answers(server, tasks, truth)
    export = pull_export(run_dir, url=server.url)
    with pytest.raises(LabelError, match=rf"pool_index {disputed}\): '\w+' by ann1@example.com"):
        ingest_labels(run_dir, export)
    added = ingest_labels(run_dir, export, resolve="latest", requery_skipped=True)
    assert (added.added, added.skipped.tolist()) == (7, [skipped])
    record = json.loads((run_dir / "queries" / "round_1" / "skipped.json").read_text())
    assert (record["pool_index"], record["requery"]) == ([skipped], True)  # later rounds may query it again
    rows = {row["pool_index"]: row for row in pq.read_table(run_dir / "labels.parquet").to_pylist()}
    assert rows[disputed]["annotator"] == "ann3@example.com" and rows[disputed]["resolution"] == "latest"


def test_unreachable_server_and_missing_token_are_named(tmp_path, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    from prunefuse_hf.annotation.label_studio_api import LabelStudioClient

    with pytest.raises(LabelError, match="No Label Studio token: set LABEL_STUDIO_API_KEY"):
        LabelStudioClient("http://127.0.0.1:9")
    client = LabelStudioClient("http://127.0.0.1:9", token="x", timeout=2)
    with pytest.raises(LabelError, match=re.escape("Label Studio at http://127.0.0.1:9 cannot be reached")):
        client.get("/api/version")


def test_pull_and_add_labels_follow_the_runs_policy_and_report_labels_edited_after_the_pull(
    label_studio, tmp_path, monkeypatch, capsys
):
    from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer
    from prunefuse_hf.cli.main import main

    server = label_studio
    pool_data = make_image_dataset(32, num_classes=4, size=16, mode="RGB", seed=5)
    truth = {i: CLASSES[y] for i, y in enumerate(pool_data["label"])}
    run_dir = tmp_path / "run"
    pool_data.remove_columns("label").save_to_disk(str(tmp_path / "pool"))
    pool = datasets.load_from_disk(str(tmp_path / "pool"))
    args = PruneFuseConfig(output_dir=str(run_dir), annotation="human", class_names=CLASSES,
                           initial_labeled_size=8, query_size=6, num_rounds=1, num_train_epochs=1,
                           per_device_train_batch_size=8, disable_tqdm=True, annotation_resolve="majority")  # fmt: skip
    # A run started from Python (no recipe): `label-studio pull` reads the policy the run recorded.
    trainer = PruneFuseTrainer(tiny_resnet_config(num_labels=4), args=args, train_dataset=pool)
    trainer.train()
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    project = push_query(run_dir, url=server.url)["project"]
    tasks = server.round_tasks(project, 1)
    disputed, _ = _team_answers(server, tasks, truth)
    assert trainer.add_labels(pull_export(run_dir, url=server.url)).added == 7  # no resolve given: the run's
    rows = {row["pool_index"]: row for row in pq.read_table(run_dir / "labels.parquet").to_pylist()}
    assert rows[disputed]["resolution"] == "majority"

    trainer.train(resume_from_checkpoint=True)
    push_query(run_dir, url=server.url)
    disputed_2, _ = _team_answers(server, server.round_tasks(project, 2), truth)
    # An annotator changes a round-1 answer after the run pulled (and trained on) it.
    edited = tasks[3]
    index = edited["data"]["pool_index"]
    (annotation,) = server.session.get(f"{server.url}/api/tasks/{edited['id']}/annotations").json()
    wrong = CLASSES[(CLASSES.index(truth[index]) + 1) % 4]
    result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [wrong]}}]
    server.session.patch(
        f"{server.url}/api/annotations/{annotation['id']}", json={"result": result}
    ).raise_for_status()

    assert main(["label-studio", "pull", str(run_dir), "--url", server.url]) == 0
    out = capsys.readouterr().out
    assert "answers that disagree: the run's annotation_resolve (majority) decides" in out
    assert "5 of 6 queried examples labeled, 1 skipped" in out
    assert "1 labels of earlier rounds were changed in Label Studio after they were pulled:" in out
    assert (
        f"task {edited['id']} (pool_index {index}, round 1): stored {truth[index]!r} by ann1@example.com (annotation "
        f"{annotation['id']}); since then edited to {wrong!r} by " in out
    ), out
    assert "The stored labels stay" in out and "seed_labels" in out
    rows = {row["pool_index"]: row for row in pq.read_table(run_dir / "labels.parquet").to_pylist()}
    assert CLASSES[rows[index]["label"]] == truth[index] and rows[index]["round"] == 1  # kept as stored
    assert rows[disputed_2]["resolution"] == "majority" and rows[disputed_2]["round"] == 2


def _task(task_id, annotations):
    return {"id": task_id, "data": {"pool_index": 2, "round": 1},
            "annotations": [{"id": i, "updated_at": at, "completed_by": {"id": 1, "email": "a@x"},
                             "result": [{"type": "choices", "from_name": "label", "to_name": "image",
                                         "value": {"choices": [answer]}}]}
                            for i, answer, at in annotations]}  # fmt: skip


def test_edits_are_judged_against_the_pulled_export_not_the_clocks(tmp_path):
    """An answer that was in the export the run pulled, as it was, is never an edit, even when Label Studio dates it
    in the same second as the label's `labeled_at` or its clock runs ahead of this machine's; an answer edited,
    added or deleted since that pull is reported."""
    import pyarrow as pa

    from prunefuse_hf.annotation.label_studio_api import label_edits
    from prunefuse_hf.annotation.queries import query_directory

    run_dir = tmp_path / "run"
    query_directory(run_dir, 1).mkdir(parents=True)
    (run_dir / "state.json").write_text(json.dumps({"class_names": CLASSES}))
    # The stored label: 'circle' (annotation 10, majority of 10 and 12 against 11), stored at 12:00:00 (whole seconds).
    row = {"pool_index": 2, "label": 0, "round": 1, "source": "label_studio_export.json",
           "labeled_at": "2026-12-05T12:00:00Z", "annotator": "a@x", "annotation_id": 10}  # fmt: skip
    pq.write_table(pa.Table.from_pylist([row]), run_dir / "labels.parquet")
    # Dated after labeled_at although given before the pull: the same second, and a server clock 5 minutes ahead.
    pulled = [_task(31, [(10, "circle", "2026-12-05T12:00:00.300Z"), (11, "cross", "2026-12-05T12:00:00.700Z"),
                         (12, "circle", "2026-12-05T12:05:00Z")])]  # fmt: skip
    (query_directory(run_dir, 1) / "label_studio_export.json").write_text(json.dumps(pulled))
    assert label_edits(run_dir, pulled) == []

    edited = [_task(31, [(10, "circle", "2026-12-05T12:00:00.300Z"), (11, "square", "2026-12-05T12:00:00.900Z"),
                         (12, "circle", "2026-12-05T12:05:00Z"), (13, "triangle", "2026-12-05T11:00:00Z")])]  # fmt: skip
    (line,) = label_edits(run_dir, edited)
    assert (
        "answered 'square'" in line and "annotation 11" in line
    )  # edited since the pull (same clock second)
    assert "answered 'triangle'" in line and "annotation 13" in line  # new since the pull (clock behind)
    deleted = [_task(31, [(11, "cross", "2026-12-05T12:00:00.700Z")])]
    (line,) = label_edits(run_dir, deleted)
    assert "annotation 10 was deleted" in line and "'cross'" not in line

    # Labels from an export downloaded by hand (no pulled export for the round): Label Studio's dates, with the
    # second `labeled_at` does not resolve.
    (query_directory(run_dir, 1) / "label_studio_export.json").unlink()
    later = [
        _task(31, [(10, "circle", "2026-12-05T12:00:00.300Z"), (11, "cross", "2026-12-05T12:00:01.200Z")])
    ]
    assert "answered 'cross'" in label_edits(run_dir, later)[0]
    same_second = [
        _task(31, [(10, "circle", "2026-12-05T12:00:00.300Z"), (11, "cross", "2026-12-05T12:00:00.700Z")])
    ]
    assert label_edits(run_dir, same_second) == []


def test_pull_reports_boxes_edited_after_the_pull_of_a_detection_run(
    label_studio, tmp_path, monkeypatch, capsys
):
    """`label-studio pull` of a human object-detection run: round 1's boxes come from the project, then an annotator
    moves a box of round 1 in Label Studio; the next pull names that image, the stored boxes and the new ones, and
    keeps the stored boxes."""
    from conftest import tiny_detr
    from detection_human_run import human_config, human_pools, stored_objects
    from prunefuse_hf import PruneFuseTrainer
    from prunefuse_hf.cli.main import main
    from prunefuse_hf.tasks import detection_prediction
    from prunefuse_hf.tasks.detection_exports import describe_objects

    server = label_studio
    pool, _, names, truth = human_pools()
    trainer = PruneFuseTrainer(tiny_detr(), args=human_config(tmp_path, names, disable_tqdm=True, use_cpu=True),
                               train_dataset=pool)  # fmt: skip
    trainer.train()
    run_dir = trainer.run_dir.path
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    user = server.user(TEAM[0])

    def draw(task, objects):
        result = detection_prediction(
            {"boxes": objects["bbox"], "labels": objects["category"]}, names, (48, 48)
        )
        answer = server.session.post(f"{server.url}/api/tasks/{task}/annotations",
                                     json={"completed_by": user, "result": result["result"], "lead_time": 1.0})  # fmt: skip
        answer.raise_for_status()
        return answer.json()["id"]

    assert main(["label-studio", "push", str(run_dir), "--url", server.url]) == 0
    project = json.loads((run_dir / "label_studio.json").read_text())["project"]
    tasks = server.round_tasks(project, 1)
    ids = {task["data"]["pool_index"]: draw(task["id"], truth[task["data"]["pool_index"]]) for task in tasks}
    assert main(["label-studio", "pull", str(run_dir), "--url", server.url]) == 0
    assert "labels of earlier rounds were changed" not in capsys.readouterr().out
    trainer.train(resume_from_checkpoint=True)
    assert main(["label-studio", "push", str(run_dir), "--url", server.url]) == 0
    for task in server.round_tasks(project, 2):
        draw(task["id"], truth[task["data"]["pool_index"]])
    # Round 1 was pulled and trained on: its first image's first box is moved by a pixel.
    index = tasks[0]["data"]["pool_index"]
    x, y, w, h = truth[index]["bbox"][0]
    moved = {"bbox": [[x + 1.0 if x + w < 48 else x - 1.0, y, w, h], *truth[index]["bbox"][1:]],
             "category": truth[index]["category"]}  # fmt: skip
    result = detection_prediction({"boxes": moved["bbox"], "labels": moved["category"]}, names, (48, 48))
    server.session.patch(
        f"{server.url}/api/annotations/{ids[index]}", json={"result": result["result"]}
    ).raise_for_status()
    before = stored_objects(run_dir)[index]

    assert main(["label-studio", "pull", str(run_dir), "--url", server.url]) == 0
    out = capsys.readouterr().out
    assert "1 labels of earlier rounds were changed in Label Studio after they were pulled:" in out, out
    assert (
        f"task {tasks[0]['id']} (pool_index {index}, round 1): stored {describe_objects(truth[index], names)} by "
        f"{TEAM[0]} (annotation {ids[index]}); since then edited to {describe_objects(moved, names)} by "
        in out
    ), out
    assert "label its queries with the corrected boxes" in out and "6 labels added" in out
    assert stored_objects(run_dir)[index] == before  # the stored boxes stay
