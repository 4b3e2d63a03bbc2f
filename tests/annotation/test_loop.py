"""`label_studio_loop` against a real Label Studio server (started by the tests from the virtualenv
`scripts/setup.sh` installs): the loop drives a two-round run while a team annotates through the API (one skip, one
disagreement fixed in Label Studio mid-round); stopped mid-round (Ctrl-C) and started again it picks up; an
unreachable server is tried again and named. Skipped, saying why, when Label Studio is not installed."""

import _thread
import json
import threading
import time

import pyarrow.parquet as pq
import pytest

from conftest import make_image_dataset, tiny_resnet_config
from prunefuse_hf.annotation.label_studio_api import LabelStudioUnreachable
from prunefuse_hf.annotation.loop import label_studio_loop
from prunefuse_hf.annotation.queries import open_query

CLASSES = ["circle", "cross", "square", "triangle"]
TEAM = ["ann1@example.com", "ann2@example.com", "ann3@example.com"]
POLL = 0.2


@pytest.fixture
def pool_and_truth():
    data = make_image_dataset(32, num_classes=4, size=16, mode="RGB", seed=5)
    return data.remove_columns("label"), {i: CLASSES[y] for i, y in enumerate(data["label"])}


def _trainer(pool, run_dir):
    from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer

    args = PruneFuseConfig(output_dir=str(run_dir), annotation="human", class_names=CLASSES,
                           initial_labeled_size=8, query_size=6, num_rounds=1, num_train_epochs=1,
                           per_device_train_batch_size=8, disable_tqdm=True)  # fmt: skip
    return PruneFuseTrainer(tiny_resnet_config(num_labels=4), args=args, train_dataset=pool)


class Team:
    """People working in the browser (through the same API), on a thread beside the loop. `script(team)` runs on
    that thread; a failure there stops the loop (as Ctrl-C would) and is raised again by `check()`."""

    def __init__(self, server, run_dir, script):
        self.server, self.run_dir, self.script = server, run_dir, script
        self.messages: list[str] = []
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def report(self, message: str) -> None:  # the loop's report callback
        self.messages.append(message)

    def _run(self):
        try:
            self.script(self)
        except BaseException as error:  # noqa: BLE001 (handed to the test thread)
            self.error = error
            _thread.interrupt_main()

    def check(self):
        self.thread.join(30)
        if self.error is not None:
            raise self.error

    def wait_for(self, predicate, what: str, timeout: float = 90.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"waited {timeout} s for {what}; the loop said: {self.messages}")

    def said(self, text: str) -> str | None:
        return next((m for m in self.messages if text in m), None)

    def round_tasks(self, round_: int, count: int) -> list[dict]:
        """The round's tasks once all `count` are in the project (sorted by pool index)."""
        return self.server.wait_for_round(self.run_dir, round_, count, timeout=90.0)

    def user(self, k: int) -> int:
        return self.server.user(TEAM[k])


