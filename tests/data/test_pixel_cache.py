"""Pixel caches on disk: their descriptions, listing them, and removing them by age, key or all."""

import gc
import json
import os
import re
import time

import numpy as np
import pytest

from conftest import make_image_dataset, tiny_resnet_config
from prunefuse_hf import clear_pixel_caches, list_pixel_caches
from prunefuse_hf.data.image_processor import build_image_processor
from prunefuse_hf.data.pixel_cache import CacheLock, evict_least_recently_used, format_bytes, resolve_max_size
from prunefuse_hf.data.preprocessing import ImagePreprocessor

DAY = 86400


def build_caches(cache_dir):
    """A raw cache of 12 images at 16 px and a JPEG cache of 8 images at 24 px; their keys."""
    keys = []
    for count, size, cache_format in ((12, 16, "raw"), (8, 24, "jpeg")):
        dataset = make_image_dataset(count, size=size, mode="RGB", seed=size)
        processor = build_image_processor(tiny_resnet_config(), image_size=size)
        preprocessor = ImagePreprocessor(processor, num_channels=3)
        preprocessor.pixel_dataset(dataset, cache_dir=cache_dir, cache_format=cache_format)
        keys.append(preprocessor.cache_key(dataset, cache_format))
    return keys


def age(cache_dir, key, days):
    stamp = time.time() - days * DAY
    os.utime(cache_dir / f"pixels-{key}.json", (stamp, stamp))


def test_caches_are_listed_with_their_description_most_recently_used_first(tmp_path):
    raw, jpeg = build_caches(tmp_path)
    age(tmp_path, raw, 3)
    infos = list_pixel_caches(tmp_path)
    assert [info.key for info in infos] == [jpeg, raw]
    first, second = infos
    assert (first.num_images, first.shape, first.cache_format, first.complete) == (
        8,
        (3, 24, 24),
        "jpeg",
        True,
    )
    assert (second.num_images, second.shape, second.cache_format) == (12, (3, 16, 16), "raw")
    assert second.processor == "ViTImageProcessorPil size={'height': 16, 'width': 16}"
    assert second.size_bytes == sum(path.stat().st_size for path in second.files)
    assert {path.name for path in second.files} == {f"pixels-{raw}.arrow", f"pixels-{raw}.json"}
    assert 2.9 < (time.time() - second.last_used.timestamp()) / DAY < 3.1
    description = json.loads((tmp_path / f"pixels-{raw}.json").read_text())
    assert description["files"] == [f"pixels-{raw}.arrow"] and description["num_proc"] == 1
    assert list_pixel_caches(tmp_path / "missing") == []


def test_reading_a_cache_marks_it_used(tmp_path):
    (raw, _) = build_caches(tmp_path)
    age(tmp_path, raw, 10)
    build_caches(tmp_path)  # the same pools and preprocessing: both caches are read again
    assert all(time.time() - info.last_used.timestamp() < 60 for info in list_pixel_caches(tmp_path))


def test_an_incomplete_cache_is_listed_and_can_be_removed(tmp_path):
    (tmp_path / "pixels-0123456789abcdef01234567_00000_of_00002.arrow").write_bytes(b"x" * 100)
    (tmp_path / "unrelated.arrow").write_bytes(b"x")
    (info,) = list_pixel_caches(tmp_path)
    assert (info.key, info.complete, info.size_bytes, info.num_images) == (
        "0123456789abcdef01234567",
        False,
        100,
        None,
    )
    assert clear_pixel_caches(tmp_path, keys=["0123456789"]) == [info]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unrelated.arrow"]


