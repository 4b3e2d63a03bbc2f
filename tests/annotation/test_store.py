"""Human annotation: the run's `LabelStore`, oracle labels, query batches for annotators, and whole runs whose
labels come from a scripted annotator."""

import base64
import csv
import io
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage

from conftest import (
    CLASS_NAMES,
    INDICES,
    LABELS,
    NAMES,
    POOL_SIZE,
    make_image_dataset,
    snapshot,
    unlabeled_image_folder,
    write_csv,
)
from prunefuse_hf.annotation.labels import LabelBatch, LabelError
from prunefuse_hf.annotation.oracle import oracle_labels
from prunefuse_hf.annotation.queries import read_query_indices, write_query_batch
from prunefuse_hf.annotation.readers import read_labels
from prunefuse_hf.annotation.store import AddResult, LabelStore
from prunefuse_hf.constants import (
    LABEL_STUDIO_CONFIG,
    LABEL_STUDIO_TASKS,
    LABELS_NAME,
    QUERY_CSV,
    QUERY_DATASET_DIR,
)

# ----- refusals: LabelError naming the value, run directory untouched -----


@pytest.fixture
def run_dir(tmp_path):
    """A run directory with two stored labels."""
    run = tmp_path / "run"
    store = LabelStore(run, CLASS_NAMES)
    store.add(LabelBatch([1, 3], [2, 0], source="first.csv"), round=1)
    return run


def test_add_refusals_leave_run_untouched(run_dir):
    store = LabelStore(run_dir, CLASS_NAMES)
    before = snapshot(run_dir)
    mtime = (run_dir / LABELS_NAME).stat().st_mtime_ns

    with pytest.raises(LabelError) as error:  # 12 is new and not queried in round 2
        store.add(LabelBatch([4, 12], [0, 1], "b.csv"), round=2, expected=[4, 5])
    assert "pool index 12" in str(error.value) and "round 2's query" in str(error.value)

    with pytest.raises(LabelError) as error:  # half of the query unlabeled
        store.add(LabelBatch([4], [0], "b.csv"), round=2, expected=[4, 5, 6])
    message = str(error.value)
    assert "2 of the 3 pool indices" in message and "5, 6" in message and "allow_partial=True" in message

    with pytest.raises(LabelError) as error:  # contradicts a stored label
        store.add(LabelBatch([4, 1], [0, 3], "second.csv"), round=2)
    message = str(error.value)
    for part in ["pool index 1", "'bird'", "'frog'", "round 1", "first.csv", "overwrite=True"]:
        assert part in message

    with pytest.raises(LabelError, match="class id 9"):  # a hand-built batch with a bad id
        store.add(LabelBatch([4], [9], "b"), round=2)
    with pytest.raises(LabelError, match="pool index 4 appears more than once"):
        store.add(LabelBatch([4, 4], [1, 1], "b"), round=2)
    with pytest.raises(LabelError, match="round must be"):
        store.add(LabelBatch([4], [1], "b"), round=-1)

    assert snapshot(run_dir) == before
    assert (run_dir / LABELS_NAME).stat().st_mtime_ns == mtime
    assert store.labels == {1: 2, 3: 0}


def test_add_into_missing_run_dir_refused_creates_nothing(tmp_path):
    store = LabelStore(tmp_path / "run", CLASS_NAMES)
    with pytest.raises(LabelError):
        store.add(LabelBatch([4], [0], "b"), round=1, expected=[4, 5])
    assert not (tmp_path / "run").exists()


# ----- LabelStore behaviour -----