def test_the_loop_runs_two_rounds_with_a_skip_and_a_disagreement_fixed_mid_round(
    label_studio, tmp_path, monkeypatch, pool_and_truth
):
    server = label_studio
    pool, truth = pool_and_truth
    run_dir = tmp_path / "run"
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    found = {}

    def script(team):
        tasks = team.round_tasks(1, 8)
        for task in tasks[:-1]:
            server.annotate(task["id"], team.user(0), truth[task["data"]["pool_index"]])
        disputed = tasks[0]["data"]["pool_index"]
        wrong = CLASSES[(CLASSES.index(truth[disputed]) + 1) % 4]
        wrong_id = server.annotate(tasks[0]["id"], team.user(1), wrong)
        server.annotate(tasks[-1]["id"], team.user(2), None)  # a skip
        found.update(disputed=disputed, skipped=tasks[-1]["data"]["pool_index"])
        # The loop names the conflict and waits; the team deletes the wrong answer in Label Studio.
        team.wait_for(lambda: team.said("have answers that disagree"), "the conflict")
        time.sleep(3 * POLL)  # the loop keeps waiting meanwhile
        assert open_query(run_dir)[0] == 1 and not (run_dir / "labels.parquet").exists()
        server.session.delete(f"{server.url}/api/annotations/{wrong_id}").raise_for_status()
        round_2 = team.round_tasks(2, 6)
        # Round 1 was pulled and trained on: an annotator now changes one of its answers in Label Studio.
        edited = tasks[1]
        (annotation,) = server.session.get(f"{server.url}/api/tasks/{edited['id']}/annotations").json()
        right = truth[edited["data"]["pool_index"]]
        new = CLASSES[(CLASSES.index(right) + 1) % 4]
        result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [new]}}]
        server.session.patch(
            f"{server.url}/api/annotations/{annotation['id']}", json={"result": result}
        ).raise_for_status()
        found.update(edited=edited, old=right, new=new)
        for task in round_2:
            server.annotate(task["id"], team.user(0), truth[task["data"]["pool_index"]])

    trainer = _trainer(pool, run_dir)
    team = Team(server, run_dir, script)
    team.thread.start()
    try:
        label_studio_loop(trainer, url=server.url, poll_interval=POLL, report=team.report)
    finally:
        team.check()
    edits = [m for m in team.messages if "changed in Label Studio after they were pulled" in m]
    assert len(edits) == 1, team.messages  # said once, not at every poll
    edited = found["edited"]
    assert (
        f"task {edited['id']} (pool_index {edited['data']['pool_index']}, round 1): stored {found['old']!r} by "
        f"ann1@example.com"
        in edits[0]
        and f"since then edited to {found['new']!r}" in edits[0]
    )
    assert "The stored labels stay" in edits[0]

    assert (
        trainer.done and (run_dir / "fused" / "config.json").is_file() and (run_dir / "report.md").is_file()
    )
    messages = team.messages
    assert sum("have answers that disagree" in m for m in messages) == 1, (
        messages
    )  # said once, not every poll
    conflict = team.said("have answers that disagree")
    assert f"(pool_index {found['disputed']}): " in conflict and "ann2@example.com" in conflict
    assert f"{server.url}/projects/" in conflict and "annotation_resolve" in conflict
    assert (
        "round 1: 7 annotated, 1 skipped of 8 tasks (0 to go); annotators: ann1@example.com, ann2@example.com, "
        "ann3@example.com" in messages
    )
    assert "round 1: 7 labels added, 1 skipped; resuming the run" in messages
    assert "round 2: 6 annotated, 0 skipped of 6 tasks (0 to go); annotators: ann1@example.com" in messages
    assert "round 2: 6 labels added, 0 skipped; resuming the run" in messages
    assert any(m.startswith("round 2: 6 tasks sent to") for m in messages)
    rows = {row["pool_index"]: row for row in pq.read_table(run_dir / "labels.parquet").to_pylist()}
    assert len(rows) == 13 and {i: CLASSES[row["label"]] for i, row in rows.items()} == {
        i: truth[i] for i in rows
    }  # the edited answer is reported, the stored label kept
    assert rows[found["disputed"]]["annotator"] == "ann1@example.com"
    assert rows[found["disputed"]]["resolution"] == "single"  # the wrong answer was deleted
    assert found["skipped"] not in rows
    assert found["skipped"] not in trainer.progress["queries"]["2"]["pool_indices"]
    project = json.loads((run_dir / "label_studio.json").read_text())["project"]
    assert len(server.tasks(project)) == 14  # each round's tasks once


