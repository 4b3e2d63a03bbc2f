"""The start-up benchmark, run as a user runs it (one repeat), so the script cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "startup.py"


def test_startup_benchmark_times_every_command_beside_import_transformers(tmp_path):
    output = tmp_path / "startup.json"
    subprocess.run([sys.executable, str(SCRIPT), "--repeats", "1", "--output", str(output)], check=True,
                   capture_output=True, text=True)  # fmt: skip

    result = json.loads(output.read_text())
    commands = result["commands"]
    assert {
        "import transformers",
        "import prunefuse_hf",
        "prunefuse-hf --help",
        "prunefuse-hf cache list",
    } <= set(commands)
    base = commands["import transformers"]["seconds"]
    for entry in commands.values():
        assert len(entry["all_seconds"]) == 1 and entry["seconds"] == min(entry["all_seconds"])
        assert entry["vs_import_transformers"] == entry["seconds"] / base
    # The probe reads torch's presence from the process itself: the commands that train import it, --help does not.
    assert commands["prunefuse-hf --help"]["imports_torch"] is False
    assert commands["prunefuse-hf run --help"]["imports_torch"] is True
    targets = result["targets"]
    assert targets["help_met"] == (commands["prunefuse-hf --help"]["seconds"] <= 1.0)
