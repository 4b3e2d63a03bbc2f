"""The ML backend (`LabelStudioBackend`, `prunefuse-hf label-studio backend`) connected to a real Label Studio server
(started by the tests from the virtualenv `scripts/setup.sh` installs) through its API, as Settings -> Model -> Connect
model does: tasks imported by hand get the run's surrogate's guess. Skipped, saying why, when Label Studio is not
installed."""

import base64
import io
import json
import shutil
import socket

import pytest
import requests

from conftest import make_image_dataset, tiny_resnet_config
from prunefuse_hf.annotation.backend import LabelStudioBackend
from prunefuse_hf.annotation.label_studio_api import pull_export, push_query
from prunefuse_hf.annotation.labels import LabelError
from prunefuse_hf.annotation.queries import open_query
from prunefuse_hf.cli.main import main
from prunefuse_hf.tasks import get_task

CLASSES = ["circle", "cross", "square", "triangle"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def trained_run(tmp_path):
    """A run whose round-1 surrogate is trained: it waits for the labels of round 2's query, with guesses."""
    from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer

    data = make_image_dataset(32, num_classes=4, size=16, mode="RGB", seed=5)
    pool = data.remove_columns("label")
    run_dir = tmp_path / "run"
    args = PruneFuseConfig(output_dir=str(run_dir), annotation="human", class_names=CLASSES,
                           initial_labeled_size=8, query_size=6, num_rounds=1, num_train_epochs=1,
                           per_device_train_batch_size=8, disable_tqdm=True)  # fmt: skip
    trainer = PruneFuseTrainer(tiny_resnet_config(num_labels=4), args=args, train_dataset=pool)
    trainer.train()
    _, indices = open_query(run_dir)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "pool_index,label\n" + "".join(f"{i},{CLASSES[data[int(i)]['label']]}\n" for i in indices)
    )
    trainer.add_labels(labels)
    trainer.train(resume_from_checkpoint=True)
    assert open_query(run_dir)[0] == 2
    return run_dir, pool, trainer.progress["queries"]["2"]


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_bad_run_directory_is_refused_before_the_server_starts(tmp_path, capsys):
    missing = tmp_path / "not-a-run"
    with pytest.raises(LabelError, match=rf"{missing} holds no PruneFuse run \(state.json is missing\)"):
        LabelStudioBackend(missing)
    port = _free_port()
    assert main(["label-studio", "backend", str(missing), "--port", str(port)]) == 2
    error = capsys.readouterr().err
    assert str(missing) in error and "pass the output_dir of a run with annotation: human" in error
    with socket.socket() as s:  # nothing listens
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_label_studio_gets_the_surrogates_guess_for_tasks_imported_by_hand(
    label_studio, trained_run, monkeypatch
):
    server = label_studio
    run_dir, pool, query = trained_run
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    woken = []
    backend = LabelStudioBackend(run_dir, on_webhook=woken.append)
    port = _free_port()
    http = backend.serve("127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    try:
        version = f"{run_dir.name}-surrogate-round1"
        assert requests.get(url + "/health", timeout=5).json()["status"] == "UP"
        assert requests.post(url + "/setup", json={"project": "1.0"}, timeout=5).json() == {
            "model_version": version
        }
        project = push_query(run_dir, url=server.url)[
            "project"
        ]  # round 2's tasks, with the run's own guesses
        # Two images of round 2's query imported by hand: one as a data: URI, one as a local file Label Studio serves.
        first, second = query["pool_indices"][:2]
        folder = server.document_root / "by-hand"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "second.png").write_bytes(_png(pool[second]["image"]))
        server.session.post(
            f"{server.url}/api/storages/localfiles",
            json={"project": project, "path": str(folder), "use_blob_urls": False, "title": "by hand"},
        ).raise_for_status()
        by_hand = [
            {"image": "data:image/png;base64," + base64.b64encode(_png(pool[first]["image"])).decode()},
            {"image": "/data/local-files/?d=by-hand/second.png"},
        ]
        server.session.post(f"{server.url}/api/projects/{project}/import", json=by_hand).raise_for_status()
        tasks = [t for t in server.tasks(project) if "round" not in t["data"]]
        assert len(tasks) == 2
        # Settings -> Model -> Connect model: Label Studio calls /health and /setup before it accepts the backend.
        answer = server.session.post(
            f"{server.url}/api/ml", json={"project": project, "url": url, "title": "PruneFuse surrogate"}
        )
        assert answer.status_code == 201, answer.text
        assert answer.json()["state"] == "CO" and answer.json()["model_version"] == version
        # The data manager's "Retrieve Predictions" on every task: one batched /predict call for those without
        # this version's guess (the pushed tasks carry it already: Label Studio does not ask again).
        server.session.post(
            f"{server.url}/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project},
            json={"selectedItems": {"all": True, "excluded": []}},
        ).raise_for_status()
        predictions = {
            t["id"]: server.session.get(f"{server.url}/api/predictions", params={"task": t["id"]}).json()
            for t in server.tasks(project)
        }
    finally:
        http.shutdown()
        http.server_close()
    # The same guess and probability the run computed for these images when it selected them.
    for task, index in zip(sorted(tasks, key=lambda t: t["id"]), (first, second)):
        (prediction,) = predictions[task["id"]]
        k = query["pool_indices"].index(index)
        assert prediction["model_version"] == version
        assert prediction["result"][0]["value"]["choices"] == [CLASSES[query["predictions"][k]]]
        assert (
            prediction["result"][0]["from_name"] == "label" and prediction["result"][0]["to_name"] == "image"
        )
        assert prediction["score"] == pytest.approx(query["prediction_scores"][k], abs=2e-3)
    assert len(predictions) == 8 and all(
        len(p) == 1 and p[0]["model_version"] == version for p in predictions.values()
    )
    assert woken == []
    # A task imported by hand and answered is not one of the run's: the pull keeps the round's own tasks only.
    server.annotate(tasks[0]["id"], server.user("ann1@example.com"), CLASSES[0])
    export = json.loads(pull_export(run_dir, url=server.url).read_text())
    assert sorted(t["data"]["pool_index"] for t in export) == sorted(query["pool_indices"])


