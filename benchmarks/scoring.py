"""Pool-scoring benchmark: `score_pool` against a bare forward pass, baal, and itself on 2 processes;
time and peak memory of the pool-wide strategies (kcenter_greedy, badge).

Everything is measured in one run on the same model and pool: the default recipe's ResNet (its
p = 0.5 surrogate does the scoring, as in a PruneFuse run) on the Fashion-MNIST train set.

    python benchmarks/scoring.py                      # full: 60,000 images, writes benchmarks/results/scoring.json
    python benchmarks/scoring.py --pool_size 5000 --skip_baal   # quick look

baal is installed into `benchmarks/.baal_site` (its own folder, `pip install --target`, without its
heavy optional dependencies) the first time; `--skip_baal` leaves it out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "fashion-mnist-resnet" / "prunefuse.yaml"
BAAL_SITE = Path(__file__).resolve().parent / ".baal_site"
BAAL_PACKAGES = ["baal==2.1.0", "structlog<23", "torchmetrics", "lightning-utilities"]


def build_models(seed: int = 0):
    from prunefuse_hf import prune_model
    from prunefuse_hf.modeling import load_image_classifier

    recipe = yaml.safe_load(RECIPE.read_text())
    torch.manual_seed(seed)
    dense = load_image_classifier(recipe["model_config"], num_labels=10).eval()
    surrogate, _ = prune_model(dense, recipe["pruning_ratio"])
    return dense, surrogate.eval(), recipe["image_size"]


def load_pool(pool_size: int, model, image_size: int):
    from prunefuse_hf.data import load_image_dataset, prepare_dataset

    pool = load_image_dataset("fashion_mnist", "train")
    if pool_size < len(pool):
        pool = pool.select(range(pool_size))
    return prepare_dataset(pool, model.config, image_size=image_size)


def time_bare_forward(model, pixel_values: torch.Tensor, batch_size: int) -> float:
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(pixel_values), batch_size):
            model(pixel_values=pixel_values[start : start + batch_size])
    return time.perf_counter() - started


def time_score_pool(model, prepared, batch_size: int, workers: int) -> float:
    from prunefuse_hf.scoring import score_pool

    started = time.perf_counter()
    score_pool(model, prepared, batch_size=batch_size, num_workers=workers, show_progress=False)
    return time.perf_counter() - started


def ensure_baal() -> bool:
    if not (BAAL_SITE / "baal").is_dir():
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(BAAL_SITE),
            *BAAL_PACKAGES,
        ]
        if subprocess.run(command).returncode != 0:
            return False
    sys.path.insert(0, str(BAAL_SITE))
    return True


def time_baal(model, prepared, batch_size: int, workers: int) -> float:
    """baal's `ModelWrapper.predict_on_dataset` (one stochastic iteration, i.e. a plain forward)."""
    from baal.modelwrapper import ModelWrapper, TrainingArgs

    class Logits(torch.nn.Module):  # baal expects a module returning a tensor
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values=pixel_values).logits

    class Items(torch.utils.data.Dataset):  # baal expects (input, target) items
        def __len__(self):
            return len(prepared)

        def __getitem__(self, i):
            row = prepared[i]
            return row["pixel_values"], row["labels"]

    wrapper = ModelWrapper(
        Logits(model), TrainingArgs(batch_size=batch_size, use_cuda=False, workers=workers, criterion=None)
    )
    started = time.perf_counter()
    wrapper.predict_on_dataset(Items(), iterations=1, verbose=False)
    return time.perf_counter() - started


def time_processes(num_processes: int, pool_size: int, batch_size: int) -> float:
    """Wall time of sharded scoring with `num_processes` CPU processes (torchrun), 2 cores shared."""
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, os.cpu_count() // num_processes))}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_processes),
               __file__, "--worker", "--pool_size", str(pool_size), "--batch_size", str(batch_size)]  # fmt: skip
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return float(next(line.split()[1] for line in output.splitlines() if line.startswith("WORKER_SECONDS")))


