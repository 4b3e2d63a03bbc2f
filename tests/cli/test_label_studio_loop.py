"""`prunefuse-hf label-studio loop --config RECIPE.yaml` against a real Label Studio server: a folder of unlabeled
images labeled in two rounds while the command waits (in a process of its own), Ctrl-C mid-round, the same command
again to the fused model; the object-detection recipe's boxes drawn in two rounds, answers that disagree settled by
`--annotation_resolve latest`. Skipped, saying why, when Label Studio is not installed."""

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import unlabeled_image_folder
from prunefuse_hf.cli.main import main

CLASSES = ["circle", "cross", "square", "triangle"]
RECIPE = """
model_config: {{model_type: resnet, num_channels: 3, embedding_size: 16, hidden_sizes: [16, 32], depths: [1, 1]}}
dataset_name: {images}
eval_split: null
annotation: human
class_names: [circle, cross, square, triangle]
initial_labeled_size: 8
query_size: 6
num_rounds: 1
num_train_epochs: 1
per_device_train_batch_size: 8
disable_tqdm: true
output_dir: {run_dir}
seed: 3
"""


class Loop:
    """`prunefuse-hf label-studio loop` in a process of its own, its stderr read line by line as it comes."""

    def __init__(self, argv, env):
        self.process = subprocess.Popen([sys.executable, "-m", "prunefuse_hf.cli", *argv], env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in self.lines if text in line), None)
            if found:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.process.kill()
        raise AssertionError(f"no line with {text!r}; stderr so far:\n" + "\n".join(self.lines))

    def finish(self, timeout: float = 120.0) -> tuple[int, str, str]:
        out = self.process.stdout.read() if self.process.wait(timeout) is not None else ""
        self.reader.join(10)
        return self.process.returncode, out, "\n".join(self.lines)


def test_one_command_labels_a_folder_in_rounds_and_survives_ctrl_c(label_studio, tmp_path):
    import os

    server = label_studio
    truth = unlabeled_image_folder(tmp_path / "images", num_images=30, seed=2)
    run_dir = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(images=tmp_path / "images", run_dir=run_dir))
    env = {**os.environ, "LABEL_STUDIO_API_KEY": server.token, "HF_HUB_OFFLINE": "1"}
    argv = ["label-studio", "loop", "--config", str(recipe), "--url", server.url, "--poll_interval", "0.2"]
    user = server.user("ann1@example.com")

    def answer(task):
        server.annotate(task["id"], user, CLASSES[truth[Path(task["data"]["image_path"]).name]])

    loop = Loop(argv, env)
    tasks = server.wait_for_round(run_dir, 1, 8)
    for task in tasks[:2]:
        answer(task)
    loop.wait_for("round 1: 2 annotated, 0 skipped of 8 tasks (6 to go); annotators: ann1@example.com")
    loop.process.send_signal(signal.SIGINT)  # Ctrl-C while it waits
    code, _, err = loop.finish()
    assert code == 130, err
    assert f"Stopped. The run in {run_dir} is whole: start the loop again to pick up where it was." in err
    assert "prunefuse-hf label-studio: interrupted" in err and "Traceback" not in err
    assert not (run_dir / "labels.parquet").exists()

    # The same command again; this time Label Studio's webhook wakes it (a poll only every 60 s).
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    argv[-1] = "60"
    loop = Loop(argv + ["--webhook_port", str(port)], env)
    loop.wait_for("round 1: 0 tasks sent to")
    loop.wait_for(f"calls http://127.0.0.1:{port}/: the loop wakes at every answer")
    loop.wait_for("round 1: 2 annotated")
    for task in tasks[2:]:
        answer(task)
    server.annotate(
        tasks[2]["id"], server.user("ann2@example.com"), None
    )  # a skip beside an answer: answered
    loop.wait_for("round 1: 8 labels added, 0 skipped; resuming the run")
    for task in server.wait_for_round(run_dir, 2, 6):
        answer(task)
    code, out, err = loop.finish()
    assert code == 0, err
    assert "final model: 14 labeled examples" in out and f"fused model: {run_dir / 'fused'}" in out
    assert "round 2: 6 annotated, 0 skipped of 6 tasks (0 to go); annotators: ann1@example.com" in err
    stored = pq.read_table(run_dir / "labels.parquet").to_pydict()
    assert sorted(set(stored["round"])) == [1, 2] and len(stored["pool_index"]) == 14
    state = json.loads((run_dir / "state.json").read_text())
    assert state["resume_command"].startswith("prunefuse-hf label-studio loop --config")


