"""Pool-scoring and training-throughput benchmark: pixels decoded once against decoding at every pass.

Everything is measured in one run, side by side, on the default recipe's model (its p = 0.5 surrogate
does the scoring, as in a PruneFuse run) and the Fashion-MNIST train pool:

1. scoring the pool with the surrogate: a bare forward loop over pre-built normalized tensors (the
   baseline, no data path at all) against `score_pool` over the cached uint8 pixels (target: at least
   0.9x the baseline) and `score_pool` over the uncached path (every image decoded and resized at every
   pass, the previous behaviour);
2. baal 2.1's `ModelWrapper.predict_on_dataset` over a dataset of normalized tensors (unless `--skip_baal`);
3. training throughput (images/s over the same optimizer steps) of the surrogate and of the dense model
   with `DistillationTrainer`, reading the cache against decoding at every step;
4. sharded scoring on 2 processes against 1 (torchrun);
5. time and peak memory of the pool-wide strategies (kcenter_greedy, badge), whole and from 2 shards;
6. the one-time cost of the cache: seconds to decode the pool into it, and its size on disk.

Every timing is the best of `--repeats` runs after a warm-up (the machine's speed varies); all are kept.

    python benchmarks/scoring.py                               # full: writes benchmarks/results/scoring.json
    python benchmarks/scoring.py --pool_size 2000 --skip_baal  # a look (results go to a temporary file)
    python benchmarks/scoring.py --quick                       # smoke run, seconds
    python benchmarks/scoring.py --device cuda --bf16          # on a GPU

baal is installed into `benchmarks/.baal_site` (its own folder, `pip install --target`, without its
heavy optional dependencies) the first time; `--skip_baal` leaves it out.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from common import cpu_name

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "fashion-mnist-resnet" / "prunefuse.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "scoring.json"
BAAL_SITE = Path(__file__).resolve().parent / ".baal_site"
BAAL_PACKAGES = ["baal==2.1.0", "structlog<23", "torchmetrics", "lightning-utilities"]
FULL_POOL_SIZE = 60000
# `score_pool` over cached pixels should run at this fraction of a bare forward loop's speed, or better.
SCORE_POOL_TARGET = 0.9


# ----- models, pool, pixels -----


def build_models(device: str = "cpu", seed: int = 0):
    """The recipe's dense model (random init, seeded) and its surrogate at the recipe method's pruning ratio."""
    from prunefuse_hf import prune_model
    from prunefuse_hf.constants import METHODS
    from prunefuse_hf.pruning.modeling import load_image_classifier

    recipe = yaml.safe_load(RECIPE.read_text())
    torch.manual_seed(seed)
    dense = load_image_classifier(recipe["model_config"], num_labels=10).eval()
    surrogate, _ = prune_model(
        dense, METHODS[recipe["method"]]["pruning_ratio"], importance=recipe["importance"]
    )
    return dense.to(device), surrogate.eval().to(device), recipe


def load_pool(pool_size: int, recipe: dict):
    from prunefuse_hf import load_image_dataset

    pool = load_image_dataset(recipe["dataset_name"], recipe["train_split"])
    return pool.select(range(pool_size)) if pool_size < len(pool) else pool


def build_preprocessor(model, recipe: dict):
    from prunefuse_hf import ImagePreprocessor, build_image_processor

    processor = build_image_processor(model.config, image_size=recipe["image_size"])
    return ImagePreprocessor(
        processor, num_channels=model.config.num_channels, image_column=recipe["image_column"]
    )


def build_pixel_cache(preprocessor, pool, cache_dir: Path) -> tuple:
    """Decode the pool into an empty cache folder: the up-front pass of a run. Returns the pixels and the cost."""
    started = time.perf_counter()
    pixels = preprocessor.pixel_dataset(pool, cache=True, cache_dir=cache_dir)
    seconds = time.perf_counter() - started
    size = sum(path.stat().st_size for path in cache_dir.rglob("*") if path.is_file())
    cost = {"seconds": seconds, "images_per_second": len(pool) / seconds, "bytes": size,
            "bytes_per_image": size / len(pool)}  # fmt: skip
    return pixels, cost


# ----- timing -----


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def best_of(run, repeats: int, device: str, images: int) -> tuple[dict, object]:
    """Time `run()` `repeats` times (the caller warms up first); the best run is the measurement."""
    seconds, result = [], None
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        result = run()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    best = min(seconds)
    return {"seconds": best, "images_per_second": images / best, "all_seconds": seconds}, result


def autocast(device: str, bf16: bool):
    return torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def bare_forward(model, pixel_values: torch.Tensor, batch_size: int, bf16: bool) -> torch.Tensor:
    """The model over pre-built normalized tensors, keeping what `score_pool` keeps (probabilities, on the CPU)."""
    probs = []
    with torch.no_grad(), autocast(pixel_values.device.type, bf16):
        for start in range(0, len(pixel_values), batch_size):
            logits = model(pixel_values=pixel_values[start : start + batch_size]).logits
            probs.append(torch.softmax(logits.float(), dim=-1).cpu())
    return torch.cat(probs)


def run_score_pool(model, dataset, preprocessor, batch_size: int, workers: int, accelerator) -> torch.Tensor:
    from prunefuse_hf import score_pool

    scores = score_pool(model, dataset, np.arange(len(dataset)), batch_size=batch_size,
                        preprocess=preprocessor.normalize, num_workers=workers, accelerator=accelerator,
                        show_progress=False)  # fmt: skip
    return scores.probs


def measure_scoring(surrogate, preprocessor, cached, uncached, args, accelerator) -> dict:
    """Item 1: bare forward (baseline) vs `score_pool` over the cache vs `score_pool` decoding at every pass."""
    from prunefuse_hf.data.pixel_dataset import PixelDataset

    n, batch = len(cached), args.batch_size
    rows, warm_up = np.arange(n), min(n, 2 * batch)
    # The baseline's inputs are built outside the timing: every image normalized, on the device.
    pixel_values = preprocessor.normalize(PixelDataset(cached, rows).batch(rows).to(args.device))

    def bare(size: int) -> torch.Tensor:
        return bare_forward(surrogate, pixel_values[:size], batch, args.bf16)

    def scored(pixels, size: int) -> torch.Tensor:
        dataset = PixelDataset(pixels, rows[:size])
        return run_score_pool(surrogate, dataset, preprocessor, batch, args.num_workers, accelerator)

    result, probs = {}, {}
    bare(warm_up)
    result["bare_forward"], probs["bare_forward"] = best_of(lambda: bare(n), args.repeats, args.device, n)
    scored(cached, warm_up)
    result["score_pool_cached"], probs["score_pool_cached"] = best_of(
        lambda: scored(cached, n), args.repeats, args.device, n
    )
    scored(uncached, warm_up)
    result["score_pool_uncached"], probs["score_pool_uncached"] = best_of(
        lambda: scored(uncached, n), args.repeats, args.device, n
    )
    bare_seconds = result["bare_forward"]["seconds"]
    for name in ("score_pool_cached", "score_pool_uncached"):
        result[name]["vs_bare_forward"] = bare_seconds / result[name]["seconds"]
        # The same numbers as the baseline: what differs is the data path, not the computation.
        result[name]["max_abs_diff_vs_bare_forward"] = float(
            (probs[name] - probs["bare_forward"]).abs().max()
        )
    result["cached_speedup_over_uncached"] = (
        result["score_pool_uncached"]["seconds"] / result["score_pool_cached"]["seconds"]
    )
    result["target_vs_bare_forward"] = SCORE_POOL_TARGET
    result["meets_target"] = result["score_pool_cached"]["vs_bare_forward"] >= SCORE_POOL_TARGET
    return result


# ----- baal -----


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


def time_baal(model, preprocessor, cached, args) -> dict:
    """baal's `ModelWrapper.predict_on_dataset` (one stochastic iteration, i.e. a plain forward), fed normalized
    tensors one example at a time, as a torch `Dataset` with a transform gives them. baal runs in float32."""
    from baal.modelwrapper import ModelWrapper, TrainingArgs

    from prunefuse_hf.data.pixel_dataset import PixelDataset

    class Logits(torch.nn.Module):  # baal expects a module returning a tensor
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values=pixel_values).logits

    class Items(torch.utils.data.Dataset):  # baal expects (input, target) items
        def __init__(self, size):
            self.pixels = PixelDataset(cached, np.arange(size))

        def __len__(self):
            return len(self.pixels)

        def __getitem__(self, i):
            return preprocessor.normalize(self.pixels.batch([i]))[0], 0

    training_args = TrainingArgs(batch_size=args.batch_size, use_cuda=args.device == "cuda",
                                 workers=args.num_workers, criterion=None)  # fmt: skip
    wrapper = ModelWrapper(Logits(model), training_args)
    warm_up, items = Items(min(len(cached), 2 * args.batch_size)), Items(len(cached))
    wrapper.predict_on_dataset(warm_up, iterations=1, verbose=False)
    timing, _ = best_of(
        lambda: wrapper.predict_on_dataset(items, iterations=1, verbose=False),
        args.repeats,
        args.device,
        len(items),
    )
    return {**timing, "precision": "fp32"}


# ----- training -----


def measure_training(
    dense, surrogate, preprocessor, cached, uncached, labels, args, recipe, output_dir
) -> dict:
    """Item 3: `DistillationTrainer` images/s over the same steps, from the cache vs decoding at every step."""
    from transformers import TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from prunefuse_hf import DistillationTrainer
    from prunefuse_hf.data.pixel_dataset import PixelDataset

    n = min(args.train_examples, len(cached))
    rows = np.sort(np.random.default_rng(0).choice(len(cached), size=n, replace=False))
    training_args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=args.train_epochs,
        per_device_train_batch_size=args.train_batch_size,
        learning_rate=recipe["learning_rate"],
        optim=recipe["optim"],
        optim_args=recipe["optim_args"],
        weight_decay=recipe["weight_decay"],
        lr_scheduler_type=recipe["lr_scheduler_type"],
        dataloader_num_workers=args.num_workers,
        dataloader_pin_memory=args.device == "cuda",
        use_cpu=args.device == "cpu",
        bf16=args.bf16,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    warm_up_args = dataclasses.replace(training_args, max_steps=2)

    def train(model, pixels, train_args):
        # A fresh copy each time: every timed run starts from the same weights and optimizer state.
        trainer = DistillationTrainer(copy.deepcopy(model), train_args, preprocessor=preprocessor,
                                      train_dataset=PixelDataset(pixels, rows, labels[rows]), compute_metrics=None)  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # its end-of-training line would interleave with the table
        synchronize(args.device)
        started = time.perf_counter()
        trainer.train()
        synchronize(args.device)
        return time.perf_counter() - started, trainer.state.global_step

    result = {"train_examples": n, "epochs": args.train_epochs, "batch_size": args.train_batch_size,
              "distillation": False, "augment": preprocessor.augment}  # fmt: skip
    images = n * args.train_epochs
    for role, model in (("surrogate", surrogate), ("dense", dense)):
        entry = {}
        for path, pixels in (("cached", cached), ("uncached", uncached)):
            train(model, pixels, warm_up_args)
            runs = [train(model, pixels, training_args) for _ in range(args.repeats)]
            best = min(seconds for seconds, _ in runs)
            entry[path] = {"seconds": best, "images_per_second": images / best, "steps": runs[0][1],
                           "all_seconds": [seconds for seconds, _ in runs]}  # fmt: skip
        entry["cache_speedup"] = entry["uncached"]["seconds"] / entry["cached"]["seconds"]
        result[role] = entry
    return result


# ----- processes -----


def time_processes(num_processes: int, args, cache_dir: Path) -> float:
    """Wall time of sharded scoring with `num_processes` CPU processes (torchrun), the cores shared."""
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, os.cpu_count() // num_processes))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(num_processes), __file__, "--worker", "--pool_size", str(args.pool_size), "--batch_size",
               str(args.batch_size), "--cache_dir", str(cache_dir), "--device", args.device]  # fmt: skip
    if args.bf16:
        command.append("--bf16")
    output = _run(command, env)
    return float(next(line.split()[1] for line in output.splitlines() if line.startswith("WORKER_SECONDS")))


def worker(args) -> None:
    from accelerate import Accelerator

    from prunefuse_hf import score_pool
    from prunefuse_hf.data.pixel_dataset import PixelDataset

    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision="bf16" if args.bf16 else "no")
    _, surrogate, recipe = build_models(str(accelerator.device))
    preprocessor = build_preprocessor(surrogate, recipe)
    # The main process built the cache: this reads it.
    pixels = preprocessor.pixel_dataset(
        load_pool(args.pool_size, recipe), cache=True, cache_dir=args.cache_dir
    )
    dataset = PixelDataset(pixels, np.arange(len(pixels)))
    score = dict(batch_size=args.batch_size, preprocess=preprocessor.normalize, show_progress=False)
    score_pool(surrogate, dataset.select(range(min(len(dataset), 2 * args.batch_size))), **score)  # warm-up
    accelerator.wait_for_everyone()
    started = time.perf_counter()
    scores = score_pool(surrogate, dataset, accelerator=accelerator, **score)
    seconds = time.perf_counter() - started
    assert len(scores) == len(dataset) and np.all(np.diff(scores.pool_indices) == 1)
    if accelerator.is_main_process:
        print("WORKER_SECONDS", seconds, flush=True)


def measure_processes(args, cache_dir: Path) -> dict:
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        return {"skipped": "one GPU: nothing to shard over"}
    one, two = time_processes(1, args, cache_dir), time_processes(2, args, cache_dir)
    return {"one_seconds": one, "two_seconds": two, "speedup": one / two}


# ----- strategies -----


def strategy_worker(path: str, name: str, n: int) -> None:
    """Run one pool-wide strategy on saved features; print its time, the peak memory it added and a digest of
    the selection. Under torchrun every process keeps only its shard of the candidates (as in a run)."""
    import hashlib

    from accelerate import Accelerator

    from prunefuse_hf.selection.strategies import get_strategy

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
    # One write per line: with PYTHONUNBUFFERED, print() writes each piece separately and the 2 processes' lines
    # could interleave.
    sys.stdout.write(f"STRATEGY {seconds} {rss.peak - rss.start} {digest}\n")
    sys.stdout.flush()


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


def measure_strategies(dense, preprocessor, cached, n: int, batch_size: int, directory: Path) -> dict:
    """Item 5: the dense model's probabilities and features over the pool, then each strategy in its own process
    (so that its peak memory is its own), once whole and once from 2 shards."""
    from prunefuse_hf import score_pool
    from prunefuse_hf.data.pixel_dataset import PixelDataset

    dataset = PixelDataset(cached, np.arange(len(cached)))
    scores = score_pool(dense, dataset, batch_size=batch_size, outputs=("probs", "features"),
                        preprocess=preprocessor.normalize, show_progress=False)  # fmt: skip
    labeled = min(1000, len(scores) // 4)  # the first rows stand for the labeled set, the rest are candidates
    candidates = len(scores) - labeled
    n = min(n, candidates // 2)
    path = directory / "strategy_inputs.pt"
    torch.save({"pool_indices": torch.from_numpy(scores.pool_indices[labeled:]), "probs": scores.probs[labeled:],
                "features": scores.features[labeled:], "labeled_features": scores.features[:labeled]}, path)  # fmt: skip
    results = {}
    for name in ("kcenter_greedy", "badge"):
        worker_args = [__file__, "--strategy_worker", str(path), name, str(n)]
        ((seconds, peak, digest),) = _strategy_lines([sys.executable, *worker_args])
        # The same selection from 2 shards (2 processes on the same cores): per-process memory and time.
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, os.cpu_count() // 2))}
        sharded = _strategy_lines([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   "--nproc_per_node", "2", *worker_args], env=env)  # fmt: skip
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
    return [line.split()[1:] for line in _run(command, env).splitlines() if line.startswith("STRATEGY")]


def _run(command, env=None) -> str:
    """stdout of `command`; when it fails, the error names the command and shows the end of its stderr."""
    process = subprocess.run(command, capture_output=True, text=True, env=env)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{process.stderr[-3000:]}")
    return process.stdout


# ----- the run -----


def machine_info(device: str) -> dict:
    import datasets
    import transformers

    info = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "datasets": datasets.__version__,
            "python": platform.python_version()}  # fmt: skip
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    return info


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool_size", type=int, default=FULL_POOL_SIZE)
    parser.add_argument("--batch_size", type=int, default=512, help="Scoring batch size.")
    parser.add_argument("--repeats", type=int, default=2, help="Timed runs of each target after its warm-up.")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers (the recipe's: 0).")
    parser.add_argument(
        "--train_examples", type=int, default=5000, help="Labeled examples the models train on."
    )
    parser.add_argument("--train_epochs", type=int, default=2)
    parser.add_argument("--train_batch_size", type=int, default=128)
    parser.add_argument("--select", type=int, default=1000, help="Examples the strategies select.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="Score and train under bf16 autocast.")
    parser.add_argument("--skip_baal", action="store_true")
    parser.add_argument("--skip_training", action="store_true")
    parser.add_argument("--skip_processes", action="store_true")
    parser.add_argument("--skip_strategies", action="store_true")
    parser.add_argument("--strategies_only", action="store_true", help="Re-measure the strategies only, "
                        "keeping the other numbers of the existing --output file.")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="A smoke run in seconds: tiny sizes, scoring, the "
                        "cache and training only (no baal, processes or strategies).")  # fmt: skip
    parser.add_argument("--output", type=Path, help="JSON results. Default: benchmarks/results/scoring.json for "
                        "a full run, a temporary file otherwise (a partial run does not replace the results).")  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache_dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--strategy_worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible to torch.")
    if args.quick:
        args.pool_size, args.batch_size = 256, 64
        args.train_examples, args.train_epochs, args.train_batch_size = 64, 1, 32
        args.skip_baal = args.skip_processes = args.skip_strategies = True
    if args.output is None:
        skips = (args.skip_baal, args.skip_training, args.skip_processes, args.skip_strategies)
        full = args.pool_size >= FULL_POOL_SIZE and (args.strategies_only or not any(skips))
        args.output = RESULTS if full else Path(tempfile.gettempdir()) / "prunefuse_scoring_benchmark.json"
    return args


def main(argv=None) -> None:
    from prunefuse_hf import keep_freed_memory

    args = parse_args(argv)
    # As in `prunefuse-hf run`, whose scoring and training this measures (and the worker processes the same).
    args.glibc_keeps_freed_memory = keep_freed_memory()
    if args.worker:
        return worker(args)
    if args.strategy_worker:
        return strategy_worker(args.strategy_worker[0], args.strategy_worker[1], int(args.strategy_worker[2]))
    import datasets

    datasets.disable_progress_bars()
    dense, surrogate, recipe = build_models(args.device)
    pool = load_pool(args.pool_size, recipe)
    preprocessor = build_preprocessor(surrogate, recipe)
    work_dir = Path(tempfile.mkdtemp(prefix="prunefuse_scoring_benchmark_"))
    try:
        cached, cache_cost = build_pixel_cache(preprocessor, pool, work_dir / "pixels")
        if args.strategies_only:
            result = json.loads(args.output.read_text()) if args.output.is_file() else {}
            result["strategies"] = measure_strategies(dense, preprocessor, cached, args.select, args.batch_size,
                                                      work_dir)  # fmt: skip
        else:
            result = run_all(args, dense, surrogate, recipe, pool, preprocessor, cached, cache_cost, work_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown_table(result))
    print(f"\nResults: {args.output}")


def run_all(args, dense, surrogate, recipe, pool, preprocessor, cached, cache_cost, work_dir: Path) -> dict:
    # The previous behaviour: every read decodes and resizes its images again.
    uncached = preprocessor.pixel_dataset(pool, cache=False, validate=False)
    labels = np.asarray(
        pool.select_columns([recipe["label_column"]]).with_format("numpy")[recipe["label_column"]]
    )
    accelerator = None
    if args.bf16:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision="bf16")
    result = {
        "config": {"pool_size": len(pool), "batch_size": args.batch_size, "image_size": recipe["image_size"],
                   "num_channels": surrogate.config.num_channels, "device": args.device, "bf16": args.bf16,
                   "repeats": args.repeats, "num_workers": args.num_workers, "recipe": str(RECIPE.relative_to(ROOT)),
                   "parameters": {"dense": dense.num_parameters(), "surrogate": surrogate.num_parameters()},
                   "glibc_keeps_freed_memory": args.glibc_keeps_freed_memory},
        "machine": machine_info(args.device),
        "pixel_cache": cache_cost,
    }  # fmt: skip
    result["scoring"] = measure_scoring(surrogate, preprocessor, cached, uncached, args, accelerator)
    if not args.skip_baal and ensure_baal():
        baal = time_baal(surrogate, preprocessor, cached, args)
        baal["score_pool_speedup"] = baal["seconds"] / result["scoring"]["score_pool_cached"]["seconds"]
        result["baal_predict_on_dataset"] = baal
    if not args.skip_training:
        result["training"] = measure_training(dense, surrogate, preprocessor, cached, uncached, labels, args,
                                              recipe, work_dir / "trainer")  # fmt: skip
    if not args.skip_processes:
        result["processes"] = measure_processes(args, work_dir / "pixels")
    if not args.skip_strategies:
        result["strategies"] = measure_strategies(dense, preprocessor, cached, args.select, args.batch_size,
                                                  work_dir)  # fmt: skip
    return result


def markdown_table(result: dict) -> str:
    rows = ["| measurement | value |", "|---|---|"]
    if "config" in result:
        config, machine = result["config"], result["machine"]
        where = machine.get("gpu", f"{machine['cpu']}, {machine['cpu_count']} cores")
        precision = "bf16" if config["bf16"] else "fp32"
        rows.append(f"| setup | {config['pool_size']:,} images, batch {config['batch_size']}, {where}, "
                    f"{precision}, torch {machine['torch']}, best of {config['repeats']} |")  # fmt: skip
    if "pixel_cache" in result:
        cache = result["pixel_cache"]
        rows.append(f"| one-time: decode the pool into the pixel cache | {cache['seconds']:.1f} s "
                    f"({cache['images_per_second']:,.0f} images/s), {cache['bytes'] / 2**20:,.0f} MiB |")  # fmt: skip
    if "scoring" in result:
        scoring = result["scoring"]
        bare = scoring["bare_forward"]
        rows.append(f"| surrogate: bare forward over pre-built tensors (baseline) | "
                    f"{bare['images_per_second']:,.0f} images/s |")  # fmt: skip
        cached, uncached = scoring["score_pool_cached"], scoring["score_pool_uncached"]
        mark = "meets" if scoring["meets_target"] else "misses"
        rows.append(f"| surrogate: `score_pool`, cached pixels | {cached['images_per_second']:,.0f} images/s "
                    f"({cached['vs_bare_forward']:.2f}× baseline; {mark} the "
                    f"{scoring['target_vs_bare_forward']}× target) |")  # fmt: skip
        rows.append(f"| surrogate: `score_pool`, decoding every pass | {uncached['images_per_second']:,.0f} "
                    f"images/s ({uncached['vs_bare_forward']:.2f}× baseline; the cache is "
                    f"{scoring['cached_speedup_over_uncached']:.2f}× faster) |")  # fmt: skip
    if "baal_predict_on_dataset" in result:
        entry = result["baal_predict_on_dataset"]
        rows.append(f"| baal `predict_on_dataset` | {entry['images_per_second']:,.0f} images/s "
                    f"(`score_pool` is {entry['score_pool_speedup']:.2f}× as fast, {entry['precision']}) |")  # fmt: skip
    if "training" in result:
        training = result["training"]
        for role in ("surrogate", "dense"):
            entry = training[role]
            rows.append(f"| {role}: training, {training['train_examples']:,} examples × {training['epochs']} "
                        f"epochs, batch {training['batch_size']} | cached {entry['cached']['images_per_second']:,.0f}"
                        f" vs decoding {entry['uncached']['images_per_second']:,.0f} images/s "
                        f"({entry['cache_speedup']:.2f}×) |")  # fmt: skip
    if "processes" in result:
        entry = result["processes"]
        if "skipped" in entry:
            rows.append(f"| 2 processes vs 1 | skipped: {entry['skipped']} |")
        else:
            rows.append(f"| 2 processes vs 1 (torchrun, shared cores) | {entry['two_seconds']:.1f} s vs "
                        f"{entry['one_seconds']:.1f} s ({entry['speedup']:.2f}× speed-up) |")  # fmt: skip
    for name, entry in result.get("strategies", {}).items():
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
