"""`RunProgressCallback` and `RunProgress`: where a `PruneFuseTrainer` run is, from Python."""

import pytest
from transformers import TrainerCallback
from transformers.utils import logging as transformers_logging

from conftest import make_image_dataset, tiny_resnet_config
from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer, RunProgressCallback
from prunefuse_hf.trainer.run_logging import quiet_progress_bars
from prunefuse_hf.trainer.run_progress import RunProgress, format_duration


class Recorder(RunProgressCallback):
    def __init__(self):
        super().__init__()
        self.snapshots = []

    def on_progress(self, progress):
        self.snapshots.append(progress)


class LogRecorder(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def config(output_dir, **overrides):
    values = dict(output_dir=str(output_dir), initial_labeled_size=16, query_size=8, num_rounds=2, num_train_epochs=2,
                  per_device_train_batch_size=8, scoring_batch_size=32, logging_steps=1, seed=3)  # fmt: skip
    return PruneFuseConfig(**{**values, **overrides})


@pytest.fixture(autouse=True)
def _own_pixel_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEFUSE_PIXEL_CACHE", str(tmp_path.parent / f"{tmp_path.name}-pixels"))


@pytest.fixture(scope="module")
def pool():
    return make_image_dataset(num_examples=64, num_classes=4, seed=1, mode="RGB")


def run(tmp_path, pool, callbacks, **overrides):
    trainer = PruneFuseTrainer(tiny_resnet_config(), args=config(tmp_path, **overrides), train_dataset=pool,
                               callbacks=callbacks)  # fmt: skip
    trainer.train()
    return trainer


def test_the_callback_follows_every_step_with_round_labeled_count_and_an_estimate(tmp_path, pool, capsys):
    recorder = Recorder()
    trainer = run(tmp_path, pool, [recorder])
    finished = [p for p in recorder.snapshots if p.finished]
    assert [p.step for p in finished] == [step.name for step in trainer.steps]
    assert [p.step_index for p in finished] == list(range(1, len(trainer.steps) + 1))
    assert {p.num_steps for p in finished} == {len(trainer.steps)} and {p.num_rounds for p in finished} == {3}
    assert [p.round for p in finished] == [1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    labeled = {p.step: p.labeled for p in finished}
    assert labeled["init"] == 0 and labeled["label:1"] == 16 and labeled["label:3"] == 32
    assert finished[0].remaining_seconds is None  # nothing timed yet
    surrogate = finished[[p.step for p in finished].index("train_surrogate:1")]
    assert surrogate.remaining_seconds > 0 and surrogate.next_step == "select:1"
    assert finished[-1].next_step is None and finished[-1].remaining_seconds is None
    assert all(b.elapsed_seconds >= a.elapsed_seconds for a, b in zip(finished, finished[1:]))
    # Inner trainings report their step and loss at every logging step, before their step finishes.
    running = [p for p in recorder.snapshots if not p.finished and p.inner_step]
    assert running and all(p.loss is not None and p.inner_step <= p.inner_max_steps for p in running)
    assert trainer.run_progress.finished and trainer.run_progress.step == "report"
    # Library code logs; nothing is printed on stdout (no Trainer log dict either).
    assert capsys.readouterr().out == ""


def test_callbacks_and_log_history_see_the_same_logs_with_or_without_it(tmp_path, pool):
    with_progress, without = LogRecorder(), LogRecorder()
    first = run(tmp_path / "a", pool, [with_progress, RunProgressCallback()])
    second = run(tmp_path / "b", pool, [without])
    assert drop_times(with_progress.logs) == drop_times(without.logs)
    assert drop_times(first.state.log_history) == drop_times(second.state.log_history)


def drop_times(logs):
    # Wall times differ between two runs; everything else is the same.
    timed = ("runtime", "per_second", "seconds")
    return [{k: v for k, v in log.items() if not any(word in k for word in timed)} for log in logs]


def test_the_default_callback_logs_one_progress_line_per_step(tmp_path, pool, caplog):
    with caplog.at_level("INFO", logger="prunefuse_hf.trainer.run_progress"):
        trainer = run(tmp_path, pool, [RunProgressCallback()], num_rounds=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "prunefuse_hf.trainer.run_progress"]
    assert len(lines) == len(trainer.steps)
    assert lines[0].startswith("round 1/2 | step 1/8 init done | labeled 0 | ")


def test_evaluate_after_train_reports_the_final_models_epochs(tmp_path, pool):
    trainer = run(tmp_path, pool, [], eval_dense_every_round=False)
    metrics = trainer.evaluate(make_image_dataset(num_examples=16, num_classes=4, seed=2, mode="RGB"))
    assert metrics["epoch"] == pytest.approx(trainer.progress["final"]["epochs"]) == 2.0


def test_describe():
    progress = RunProgress(step="train_surrogate:2", finished=True, next_step="select:2", round=2, num_rounds=5,
                           step_index=6, num_steps=16, labeled=2000, elapsed_seconds=72.4, remaining_seconds=220.0,
                           next_step_index=7, facts={"step": "train_surrogate:2", "round": 2, "labeled": 2000,
                                                     "surrogate_accuracy": 0.8125, "seconds": 12.06})  # fmt: skip
    assert progress.describe() == (
        "round 2/5 | step 6/16 train_surrogate:2 done | labeled 2,000 | 1:12 elapsed | ~3:40 left | "
        "surrogate accuracy 0.8125 | 12.1 s"
    )
    assert (
        progress.describe_running()
        == "round 2/5 | step 7/16 select:2 | labeled 2,000 | 1:12 elapsed | ~3:40 left"
    )
    assert [format_duration(s) for s in (4.4, 59.6, 3725)] == ["4s", "1:00", "1:02:05"]


def test_quiet_progress_bars_restores_the_settings_it_found():
    assert transformers_logging.is_progress_bar_enabled()
    with quiet_progress_bars(show_inner=False):
        assert not transformers_logging.is_progress_bar_enabled()
    assert transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        with quiet_progress_bars(show_inner=True):
            pass
        assert not transformers_logging.is_progress_bar_enabled()
    finally:
        transformers_logging.enable_progress_bar()
