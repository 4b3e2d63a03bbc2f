"""`recipes/label-with-people/`: the labeling flow offline, as its README runs it (make the folder, run, annotate,
label, resume), shortened by command-line overrides to a 60-image folder. Nothing is read from the network."""

import csv
import importlib.util
import socket
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from transformers import AutoConfig

from prunefuse_hf.cli.main import main
from prunefuse_hf.constants import FASHION_MNIST_DIR, FASHION_MNIST_LABELS, PIXEL_CACHE_DIR_ENV

RECIPE_DIR = Path(__file__).parents[2] / "recipes" / "label-with-people"
HAS_FASHION_MNIST = (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").is_file()


def _fashion_folder():
    spec = importlib.util.spec_from_file_location("fashion_folder", RECIPE_DIR / "fashion_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def offline(monkeypatch, tmp_path):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("the recipe must not reach the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv(PIXEL_CACHE_DIR_ENV, str(tmp_path / "pixel-cache"))


@pytest.mark.skipif(
    not HAS_FASHION_MNIST, reason=f"the Debian package dataset-fashion-mnist ({FASHION_MNIST_DIR})"
)
def test_the_labeling_recipe_runs_offline_from_an_unlabeled_folder_to_a_fused_model(
    tmp_path, capsys, offline
):
    fashion_folder = _fashion_folder()
    root = tmp_path / "label-with-people"
    fashion_folder.main(["--root", str(root), "make", "--num_images", "60"])
    assert len(list((root / "images").glob("*.png"))) == 60
    run_dir = root / "run"
    argv = ["run", "--config", str(RECIPE_DIR / "label.yaml"), "--dataset_name", str(root / "images"),
            "--output_dir", str(run_dir), "--initial_labeled_size", "10", "--query_size", "10", "--num_rounds", "1",
            "--num_train_epochs", "1", "--per_device_train_batch_size", "10", "--disable_tqdm", "true"]  # fmt: skip
    for round_ in (1, 2):
        assert main(argv + (["--resume"] if round_ > 1 else [])) == 0
        query_dir = run_dir / "queries" / f"round_{round_}"
        assert f"label the 10 images in {query_dir}" in capsys.readouterr().out
        fashion_folder.main(["--root", str(root), "annotate", str(query_dir)])
        labels_file = root / f"labels_round_{round_}.csv"
        with open(labels_file, newline="") as f:
            assert {row["label"] for row in csv.DictReader(f)} <= set(FASHION_MNIST_LABELS)
        assert main(["label", str(run_dir), "--labels", str(labels_file)]) == 0
    assert main(argv + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert "final model: 20 labeled examples" in out and f"fused model: {run_dir / 'fused'}" in out
    assert AutoConfig.from_pretrained(run_dir / "fused").id2label == dict(enumerate(FASHION_MNIST_LABELS))
    # The run stored exactly the answer key's classes of the images it queried.
    with open(root / "answers.csv", newline="") as f:
        answers = {row["file_name"]: row["label"] for row in csv.DictReader(f)}
    given = {}
    for round_ in (1, 2):
        with open(root / f"labels_round_{round_}.csv", newline="") as f:
            given.update({int(row["pool_index"]): answers[row["file_name"]] for row in csv.DictReader(f)})
    stored = pq.read_table(run_dir / "labels.parquet").to_pydict()
    assert sorted(set(stored["round"])) == [1, 2]
    assert {int(i): FASHION_MNIST_LABELS[y] for i, y in zip(stored["pool_index"], stored["label"])} == given
    assert len(given) == 20