def test_a_loop_stopped_mid_round_picks_up_where_it_was(label_studio, tmp_path, monkeypatch, pool_and_truth):
    server = label_studio
    pool, truth = pool_and_truth
    run_dir = tmp_path / "run"
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)

    def first_half(team):
        for task in team.round_tasks(1, 8)[:3]:
            server.annotate(task["id"], team.user(0), truth[task["data"]["pool_index"]])
        team.wait_for(lambda: team.said("round 1: 3 annotated"), "the loop to see 3 answers")
        _thread.interrupt_main()  # Ctrl-C

    team = Team(server, run_dir, first_half)
    team.thread.start()
    with pytest.raises(KeyboardInterrupt):
        label_studio_loop(_trainer(pool, run_dir), url=server.url, poll_interval=POLL, report=team.report)
    team.check()
    assert (
        team.messages[-1]
        == f"Stopped. The run in {run_dir} is whole: start the loop again to pick up where it was."
    )
    assert open_query(run_dir)[0] == 1 and not (run_dir / "labels.parquet").exists()

    def second_half(team):
        for task in team.round_tasks(1, 8)[3:]:
            server.annotate(task["id"], team.user(1), truth[task["data"]["pool_index"]])
        for task in team.round_tasks(2, 6):
            server.annotate(task["id"], team.user(1), truth[task["data"]["pool_index"]])

    trainer = _trainer(pool, run_dir)  # a new process would build it again from the recipe
    team = Team(server, run_dir, second_half)
    team.thread.start()
    try:
        label_studio_loop(trainer, url=server.url, poll_interval=POLL, report=team.report)
    finally:
        team.check()
    assert trainer.done
    assert any(
        m.startswith("round 1: 0 tasks sent to") and "(8 were already there)" in m for m in team.messages
    )
    rows = pq.read_table(run_dir / "labels.parquet").to_pydict()
    assert len(rows["pool_index"]) == 14
    assert sorted(set(rows["annotator"])) == ["ann1@example.com", "ann2@example.com"]
    project = json.loads((run_dir / "label_studio.json").read_text())["project"]
    assert len(server.tasks(project)) == 14


def test_an_unreachable_server_is_tried_again_then_named(tmp_path, monkeypatch, pool_and_truth):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "any-token")
    run_dir = tmp_path / "run"
    messages = []
    trainer = _trainer(pool_and_truth[0], run_dir)
    with pytest.raises(
        LabelStudioUnreachable, match=r"cannot be reached .* Gave up sending the query after \d+ s"
    ):
        label_studio_loop(trainer, url="http://127.0.0.1:9", retry_for=2.5, report=messages.append)
    tries = [m for m in messages if "Trying again in" in m]
    assert len(tries) >= 2 and all("Label Studio at http://127.0.0.1:9 cannot be reached" in m for m in tries)
    assert "Trying again in 1 s (sending the query; unreachable for 0 s, giving up after 2 s)" in tries[0]
    assert open_query(run_dir)[0] == 1  # the run waits for labels, whole


def test_the_server_stopped_and_started_again_mid_round_is_waited_for(
    label_studio, tmp_path, monkeypatch, pool_and_truth
):
    server = label_studio
    pool, truth = pool_and_truth
    run_dir = tmp_path / "run"
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)

    def script(team):
        tasks = team.round_tasks(1, 8)
        server.annotate(tasks[0]["id"], team.user(0), truth[tasks[0]["data"]["pool_index"]])
        team.wait_for(lambda: team.said("round 1: 1 annotated"), "the loop to see the first answer")
        server.stop()
        team.wait_for(lambda: team.said("cannot be reached"), "the loop to notice")
        server.start()
        for task in tasks[1:]:
            server.annotate(task["id"], team.user(0), truth[task["data"]["pool_index"]])
        for task in team.round_tasks(2, 6):
            server.annotate(task["id"], team.user(0), truth[task["data"]["pool_index"]])

    trainer = _trainer(pool, run_dir)
    team = Team(server, run_dir, script)
    team.thread.start()
    try:
        label_studio_loop(trainer, url=server.url, poll_interval=POLL, report=team.report)
    finally:
        team.check()
    assert trainer.done
    down = team.said("cannot be reached")
    assert (
        down.startswith(f"Label Studio at {server.url} cannot be reached") and "(polling the project;" in down
    )
    assert team.said("Label Studio answers again (polling the project).")
    assert len(pq.read_table(run_dir / "labels.parquet")) == 14