def test_store_add_persists_and_second_ingest_is_a_no_op(tmp_path):
    path = write_csv(tmp_path / "labels.csv", ["pool_index", "label"], zip(INDICES, NAMES))
    store = LabelStore(tmp_path / "run", CLASS_NAMES)
    assert len(store) == 0 and not (tmp_path / "run").exists()

    result = store.add(read_labels(path, CLASS_NAMES), round=3, expected=INDICES)
    assert result == AddResult(added=4, unchanged=0, overwritten=0, missing=result.missing)
    assert result.missing.tolist() == []
    labels_path = tmp_path / "run" / LABELS_NAME
    data, mtime = labels_path.read_bytes(), labels_path.stat().st_mtime_ns

    again = store.add(read_labels(path, CLASS_NAMES), round=3, expected=INDICES)
    assert (again.added, again.unchanged, again.overwritten) == (0, 4, 0)
    assert labels_path.read_bytes() == data and labels_path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in labels_path.parent.iterdir()) == [LABELS_NAME]

    reloaded = LabelStore(tmp_path / "run", CLASS_NAMES)
    assert reloaded.labels == dict(zip(INDICES, LABELS))
    assert 17 in reloaded and 3 not in reloaded and len(reloaded) == 4
    expected_array = np.full(POOL_SIZE, -1)
    expected_array[INDICES] = LABELS
    np.testing.assert_array_equal(reloaded.as_array(POOL_SIZE), expected_array)
    with pytest.raises(LabelError, match="pool index 17"):
        reloaded.as_array(10)

    table = reloaded.table()
    assert table.schema.names == ["pool_index", "label", "round", "source", "labeled_at", "annotator",
                                  "annotation_id", "num_answers", "resolution"]  # fmt: skip
    assert table.column("annotator").null_count == 4  # a plain label file names no annotator
    assert table.schema.field("round").type == pa.int32()
    assert table.column("pool_index").to_pylist() == sorted(INDICES)
    assert set(table.column("round").to_pylist()) == {3}
    assert set(table.column("source").to_pylist()) == {str(path)}
    assert all(stamp.endswith("Z") and "T" in stamp for stamp in table.column("labeled_at").to_pylist())


def test_store_table_sorted_by_round_and_cumulative_file_accepted(tmp_path):
    store = LabelStore(tmp_path, CLASS_NAMES)
    store.add(LabelBatch([9, 4], [1, 1], "r1"), round=1)
    # Round 2's file repeats round 1's labels (a cumulative file): those are no-ops, not "outside the query".
    result = store.add(LabelBatch([9, 4, 0, 7], [1, 1, 2, 3], "r2"), round=2, expected=[7, 0])
    assert (result.added, result.unchanged) == (2, 2)
    table = store.table()
    assert table.column("round").to_pylist() == [1, 1, 2, 2]
    assert table.column("pool_index").to_pylist() == [4, 9, 0, 7]
    assert table.column("source").to_pylist() == ["r1", "r1", "r2", "r2"]


def test_store_conflict_overwrite(tmp_path):
    store = LabelStore(tmp_path, CLASS_NAMES)
    store.add(LabelBatch([1, 3], [2, 0], "first.csv"), round=1)
    result = store.add(LabelBatch([1, 5], [3, 1], "fix.csv"), round=2, overwrite=True)
    assert (result.added, result.unchanged, result.overwritten) == (1, 0, 1)
    reloaded = LabelStore(tmp_path, CLASS_NAMES)
    assert reloaded.labels == {1: 3, 3: 0, 5: 1}
    rows = {row["pool_index"]: row for row in reloaded.table().to_pylist()}
    assert (rows[1]["round"], rows[1]["source"]) == (2, "fix.csv")
    assert (rows[3]["round"], rows[3]["source"]) == (1, "first.csv")


def test_store_allow_partial(tmp_path):
    store = LabelStore(tmp_path, CLASS_NAMES)
    result = store.add(LabelBatch([4], [0], "b"), round=2, expected=[6, 4, 5], allow_partial=True)
    assert result.added == 1 and result.missing.tolist() == [5, 6]
    # The rest arrives later: the earlier labels count, nothing is missing any more.
    result = store.add(LabelBatch([5, 6], [1, 2], "c"), round=2, expected=[6, 4, 5])
    assert result.added == 2 and result.missing.tolist() == []
    assert store.labels == {4: 0, 5: 1, 6: 2}


def test_store_interrupted_write_keeps_old_file(tmp_path, monkeypatch):
    store = LabelStore(tmp_path, CLASS_NAMES)
    store.add(LabelBatch([1, 3], [2, 0], "first.csv"), round=1)
    before = snapshot(tmp_path)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.add(LabelBatch([4, 5], [1, 1], "second.csv"), round=2)
    monkeypatch.undo()
    assert snapshot(tmp_path) == before  # no temporary file left, old labels intact
    assert store.labels == {1: 2, 3: 0} and len(store) == 2
    assert LabelStore(tmp_path, CLASS_NAMES).labels == {1: 2, 3: 0}
    # The same batch goes through once the interruption is over.
    assert store.add(LabelBatch([4, 5], [1, 1], "second.csv"), round=2).added == 2


