"""The scoring benchmark's `--quick` mode, run as a user runs it, so the script cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scoring.py"


def test_quick_benchmark_measures_every_target_side_by_side(tmp_path):
    output = tmp_path / "scoring.json"
    # One thread: a smoke run measures nothing, and idle OpenMP threads spin on a busy machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--output", str(output)], env=env,
                         check=True, capture_output=True, text=True)  # fmt: skip

    result = json.loads(output.read_text())
    assert set(result) == {"config", "machine", "pixel_cache", "scoring", "training"}
    assert result["config"]["pool_size"] == 256 and result["config"]["repeats"] == 2
    assert result["machine"]["cpu_count"] == os.cpu_count()
    # The cache holds at least every image's uint8 pixels (3 x 32 x 32 per image).
    assert result["pixel_cache"]["bytes"] >= 256 * 3 * 32 * 32 and result["pixel_cache"]["seconds"] > 0

    scoring = result["scoring"]
    for name in ("bare_forward", "score_pool_cached", "score_pool_uncached"):
        entry = scoring[name]
        assert len(entry["all_seconds"]) == 2 and entry["seconds"] == min(entry["all_seconds"])
        assert entry["images_per_second"] == 256 / entry["seconds"]
    bare = scoring["bare_forward"]["seconds"]
    for name in ("score_pool_cached", "score_pool_uncached"):
        assert scoring[name]["vs_bare_forward"] == bare / scoring[name]["seconds"]
        # Same batches, same model: the three paths compute exactly the same probabilities.
        assert scoring[name]["max_abs_diff_vs_bare_forward"] == 0.0
    assert scoring["meets_target"] == (scoring["score_pool_cached"]["vs_bare_forward"] >= 0.9)

    training = result["training"]
    assert training["train_examples"] == 64 and training["batch_size"] == 32
    for role in ("surrogate", "dense"):
        for path in ("cached", "uncached"):
            assert training[role][path]["steps"] == 2  # 64 examples, batch 32, 1 epoch
        assert training[role]["cache_speedup"] == (
            training[role]["uncached"]["seconds"] / training[role]["cached"]["seconds"]
        )
    assert "| surrogate: `score_pool`, cached pixels |" in run.stdout
