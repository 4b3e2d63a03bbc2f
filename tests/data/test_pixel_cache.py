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
from prunefuse_hf.data.pixel_cache import evict_least_recently_used, format_bytes, resolve_max_size
from prunefuse_hf.data.pixel_cache_files import CacheLock
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


# ----- several processes, killed builds, storage errors -----

# A builder in a process of its own (the project's Python, the tests' cache environment): waits for its peers at a
# file barrier, then builds or reads one raw cache of the 12-image pool per repetition and prints what it read. Its
# building is slowed (each batch of 4 images sleeps 0.3 s) so that the others come while it builds; with "hang", its
# third batch never finishes (the test kills it there).
BUILDER = """
import hashlib, logging, sys, time
from pathlib import Path
sys.path.insert(0, TESTS_DIR)
import numpy as np
from conftest import make_image_dataset, tiny_resnet_config
from prunefuse_hf.data import pixel_cache_build, pixel_cache_files
from prunefuse_hf.data.image_processor import build_image_processor
from prunefuse_hf.data.pixel_dataset import PixelDataset
from prunefuse_hf.data.preprocessing import ImagePreprocessor

root, peers, repetitions, mode = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
handler = logging.StreamHandler(sys.stdout)
logging.getLogger("prunefuse_hf").addHandler(handler)
logging.getLogger("prunefuse_hf").setLevel(logging.INFO)
pixel_cache_build._MAP_BATCH_SIZE = 4
pixel_cache_files._QUIET_WAIT_SECONDS = 0.1  # say at once that it waits
real_map_batch = pixel_cache_build._map_batch
batches = []

def slow_map_batch(preprocessor, batch, indices, **kwargs):
    batches.append(indices[0])
    if mode == "hang" and len(batches) == 3:
        (root / "building").touch()
        time.sleep(600)
    time.sleep(0.3)
    return real_map_batch(preprocessor, batch, indices, **kwargs)

pixel_cache_build._map_batch = slow_map_batch
dataset = make_image_dataset(12, size=16, mode="RGB", seed=7)
preprocessor = ImagePreprocessor(build_image_processor(tiny_resnet_config(), image_size=16), num_channels=3)
for repetition in range(repetitions):
    (root / f"ready-{repetition}-{sys.argv[5]}").touch()
    while len(list(root.glob(f"ready-{repetition}-*"))) < peers:
        time.sleep(0.01)
    print(f"START {repetition}", flush=True)
    pixels = preprocessor.pixel_dataset(dataset, cache=True, cache_dir=root / f"cache{repetition}", cache_format="raw")
    read = PixelDataset(pixels, np.arange(12)).batch(range(12)).numpy()
    print(f"RESULT {repetition} {hashlib.sha256(read.tobytes()).hexdigest()}", flush=True)
"""


def start_builders(tmp_path, peers, repetitions, mode="share"):
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "builder.py"
    script.write_text(f"TESTS_DIR = {str(Path(__file__).parents[1])!r}\n{BUILDER}")
    return [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), str(peers), str(repetitions), mode, str(peer)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for peer in range(peers)
    ]


def the_builders_pool():
    dataset = make_image_dataset(12, size=16, mode="RGB", seed=7)
    preprocessor = ImagePreprocessor(
        build_image_processor(tiny_resnet_config(), image_size=16), num_channels=3
    )
    return dataset, preprocessor, preprocessor.cache_key(dataset, "raw")


def test_processes_sharing_a_cache_build_it_once_and_read_the_same_pixels(tmp_path):
    """3 processes ask for the same cache at the same moment, 3 times over: each time one builds it (one "Cached"
    line), the others wait for it and read it; all read the pixels of an uncached decode, and the folder holds one
    complete cache and nothing else (no lock, no build folder)."""
    import hashlib

    from prunefuse_hf.data.pixel_dataset import PixelDataset

    dataset, preprocessor, key = the_builders_pool()
    expected = PixelDataset(preprocessor.pixel_dataset(dataset, cache=False), np.arange(12)).batch(range(12))
    expected = hashlib.sha256(expected.numpy().tobytes()).hexdigest()
    processes = start_builders(tmp_path, peers=3, repetitions=3)
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    waited = 0
    for repetition in range(3):
        logs = [
            output.split(f"START {repetition}\n")[1].split(f"RESULT {repetition}")[0] for output in outputs
        ]
        results = [re.search(rf"RESULT {repetition} (\w+)", output).group(1) for output in outputs]
        assert results == [expected] * 3
        assert sum("Cached 12 images" in log for log in logs) == 1, logs
        assert sum("Reading the cached pixels of 12 images" in log for log in logs) == 2, logs
        folder = tmp_path / f"cache{repetition}"
        for log in logs:
            if "Waiting for another process" in log:
                waited += 1
                assert f"holds the pixel cache {key} in {folder}" in log
        (info,) = list_pixel_caches(folder)
        assert (info.key, info.complete, info.num_images) == (key, True, 12)
        assert sorted(path.name for path in folder.iterdir()) == [f"pixels-{key}.arrow", f"pixels-{key}.json"]
    assert waited >= 1  # the builds overlap (each takes about a second): the others waited for them


