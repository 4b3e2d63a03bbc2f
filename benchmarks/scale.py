"""Scale benchmark: what selection and bookkeeping cost per image from 100k to 1M candidates, side by side.

Measured in one run on synthetic pools (no download), each size in turn:

1. `kcenter_greedy` at a real feature width (default 1,024): seconds for `--picks` picks, the picks per
   lookahead refresh, the peak extra memory as a multiple of the feature matrix (target: ≤ 1.25x; 1M x 1,024:
   ≤ 60 s for 1,000 picks), on isotropic Gaussian features (`gauss`) and on features clustered around 1,000
   class centres (`clustered`, closer to a trained network's); the previous algorithm (one pass of direct
   float32 differences per pick) is timed on a few picks and extrapolated; BADGE on the clustered features is
   timed on 20 picks and extrapolated to `--picks` (a pick is drawn, so no lookahead applies);
2. finding the pool's image paths: from the Arrow `path` field (now) against casting the column to
   `decode=False` and reading every row (before);
3. the per-step state: saved as before (every image's round, label and score in indented JSON) and now (the
   arrays in an npz beside `state.json`, rewritten only by a step that labels), and read back for a resume
   (target at 1M: ≤ 0.1 s per save);
4. a real run (`PruneFuseTrainer`, a tiny ResNet, 8×8 gray images resized to 16 px, pixels cached) on the whole
   pool, stopped after its first selection and resumed: the seconds from the resumed trainer's construction to
   the start of its first step (target at 1M: ≤ 10 s), and the trainer's own per-step saves (state, pool arrays
   and labeled rows' digests) in the steps that label nothing and in the one that labels.

4. the pixel cache of a 224 px pool of a few thousand photo-like JPEG files (`benchmarks/scale_pixel_cache.py`):
   build rate with 1 process and every core, bytes per image per format (raw, JPEG, PNG) extrapolated to 1.28M
   images, read and scoring rates against decoding each pass, and the accuracy effect of JPEG.

Per-image costs are the seconds divided by the pool size, so a constant per-image cost is linear growth.

    python benchmarks/scale.py                  # full: 100k and 1M, writes benchmarks/results/scale.json
    python benchmarks/scale.py --only cache     # the pixel cache part alone (merged into the existing results)
    python benchmarks/scale.py --quick          # smoke run, seconds (results go to --output or a temp file)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from unittest import mock

import datasets
import numpy as np
import pyarrow as pa
import torch
from scale_pixel_cache import measure_pixel_cache
from transformers import TrainerCallback

from prunefuse_hf.constants import PIXEL_CACHE_DIR_ENV
from prunefuse_hf.data.pool import DataPool
from prunefuse_hf.selection import get_strategy
from prunefuse_hf.trainer import run_plan
from prunefuse_hf.trainer.run_state import relative_image_paths, save_run_state
from prunefuse_hf.utils.io import json_default
from prunefuse_hf.utils.run_directory import RunDirectory

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
KCENTER_SECONDS_TARGET = 60.0  # 1,000 picks from 1M x 1,024
MEMORY_TARGET = 1.25  # peak extra memory / feature matrix


def _rss() -> int:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) * 1024


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every 5 ms by a thread."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._running = True
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while self._running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.extra = self.peak - self.base


def make_features(n: int, dim: int, kind: str, seed: int = 0) -> np.ndarray:
    """Synthetic float32 features, written in blocks so that no float64 or full-size temporary exists."""
    rng = np.random.default_rng(seed)
    features = np.empty((n, dim), dtype=np.float32)
    centres = rng.standard_normal((1000, dim), dtype=np.float32) * 3
    for start in range(0, n, 65536):
        block = features[start : start + 65536]
        rng.standard_normal(block.shape, dtype=np.float32, out=block)
        if kind == "clustered":
            block += centres[rng.integers(0, len(centres), len(block))]
    return features


def previous_kcenter_pick_seconds(features: np.ndarray, picks: int = 3, chunk_size: int = 2048) -> float:
    """Seconds per pick of the previous update: direct float32 differences to the new center, float64 result."""
    x = torch.from_numpy(features)
    min_sq = torch.full((len(x),), float("inf"), dtype=torch.float64)
    started = time.perf_counter()
    for _ in range(picks):
        center = x[int(torch.argmax(min_sq))]
        dist = torch.empty(len(x), dtype=torch.float64)
        for start in range(0, len(x), chunk_size):
            dist[start : start + chunk_size] = (x[start : start + chunk_size] - center).square_().sum(dim=1)
        torch.minimum(min_sq, dist, out=min_sq)
    return (time.perf_counter() - started) / picks


def measure_kcenter(n: int, dim: int, picks: int, kind: str) -> dict:
    features = make_features(n, dim, kind)
    strategy = get_strategy("kcenter_greedy")
    strategy.select(2, pool_indices=np.arange(8), features=features[:8])  # warm-up: imports, thread pools
    with PeakMemory() as memory:
        started = time.perf_counter()
        selection = strategy.select(picks, pool_indices=np.arange(n), features=features)
        seconds = time.perf_counter() - started
    previous = previous_kcenter_pick_seconds(features)
    return {
        "pool_size": n, "dim": dim, "picks": picks, "kind": kind, "seconds": seconds,
        "us_per_image_per_pick": seconds / picks / n * 1e6,
        "lookahead_refreshes": strategy.last_stats["refreshes"],
        "lookahead_columns": strategy.last_stats["columns"],
        "feature_matrix_bytes": features.nbytes,
        "peak_extra_bytes": memory.extra, "peak_extra_vs_features": memory.extra / features.nbytes,
        "previous_seconds_per_pick": previous, "previous_seconds_extrapolated": previous * picks,
        "speedup_vs_previous": previous * picks / seconds,
        "first_picks": selection.indices[:5].tolist(),
    }  # fmt: skip


def measure_badge(n: int, dim: int, picks: int, timed_picks: int = 20) -> dict:
    """BADGE on the same features and 10-class probabilities: `timed_picks` picks timed, extrapolated to `picks`
    (each pick is one matrix-vector product over the features: its cost per pick is constant)."""
    features = make_features(n, dim, "clustered")
    logits = np.random.default_rng(1).standard_normal((n, 10), dtype=np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    strategy = get_strategy("badge")
    strategy.select(2, pool_indices=np.arange(8), features=features[:8], probs=probs[:8])  # warm-up
    timed_picks = min(timed_picks, picks)
    with PeakMemory() as memory:
        started = time.perf_counter()
        strategy.select(timed_picks, pool_indices=np.arange(n), features=features, probs=probs)
        seconds = time.perf_counter() - started
    return {
        "pool_size": n, "dim": dim, "timed_picks": timed_picks, "seconds": seconds,
        "seconds_extrapolated": seconds / timed_picks * picks, "picks": picks,
        "us_per_image_per_pick": seconds / timed_picks / n * 1e6,
        "peak_extra_vs_features": memory.extra / features.nbytes,
    }  # fmt: skip


def path_dataset(n: int) -> datasets.Dataset:
    """A pool of `n` embedded images (64 bytes each, with a path), as an image folder loaded with bytes keeps."""
    paths = pa.array([f"/data/pool/class{i % 10}/img{i:07d}.jpg" for i in range(n)])
    stored = pa.StructArray.from_arrays([pa.array([b"\xff" * 64] * n, pa.binary()), paths], ["bytes", "path"])
    features = datasets.Features({"image": datasets.Image()})
    return datasets.Dataset(
        pa.table({"image": stored}).cast(features.arrow_schema), info=datasets.DatasetInfo(features=features)
    )


def measure_paths(n: int) -> dict:
    dataset = path_dataset(n)
    started = time.perf_counter()
    paths = relative_image_paths(dataset, "image")
    now = time.perf_counter() - started
    started = time.perf_counter()
    stored = dataset.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    before = [value.get("path") for value in stored["image"]]
    previous = time.perf_counter() - started
    assert [f"/data/pool/{p}" for p in paths] == before
    return {"pool_size": n, "seconds": now, "previous_seconds": previous, "us_per_image": now / n * 1e6}


def measure_state(n: int) -> dict:
    """The per-step save as before (every array in indented JSON) and now (`RunDirectory.write_state`: a step that
    labels nothing, and one that labels), and a resume's read of the state back into the pool."""
    pool = DataPool(datasets.Dataset.from_dict({"label": np.zeros(n, dtype=np.int64)}))
    pool.label_randomly(min(n // 10, 100_000), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        previous = json.dumps({"pool": pool.state_dict()}, indent=2, default=json_default)
        (Path(tmp) / "previous.json").write_text(previous)
        previous_seconds = time.perf_counter() - started
        run_dir = RunDirectory(Path(tmp) / "run")
        state = {"version": 3, "completed": [], "pool": pool.state_dict(as_arrays=True)}
        run_dir.write_state(state)
        started = time.perf_counter()
        state["completed"].append("train_surrogate:1")
        state["pool"] = pool.state_dict(as_arrays=True)
        run_dir.write_state(state)
        unchanged_seconds = time.perf_counter() - started
        pool.label(np.flatnonzero(pool.rounds == 0)[:1000], round=2, strategy="random")
        started = time.perf_counter()
        state["pool"] = pool.state_dict(as_arrays=True)
        run_dir.write_state(state)
        changed_seconds = time.perf_counter() - started
        state_bytes = sum(f.stat().st_size for f in run_dir.path.iterdir())
        started = time.perf_counter()
        DataPool(pool.dataset).load_state_dict(RunDirectory(run_dir.path).read_state()["pool"])
        resume_seconds = time.perf_counter() - started
    return {
        "pool_size": n, "previous_state_json_bytes": len(previous), "previous_save_seconds": previous_seconds,
        "state_bytes": state_bytes, "save_seconds_no_label": unchanged_seconds,
        "save_seconds_after_labeling": changed_seconds, "resume_read_seconds": resume_seconds,
        "labeled": pool.num_labeled,
        "us_per_image": changed_seconds / n * 1e6,
    }  # fmt: skip


class _StepClock(TrainerCallback):
    """Wall time at which each step's facts are logged (the end of the step) and the step's own seconds; stops
    the run after its first selection, or after its first step with `first_step_only`."""

    def __init__(self, first_step_only: bool = False):
        self.logged, self.first_step_only = [], first_step_only

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "seconds" in logs:
            self.logged.append((time.perf_counter(), logs["seconds"]))
            if self.first_step_only or logs.get("picked"):
                control.should_training_stop = True


def measure_resume(n: int) -> dict:
    """A real run on `n` images, stopped after its first selection, then resumed (see the module docstring)."""
    from transformers import ResNetConfig

    from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer

    rng = np.random.default_rng(0)
    budget = min(1000, n // 8)  # labels in the first query and in each round's
    pool = datasets.Dataset.from_dict(
        {"image": rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), "label": rng.integers(0, 10, n)},
        features=datasets.Features({"image": datasets.Array2D((8, 8), "uint8"),
                                    "label": datasets.ClassLabel(names=[f"c{i}" for i in range(10)])}),
    )  # fmt: skip
    model = ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                         num_labels=10)  # fmt: skip
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch.dict(os.environ, {PIXEL_CACHE_DIR_ENV: f"{tmp}/pixels"}),
    ):

        def config():
            return PruneFuseConfig(
                output_dir=f"{tmp}/run", image_size=16, initial_labeled_size=budget, query_size=budget, num_rounds=2,
                num_train_epochs=1, surrogate_num_train_epochs=1, per_device_train_batch_size=128,
                scoring_batch_size=4096, cache_pixels=True, disable_tqdm=True, report_to="none", seed=0,
            )  # fmt: skip

        saves = []
        first = PruneFuseTrainer(model, args=config(), train_dataset=pool, callbacks=[_StepClock()])

        def timed_save(trainer):
            started = time.perf_counter()
            save_run_state(trainer)
            saves.append((time.perf_counter() - started, trainer.pool.num_labeled))

        started = time.perf_counter()
        with mock.patch.object(run_plan, "save_run_state", timed_save):
            first.train()  # init, train_surrogate:1, select:1
        first_run = time.perf_counter() - started
        assert first.progress["completed"][-1] == "select:1", first.progress["completed"]
        state_bytes = sum(f.stat().st_size for f in Path(f"{tmp}/run").glob("*") if f.is_file())
        del first
        clock = _StepClock(first_step_only=True)
        started = time.perf_counter()
        resumed = PruneFuseTrainer(model, args=config(), train_dataset=pool, callbacks=[clock])
        resumed.train(resume_from_checkpoint=True)
        ended, step_seconds = clock.logged[0]
        resume_seconds = ended - step_seconds - started
        next_step = resumed.progress["completed"][-1]
    return {
        "pool_size": n, "first_run_seconds": first_run, "resume_seconds": resume_seconds,
        "first_resumed_step": next_step, "state_bytes": state_bytes,
        "save_seconds_per_step": [round(s, 4) for s, _ in saves], "labeled_at_save": [k for _, k in saves],
        "us_per_image": resume_seconds / n * 1e6,
    }  # fmt: skip


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--picks", type=int, default=1000)
    parser.add_argument("--kinds", nargs="+", default=["gauss", "clustered"], choices=["gauss", "clustered"])
    parser.add_argument(
        "--quick", action="store_true", help="2,000 and 4,000 candidates at width 64, 20 picks"
    )
    parser.add_argument("--output", type=Path)
    parser.add_argument(
        "--only",
        choices=["kcenter", "image_paths", "state", "resume", "cache"],
        help="measure one part only (merged into the existing output: the other parts' results are kept)",
    )
    parser.add_argument(
        "--cache_images", type=int, default=3000, help="photo-like JPEG files of the cache part"
    )
    parser.add_argument(
        "--cache_image_size", type=int, default=224, help="model input size of the cache part"
    )
    parser.add_argument(
        "--cache_epochs", type=int, default=4, help="training epochs of the cache part's accuracy"
    )
    parser.add_argument("--work_dir", type=Path, help="where the cache part keeps its pool files")
    parser.set_defaults(cache_photo_size=(500, 375), cache_build_repeats=(3, 2))
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.dim, args.picks = [2000, 4000], 64, 20
        args.cache_images, args.cache_image_size, args.cache_epochs = 48, 32, 1
        args.cache_photo_size, args.cache_build_repeats = (64, 48), (1, 1)
    output = args.output or (Path(tempfile.mkdtemp()) / "scale.json" if args.quick else RESULTS)

    result = {
        "config": {"sizes": args.sizes, "dim": args.dim, "picks": args.picks, "kinds": args.kinds},
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "load_average_at_start": os.getloadavg()},
        "kcenter": [], "badge": [], "image_paths": [], "state": [], "resume": [],
    }  # fmt: skip
    wanted = {args.only} if args.only else {"kcenter", "image_paths", "state", "resume", "cache"}
    measures = {"image_paths": measure_paths, "state": measure_state, "resume": measure_resume}
    for n in args.sizes:
        for kind in args.kinds if "kcenter" in wanted else []:
            result["kcenter"].append(measure_kcenter(n, args.dim, args.picks, kind))
            print(json.dumps(result["kcenter"][-1]), flush=True)
        if "kcenter" in wanted:
            result["badge"].append(measure_badge(n, args.dim, args.picks))
            print(json.dumps(result["badge"][-1]), flush=True)
        for name in sorted(wanted & set(measures)):
            if name == "resume" and args.quick and n != args.sizes[0]:
                continue  # a smoke run: one real run is enough
            result[name].append(measures[name](n))
            print(json.dumps(result[name][-1]), flush=True)
    # Largest over smallest per-image cost across the sizes: 1.0 is exactly linear growth.
    keys = {"kcenter": "us_per_image_per_pick", "badge": "us_per_image_per_pick", "image_paths": "us_per_image",
            "state": "us_per_image",
            "resume": "us_per_image"}  # fmt: skip
    result["growth"] = {}
    for name, key in keys.items():
        for kind in sorted({entry.get("kind") or "" for entry in result[name]}):
            costs = [entry[key] for entry in result[name] if (entry.get("kind") or "") == kind]
            result["growth"][f"{name}/{kind}" if kind else name] = max(costs) / min(costs)
    if "cache" in wanted:
        result["cache"] = measure_pixel_cache(args.cache_images, args.cache_image_size, args.cache_epochs,
                                              work_dir=args.work_dir, score_images=1024,
                                              photo_size=args.cache_photo_size,
                                              build_repeats=args.cache_build_repeats)  # fmt: skip
    # Other work on the machine inflates every time: the load says how quiet the run was.
    result["machine"]["load_average_at_end"] = os.getloadavg()
    if args.only and output.is_file():
        # One part measured again: the others keep their numbers (k-center's run measures BADGE too).
        previous = json.loads(output.read_text())
        parts = ["kcenter", "badge"] if args.only == "kcenter" else [args.only]
        result = {**previous, **{part: result[part] for part in parts}, "machine": result["machine"]}
        if args.only != "cache":
            result["growth"] = {**previous.get("growth", {}), **result["growth"]}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {output}")
    return result


if __name__ == "__main__":
    main()
