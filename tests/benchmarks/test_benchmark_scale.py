"""The scale benchmark's `--quick` mode, run as a user runs it, so the script cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scale.py"


def test_quick_scale_benchmark_measures_selection_paths_and_state_per_image(tmp_path):
    output = tmp_path / "scale.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--output", str(output), "--kinds", "gauss",
                    "--work_dir", str(tmp_path / "work")], env=env, check=True, capture_output=True, text=True)  # fmt: skip

    result = json.loads(output.read_text())
    assert result["config"] == {"sizes": [2000, 4000], "dim": 64, "picks": 20, "kinds": ["gauss"]}
    assert [entry["pool_size"] for entry in result["kcenter"]] == [2000, 4000]
    for entry in result["kcenter"]:
        assert entry["feature_matrix_bytes"] == entry["pool_size"] * 64 * 4
        assert entry["us_per_image_per_pick"] == entry["seconds"] / 20 / entry["pool_size"] * 1e6
        assert 1 <= entry["lookahead_refreshes"] <= 20
        assert entry["speedup_vs_previous"] == entry["previous_seconds_extrapolated"] / entry["seconds"]
    for entry in result["state"]:
        # Before, every image's round, label and score went into indented JSON: tens of bytes per image.
        assert entry["previous_state_json_bytes"] > 20 * entry["pool_size"]
        # Now the npz holds the labeled rows only (index, round, label, score: 28 bytes), beside a small state.json.
        assert 28 * entry["labeled"] < entry["state_bytes"] < 29 * entry["labeled"] + 4096
        assert entry["save_seconds_no_label"] > 0 and entry["resume_read_seconds"] > 0
    assert [entry["pool_size"] for entry in result["image_paths"]] == [2000, 4000]
    (resume,) = result["resume"]  # one real run, stopped after its first selection and resumed
    assert resume["pool_size"] == 2000 and resume["first_resumed_step"] == "label:2"
    # Both are measured: which one is shorter depends on the machine's load, so only their presence is checked.
    assert resume["resume_seconds"] > 0 and resume["first_run_seconds"] > 0
    # Saves after init, label:1, train_surrogate:1 and select:1; only label:1 labeled (250 = 2,000 / 8).
    assert resume["labeled_at_save"] == [0, 250, 250, 250] and len(resume["save_seconds_per_step"]) == 4
    assert [entry["timed_picks"] for entry in result["badge"]] == [20, 20]
    assert set(result["growth"]) == {"kcenter/gauss", "badge", "image_paths", "state", "resume"}
    assert all(ratio >= 1.0 for ratio in result["growth"].values())

    cache = result["cache"]
    assert cache["config"]["num_images"] == 48 and cache["config"]["image_size"] == 32
    # Quick mode builds each format once per process count.
    expected = [("jpeg", 1), ("jpeg", 2), ("raw", 1), ("raw", 2), ("png", 2)]
    assert [(b["format"], b["num_proc"]) for b in cache["build"]] == expected or cache["config"]["cores"] == 1
    # Raw pixels are C×H×W bytes per image plus the Arrow file's metadata (a few KB); the compact formats are smaller.
    assert 3 * 32 * 32 <= cache["bytes_per_image"]["raw"] < 3 * 32 * 32 * 1.25
    assert (
        cache["bytes_per_image"]["jpeg"] < cache["bytes_per_image"]["png"] < cache["bytes_per_image"]["raw"]
    )
    assert cache["imagenet_bytes"]["raw"] == cache["bytes_per_image"]["raw"] * 1_281_167
    assert set(cache["read_images_per_second"]) == {"raw/workers=0", "jpeg/workers=0", "jpeg/workers=2",
                                                    "png/workers=0", "png/workers=2", "decode/workers=0",
                                                    "decode/workers=2"}  # fmt: skip
    accuracy = cache["accuracy"]
    # PNG is lossless: the same predictions as the raw pixels.
    assert (
        accuracy["agreement_raw_vs_png"] == 1.0
        and accuracy["trained_on_raw"]["png"] == accuracy["trained_on_raw"]["raw"]
    )
    assert (accuracy["train_images"], accuracy["test_images"]) == (32, 16)
