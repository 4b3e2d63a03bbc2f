"""The suite leaves the user's caches as they were: every cache it writes (the Hugging Face libraries', the pixel
cache, the user's cache and config folders) is in the session's temporary folder, set by `tests/conftest.py`, in this process and in the subprocesses that
tests start."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import huggingface_hub.constants
import numpy as np
import PIL.Image
import pytest

from conftest import TEST_CACHE_ROOT, USER_ENV, tiny_resnet_config
from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer, list_pixel_caches
from prunefuse_hf.data.pixel_cache import resolve_cache_dir

WHERE_CACHES_GO = (
    "import json, datasets, huggingface_hub.constants as hub;"
    "from prunefuse_hf.data.pixel_cache import resolve_cache_dir;"
    "print(json.dumps({'datasets': str(datasets.config.HF_DATASETS_CACHE), 'hub': hub.HF_HUB_CACHE,"
    "'token': hub.HF_TOKEN_PATH, 'pixels': str(resolve_cache_dir())}))"
)


def caches_of_a_fresh_interpreter(env) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", WHERE_CACHES_GO], env=env, capture_output=True, text=True, check=True
    )
    return {what: Path(path).resolve() for what, path in json.loads(result.stdout.splitlines()[-1]).items()}


@pytest.fixture(scope="module")
def users_caches():
    """Where a fresh interpreter puts each cache in the user's own environment (what the suite must not touch)."""
    return caches_of_a_fresh_interpreter(USER_ENV)


def inside(path, folder) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def test_every_cache_is_in_the_sessions_temporary_folder_here_and_in_subprocesses(users_caches):
    here = {"datasets": datasets.config.HF_DATASETS_CACHE, "hub": huggingface_hub.constants.HF_HUB_CACHE,
            "token": huggingface_hub.constants.HF_TOKEN_PATH, "pixels": resolve_cache_dir()}  # fmt: skip
    child = caches_of_a_fresh_interpreter(os.environ)
    for what in here:
        assert inside(here[what], TEST_CACHE_ROOT) and inside(child[what], TEST_CACHE_ROOT), what
    # The user's cache and config folders too (matplotlib's font cache, Label Studio's config).
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR"):
        assert inside(os.environ[name], TEST_CACHE_ROOT), name
    # Without the suite's environment the same interpreter would use other folders (the user's).
    assert not any(inside(users_caches[what], TEST_CACHE_ROOT) for what in here)


def test_a_run_with_predict_and_evaluate_leaves_the_users_caches_as_they_were(tmp_path, users_caches):
    # A pool no other process has: its cache keys (from its files' fingerprint) are this test's own.
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    for split, count in (("train", 48), ("test", 12)):
        for i in range(count):
            label = int(rng.integers(0, 4))
            pixels = rng.integers(0, 60, (16, 16), dtype=np.uint8)
            pixels[:, label * 4 : label * 4 + 4] = 220
            (tmp_path / "images" / split / f"c{label}").mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(pixels).save(tmp_path / "images" / split / f"c{label}" / f"{i}.png")
    folder = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "images"))
    pool, new_images = folder["train"], folder["test"]
    # datasets' own cache of the loaded folder is in the session's folder too.
    assert all(inside(entry["filename"], TEST_CACHE_ROOT) for entry in pool.cache_files)

    session_pixels = resolve_cache_dir()
    before = {info.key for info in list_pixel_caches(session_pixels)}
    args = PruneFuseConfig(output_dir=str(tmp_path / "run"), pruning_ratio=0.5, initial_labeled_size=16, query_size=8,
                           num_rounds=1, num_train_epochs=1, per_device_train_batch_size=8, disable_tqdm=True,
                           report_to="none", seed=0, pixel_cache_scope="all")  # fmt: skip
    trainer = PruneFuseTrainer(tiny_resnet_config(num_channels=1, num_labels=4), args=args, train_dataset=pool,
                               eval_dataset=new_images.select(range(6)))  # fmt: skip
    trainer.train()
    trainer.predict(new_images)
    trainer.evaluate(new_images)
    written = {info.key for info in list_pixel_caches(session_pixels)} - before
    # The pool, the evaluation set and (pixel_cache_scope: all) the predicted images: three caches, all here.
    assert len(written) == 3
    assert not inside(users_caches["pixels"], TEST_CACHE_ROOT)
    assert not written & {info.key for info in list_pixel_caches(users_caches["pixels"])}