def worker(pool_size: int, batch_size: int) -> None:
    from accelerate import Accelerator

    from prunefuse_hf.scoring import score_pool

    accelerator = Accelerator(cpu=True)
    _, surrogate, image_size = build_models()
    prepared = load_pool(pool_size, surrogate, image_size)
    score_pool(
        surrogate, prepared.select(range(2 * batch_size)), batch_size=batch_size, show_progress=False
    )  # warm-up
    accelerator.wait_for_everyone()
    started = time.perf_counter()
    scores = score_pool(
        surrogate, prepared, batch_size=batch_size, accelerator=accelerator, show_progress=False
    )
    seconds = time.perf_counter() - started
    assert len(scores) == len(prepared) and np.all(np.diff(scores.pool_indices) == 1)
    if accelerator.is_main_process:
        print("WORKER_SECONDS", seconds, flush=True)


def strategy_worker(path: str, name: str, n: int) -> None:
    """Run one pool-wide strategy on saved features; print its time, the peak memory it added and a digest of
    the selection. Under torchrun every process keeps only its shard of the candidates (as in a run)."""
    import hashlib

    from accelerate import Accelerator

    from prunefuse_hf.strategies import get_strategy

    data = torch.load(path)
    accelerator = Accelerator(cpu=True) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    if accelerator is not None:
        rows = torch.arange(len(data["pool_indices"]))[accelerator.process_index :: accelerator.num_processes]
        data.update({key: data[key][rows].clone() for key in ("pool_indices", "probs", "features")})
    with RssSampler() as rss:
        started = time.perf_counter()
        selection = get_strategy(name).select(n, pool_indices=data["pool_indices"].numpy(), probs=data["probs"],
                                              features=data["features"], labeled_features=data["labeled_features"],
                                              accelerator=accelerator)  # fmt: skip
        seconds = time.perf_counter() - started
    assert len(set(selection.indices.tolist())) == n
    digest = hashlib.sha256(selection.indices.tobytes()).hexdigest()[:16]
    print("STRATEGY", seconds, rss.peak - rss.start, digest, flush=True)


class RssSampler:
    """Samples the process's resident memory every 2 ms: `peak - start` is what the code inside used."""

    def __init__(self):
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def measure_strategies(dense, prepared, n: int, batch_size: int, directory: Path) -> dict:
    from prunefuse_hf.scoring import score_pool

    scores = score_pool(
        dense, prepared, batch_size=batch_size, outputs=("probs", "features"), show_progress=False
    )
    labeled = 1000  # the first 1,000 stand for the labeled set, the rest are candidates
    path = directory / "strategy_inputs.pt"
    torch.save({"pool_indices": torch.from_numpy(scores.pool_indices[labeled:]), "probs": scores.probs[labeled:],
                "features": scores.features[labeled:], "labeled_features": scores.features[:labeled]}, path)  # fmt: skip
    candidates = len(scores) - labeled
    results = {}
    for name in ("kcenter_greedy", "badge"):
        worker_args = [__file__, "--strategy_worker", str(path), name, str(n)]
        ((seconds, peak, digest),) = _strategy_lines([sys.executable, *worker_args])
        # The same selection from 2 shards (2 processes on the same cores): per-process memory and time.
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, os.cpu_count() // 2))}
        sharded = _strategy_lines([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                   *worker_args], env=env)  # fmt: skip
        results[name] = {
            "select": n,
            "candidates": candidates,
            "feature_dim": scores.features.shape[1],
            "seconds": float(seconds),
            "peak_extra_bytes": int(peak),
            "nxn_float32_bytes": candidates * candidates * 4,
            "two_processes": {
                "seconds": max(float(line[0]) for line in sharded),
                "peak_extra_bytes_per_process": max(int(line[1]) for line in sharded),
                "same_selection": all(line[2] == digest for line in sharded),
            },
        }
    path.unlink()
    return results