def test_a_killed_build_leaves_files_that_cache_list_shows_and_cache_clear_removes_and_the_next_run_builds(
    tmp_path, caplog
):
    import signal

    from prunefuse_hf.cli.main import main

    (process,) = start_builders(tmp_path, peers=1, repetitions=1, mode="hang")
    deadline = time.time() + 120
    while not (tmp_path / "building").exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()[0]
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # mid-build: two batches written, the third under way
    process.wait()
    folder = tmp_path / "cache0"
    _, preprocessor, key = the_builders_pool()
    (info,) = list_pixel_caches(folder)
    names = {str(path.relative_to(folder)) for path in info.files}
    assert not info.complete and info.key == key
    assert f"pixels-{key}.lock" in names  # its lock (no longer held: the kernel released it)
    assert any(re.fullmatch(rf"pixels-{key}\.partial/tmp\w{{8}}", name) for name in names), names  # datasets'
    assert info.size_bytes == sum(path.stat().st_size for path in info.files)
    # Everything in the folder belongs to the listed cache.
    on_disk = {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}
    assert on_disk == names
    assert main(["cache", "clear", "--cache_dir", str(folder), key[:8], "--dry_run"]) == 0
    assert {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()} == names
    # The next run builds it (what the killed build left is removed first).
    dataset = make_image_dataset(12, size=16, mode="RGB", seed=7)
    with caplog.at_level("INFO", logger="prunefuse_hf"):
        pixels = preprocessor.pixel_dataset(dataset, cache=True, cache_dir=folder, cache_format="raw")
    assert "Cached 12 images" in caplog.text and len(pixels) == 12
    assert sorted(path.name for path in folder.iterdir()) == [f"pixels-{key}.arrow", f"pixels-{key}.json"]


