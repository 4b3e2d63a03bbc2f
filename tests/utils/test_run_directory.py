"""`RunDirectory`: the checks before a run may use a directory, atomic files and directories, and secret redaction."""

import json
import os

import numpy as np
import pytest

from prunefuse_hf.constants import POOL_ARRAYS_PREFIX, ROW_DIGESTS, STATE_NAME
from prunefuse_hf.utils.io import redact_secrets
from prunefuse_hf.utils.run_directory import RunDirectory, RunDirectoryError


def visible(path):
    return sorted(name for name in os.listdir(path) if not name.startswith("."))


def interrupt_replace(monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)


def test_prepare_creates_a_missing_directory_and_accepts_an_empty_one(tmp_path):
    RunDirectory(tmp_path / "new" / "run").prepare(resume=False, overwrite=False)
    assert (tmp_path / "new" / "run").is_dir()
    RunDirectory(tmp_path / "new" / "run").prepare(resume=False, overwrite=False)


def test_prepare_refuses_an_occupied_directory_without_resume_or_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match=r"already holds files\. Pass --resume .* --overwrite"):
        RunDirectory(tmp_path).prepare(resume=False, overwrite=False)
    (tmp_path / STATE_NAME).write_text("{}")
    with pytest.raises(RunDirectoryError, match="already holds a PruneFuse run"):
        RunDirectory(tmp_path).prepare(resume=False, overwrite=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_prepare_refuses_to_resume_where_there_is_no_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(
        RunDirectoryError, match=f"--resume was given but .* holds no run \\({STATE_NAME} is missing\\)"
    ):
        RunDirectory(tmp_path).prepare(resume=True, overwrite=False)
    (tmp_path / STATE_NAME).write_text("{}")
    RunDirectory(tmp_path).prepare(resume=True, overwrite=False)
    assert visible(tmp_path) == ["notes.txt", STATE_NAME]  # resuming removes nothing


def test_overwrite_replaces_the_directory(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "surrogate").mkdir(parents=True)
    (run_dir / STATE_NAME).write_text("{}")
    RunDirectory(run_dir).prepare(resume=False, overwrite=True)
    assert run_dir.is_dir() and os.listdir(run_dir) == []
    assert not RunDirectory(run_dir).has_run()


def test_write_json_and_write_text_replace_a_file_whole(tmp_path):
    run_dir = RunDirectory(tmp_path)
    path = run_dir.write_json(STATE_NAME, {"step": 1, "accuracy": np.float32(0.5), "rows": np.arange(3)})
    assert path == tmp_path / STATE_NAME
    assert run_dir.read_state() == {"step": 1, "accuracy": 0.5, "rows": [0, 1, 2]}
    run_dir.write_text("report.md", "# one")
    run_dir.write_text("report.md", "# two")
    assert (tmp_path / "report.md").read_text() == "# two"
    assert sorted(os.listdir(tmp_path)) == visible(tmp_path)  # no temporary file left behind


@pytest.mark.parametrize("write", ["write_json", "write_text"])
def test_an_interrupted_write_leaves_the_old_file_and_no_visible_half_file(tmp_path, monkeypatch, write):
    run_dir = RunDirectory(tmp_path)
    run_dir.write_json(STATE_NAME, {"step": 1})
    interrupt_replace(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        getattr(run_dir, write)(STATE_NAME, {"step": 2} if write == "write_json" else '{"step": 2}')
    monkeypatch.undo()
    assert json.loads((tmp_path / STATE_NAME).read_text()) == {"step": 1}
    assert visible(tmp_path) == [STATE_NAME]
    run_dir.write_json(STATE_NAME, {"step": 2})  # the next write goes through
    assert run_dir.read_state() == {"step": 2}


def save_files(*names, fail_after=None):
    def save(directory):
        directory.mkdir()
        for i, name in enumerate(names):
            if i == fail_after:
                raise KeyboardInterrupt
            (directory / name).write_text(name)

    return save


def test_save_dir_swaps_a_directory_in_whole(tmp_path):
    run_dir = RunDirectory(tmp_path)
    assert (
        run_dir.save_dir("surrogate", save_files("config.json", "model.safetensors"))
        == tmp_path / "surrogate"
    )
    run_dir.save_dir("surrogate", save_files("config.json"))
    # The new version replaces the old one entirely (no file of the old version survives).
    assert os.listdir(tmp_path / "surrogate") == ["config.json"]
    assert visible(tmp_path) == sorted(os.listdir(tmp_path)) == ["surrogate"]


def test_a_crash_inside_save_leaves_the_previous_directory(tmp_path):
    run_dir = RunDirectory(tmp_path)
    run_dir.save_dir("surrogate", save_files("config.json", "model.safetensors"))
    with pytest.raises(KeyboardInterrupt):
        run_dir.save_dir("surrogate", save_files("config.json", "model.safetensors", fail_after=1))
    assert sorted(os.listdir(tmp_path / "surrogate")) == ["config.json", "model.safetensors"]
    assert visible(tmp_path) == ["surrogate"]  # the half-written copy is hidden
    # The next save clears the leftover and goes through.
    run_dir.save_dir("surrogate", save_files("model.safetensors"))
    assert os.listdir(tmp_path) == ["surrogate"] and os.listdir(tmp_path / "surrogate") == [
        "model.safetensors"
    ]


def test_redact_secrets_removes_token_like_keys_at_any_depth():
    recipe = {
        "hub_token": "hf_abc",
        "HF_TOKEN": "hf_def",
        "learning_rate": 0.05,
        "hub": {"api_key": "k", "repo_id": "org/name", "nested": [{"password": "p", "seed": 3}]},
        "callbacks": ({"client_secret": "s", "name": "log"},),
    }
    assert redact_secrets(recipe) == {
        "learning_rate": 0.05,
        "hub": {"repo_id": "org/name", "nested": [{"seed": 3}]},
        "callbacks": [{"name": "log"}],
    }
    assert recipe["hub_token"] == "hf_abc"  # the input is left as it was


def test_a_crash_between_the_two_renames_of_save_dir_keeps_the_previous_checkpoint(tmp_path):
    run_dir = RunDirectory(tmp_path)

    def save_v1(directory):
        directory.mkdir()
        (directory / "w").write_text("v1")

    def crash(directory):
        raise RuntimeError("crashed while saving")

    run_dir.save_dir("ckpt", save_v1)
    # What a crash right after moving the current version aside leaves behind: only .ckpt.old.
    os.replace(tmp_path / "ckpt", tmp_path / ".ckpt.old")
    with pytest.raises(RuntimeError):
        run_dir.save_dir("ckpt", crash)
    assert (tmp_path / "ckpt" / "w").read_text() == "v1"


def _pool_state(rounds, labels, scores):
    return {"version": 1, "num_examples": len(rounds), "fingerprint": "f", "strategies": {"1": "entropy"},
            "rounds": np.asarray(rounds, dtype=np.int32), "labels": np.asarray(labels, dtype=np.int64),
            "scores": np.asarray(scores, dtype=np.float64)}  # fmt: skip


def test_write_state_keeps_the_pool_arrays_beside_state_json_and_rewrites_them_only_when_they_change(
    tmp_path,
):
    run_dir = RunDirectory(tmp_path)
    state = {
        "version": 3,
        "completed": ["init"],
        "pool": _pool_state([1, 0, 0], [2, -1, -1], [0.5, np.nan, np.nan]),
    }
    run_dir.write_state(state)
    light = json.loads((tmp_path / STATE_NAME).read_text())
    assert light["pool"] == {"version": 1, "num_examples": 3, "fingerprint": "f", "strategies": {"1": "entropy"},
                             "arrays_file": f"{POOL_ARRAYS_PREFIX}-1.npz"}  # fmt: skip
    written = (tmp_path / f"{POOL_ARRAYS_PREFIX}-1.npz").stat().st_mtime_ns

    state["completed"].append("train_surrogate:1")  # a step that labels nothing: the arrays stay as they are
    run_dir.write_state(state)
    assert (tmp_path / f"{POOL_ARRAYS_PREFIX}-1.npz").stat().st_mtime_ns == written
    assert json.loads((tmp_path / STATE_NAME).read_text())["completed"] == ["init", "train_surrogate:1"]

    state["pool"] = _pool_state([1, 2, 0], [2, 0, -1], [0.5, 0.25, np.nan])  # a label step
    run_dir.write_state(state)
    assert visible(tmp_path) == [f"{POOL_ARRAYS_PREFIX}-2.npz", STATE_NAME]  # the old arrays are gone

    # A fresh RunDirectory (a resume) reads the arrays back, NaN included, and writes them again only on change.
    resumed = RunDirectory(tmp_path)
    back = resumed.read_state()
    np.testing.assert_array_equal(back["pool"]["rounds"], [1, 2, 0])
    np.testing.assert_array_equal(back["pool"]["labels"], [2, 0, -1])
    np.testing.assert_array_equal(back["pool"]["scores"], [0.5, 0.25, np.nan])
    assert back["completed"] == ["init", "train_surrogate:1"]
    assert not resumed.pool_arrays_changed(back)
    back["pool"]["rounds"][2] = 3
    assert resumed.pool_arrays_changed(back)


def test_read_state_reads_a_version_2_state_with_inline_arrays_as_written(tmp_path):
    old = {
        "version": 2,
        "pool": {"num_examples": 2, "rounds": [1, 0], "labels": [0, -1], "scores": [None, None]},
    }
    (tmp_path / STATE_NAME).write_text(json.dumps(old))

    assert RunDirectory(tmp_path).read_state() == old


def test_the_arrays_file_holds_only_the_touched_rows_and_a_version_3_whole_file_still_reads(tmp_path):
    size, labeled = 100_000, np.array([7, 42, 99_999])
    rounds, labels, scores = np.zeros(size), np.full(size, -1), np.full(size, np.nan)
    rounds[labeled], labels[labeled], scores[labeled[:2]] = 1, [3, 0, 2], [0.9, 0.1]  # a seed label: no score
    digests = np.zeros(size, dtype=np.uint64)
    digests[labeled] = [11, 2**63 + 5, 13]
    pool = {**_pool_state(rounds, labels, scores), ROW_DIGESTS: digests}
    run_dir = RunDirectory(tmp_path)
    run_dir.write_state({"version": 4, "pool": pool})

    arrays_file = tmp_path / f"{POOL_ARRAYS_PREFIX}-1.npz"
    assert arrays_file.stat().st_size < 4096  # 3 rows, not 100,000
    np.testing.assert_array_equal(np.load(arrays_file)["rows"], labeled)
    back = RunDirectory(tmp_path).read_state()["pool"]
    for name in ("rounds", "labels", "scores", ROW_DIGESTS):
        np.testing.assert_array_equal(back[name], pool[name])
        assert back[name].dtype == pool[name].dtype

    # State version 3 wrote every row of the three arrays: it reads back as written.
    np.savez(arrays_file, rounds=pool["rounds"], labels=pool["labels"], scores=pool["scores"])
    back = RunDirectory(tmp_path).read_state()["pool"]
    np.testing.assert_array_equal(back["scores"], pool["scores"])
    assert ROW_DIGESTS not in back
