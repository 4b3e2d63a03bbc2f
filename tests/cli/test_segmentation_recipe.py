"""The semantic-segmentation recipe, shortened, through `prunefuse-hf run`: a real SegFormer run on the built-in
synthetic segmentation pool, ending with the mean IoU line and a pipeline-ready fused segmenter."""

import json
import subprocess
import sys
from pathlib import Path

RECIPE = Path(__file__).parents[2] / "recipes" / "synthetic-segmentation-segformer" / "prunefuse.yaml"


def test_segmentation_recipe_runs_to_a_fused_segmenter(tmp_path):
    command = [sys.executable, "-m", "prunefuse_hf.cli", "run", "--config", str(RECIPE), "--output_dir",
               str(tmp_path / "run"), "--max_pool_size", "30", "--max_eval_samples", "8", "--initial_labeled_size",
               "12", "--query_size", "6", "--num_rounds", "1", "--num_train_epochs", "1"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "final model: 18 labeled examples, mean_iou " in result.stdout
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["metric"] == "mean_iou" and state["completed"][-1] == "report"
    assert len(state["class_names"]) == 11 and state["settings"]["task"] == "image-segmentation"
    config = json.loads((tmp_path / "run" / "fused" / "config.json").read_text())
    assert config["architectures"] == ["SegformerForSemanticSegmentation"]
    assert config["id2label"]["0"] == "background" and config["id2label"]["1"] == "T-shirt/top"
    assert (tmp_path / "run" / "fused" / "preprocessor_config.json").is_file()