def test_the_loop_refuses_a_simulated_recipe_and_overwrite(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        RECIPE.format(images=tmp_path, run_dir=tmp_path / "run").replace("annotation: human", "")
    )
    assert main(["label-studio", "loop", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "label-studio loop drives a run whose labels come from people (annotation: human)" in err
    recipe.write_text(RECIPE.format(images=tmp_path, run_dir=tmp_path / "run"))
    assert main(["label-studio", "loop", "--config", str(recipe), "--overwrite"]) == 2
    assert "always continues the run" in capsys.readouterr().err
    assert main(["label-studio", "loop", "--config", str(recipe), "--poll_interval", "0"]) == 2
    assert "--poll_interval must be > 0" in capsys.readouterr().err


# The same loop with boxes runs by default in tests/annotation/test_loop.py; the command around it above.
@pytest.mark.slow
def test_one_command_labels_boxes_of_the_detection_recipe_answers_that_disagree_settled_by_latest(
    label_studio, tmp_path, monkeypatch, capsys
):
    import _thread

    from prunefuse_hf.tasks import detection_prediction

    server = label_studio
    run_dir = tmp_path / "run"
    recipe = Path(__file__).parents[2] / "recipes" / "synthetic-detection-detr" / "prunefuse.yaml"
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    argv = ["label-studio", "loop", "--config", str(recipe), "--url", server.url, "--poll_interval", "0.2",
            "--title", "boxes", "--output_dir", str(run_dir), "--annotation", "human", "--annotation_resolve",
            "latest", "--max_pool_size", "24", "--max_eval_samples", "6", "--image_size", "48",
            "--initial_labeled_size", "6", "--query_size", "4", "--num_rounds", "1", "--num_train_epochs", "1"]  # fmt: skip
    users = [server.user("boxes1@example.com"), server.user("boxes2@example.com")]
    given, failure = {}, []

    def draw(task, user, box, category, size):
        result = detection_prediction({"boxes": [box], "labels": [category]}, ["0", "1", "2"], size)["result"]
        answer = server.session.post(f"{server.url}/api/tasks/{task['id']}/annotations",
                                     json={"completed_by": user, "result": result, "lead_time": 1.0})  # fmt: skip
        answer.raise_for_status()

    def annotators():
        try:
            for round_, count in ((1, 6), (2, 4)):
                tasks = server.wait_for_round(run_dir, round_, count, timeout=90)
                coco = json.loads((run_dir / "queries" / f"round_{round_}" / "annotations.json").read_text())
                sizes = {image["pool_index"]: (image["width"], image["height"]) for image in coco["images"]}
                for k, task in enumerate(tasks):
                    index = task["data"]["pool_index"]
                    width, height = sizes[index]
                    box = [4.0, 6.0, width / 2, height / 3]
                    draw(task, users[0], box, index % 3, (width, height))
                    if k == 0:  # a second, later answer with another box: `latest` keeps it
                        box = [8.0, 6.0, width / 4, height / 3]
                        draw(task, users[1], box, (index + 1) % 3, (width, height))
                    given[index] = {"bbox": [box], "category": [index % 3 if k else (index + 1) % 3]}
        except BaseException as error:  # noqa: BLE001 (handed to the test thread)
            failure.append(error)
            _thread.interrupt_main()

    thread = threading.Thread(target=annotators, daemon=True)
    thread.start()
    code = main(argv)
    thread.join(30)
    assert not failure, failure
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "final model: 10 labeled examples, map " in captured.out
    assert "round 1: 6 labels added, 0 skipped; resuming the run" in captured.err
    assert "have answers that disagree" not in captured.err
    stored = pq.read_table(run_dir / "labeled_objects.parquet").to_pylist()
    assert sorted(row["pool_index"] for row in stored) == sorted(given)
    for row in stored:  # the boxes drawn, to a thousandth of a pixel (Label Studio keeps percents)
        objects = given[row["pool_index"]]
        assert row["objects"]["category"] == objects["category"]
        assert all(abs(a - b) < 1e-3 for a, b in zip(row["objects"]["bbox"][0], objects["bbox"][0]))
    assert sum(row["resolution"] == "latest" for row in stored) == 2  # one disputed image per round