def test_caches_are_cleared_by_age_key_or_all_and_a_dry_run_removes_nothing(tmp_path):
    raw, jpeg = build_caches(tmp_path)
    age(tmp_path, raw, 40)
    before = sorted(tmp_path.iterdir())
    assert [info.key for info in clear_pixel_caches(tmp_path, older_than_days=30, dry_run=True)] == [raw]
    assert sorted(tmp_path.iterdir()) == before
    assert [info.key for info in clear_pixel_caches(tmp_path, older_than_days=30)] == [raw]
    assert [info.key for info in list_pixel_caches(tmp_path)] == [jpeg]
    assert [info.key for info in clear_pixel_caches(tmp_path, keys=[jpeg[:8]])] == [jpeg]
    assert list(tmp_path.iterdir()) == []
    build_caches(tmp_path)
    assert len(clear_pixel_caches(tmp_path, clear_all=True)) == 2 and list(tmp_path.iterdir()) == []


def test_the_environment_variable_names_the_default_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEFUSE_PIXEL_CACHE", str(tmp_path))
    build_caches(None)
    assert len(list_pixel_caches()) == 2 and len(list(tmp_path.glob("pixels-*.json"))) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "Say which pixel caches to remove: older_than_days"),
        ({"older_than_days": -1}, "older_than_days must be a number >= 0, got -1"),
        ({"keys": ["abc"]}, "Key 'abc' matches no cache in .*unique prefix of at least 6 characters"),
        ({"keys": ["ffffffff"]}, "Key 'ffffffff' matches no cache"),
    ],
)
def test_clearing_without_a_valid_selector_is_refused_before_removing_anything(tmp_path, kwargs, message):
    build_caches(tmp_path)
    before = sorted(tmp_path.iterdir())
    with pytest.raises(ValueError, match=message):
        clear_pixel_caches(tmp_path, **kwargs)
    assert sorted(tmp_path.iterdir()) == before
    assert np.all([info.complete for info in list_pixel_caches(tmp_path)])


def pool_cache(cache_dir, seed, **kwargs):
    """A raw cache of 12 images at 16 px of its own pool; the pixels read from it and its key."""
    dataset = make_image_dataset(12, size=16, mode="RGB", seed=seed)
    preprocessor = ImagePreprocessor(
        build_image_processor(tiny_resnet_config(), image_size=16), num_channels=3
    )
    pixels = preprocessor.pixel_dataset(dataset, cache_dir=cache_dir, cache_format="raw", **kwargs)
    return pixels, preprocessor.cache_key(dataset, "raw")