def test_store_reads_a_labels_file_written_before_the_annotation_columns(tmp_path):
    old = pa.table(
        {"pool_index": pa.array([4, 1], pa.int64()), "label": pa.array([1, 0], pa.int64()),
         "round": pa.array([1, 1], pa.int32()), "source": ["a.csv", "a.csv"],
         "labeled_at": ["2026-01-01T00:00:00Z"] * 2}
    )  # fmt: skip
    pq.write_table(old, tmp_path / LABELS_NAME)
    store = LabelStore(tmp_path, CLASS_NAMES)
    assert store.labels == {1: 0, 4: 1}
    details = {
        "annotator": ["ann1@example.com"],
        "annotation_id": [7],
        "num_answers": [2],
        "resolution": ["agreed"],
    }
    store.add(LabelBatch([9], [2], "export.json", details), round=2)
    rows = pq.read_table(tmp_path / LABELS_NAME).to_pylist()
    assert rows[0]["annotator"] is None and rows[0]["resolution"] is None
    assert {k: rows[2][k] for k in ("pool_index", "annotator", "annotation_id", "num_answers", "resolution")} == {
        "pool_index": 9, "annotator": "ann1@example.com", "annotation_id": 7, "num_answers": 2, "resolution": "agreed"
    }  # fmt: skip


def test_store_refuses_foreign_or_damaged_file(tmp_path):
    pq.write_table(pa.table({"pool_index": [1], "label": [0]}), tmp_path / LABELS_NAME)
    with pytest.raises(LabelError, match="labels.parquet has columns"):
        LabelStore(tmp_path, CLASS_NAMES)
    (tmp_path / LABELS_NAME).write_bytes(b"not parquet")
    with pytest.raises(LabelError, match="not a readable parquet file"):
        LabelStore(tmp_path, CLASS_NAMES)
    store = LabelStore(tmp_path / "other", ["a", "b", "c"])
    store.add(LabelBatch([0], [2], "x"), round=1)
    with pytest.raises(LabelError, match="class id 2 but the run has 2 classes"):
        LabelStore(tmp_path / "other", ["a", "b"])


# ----- oracle -----


def test_oracle_labels_reads_pool_labels():
    dataset = make_image_dataset(num_examples=POOL_SIZE, num_classes=4, size=8)
    batch = oracle_labels(dataset, "label", np.array(INDICES), ["0", "1", "2", "3"])
    assert batch.source == "oracle:label"
    assert batch.pool_indices.tolist() == INDICES
    assert batch.labels.tolist() == [dataset[i]["label"] for i in INDICES]


def test_oracle_labels_refuses_missing_labels():
    dataset = datasets.Dataset.from_dict({"label": [0, -1, 2, None, 1]})
    with pytest.raises(LabelError) as error:
        oracle_labels(dataset, "label", [0, 1, 3, 4], CLASS_NAMES)
    assert "no label for pool index 1, 3" in str(error.value)
    assert oracle_labels(dataset, "label", [4, 0], CLASS_NAMES).labels.tolist() == [1, 0]
    names = datasets.Dataset.from_dict({"label": ["dog", None, "frog"]})
    assert oracle_labels(names, "label", [2, 0], CLASS_NAMES).labels.tolist() == [3, 1]
    with pytest.raises(LabelError, match="no label for pool index 1"):
        oracle_labels(names, "label", [1], CLASS_NAMES)
    with pytest.raises(LabelError, match="no column 'target'"):
        oracle_labels(dataset, "target", [0], CLASS_NAMES)
    with pytest.raises(LabelError, match="pool index 5 is out of range"):
        oracle_labels(dataset, "label", [5], CLASS_NAMES)


# ----- query batches -----


def _decoded(image) -> np.ndarray:
    return np.asarray(image.convert("L") if image.mode != "L" else image)


