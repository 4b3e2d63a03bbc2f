import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from transformers import AutoModelForImageClassification

from conftest import make_image_dataset, tiny_recipe


def _files(run_dir: Path) -> set[str]:
    return {
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if p.is_file() and "trainer_output" not in p.parts
    }


def _rounds(run_dir: Path) -> dict[int, list[int]]:
    table = pq.read_table(run_dir / "selection.parquet").to_pydict()
    rounds = {}
    for index, round_ in zip(table["pool_index"], table["round"]):
        rounds.setdefault(round_, []).append(index)
    return {round_: sorted(indices) for round_, indices in rounds.items()}


@pytest.mark.distributed
@pytest.mark.skipif(
    shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None, reason="no accelerate CLI"
)
def test_cli_under_accelerate_launch_with_two_cpu_processes(tmp_path):
    make_image_dataset(num_examples=96, num_classes=4, seed=1).save_to_disk(tmp_path / "pool")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_recipe(tmp_path / "pool", num_rounds=2))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    # --multi_gpu on a CPU-only machine starts two real processes joined over gloo.
    two = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "-m", "prunefuse_hf.cli", "run",
         "--config", str(recipe), "--output_dir", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, "-m", "prunefuse_hf.cli", "run", "--config", str(recipe), "--output_dir", str(tmp_path / "one")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]

    assert _files(tmp_path / "two") == _files(tmp_path / "one")
    two_rounds, one_rounds = _rounds(tmp_path / "two"), _rounds(tmp_path / "one")
    assert {r: len(v) for r, v in two_rounds.items()} == {1: 16, 2: 8, 3: 8}
    # The random initial set is the same; later rounds follow the surrogate, which DDP trains on a
    # different effective batch (see README), so they are compared by size only.
    assert two_rounds[1] == one_rounds[1]
    assert len(set().union(*two_rounds.values())) == 32
    AutoModelForImageClassification.from_pretrained(tmp_path / "two" / "fused")
    assert two.stdout.count("report: ") == 1  # only the main process prints the summary


RECIPES = Path(__file__).parents[2] / "recipes"


# Slow (about 30 s on 2 cores; `make test-slow`): the classification two-process tests above run by default.
@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(
    shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None, reason="no accelerate CLI"
)
@pytest.mark.parametrize("recipe, metric", [("synthetic-detection-detr", "map"),
                                            ("synthetic-segmentation-segformer", "mean_iou")])  # fmt: skip
def test_detection_and_segmentation_recipes_under_accelerate_launch_with_two_cpu_processes(
    tmp_path, recipe, metric
):
    # Each recipe, shortened: per-image scores sharded over two processes and gathered, the model trained with DDP,
    # and the evaluation (whose per-image boxes or masks accelerate cannot gather) run whole by each process.
    shorter = ["--max_pool_size", "32", "--max_eval_samples", "8", "--initial_labeled_size", "8", "--query_size",
               "8", "--num_rounds", "1", "--num_train_epochs", "1", "--per_device_train_batch_size", "4",
               "--scoring_batch_size", "8"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    two = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "-m", "prunefuse_hf.cli", "run",
         "--config", str(RECIPES / recipe / "prunefuse.yaml"), "--output_dir", str(tmp_path / "two"), *shorter],
        env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    # (The classification test above compares a two-process run with a one-process run, file for file.)
    rounds = _rounds(tmp_path / "two")
    assert {r: len(v) for r, v in rounds.items()} == {1: 8, 2: 8} and len(set().union(*rounds.values())) == 16
    assert {"fused/config.json", "surrogate/pruning_plan.json", "report.md"} <= _files(tmp_path / "two")
    assert two.stdout.count(f"final model: 16 labeled examples, {metric} ") == 1  # the main process prints it
