"""What `prunefuse-hf run` shows: one progress line for the whole run, inner bars only with `--verbose`, no
checkpoint bars, no log dicts, every message on a line of its own, nothing empty."""

import functools
import io
import re

import datasets
import pytest

from conftest import make_image_dataset, tiny_recipe
from prunefuse_hf.cli import progress, run
from prunefuse_hf.cli.main import main
from prunefuse_hf.cli.progress import Console
from prunefuse_hf.trainer import task_examples

CLEAR = "\r\033[K"
CHECKPOINT_BARS = ("Writing model shards", "Loading weights")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    train, test = make_image_dataset(64, 4, seed=1), make_image_dataset(24, 4, seed=2)
    datasets.DatasetDict(train=train, test=test).save_to_disk(root / "data")
    return root / "data"


def write_recipe(tmp_path, dataset_dir, eval_split=None, **fields):
    # The shipped recipes do not set disable_tqdm: neither does this one.
    text = tiny_recipe(dataset_dir, num_rounds=1).replace("disable_tqdm: true\n", "")
    text = text.replace("eval_split: null", f"eval_split: {eval_split or 'null'}")
    text += "".join(f"{key}: {value}\n" for key, value in fields.items())
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def _own_pixel_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEFUSE_PIXEL_CACHE", str(tmp_path / "pixels"))


def test_a_run_shows_one_line_per_step_and_no_bars_dicts_or_empty_table(tmp_path, dataset_dir, capsys):
    recipe = write_recipe(tmp_path, dataset_dir)
    assert main(["run", "--config", str(recipe), "--output_dir", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if re.match(r"round \d/\d \| step \d+/\d+ ", line)]
    names = [
        "init",
        "label:1",
        "train_surrogate:1",
        "select:1",
        "label:2",
        "train_surrogate:2",
        "train_dense:2",
    ]
    expected = [f"step {i}/8 {name} done" for i, name in enumerate([*names, "report"], start=1)]
    assert [line.split(" | ")[1] for line in lines] == expected
    assert lines[0].startswith("round 1/2 |") and lines[-1].startswith("round 2/2 |")
    assert all(" elapsed" in line for line in lines)
    assert "~" in lines[3] and " left" in lines[3]  # an estimate once a training finished
    assert "picked 8" in lines[3] and "labeled 24" in lines[4]
    # No progress bar (inner or checkpoint), no Trainer log dict, no second copy of the step facts.
    assert "it/s" not in err and "%|" not in err and not any(bar in err for bar in CHECKPOINT_BARS)
    assert "{'" not in out and "'train_runtime'" not in err
    assert "[prunefuse] select:1" not in err
    # Without an evaluation set there is no accuracy to tabulate: no empty table.
    assert "accuracy of the trained dense/fused model per labeled budget" not in out
    assert "no evaluation set (eval_split: null), so no accuracy was measured" in out


def test_verbose_shows_the_inner_bars_and_loss_logs(tmp_path, dataset_dir, capsys):
    recipe = write_recipe(tmp_path, dataset_dir, eval_split="test", logging_steps=2)
    argv = ["run", "--config", str(recipe), "--output_dir", str(tmp_path / "run"), "--verbose"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "Scoring pool" in err and "it/s" in err  # the scoring and training bars
    assert "'loss'" in out  # the stock Trainer's loss logs, every logging_steps
    assert not any(bar in err for bar in CHECKPOINT_BARS)  # never the checkpoints'
    assert "accuracy of the trained dense/fused model per labeled budget" in out


def test_an_interruption_message_starts_on_its_own_line_after_a_progress_bar(
    tmp_path, dataset_dir, capsys, monkeypatch
):
    calls = []

    def interrupted_loss(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the training's bar is on the screen
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    original = task_examples.DistillationTrainer.compute_loss
    monkeypatch.setattr(task_examples.DistillationTrainer, "compute_loss", interrupted_loss)
    recipe = write_recipe(tmp_path, dataset_dir)
    argv = ["run", "--config", str(recipe), "--output_dir", str(tmp_path / "run"), "--verbose"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    for message in ("[prunefuse] Interrupted during step train_surrogate:1", "prunefuse-hf run: interrupted"):
        before = err[: err.index(message)]
        assert before.endswith("\n"), repr(before[-80:])


def test_on_a_terminal_the_line_is_drawn_in_place_and_cleared_before_messages(
    tmp_path, dataset_dir, capsys, monkeypatch
):
    monkeypatch.setattr(run, "run_console", functools.partial(progress.run_console, live=True))
    recipe = write_recipe(tmp_path, dataset_dir)
    assert main(["run", "--config", str(recipe), "--output_dir", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    # The running step, drawn in place (no newline), then replaced.
    assert f"{CLEAR}round 1/2 | step 3/8 train_surrogate:1 | labeled 16 |" in err
    # Every line of its own (a message or a finished step) starts on a clean line.
    for line in err.split("\n")[:-1]:
        visible = line.rsplit(CLEAR, 1)[-1]
        assert "\r" not in visible, repr(line)
    assert err.endswith(CLEAR)  # the live line is gone once the run ends


def test_console_clears_its_line_for_a_message_and_draws_it_again():
    stream = io.StringIO()
    console = Console(stream, live=True)
    console.show("round 1/3 | step 2/9 label:1")
    console.write("[prunefuse] a warning\n")
    assert stream.getvalue() == (
        f"{CLEAR}round 1/3 | step 2/9 label:1{CLEAR}[prunefuse] a warning\n{CLEAR}round 1/3 | step 2/9 label:1"
    )
    console.close()
    assert stream.getvalue().endswith(CLEAR)


def test_console_starts_a_message_on_a_new_line_after_an_open_bar():
    stream = io.StringIO()
    console = Console(stream, live=False)
    console.write("\r 50%|#####     | 2/4")
    console.write("\r 75%|#######   | 3/4")
    console.write("interrupted")
    console.write("\n")
    assert stream.getvalue() == "\r 50%|#####     | 2/4\r 75%|#######   | 3/4\ninterrupted\n"
    console.show("not on a terminal: never drawn")
    assert "never drawn" not in stream.getvalue()