def test_write_query_batch_carries_the_surrogate_guesses(tmp_path):
    dataset = make_image_dataset(num_examples=POOL_SIZE, num_classes=4, size=8)
    directory = write_query_batch(tmp_path / "q", dataset, [11, 3], class_names=CLASS_NAMES, round=2,
                                  predictions=[2, 0], prediction_scores=[0.61234, 0.9], model_version="demo-surrogate-round1")  # fmt: skip
    with open(directory / QUERY_CSV, newline="") as f:
        assert list(csv.reader(f)) == [
            ["pool_index", "file_name", "label", "predicted_label", "predicted_score"],
            ["11", "11.png", "", CLASS_NAMES[2], "0.6123"],
            ["3", "3.png", "", CLASS_NAMES[0], "0.9000"],
        ]
    saved = datasets.load_from_disk(str(directory / QUERY_DATASET_DIR))
    assert saved["predicted_label"][:] == [CLASS_NAMES[2], CLASS_NAMES[0]]
    tasks = json.loads((directory / LABEL_STUDIO_TASKS).read_text())
    assert tasks[0]["predictions"] == [{
        "model_version": "demo-surrogate-round1", "score": 0.6123,
        "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [CLASS_NAMES[2]]}}],
    }]  # fmt: skip
    # The template with its guesses still reads back as "no label yet".
    assert len(read_labels(directory / QUERY_CSV, CLASS_NAMES)) == 0
    with pytest.raises(LabelError, match="predicted class id 7 is out of range for 4 classes"):
        write_query_batch(tmp_path / "r", dataset, [1], class_names=CLASS_NAMES, round=2, predictions=[7])


def test_write_query_batch(tmp_path):
    dataset = make_image_dataset(num_examples=POOL_SIZE, num_classes=4, size=8)
    queried = [11, 3, 20]
    directory = tmp_path / "run" / "queries" / "round_2"
    path = write_query_batch(
        directory, dataset, queried, class_names=CLASS_NAMES, round=2, scores=[0.9, 0.5, 0.1]
    )
    assert path == directory
    assert sorted(p.name for p in directory.parent.iterdir()) == ["round_2"]  # no temporary folder left

    saved = datasets.load_from_disk(str(directory / QUERY_DATASET_DIR))
    assert saved.column_names == ["pool_index", "file_name", "image", "score"]
    assert saved["pool_index"][:] == queried
    assert saved["file_name"][:] == ["11.png", "3.png", "20.png"]
    assert saved["score"][:] == pytest.approx([0.9, 0.5, 0.1])
    for row, index in zip(saved, queried):
        np.testing.assert_array_equal(_decoded(row["image"]), _decoded(dataset[index]["image"]))

    with open(directory / QUERY_CSV, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["pool_index", "file_name", "label"],
        ["11", "11.png", ""],
        ["3", "3.png", ""],
        ["20", "20.png", ""],
    ]
    assert read_query_indices(directory).tolist() == queried

    tasks = json.loads((directory / LABEL_STUDIO_TASKS).read_text())
    assert [task["data"]["pool_index"] for task in tasks] == queried
    assert [task["data"]["round"] for task in tasks] == [2, 2, 2]
    header, encoded = tasks[0]["data"]["image"].split(",", 1)
    assert header == "data:image/png;base64"
    image = PILImage.open(io.BytesIO(base64.b64decode(encoded)))
    np.testing.assert_array_equal(_decoded(image), _decoded(dataset[11]["image"]))

    config = ET.fromstring((directory / LABEL_STUDIO_CONFIG).read_text())
    choices = config.find("Choices")
    assert config.find("Image").get("value") == "$image" and choices.get("toName") == "image"
    assert choices.get("name") == "label" and choices.get("choice") == "single"
    assert [choice.get("value") for choice in choices.findall("Choice")] == CLASS_NAMES

    # Same query again (a resumed round): kept as it is. Another query: refused, nothing touched.
    before = snapshot(directory)
    assert write_query_batch(directory, dataset, queried, class_names=CLASS_NAMES, round=2) == directory
    with pytest.raises(LabelError, match="already holds a different query"):
        write_query_batch(directory, dataset, [1, 2], round=2)
    assert snapshot(directory) == before
    with pytest.raises(LabelError, match="pool index 24 is out of range"):
        write_query_batch(tmp_path / "q", dataset, [3, 24], round=2)
    with pytest.raises(LabelError, match="pool index 3 is queried more than once"):
        write_query_batch(tmp_path / "q", dataset, [3, 3], round=2)
    assert not (tmp_path / "q").exists()


