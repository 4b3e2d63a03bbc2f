"""Benchmark: how long the package and its commands take to start (issue: start-up under a second).

Each command runs as a fresh process, `--repeats` times; the minimum and the median wall time are kept, and every
figure is set beside `python -c "import transformers"` measured in the same run (the ratio is the target's unit).
Also recorded: whether torch was imported (a command that does not train should not pay for it).

Targets: `prunefuse-hf --help` <= 1 s; `import prunefuse_hf` <= 1.2x `import transformers`.

Usage:
    python benchmarks/startup.py                      # writes benchmarks/results/startup.json
    python benchmarks/startup.py --repeats 3 --output /tmp/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "startup.json"

# What torch's presence is read from: the process prints it on stderr at exit.
TORCH_PROBE = "import atexit, sys; atexit.register(lambda: print('torch' in sys.modules, file=sys.stderr));"


def commands(empty_dir: str) -> dict[str, list[str]]:
    cli = [sys.executable, "-c", TORCH_PROBE + "from prunefuse_hf.cli.main import main; sys.exit(main())"]
    return {
        "python": [sys.executable, "-c", "pass"],
        "import transformers": [sys.executable, "-c", TORCH_PROBE + "import transformers"],
        "import prunefuse_hf": [sys.executable, "-c", TORCH_PROBE + "import prunefuse_hf"],
        "prunefuse-hf --help": [*cli, "--help"],
        "prunefuse-hf cache list": [*cli, "cache", "list", "--cache_dir", empty_dir],
        "prunefuse-hf label (no run)": [*cli, "label", empty_dir, "--labels", "labels.csv"],
        "prunefuse-hf run --help": [*cli, "run", "--help"],
    }


def measure(command: list[str], repeats: int) -> dict:
    seconds, torch_imported = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds.append(time.perf_counter() - started)
        if any(TORCH_PROBE in part for part in command):
            torch_imported = done.stderr.strip().splitlines()[-1] == "True"
    return {
        "seconds": min(seconds),
        "median_seconds": statistics.median(seconds),
        "all_seconds": seconds,
        "imports_torch": torch_imported,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as empty_dir:
        results = {name: measure(command, args.repeats) for name, command in commands(empty_dir).items()}
    transformers_seconds = results["import transformers"]["seconds"]
    for entry in results.values():
        entry["vs_import_transformers"] = entry["seconds"] / transformers_seconds
    report = {
        "config": {"repeats": args.repeats, "python": sys.version.split()[0]},
        "machine": {"cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())},
        "commands": results,
        "targets": {
            "help_seconds_max": 1.0,
            "help_met": results["prunefuse-hf --help"]["seconds"] <= 1.0,
            "import_vs_transformers_max": 1.2,
            "import_met": results["import prunefuse_hf"]["vs_import_transformers"] <= 1.2,
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'command':32}{'min s':>8}{'median s':>10}{'x transformers':>16}  torch")
    for name, entry in results.items():
        torch_mark = "" if entry["imports_torch"] is None else ("yes" if entry["imports_torch"] else "no")
        print(f"{name:32}{entry['seconds']:>8.2f}{entry['median_seconds']:>10.2f}"
              f"{entry['vs_import_transformers']:>16.2f}  {torch_mark}")  # fmt: skip
    targets = report["targets"]
    print(f"--help <= 1 s: {'PASS' if targets['help_met'] else 'MISS'}; "
          f"import <= 1.2x transformers: {'PASS' if targets['import_met'] else 'MISS'}")  # fmt: skip


if __name__ == "__main__":
    main()