def test_past_its_cap_the_folder_loses_its_least_recently_used_caches_and_the_log_names_them(
    tmp_path, caplog
):
    raw, jpeg = build_caches(tmp_path)
    age(tmp_path, raw, 3)
    sizes = {info.key: info.size_bytes for info in list_pixel_caches(tmp_path)}
    # Room for two caches of this size: a third one (of the raw cache's size) pushes out the least recently used.
    with caplog.at_level("WARNING", logger="prunefuse_hf"):
        _, new = pool_cache(tmp_path, seed=99, max_size=sizes[raw] + sizes[jpeg] + 100)
    assert [info.key for info in list_pixel_caches(tmp_path)] == [new, jpeg]
    assert sum(info.size_bytes for info in list_pixel_caches(tmp_path)) <= sizes[raw] + sizes[jpeg] + 100
    (record,) = [r for r in caplog.records if "least recently used" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert re.search(
        rf"The pixel cache folder {re.escape(str(tmp_path))} is over its cap of [\d.]+ KB with [\d.]+ KB to be built "
        r"\(pixel_cache_max_size or \$PRUNEFUSE_PIXEL_CACHE_MAX_SIZE\): removed the 1 least recently used cache, "
        rf"{re.escape(format_bytes(sizes[raw]))}: {raw} \(12 images, raw, [\d.]+ KB, last used \d{{4}}-\d\d-\d\d "
        r"\d\d:\d\d\)\. A run that needs one builds it again\.",
        record.getMessage(),
    )


def test_the_cap_comes_from_the_environment_and_spares_the_caches_being_read(tmp_path, monkeypatch, caplog):
    reading, first = pool_cache(tmp_path, seed=1)  # this process still reads it
    second = pool_cache(tmp_path, seed=2)[1]  # nobody reads it any more
    age(tmp_path, first, 5)
    # Another process's build: its lock is held (flock locks of two open files conflict within a process too).
    build_dir = tmp_path / "pixels-0123456789abcdef01234567.partial"
    build_dir.mkdir()
    (build_dir / "tmpab12cd34").write_bytes(b"x" * 100)
    building = CacheLock(tmp_path, "0123456789abcdef01234567")
    assert building.acquire(blocking=False)
    interrupted = tmp_path / "pixels-89abcdef0123456789abcdef.arrow"  # a build stopped two days ago
    interrupted.write_bytes(b"x" * 100)
    os.utime(interrupted, (time.time() - 2 * DAY, time.time() - 2 * DAY))
    monkeypatch.setenv("PRUNEFUSE_PIXEL_CACHE_MAX_SIZE", "1KB")
    # Asked for (cache=True): built although it alone passes the cap.
    with caplog.at_level("WARNING", logger="prunefuse_hf"):
        built, third = pool_cache(tmp_path, seed=3, cache=True)
    # The least recently used cache is being read: the interrupted build and the next one go; the build under way
    # is left alone.
    assert {info.key for info in list_pixel_caches(tmp_path)} == {first, third, "0123456789abcdef01234567"}
    assert re.search(
        r"removed the 2 least recently used caches, [\d.]+ KB: 89abcdef0123456789abcdef \(an interrupted build, "
        rf"100 B, last written [\d-]+ [\d:]+\), {second} \(12 images, raw, ",
        caplog.text,
    )
    assert (
        "the rest is in use by this run or held by another process (0123456789abcdef01234567: being built or read)"
        in caplog.text
    )
    assert len(reading) == len(built) == 12
    del reading, built
    gc.collect()
    # Once nobody reads them, eviction (here called directly, as a build calls it) removes the complete ones.
    assert {info.key for info in evict_least_recently_used(tmp_path)} == {first, third}
    assert [info.key for info in list_pixel_caches(tmp_path)] == ["0123456789abcdef01234567"]
    building.release()  # the build was killed: what it left goes too, once over the cap
    assert [info.key for info in evict_least_recently_used(tmp_path, "50B")] == ["0123456789abcdef01234567"]
    assert list(tmp_path.iterdir()) == []


def test_with_cache_pixels_unset_a_pool_over_the_cap_is_not_cached(tmp_path, caplog):
    dataset = make_image_dataset(12, size=16, mode="RGB", seed=4)
    preprocessor = ImagePreprocessor(
        build_image_processor(tiny_resnet_config(), image_size=16), num_channels=3
    )
    with caplog.at_level("WARNING", logger="prunefuse_hf"):
        pixels = preprocessor.pixel_dataset(dataset, cache_dir=tmp_path, max_size="1KB")
    assert list(tmp_path.glob("pixels-*")) == [] and len(pixels) == 12
    assert re.search(
        r"Not caching decoded pixels \(~[\d.]+ KB needed as JPEG q90, over the pixel cache's cap of 1.0 KB "
        r"\(pixel_cache_max_size or \$PRUNEFUSE_PIXEL_CACHE_MAX_SIZE\)\)",
        caplog.text,
    )


def test_the_default_cap_is_50_gb_and_none_lifts_it(monkeypatch):
    monkeypatch.delenv("PRUNEFUSE_PIXEL_CACHE_MAX_SIZE", raising=False)
    assert resolve_max_size() == 50 * 10**9
    assert resolve_max_size("2GiB") == 2 * 2**30 and resolve_max_size("1.5 TB") == 1.5e12
    assert resolve_max_size(1000) == 1000 and resolve_max_size("none") is None
    monkeypatch.setenv("PRUNEFUSE_PIXEL_CACHE_MAX_SIZE", "500MB")
    assert resolve_max_size() == 500 * 10**6 and resolve_max_size("1GB") == 10**9  # a setting wins
    monkeypatch.setenv("PRUNEFUSE_PIXEL_CACHE_MAX_SIZE", "lots")
    with pytest.raises(
        ValueError, match=r"\$PRUNEFUSE_PIXEL_CACHE_MAX_SIZE must be a size such as '50GB'.*'lots'"
    ):
        resolve_max_size()