def test_the_webhook_wakes_the_loop_and_is_removed_at_the_end(
    label_studio, tmp_path, monkeypatch, pool_and_truth
):
    import socket

    server = label_studio
    pool, truth = pool_and_truth
    run_dir = tmp_path / "run"
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def script(team):
        tasks = team.round_tasks(1, 8)
        team.wait_for(lambda: team.said("round 1: 0 annotated"), "the loop's first look")
        wrong_id = server.annotate(tasks[0]["id"], team.user(1), "cross" if truth[0] != "cross" else "circle")
        for task in tasks:
            server.annotate(task["id"], team.user(0), truth[task["data"]["pool_index"]])
        team.wait_for(lambda: team.said("have answers that disagree"), "the conflict", timeout=20)
        server.session.delete(f"{server.url}/api/annotations/{wrong_id}").raise_for_status()
        for task in team.round_tasks(2, 6):
            server.annotate(task["id"], team.user(0), truth[task["data"]["pool_index"]])

    trainer = _trainer(pool, run_dir)
    team = Team(server, run_dir, script)
    team.thread.start()
    started = time.monotonic()
    try:
        # Polling alone would look once a minute: every wake-up below comes from the webhook.
        label_studio_loop(trainer, url=server.url, poll_interval=60, webhook_port=port, report=team.report)
    finally:
        team.check()
    assert trainer.done and time.monotonic() - started < 55, team.messages
    assert team.said(f"calls http://127.0.0.1:{port}/: the loop wakes at every answer")
    assert sum("webhook" in m for m in team.messages) == 1  # registered once for both rounds
    project = json.loads((run_dir / "label_studio.json").read_text())["project"]
    hooks = server.session.get(f"{server.url}/api/webhooks/", params={"project": project}).json()
    assert [h for h in hooks if h["url"] == f"http://127.0.0.1:{port}/"] == []


