"""The object-detection recipe, shortened, through `prunefuse-hf run`: a real DETR run on the built-in synthetic
detection pool, ending with the mAP line and a pipeline-ready fused detector."""

import json
import subprocess
import sys
from pathlib import Path

RECIPE = Path(__file__).parents[2] / "recipes" / "synthetic-detection-detr" / "prunefuse.yaml"


def test_detection_recipe_runs_to_a_fused_detector(tmp_path):
    command = [sys.executable, "-m", "prunefuse_hf.cli", "run", "--config", str(RECIPE), "--output_dir",
               str(tmp_path / "run"), "--max_pool_size", "40", "--max_eval_samples", "16", "--initial_labeled_size",
               "16", "--query_size", "8", "--num_rounds", "1", "--num_train_epochs", "1"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "final model: 24 labeled examples, map " in result.stdout
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["metric"] == "map" and state["completed"][-1] == "report"
    assert len(state["class_names"]) == 10
    config = json.loads((tmp_path / "run" / "fused" / "config.json").read_text())
    assert config["architectures"] == ["DetrForObjectDetection"] and config["id2label"]["0"] == "T-shirt/top"
    assert (tmp_path / "run" / "fused" / "preprocessor_config.json").is_file()