def test_query_template_filled_reads_back(tmp_path):
    dataset = make_image_dataset(num_examples=POOL_SIZE, num_classes=4, size=8)
    queried = [7, 0, 15, 22]
    directory = write_query_batch(tmp_path / "queries" / "round_1", dataset, queried, round=1)
    # An annotator fills two of the four rows in a spreadsheet, by name and by id.
    with open(directory / QUERY_CSV, newline="") as f:
        rows = list(csv.reader(f))
    rows[1][2], rows[3][2] = "Frog", "2"
    write_csv(directory / QUERY_CSV, rows[0], rows[1:])

    batch = read_labels(directory / QUERY_CSV, CLASS_NAMES, pool_size=POOL_SIZE)
    assert batch.pool_indices.tolist() == [7, 15] and batch.labels.tolist() == [3, 2]
    store = LabelStore(tmp_path / "run", CLASS_NAMES)
    with pytest.raises(LabelError, match="2 of the 4 pool indices queried in round 1 have no label"):
        store.add(batch, round=1, expected=read_query_indices(directory))
    result = store.add(batch, round=1, expected=read_query_indices(directory), allow_partial=True)
    assert result.added == 2 and result.missing.tolist() == [0, 22]


def test_write_query_batch_interrupted_leaves_nothing(tmp_path, monkeypatch):
    dataset = make_image_dataset(num_examples=8, num_classes=4, size=8)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_query_batch(tmp_path / "queries" / "round_1", dataset, [1, 2], round=1)
    monkeypatch.undo()
    assert list((tmp_path / "queries").iterdir()) == []


def test_write_query_batch_from_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    originals = {}
    for folder, names in {"class_a": ["x.png", "y.png"], "class_b": ["x.png", "z.png"]}.items():
        (tmp_path / "images" / folder).mkdir(parents=True)
        for name in names:
            pixels = rng.integers(0, 255, size=(6, 6, 3), dtype=np.uint8)
            PILImage.fromarray(pixels).save(tmp_path / "images" / folder / name)
            originals[f"{folder}/{name}"] = pixels
    dataset = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "images"), split="train")
    paths = dataset.cast_column("image", datasets.Image(decode=False))["image"][:]
    keys = [f"{Path(item['path']).parent.name}/{Path(item['path']).name}" for item in paths]
    queried = [keys.index("class_b/z.png"), keys.index("class_a/x.png"), keys.index("class_b/x.png")]

    directory = write_query_batch(
        tmp_path / "q", dataset, queried, class_names=["class_a", "class_b"], round=1
    )
    expected_names = ["z.png", f"{queried[1]}_x.png", f"{queried[2]}_x.png"]  # same basename twice: prefixed
    with open(directory / QUERY_CSV, newline="") as f:
        assert [row["file_name"] for row in csv.DictReader(f)] == expected_names
    tasks = json.loads((directory / LABEL_STUDIO_TASKS).read_text())
    assert [task["data"]["file_name"] for task in tasks] == expected_names
    # The pool's file is kept as image_path; the image itself travels as a data: URI that any Label Studio shows.
    assert [Path(task["data"]["image_path"]).relative_to(tmp_path / "images").as_posix() for task in tasks] == [
        "class_b/z.png", "class_a/x.png", "class_b/x.png"
    ]  # fmt: skip
    for task, key in zip(tasks, ["class_b/z.png", "class_a/x.png", "class_b/x.png"]):
        header, payload = task["data"]["image"].split(",", 1)
        assert header == "data:image/png;base64"
        assert base64.b64decode(payload) == (tmp_path / "images" / key).read_bytes()

    # The saved dataset is self-contained: the original files can go.
    for file in (tmp_path / "images").rglob("*.png"):
        file.unlink()
    saved = datasets.load_from_disk(str(directory / QUERY_DATASET_DIR))
    assert "label" not in saved.column_names and saved["pool_index"][:] == queried
    for row, key in zip(saved, ["class_b/z.png", "class_a/x.png", "class_b/x.png"]):
        np.testing.assert_array_equal(np.asarray(row["image"]), originals[key])


# ----- a whole human-annotation run, with a scripted annotator -----