def test_a_webhook_label_studio_refuses_is_said_and_the_loop_polls(
    label_studio, tmp_path, monkeypatch, pool_and_truth
):
    import socket

    server = label_studio
    pool, truth = pool_and_truth
    run_dir = tmp_path / "run"
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    # An action this server does not know: it answers 400, as a server with SSRF protection does for 127.0.0.1.
    monkeypatch.setattr(
        "prunefuse_hf.annotation.loop._WEBHOOK_ACTIONS", ["ANNOTATION_CREATED", "NO_SUCH_ACTION"]
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def script(team):
        for round_, count in ((1, 8), (2, 6)):
            for task in team.round_tasks(round_, count):
                server.annotate(task["id"], team.user(0), truth[task["data"]["pool_index"]])

    trainer = _trainer(pool, run_dir)
    team = Team(server, run_dir, script)
    team.thread.start()
    try:
        label_studio_loop(trainer, url=server.url, poll_interval=POLL, webhook_port=port, report=team.report)
    finally:
        team.check()
    assert trainer.done
    refused = [m for m in team.messages if "refused the webhook" in m]
    assert len(refused) == 1, team.messages  # said once, for both rounds
    assert refused[0].startswith(
        f"Label Studio refused the webhook to http://127.0.0.1:{port}/ (Label Studio POST"
    )
    assert "SSRF_PROTECTION_ENABLED=false" in refused[0] and refused[0].endswith("Polling only.")
    assert not team.said("the loop wakes at every answer")
    project = json.loads((run_dir / "label_studio.json").read_text())["project"]
    assert server.session.get(f"{server.url}/api/webhooks/", params={"project": project}).json() == []


def _draw(server, task: int, user: int, objects: dict, class_names: list[str]) -> int:
    """An annotator draws `objects` (COCO pixel boxes, class ids) on a task's 48 x 48 image."""
    from prunefuse_hf.tasks import detection_prediction

    result = detection_prediction({"boxes": objects["bbox"], "labels": objects["category"]}, class_names,
                                  (48, 48))["result"]  # fmt: skip
    answer = server.session.post(f"{server.url}/api/tasks/{task}/annotations",
                                 json={"completed_by": user, "result": result, "lead_time": 1.0})  # fmt: skip
    answer.raise_for_status()
    return answer.json()["id"]


def test_the_loop_runs_a_detection_run_whose_conflicting_boxes_wait_then_resolve_by_latest(
    label_studio, tmp_path, monkeypatch
):
    from conftest import tiny_detr
    from detection_human_run import human_config, human_pools, same_boxes, stored_objects
    from prunefuse_hf import PruneFuseTrainer
    from prunefuse_hf.tasks import detection_prediction
    from prunefuse_hf.tasks.detection_exports import describe_objects

    server = label_studio
    pool, _, names, truth = human_pools()
    run_dir = tmp_path / "run"
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    found = {}

    def first(team):
        tasks = team.round_tasks(1, 8)
        disputed = tasks[0]["data"]["pool_index"]
        x, y, w, h = truth[disputed]["bbox"][0]
        # Two annotators draw the first image, the second one box a pixel off (and later): the answers disagree.
        moved = {"bbox": [[x + 1.0 if x + w < 48 else x - 1.0, y, w, h], *truth[disputed]["bbox"][1:]],
                 "category": truth[disputed]["category"]}  # fmt: skip
        _draw(server, tasks[0]["id"], team.user(0), truth[disputed], names)
        _draw(server, tasks[0]["id"], team.user(1), moved, names)
        for task in tasks[1:]:
            _draw(server, task["id"], team.user(0), truth[task["data"]["pool_index"]], names)
        found.update(disputed=disputed, moved=moved)
        team.wait_for(lambda: team.said("have answers that disagree"), "the conflict")
        time.sleep(3 * POLL)  # the loop keeps waiting meanwhile, storing nothing
        assert open_query(run_dir)[0] == 1 and not (run_dir / "labeled_objects.parquet").exists()
        _thread.interrupt_main()  # Ctrl-C: the team lead sets annotation_resolve: latest and starts it again

    def trainer(**overrides):
        args = human_config(tmp_path, names, disable_tqdm=True, use_cpu=True, **overrides)
        return PruneFuseTrainer(tiny_detr(), args=args, train_dataset=pool)

    team = Team(server, run_dir, first)
    team.thread.start()
    with pytest.raises(KeyboardInterrupt):
        label_studio_loop(trainer(), url=server.url, poll_interval=POLL, report=team.report)
    team.check()
    config = server.session.get(
        f"{server.url}/api/projects/{json.loads((run_dir / 'label_studio.json').read_text())['project']}"
    ).json()
    assert "<RectangleLabels" in config["label_config"]
    conflict = team.said("have answers that disagree")
    assert sum("have answers that disagree" in m for m in team.messages) == 1  # said once, not at every poll
    assert f"(pool_index {found['disputed']}): " in conflict and "ann2@example.com (" in conflict
    assert "annotation_resolve" in conflict and "round 1: 8 annotated, 0 skipped of 8 tasks" in "\n".join(
        team.messages
    )

    def second(team):
        round_2 = team.round_tasks(2, 6)
        # Round 1 was pulled and trained on: an annotator now moves a box of one of its images in Label Studio.
        edited = next(t for t in team.round_tasks(1, 8) if t["data"]["pool_index"] != found["disputed"])
        index = edited["data"]["pool_index"]
        (annotation,) = server.session.get(f"{server.url}/api/tasks/{edited['id']}/annotations").json()
        x, y, w, h = truth[index]["bbox"][0]
        moved = {"bbox": [[x + 1.0 if x + w < 48 else x - 1.0, y, w, h], *truth[index]["bbox"][1:]],
                 "category": truth[index]["category"]}  # fmt: skip
        result = detection_prediction({"boxes": moved["bbox"], "labels": moved["category"]}, names, (48, 48))
        server.session.patch(
            f"{server.url}/api/annotations/{annotation['id']}", json={"result": result["result"]}
        ).raise_for_status()
        found.update(edited=edited, edited_annotation=annotation["id"], edited_to=moved)
        for task in round_2:
            _draw(server, task["id"], team.user(0), truth[task["data"]["pool_index"]], names)

    run = trainer(annotation_resolve="latest")
    team = Team(server, run_dir, second)
    team.thread.start()
    try:
        label_studio_loop(run, url=server.url, poll_interval=POLL, report=team.report)
    finally:
        team.check()
    assert run.done and (run_dir / "fused" / "config.json").is_file()
    # The moved box is reported once, as classification's edited labels are; the stored boxes stay.
    edits = [m for m in team.messages if "changed in Label Studio after they were pulled" in m]
    assert len(edits) == 1, team.messages
    edited, described = found["edited"], describe_objects(found["edited_to"], names)
    assert (
        f"task {edited['id']} (pool_index {edited['data']['pool_index']}, round 1): stored "
        f"{describe_objects(truth[edited['data']['pool_index']], names)} by ann1@example.com" in edits[0]
    ), edits[0]
    assert (
        f"since then edited to {described} by " in edits[0]
        and f"(annotation {found['edited_annotation']}" in edits[0]
    )
    assert "label its queries with the corrected boxes" in edits[0]
    assert "round 1: 8 labels added, 0 skipped; resuming the run" in team.messages
    assert "round 2: 6 labels added, 0 skipped; resuming the run" in team.messages
    stored = stored_objects(run_dir)
    expected = {i: truth[i] for i in stored}
    expected[found["disputed"]] = found["moved"]  # the newest answer
    assert len(stored) == 14 and sorted(stored) == sorted(expected)
    same_boxes(stored, expected)  # to 1e-3 px: Label Studio holds them in percent of the image
    rows = {row["pool_index"]: row for row in pq.read_table(run_dir / "labeled_objects.parquet").to_pylist()}
    assert (
        rows[found["disputed"]]["resolution"] == "latest" and rows[found["disputed"]]["annotator"] == TEAM[1]
    )
    assert run.metrics["final"]["labeled"] == 14


def _paint(server, task: int, user: int, mask, class_names: list[str]) -> int:
    """An annotator paints `mask` (class ids, one brush region per class) on a task's image."""
    from prunefuse_hf.tasks import segmentation_prediction

    result = segmentation_prediction(mask, class_names)["result"]
    answer = server.session.post(f"{server.url}/api/tasks/{task}/annotations",
                                 json={"completed_by": user, "result": result, "lead_time": 1.0})  # fmt: skip
    answer.raise_for_status()
    return answer.json()["id"]


@pytest.mark.slow  # about 40 s: two rounds and the final training beside a Label Studio server
def test_the_loop_runs_a_segmentation_run_whose_conflicting_masks_wait_until_fixed_in_label_studio(
    label_studio, tmp_path, monkeypatch
):
    import numpy as np

    from prunefuse_hf import PruneFuseTrainer
    from segmentation_human_run import INITIAL, QUERY, human_config, human_pools, stored_masks, tiny_segformer

    server = label_studio
    pool, _, names, truth = human_pools()
    run_dir = tmp_path / "run"
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    found = {}

    def script(team):
        tasks = team.round_tasks(1, INITIAL)
        disputed = tasks[0]["data"]["pool_index"]
        other = truth[disputed].copy()
        other[:8] = 0  # a second annotator calls the top rows background
        _paint(server, tasks[0]["id"], team.user(0), truth[disputed], names)
        wrong = _paint(server, tasks[0]["id"], team.user(1), other, names)
        for task in tasks[1:]:
            _paint(server, task["id"], team.user(0), truth[task["data"]["pool_index"]], names)
        team.wait_for(lambda: team.said("have answers that disagree"), "the conflict")
        time.sleep(3 * POLL)  # the loop keeps waiting meanwhile, storing nothing
        assert not (run_dir / "labeled_masks.parquet").exists()
        server.session.delete(
            f"{server.url}/api/annotations/{wrong}"
        ).raise_for_status()  # fixed in Label Studio
        found["disputed"] = disputed
        for task in team.round_tasks(2, QUERY):
            _paint(server, task["id"], team.user(0), truth[task["data"]["pool_index"]], names)

    args = human_config(tmp_path, names, use_cpu=True)
    run = PruneFuseTrainer(tiny_segformer(len(names)), args=args, train_dataset=pool)
    team = Team(server, run_dir, script)
    team.thread.start()
    try:
        label_studio_loop(run, url=server.url, poll_interval=POLL, report=team.report)
    finally:
        team.check()
    assert run.done and (run_dir / "fused" / "config.json").is_file()
    conflict = team.said("have answers that disagree")
    assert sum("have answers that disagree" in m for m in team.messages) == 1  # said once, not at every poll
    assert f"(pool_index {found['disputed']}): " in conflict and "by ann2@example.com" in conflict
    assert f"round 1: {INITIAL} labels added, 0 skipped; resuming the run" in team.messages
    assert f"round 2: {QUERY} labels added, 0 skipped; resuming the run" in team.messages
    # Round 2's pulls compare round 1's stored masks with the project's (segmentation's stored_answers): unchanged.
    assert not any("changed in Label Studio after they were pulled" in m for m in team.messages), (
        team.messages
    )
    stored = stored_masks(run_dir)
    assert len(stored) == INITIAL + QUERY and all(np.array_equal(stored[i], truth[i]) for i in stored)
    assert run.metrics["final"]["labeled"] == INITIAL + QUERY