def _strategy_lines(command, env=None) -> list[list[str]]:
    output = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    return [line.split()[1:] for line in output.splitlines() if line.startswith("STRATEGY")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool_size", type=int, default=60000)
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--select", type=int, default=1000)
    parser.add_argument("--skip_baal", action="store_true")
    parser.add_argument("--skip_processes", action="store_true")
    parser.add_argument("--strategies_only", action="store_true", help="Re-measure the strategies only, "
                        "keeping the other numbers of the existing --output file.")  # fmt: skip
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "scoring.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy_worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.pool_size, args.batch_size)
    if args.strategy_worker:
        return strategy_worker(args.strategy_worker[0], args.strategy_worker[1], int(args.strategy_worker[2]))

    dense, surrogate, image_size = build_models()
    prepared = load_pool(args.pool_size, surrogate, image_size)
    if args.strategies_only:
        result = json.loads(Path(args.output).read_text())
        result["strategies"] = measure_strategies(
            dense, prepared, args.select, args.batch_size, Path(args.output).parent
        )
        Path(args.output).write_text(json.dumps(result, indent=2))
        return print(markdown_table(result))
    pixel_values = torch.cat(
        [prepared[start : start + 4096]["pixel_values"] for start in range(0, len(prepared), 4096)]
    )
    n = len(prepared)
    result = {"pool_size": n, "batch_size": args.batch_size, "image_size": image_size, "threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "torch": torch.__version__}  # fmt: skip

    time_bare_forward(surrogate, pixel_values[: 2 * args.batch_size], args.batch_size)  # warm-up
    bare = time_bare_forward(surrogate, pixel_values, args.batch_size)
    result["bare_forward"] = {"seconds": bare, "images_per_second": n / bare}
    for workers in (0, 1):
        seconds = time_score_pool(surrogate, prepared, args.batch_size, workers)
        result[f"score_pool_workers{workers}"] = {"seconds": seconds, "images_per_second": n / seconds,
                                                  "vs_bare_forward": bare / seconds}  # fmt: skip
    if not args.skip_baal and ensure_baal():
        seconds = time_baal(surrogate, prepared, args.batch_size, workers=0)
        best = min(result["score_pool_workers0"]["seconds"], result["score_pool_workers1"]["seconds"])
        result["baal_predict_on_dataset"] = {"seconds": seconds, "images_per_second": n / seconds,
                                             "score_pool_speedup": seconds / best}  # fmt: skip
    if not args.skip_processes:
        one, two = time_processes(1, n, args.batch_size), time_processes(2, n, args.batch_size)
        result["processes"] = {"one_seconds": one, "two_seconds": two, "speedup": one / two}
    result["strategies"] = measure_strategies(
        dense, prepared, args.select, args.batch_size, Path(args.output).parent
    )

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(markdown_table(result))


def markdown_table(result: dict) -> str:
    rows = ["| measurement | value |", "|---|---|"]
    bare = result["bare_forward"]
    rows.append(f"| bare forward over pre-built tensors | {bare['images_per_second']:,.0f} images/s |")
    for workers in (0, 1):
        entry = result[f"score_pool_workers{workers}"]
        rows.append(f"| `score_pool`, {workers} loader workers | {entry['images_per_second']:,.0f} images/s "
                    f"({entry['vs_bare_forward']:.2f}× bare forward) |")  # fmt: skip
    if "baal_predict_on_dataset" in result:
        entry = result["baal_predict_on_dataset"]
        rows.append(f"| baal `predict_on_dataset` | {entry['images_per_second']:,.0f} images/s "
                    f"(`score_pool` {entry['score_pool_speedup']:.2f}× faster) |")  # fmt: skip
    if "processes" in result:
        entry = result["processes"]
        rows.append(f"| 2 processes vs 1 (torchrun, 2 cores) | {entry['two_seconds']:.1f} s vs "
                    f"{entry['one_seconds']:.1f} s ({entry['speedup']:.2f}× speed-up) |")  # fmt: skip
    for name, entry in result["strategies"].items():
        rows.append(f"| `{name}`: {entry['select']:,} from {entry['candidates']:,} (D={entry['feature_dim']}) | "
                    f"{entry['seconds']:.1f} s, peak +{entry['peak_extra_bytes'] / 2**20:,.0f} MiB "
                    f"(an N×N float32 matrix: {entry['nxn_float32_bytes'] / 2**30:,.1f} GiB) |")  # fmt: skip
        if "two_processes" in entry:
            two = entry["two_processes"]
            rows.append(f"| `{name}` from 2 shards (2 processes) | {two['seconds']:.1f} s, peak "
                        f"+{two['peak_extra_bytes_per_process'] / 2**20:,.0f} MiB per process, same selection: "
                        f"{two['same_selection']} |")  # fmt: skip
    return "\n".join(rows)


if __name__ == "__main__":
    main()