ANNOTATOR = r"""
import json, sys
import datasets

query_dir, out, fmt, truth_file = sys.argv[1:5]
truth = json.loads(open(truth_file).read())
names = ["circle", "cross", "square", "triangle"]
query = datasets.load_from_disk(query_dir + "/dataset")
rows = [(int(i), truth[f]) for i, f in zip(query["pool_index"], query["file_name"])]
if fmt == "csv_names":
    with open(out, "w") as f:
        f.write("pool_index,file_name,label\n")
        for (i, y), name in zip(rows, query["file_name"]):
            f.write(f"{i},{name},{names[y]}\n")
elif fmt == "jsonl_ids":
    with open(out, "w") as f:
        for i, y in rows:
            f.write(json.dumps({"pool_index": i, "label": y}) + "\n")
else:  # a Label Studio JSON export of the tasks it was given
    tasks = json.loads(open(query_dir + "/label_studio_tasks.json").read())
    truth_by_index = dict(rows)
    export = [{"id": n, "data": task["data"], "annotations": [{"id": n, "was_cancelled": False,
               "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                           "value": {"choices": [names[truth_by_index[task["data"]["pool_index"]]]]}}]}]}
              for n, task in enumerate(tasks)]
    open(out, "w").write(json.dumps(export))
"""


def test_unlabeled_folder_to_fused_model_with_a_scripted_annotator(tmp_path, capsys):
    import subprocess
    import sys

    from prunefuse_hf.cli.main import main

    truth = unlabeled_image_folder(tmp_path / "images")
    (tmp_path / "truth.json").write_text(json.dumps(truth))
    (tmp_path / "annotator.py").write_text(ANNOTATOR)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""