def test_what_interrupted_builds_leave_is_listed_as_incomplete_and_cleared(tmp_path, capsys):
    from prunefuse_hf.cli.main import main

    key = "0123456789abcdef01234567"
    partial = tmp_path / f"pixels-{key}.partial"
    partial.mkdir()
    (partial / "tmpab12cd34").write_bytes(b"x" * 50)  # datasets' temporary file of a shard
    (partial / f"pixels-{key}_00000_of_00002.arrow").write_bytes(b"x" * 30)
    (tmp_path / f"pixels-{key}.lock").write_bytes(b"")  # its holder was killed
    (tmp_path / f".pixels-{key}.json.0a1b2c3d.tmp").write_bytes(b"{")  # a description being written
    (tmp_path / "tmpq_w3e4r5").write_bytes(b"x" * 20)  # left by a build of an earlier version
    (tmp_path / "notes.txt").write_bytes(b"not ours")
    infos = {info.key: info for info in list_pixel_caches(tmp_path)}
    assert set(infos) == {key, "tmpq_w3e4r5"}
    assert not any(info.complete for info in infos.values())
    assert (infos[key].size_bytes, len(infos[key].files), infos["tmpq_w3e4r5"].size_bytes) == (81, 4, 20)
    assert main(["cache", "list", "--cache_dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("incomplete (a build under way, or an interrupted one)") == 2
    assert main(["cache", "clear", "--cache_dir", str(tmp_path), "--all"]) == 0
    assert "removed 2 caches" in capsys.readouterr().out
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


def test_a_cache_whose_lock_another_process_holds_is_kept_by_clear_and_eviction_and_the_log_says_so(
    tmp_path, caplog
):
    key = pool_cache(tmp_path, seed=1)[1]  # nobody reads it any more
    gc.collect()
    lock = CacheLock(tmp_path, key)  # as another process would hold it (flock: two open files conflict)
    assert lock.acquire(blocking=False)
    try:
        with caplog.at_level("WARNING", logger="prunefuse_hf"):
            assert clear_pixel_caches(tmp_path, clear_all=True) == []
            assert evict_least_recently_used(tmp_path, "10B") == []
        assert f"Kept the pixel cache {key} in {tmp_path}: another process holds it" in caplog.text
        assert f"held by another process ({key}: being built or read)" in caplog.text
        assert [info.key for info in list_pixel_caches(tmp_path)] == [key]
    finally:
        lock.release()
    assert [info.key for info in clear_pixel_caches(tmp_path, clear_all=True)] == [key]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["lock", "description", "eviction", "last_use"])
def test_a_storage_error_anywhere_leaves_the_pixels_exact_and_no_raw_error(
    tmp_path, monkeypatch, caplog, where
):
    """A read-only or full folder, simulated (the tests run as root, where permissions stop no write, and no full
    disk can be made here): where the lock cannot be created (read-only), the description cannot be written (full),
    an old cache cannot be evicted, or a read cannot record its use. The run goes on with exact pixels; a folder
    that takes no cache is said once, with the fix, and keeps nothing of the build."""
    import errno

    import filelock

    from prunefuse_hf.data import pixel_cache, pixel_cache_files
    from prunefuse_hf.data import pixel_cache_build as module
    from prunefuse_hf.data.pixel_dataset import PixelDataset

    module._SAID_UNUSABLE.clear()
    dataset, preprocessor, key = the_builders_pool()
    expected = PixelDataset(preprocessor.pixel_dataset(dataset, cache=False), np.arange(12)).batch(range(12))
    old = pool_cache(tmp_path, seed=1)[1]
    gc.collect()
    read_only = PermissionError(errno.EROFS, "Read-only file system")
    if where == "lock":
        monkeypatch.setattr(
            filelock.FileLock, "acquire", lambda *args, **kwargs: (_ for _ in ()).throw(read_only)
        )
    elif where == "description":

        def full(path, write, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(pixel_cache_files, "atomic_write", full)
    elif where == "eviction":
        monkeypatch.setattr(
            pixel_cache, "remove_unless_held", lambda *a, **k: (_ for _ in ()).throw(read_only)
        )
    elif where == "last_use":
        monkeypatch.setattr(os, "utime", lambda *a, **k: (_ for _ in ()).throw(read_only))
    with caplog.at_level("WARNING", logger="prunefuse_hf"):
        for _ in range(2):  # built (or not) then read (or not): said once
            pixels = preprocessor.pixel_dataset(
                dataset, cache=True, cache_dir=tmp_path, cache_format="raw", max_size="1KB"
            )
            assert PixelDataset(pixels, np.arange(12)).batch(range(12)).equal(expected)
    said = [r.getMessage() for r in caplog.records if "Going on without the pixel cache" in r.getMessage()]
    names = sorted(path.name for path in tmp_path.iterdir())
    if where in ("lock", "description"):
        assert len(said) == 1 and str(tmp_path) in said[0] and "PRUNEFUSE_PIXEL_CACHE" in said[0], said
        assert not any(key in name for name in names), names  # nothing of the failed build is left
    else:
        assert said == [] and is_complete_here(tmp_path, key)
    if where == "eviction":
        assert f"Could not remove pixel cache {old} (PermissionError" in caplog.text
        assert "make the folder writable" in caplog.text and old in {
            info.key for info in list_pixel_caches(tmp_path)
        }


def is_complete_here(folder, key):
    from prunefuse_hf.data.pixel_cache_files import is_complete

    return is_complete(folder, key)


def test_a_folder_that_cannot_be_read_or_written_stops_list_and_clear_with_the_fix(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    key = pool_cache(tmp_path, seed=1)[1]

    def read_only(self, missing_ok=False):
        raise PermissionError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(
        OSError, match=rf"Cannot remove the pixel cache {key} from .*make the folder writable"
    ):
        clear_pixel_caches(tmp_path, clear_all=True)
    monkeypatch.setattr(Path, "iterdir", lambda self: read_only(self))  # a folder that cannot be read
    with pytest.raises(OSError, match=rf"Cannot read the pixel cache folder {tmp_path} .*make it readable"):
        list_pixel_caches(tmp_path)