def test_the_backend_refuses_a_run_of_another_task_and_wakes_the_loop_on_a_webhook(tmp_path):
    run_dir = tmp_path / "boxes"
    run_dir.mkdir()
    (run_dir / "state.json").write_text(
        json.dumps({"settings": {"task": "object-detection"}, "metric": "map"})
    )
    with pytest.raises(LabelError, match=r"is a object-detection run and no task was given: pass the run's task "
                       r"\(LabelStudioBackend\(run_dir, task=prunefuse_hf.tasks.get_task\('object-detection'\)\)"):  # fmt: skip
        LabelStudioBackend(run_dir)
    with pytest.raises(LabelError, match="is a object-detection run and task 'image-segmentation' was given"):
        LabelStudioBackend(run_dir, task=get_task("image-segmentation"))
    assert LabelStudioBackend(run_dir, task=get_task("object-detection")).task is get_task("object-detection")
    (run_dir / "state.json").write_text(
        json.dumps({"settings": {"method": "dense_al", "pruning_ratio": 0.0}})
    )
    with pytest.raises(
        LabelError, match="selects without a surrogate .method 'dense_al', pruning_ratio 0.*svp"
    ):
        LabelStudioBackend(run_dir)
    shutil.rmtree(run_dir)
    run_dir.mkdir()
    (run_dir / "state.json").write_text(json.dumps({"settings": {}, "metric": "accuracy", "rounds": {}}))
    woken = []
    backend = LabelStudioBackend(run_dir, on_webhook=woken.append)
    port = _free_port()
    http = backend.serve("127.0.0.1", port)
    try:
        url = f"http://127.0.0.1:{port}"
        assert requests.post(url + "/setup", json={}, timeout=5).json() == {
            "model_version": "prunefuse-untrained"
        }
        answer = requests.post(
            url + "/predict", json={"tasks": [{"id": 1, "data": {"image": ""}}]}, timeout=5
        )
        assert answer.json()["results"] == []  # no surrogate trained yet: no guesses
        assert requests.post(url + "/webhook", json={"action": "ANNOTATION_CREATED"}, timeout=5).ok
    finally:
        http.shutdown()
        http.server_close()
    assert woken == [{"action": "ANNOTATION_CREATED"}]