model_config: {{model_type: resnet, num_channels: 3, embedding_size: 8, hidden_sizes: [8, 16], depths: [1, 1]}}
dataset_name: {tmp_path / "images"}
eval_split: null
annotation: human
class_names: [circle, cross, square, triangle]
initial_labeled_size: 12
query_size: 8
num_rounds: 2
num_train_epochs: 1
per_device_train_batch_size: 8
scoring_batch_size: 32
disable_tqdm: true
output_dir: {tmp_path / "run"}
""")
    run_dir = tmp_path / "run"
    formats = {1: "csv_names", 2: "jsonl_ids", 3: "label_studio"}
    for round_ in (1, 2, 3):
        args = ["run", "--config", str(recipe)] + (["--resume"] if round_ > 1 else [])
        assert main(args) == 0
        out = capsys.readouterr().out
        query_dir = run_dir / "queries" / f"round_{round_}"
        assert f"images in {query_dir}" in out and "prunefuse-hf label" in out and "--resume" in out
        assert {p.name for p in query_dir.iterdir()} >= {"dataset", "labels.csv", "label_studio_tasks.json"}
        labels_file = (
            tmp_path / f"labels_{round_}.{'jsonl' if round_ == 2 else 'csv' if round_ == 1 else 'json'}"
        )
        subprocess.run([sys.executable, str(tmp_path / "annotator.py"), str(query_dir), str(labels_file),
                        formats[round_], str(tmp_path / "truth.json")], check=True)  # fmt: skip
        assert main(["label", str(run_dir), "--labels", str(labels_file)]) == 0
        assert "next: prunefuse-hf run" in capsys.readouterr().out
        # The same labels a second time change nothing.
        before = snapshot(run_dir)
        assert main(["label", str(run_dir), "--labels", str(labels_file)]) == 0
        assert snapshot(run_dir) == before
    assert main(["run", "--config", str(recipe), "--resume"]) == 0
    assert f"fused model: {run_dir / 'fused'}" in capsys.readouterr().out

    from transformers import AutoModelForImageClassification

    fused = AutoModelForImageClassification.from_pretrained(run_dir / "fused")
    assert fused.config.id2label == {0: "circle", 1: "cross", 2: "square", 3: "triangle"}
    selection = pq.read_table(run_dir / "selection.parquet").to_pydict()
    file_of = {int(i): Path(p).name for i, p in zip(selection["pool_index"], selection["image_path"])}
    assert len(selection["pool_index"]) == 28
    assert selection["label"] == [truth[file_of[int(i)]] for i in selection["pool_index"]]
    stored = pq.read_table(run_dir / "labels.parquet").to_pydict()
    assert sorted(set(stored["round"])) == [1, 2, 3] and len(set(stored["source"])) == 3


@pytest.fixture
def waiting_run(tmp_path):
    """A human-annotation run stopped at its first query (12 images)."""
    from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer

    truth = unlabeled_image_folder(tmp_path / "images", num_images=40)
    pool = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "images"), split="train")
    args = PruneFuseConfig(output_dir=str(tmp_path / "run"), annotation="human", class_names=CLASSES,
                           initial_labeled_size=12, query_size=8, num_rounds=1, num_train_epochs=1,
                           per_device_train_batch_size=8, disable_tqdm=True)  # fmt: skip
    from conftest import tiny_resnet_config

    trainer = PruneFuseTrainer(tiny_resnet_config(num_labels=4), args=args, train_dataset=pool)
    trainer.train()
    assert trainer.awaiting_labels == 1 and not trainer.done
    query = trainer.progress["queries"]["1"]["pool_indices"]
    paths = [value["path"] for value in pool.cast_column("image", datasets.Image(decode=False))["image"]]
    labels = {i: truth[Path(paths[i]).name] for i in query}
    return trainer, tmp_path / "run", labels


CLASSES = ["circle", "cross", "square", "triangle"]


def _write_csv(path, rows):
    path.write_text("pool_index,label\n" + "".join(f"{i},{y}\n" for i, y in rows))
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown_name", "'hexagon'.*'circle', 'cross', 'square', 'triangle'"),
        ("not_queried", "is not part of round 1's query"),
        ("out_of_pool", "pool index 999"),
        ("duplicate", "appears twice"),
        ("partial", "have no label.*--allow_partial"),
        ("no_columns", "no pool index column. Columns found"),
    ],
)
def test_refused_labels_leave_the_run_directory_byte_identical(waiting_run, tmp_path, case, message, capsys):
    from prunefuse_hf.cli.main import main

    trainer, run_dir, labels = waiting_run
    rows = [(i, CLASSES[y]) for i, y in labels.items()]
    outside = next(i for i in range(40) if i not in labels)
    bad = {
        "unknown_name": [(rows[0][0], "hexagon")] + rows[1:],
        "not_queried": rows + [(outside, "circle")],
        "out_of_pool": rows + [(999, "circle")],
        "duplicate": rows + [rows[0]],
        "partial": rows[:-3],
    }
    path = tmp_path / "bad.csv"
    if case == "no_columns":
        path.write_text("image,what\na.png,cat\n")
    else:
        _write_csv(path, bad[case])
    before = snapshot(run_dir)
    assert main(["label", str(run_dir), "--labels", str(path)]) == 2
    error = capsys.readouterr().err
    assert re.search(message, error, flags=re.IGNORECASE | re.DOTALL), error
    assert "Traceback" not in error
    assert snapshot(run_dir) == before


def test_partial_labels_continue_with_the_labeled_part_and_the_rest_stays_in_the_pool(waiting_run, tmp_path):
    trainer, run_dir, labels = waiting_run
    rows = [(i, CLASSES[y]) for i, y in labels.items()]
    result = trainer.add_labels(_write_csv(tmp_path / "part.csv", rows[:-4]), allow_partial=True)
    assert result.added == 8 and result.missing.size == 4
    trainer.train(resume_from_checkpoint=True)
    assert trainer.awaiting_labels == 2
    left_out = [i for i, _ in rows[-4:]]
    assert (trainer.pool.rounds[left_out] == 0).all()
    assert sorted(trainer.pool.labeled_indices.tolist()) == sorted(i for i, _ in rows[:-4])


def test_conflicting_labels_need_overwrite(waiting_run, tmp_path):
    trainer, run_dir, labels = waiting_run
    rows = [(i, CLASSES[y]) for i, y in labels.items()]
    trainer.add_labels(_write_csv(tmp_path / "a.csv", rows))
    changed = [(rows[0][0], CLASSES[(CLASSES.index(rows[0][1]) + 1) % 4])] + rows[1:]
    with pytest.raises(LabelError, match="already labeled"):
        trainer.add_labels(_write_csv(tmp_path / "b.csv", changed))
    assert trainer.add_labels(tmp_path / "b.csv", overwrite=True).overwritten == 1


def test_a_kill_during_ingest_keeps_the_labels_file_whole(waiting_run, tmp_path, monkeypatch):
    trainer, run_dir, labels = waiting_run
    rows = [(i, CLASSES[y]) for i, y in labels.items()]
    trainer.add_labels(_write_csv(tmp_path / "a.csv", rows[:6]), allow_partial=True)
    before = (run_dir / "labels.parquet").read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.add_labels(_write_csv(tmp_path / "b.csv", rows), allow_partial=True)
    monkeypatch.undo()
    assert (run_dir / "labels.parquet").read_bytes() == before
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".labels")]