def test_the_backend_command_passes_label_studios_webhooks_on_to_the_loop(tmp_path):
    """`label-studio backend RUN --wake_url URL` in a process of its own: a webhook Label Studio sends to the
    backend's `/webhook` reaches the address of a loop's receiver (here a plain HTTP server recording what
    arrives; `tests/annotation/test_loop.py` shows the loop waking on such a POST)."""
    import os
    import subprocess
    import sys
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    loop = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=loop.serve_forever, daemon=True).start()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "state.json").write_text(json.dumps({"settings": {}, "metric": "accuracy", "rounds": {}}))
    port = _free_port()
    wake_url = f"http://127.0.0.1:{loop.server_address[1]}/"
    argv = ["label-studio", "backend", str(run_dir), "--port", str(port), "--wake_url", wake_url]
    backend = subprocess.Popen([sys.executable, "-m", "prunefuse_hf.cli", *argv], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    try:
        started = backend.stdout.readline()
        assert f"ML backend for {run_dir} at http://127.0.0.1:{port}" in started, started
        answer = requests.post(
            f"http://127.0.0.1:{port}/webhook", json={"action": "ANNOTATION_UPDATED"}, timeout=10
        )
        assert answer.ok
        assert received == [{"action": "ANNOTATION_UPDATED"}]
    finally:
        backend.terminate()
        backend.wait(30)
        loop.shutdown()
        loop.server_close()


def test_label_studio_gets_the_detection_surrogates_boxes_for_a_task_imported_by_hand(
    label_studio, tmp_path, monkeypatch
):
    """A human object-detection run waiting for round 2's boxes: the backend (started by the CLI's rule, the run's
    task) answers Label Studio's `/predict` with the surrogate's boxes as RectangleLabels, the very predictions the
    round's pushed tasks carry for the same image."""
    from conftest import tiny_detr
    from detection_human_run import filled_coco, human_config, human_pools
    from prunefuse_hf import PruneFuseTrainer
    from prunefuse_hf.cli.labeling import run_task

    server = label_studio
    pool, _, names, truth = human_pools()
    trainer = PruneFuseTrainer(tiny_detr(), args=human_config(tmp_path, names, disable_tqdm=True, use_cpu=True),
                               train_dataset=pool)  # fmt: skip
    trainer.train()
    run_dir = trainer.run_dir.path
    trainer.add_labels(filled_coco(run_dir / "queries" / "round_1", truth))
    trainer.train(resume_from_checkpoint=True)
    assert open_query(run_dir)[0] == 2
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    # The run's task, as `label-studio backend` and `pull` read it (pull compares its stored boxes with the project's).
    assert run_task(run_dir) is get_task("object-detection") and run_task(run_dir).stored_answers is not None
    backend = LabelStudioBackend(run_dir, task=run_task(run_dir))
    port = _free_port()
    http = backend.serve("127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    try:
        version = f"{run_dir.name}-surrogate-round1"
        project = push_query(run_dir, url=server.url)["project"]  # round 2's tasks, with the run's own boxes
        pushed = {t["data"]["pool_index"]: t for t in server.round_tasks(project, 2)}
        index = sorted(pushed)[0]
        image = "data:image/png;base64," + base64.b64encode(_png(pool[index]["image"])).decode()
        server.session.post(
            f"{server.url}/api/projects/{project}/import", json=[{"image": image}]
        ).raise_for_status()
        (task,) = [t for t in server.tasks(project) if "round" not in t["data"]]
        answer = server.session.post(
            f"{server.url}/api/ml", json={"project": project, "url": url, "title": "PruneFuse surrogate"}
        )
        assert answer.status_code == 201 and answer.json()["model_version"] == version, answer.text
        server.session.post(
            f"{server.url}/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project},
            json={"selectedItems": {"all": False, "included": [task["id"]]}},
        ).raise_for_status()
        (prediction,) = server.session.get(
            f"{server.url}/api/predictions", params={"task": task["id"]}
        ).json()
        (query_prediction,) = server.session.get(
            f"{server.url}/api/predictions", params={"task": pushed[index]["id"]}
        ).json()
    finally:
        http.shutdown()
        http.server_close()
    assert prediction["model_version"] == version and prediction["result"]
    assert {r["type"] for r in prediction["result"]} == {"rectanglelabels"}
    assert all(r["from_name"] == "label" and r["to_name"] == "image" for r in prediction["result"])
    assert all(r["value"]["rectanglelabels"][0] in names for r in prediction["result"])

    # The same boxes, classes and scores as the query's pre-annotations of that image (percent of the image).
    def shown(result):
        boxes = [[round(r["value"][k], 3) for k in ("x", "y", "width", "height")] for r in result]
        return [(r["value"]["rectanglelabels"], box, r["score"]) for r, box in zip(result, boxes)]

    assert shown(prediction["result"]) == shown(query_prediction["result"])
    assert prediction["score"] == pytest.approx(query_prediction["score"], abs=1e-4)


def test_the_backend_answers_a_segmentation_run_with_brush_masks(tmp_path):
    """A semantic-segmentation run's surrogate answers `/predict` with one RLE brush stroke per class of its mask,
    which decodes to the surrogate's own mask of the image."""
    from transformers import SegformerConfig

    from conftest import detection_items
    from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer
    from prunefuse_hf.data.image_processor import pretrained_image_processor
    from prunefuse_hf.pruning import load_surrogate
    from prunefuse_hf.tasks import decode_brush_rle, segmentation_predictions, synthetic_segmentation_pool

    pool = synthetic_segmentation_pool(16, items=detection_items(), image_size=32, scales=(12, 16), seed=0)
    names = pool.features["classes"].feature.names
    model = SegformerConfig(hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 1, 2], depths=[1, 1, 1, 1],
                            decoder_hidden_size=16, num_labels=len(names),
                            architectures=["SegformerForSemanticSegmentation"])  # fmt: skip
    args = PruneFuseConfig(output_dir=str(tmp_path / "run"), initial_labeled_size=6, query_size=4, num_rounds=1,
                           num_train_epochs=1, per_device_train_batch_size=8, image_size=32, strategy="entropy",
                           disable_tqdm=True, use_cpu=True)  # fmt: skip
    trainer = PruneFuseTrainer(model, args=args, train_dataset=pool)
    trainer.train()
    run_dir = trainer.run_dir.path
    backend = LabelStudioBackend(run_dir, task=get_task("image-segmentation"))
    port = _free_port()
    http = backend.serve("127.0.0.1", port)
    image = "data:image/png;base64," + base64.b64encode(_png(pool[3]["image"])).decode()
    config = ('<View><Image name="photo" value="$img"/><BrushLabels name="paint" toName="photo">'
              + "".join(f'<Label value="{name}"/>' for name in names) + "</BrushLabels></View>")  # fmt: skip
    try:
        answer = requests.post(f"http://127.0.0.1:{port}/predict", timeout=60,
                               json={"tasks": [{"id": 1, "data": {"img": image}}], "label_config": config})  # fmt: skip
    finally:
        http.shutdown()
        http.server_close()
    (prediction,) = answer.json()["results"]
    surrogate = load_surrogate(run_dir / "surrogate")
    (mask,) = segmentation_predictions(surrogate, pretrained_image_processor(run_dir / "surrogate"),
                                       [pool[3]["image"]])  # fmt: skip
    assert prediction["model_version"] == backend.model_version() == f"{run_dir.name}-surrogate-round2"
    painted = {}
    for result in prediction["result"]:
        assert (result["type"], result["from_name"], result["to_name"]) == ("brushlabels", "paint", "photo")
        assert (result["original_width"], result["original_height"]) == (32, 32)
        (name,) = result["value"]["brushlabels"]
        painted[names.index(name)] = decode_brush_rle(result["value"]["rle"], 32, 32) > 0
    assert sorted(painted) == sorted(set(mask.ravel().tolist()))  # one stroke per class the mask holds
    for class_id, stroke in painted.items():
        assert (stroke == (mask == class_id)).all()
