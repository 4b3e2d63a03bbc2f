"""`read_labels`: every label file format annotators bring back, Label Studio exports, and the refusals that name
the file, the row and the value."""

import csv
import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import CLASS_NAMES, INDICES, LABELS, NAMES, POOL_SIZE, snapshot, write_csv
from prunefuse_hf.annotation.labels import LabelError, check_class_names, parse_pool_index
from prunefuse_hf.annotation.readers import read_labels


def ls_task(task_id, pool_index, annotations):
    return {
        "id": task_id,
        "data": {
            "image": "data:image/png;base64,AAAA",
            "pool_index": pool_index,
            "file_name": f"{pool_index}.png",
        },
        "annotations": annotations,
    }


def ls_annotation(choices, *, created, updated=None, cancelled=False, annotation_id=1):
    return {
        "id": annotation_id,
        "result": [
            {
                "from_name": "label",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": choices},
                "id": "r1",
            }
        ],
        "was_cancelled": cancelled,
        "created_at": created,
        "updated_at": updated or created,
    }


# ----- every format reads back -----


def _csv_names(tmp_path):
    return write_csv(tmp_path / "labels.csv", ["pool_index", "label"], zip(INDICES, NAMES))


def _csv_ids(tmp_path):
    return write_csv(tmp_path / "labels.csv", ["pool_index", "label"], zip(INDICES, LABELS))


def _tsv_class_column_any_case(tmp_path):
    return write_csv(
        tmp_path / "labels.tsv",
        ["class", "pool_index"],
        [(n.upper(), i) for i, n in zip(INDICES, NAMES)],
        "\t",
    )


def _jsonl_ids(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text(
        "".join(json.dumps({"pool_index": i, "labels": k}) + "\n\n" for i, k in zip(INDICES, LABELS))
    )
    return path


def _json_list(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(
        json.dumps([{"pool_index": i, "class_name": n, "note": "x"} for i, n in zip(INDICES, NAMES)])
    )
    return path


def _parquet_float_ids_with_null(tmp_path):
    # What pandas writes for an id column with a gap: floats and a null (the null row is not a label).
    table = pa.table({"pool_index": INDICES + [3], "label": [float(k) for k in LABELS] + [None]})
    pq.write_table(table, tmp_path / "labels.parquet")
    return tmp_path / "labels.parquet"


def _saved_dataset(tmp_path):
    datasets.Dataset.from_dict({"pool_index": INDICES, "label": NAMES}).save_to_disk(str(tmp_path / "saved"))
    return tmp_path / "saved"


def _saved_dataset_dict(tmp_path):
    dataset = datasets.Dataset.from_dict({"pool_index": INDICES, "choice": LABELS})
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "saved"))
    return str(tmp_path / "saved")


def _dataset_object(tmp_path):
    return datasets.Dataset.from_dict({"pool_index": INDICES, "annotation": NAMES})


def _dataset_with_class_label_in_other_order(tmp_path):
    # Its ClassLabel names are the run's names in another order: labels map by name, not by position.
    names = list(reversed(CLASS_NAMES))
    features = datasets.Features(
        {"pool_index": datasets.Value("int64"), "label": datasets.ClassLabel(names=names)}
    )
    return datasets.Dataset.from_dict(
        {"pool_index": INDICES, "label": [names.index(n) for n in NAMES]}, features
    )


@pytest.mark.parametrize(
    "make_source",
    [
        _csv_names,
        _csv_ids,
        _tsv_class_column_any_case,
        _jsonl_ids,
        _json_list,
        _parquet_float_ids_with_null,
        _saved_dataset,
        _saved_dataset_dict,
        _dataset_object,
        _dataset_with_class_label_in_other_order,
    ],
)
def test_read_labels_formats_round_trip(tmp_path, make_source):
    source = make_source(tmp_path)
    batch = read_labels(source, CLASS_NAMES, pool_size=POOL_SIZE)
    assert batch.pool_indices.dtype == np.int64 and batch.labels.dtype == np.int64
    assert batch.pool_indices.tolist() == INDICES
    assert batch.labels.tolist() == LABELS
    if isinstance(source, (str, Path)):
        assert str(source) in batch.source


def test_read_labels_explicit_columns_and_digit_class_names(tmp_path):
    # A class literally named "3" wins over the id 3; other digit strings are ids.
    path = write_csv(tmp_path / "l.csv", ["row", "target"], [(1, "3"), (2, "0"), (4, "")])
    batch = read_labels(path, ["a", "b", "c", "d", "3"], label_column="target", index_column="row")
    assert batch.pool_indices.tolist() == [1, 2]
    assert batch.labels.tolist() == [4, 0]


def test_read_labels_label_studio_json_export(tmp_path):
    tasks = [
        # Two annotations that disagree: refused by default; with resolve="latest" the most recently updated one
        # counts, whatever the list order.
        ls_task(1, 5, [
            ls_annotation(["dog"], created="2024-01-01T10:00:00Z", updated="2024-01-03T10:00:00Z", annotation_id=1),
            ls_annotation(["cat"], created="2024-01-02T10:00:00Z", annotation_id=2),
        ]),
        # The newer annotation was cancelled (skipped): the older one counts.
        ls_task(2, 2, [
            ls_annotation(["cat"], created="2024-01-01T10:00:00Z"),
            ls_annotation(["bird"], created="2024-01-05T10:00:00Z", cancelled=True),
        ]),
        ls_task(3, 17, [ls_annotation(["frog"], created="2024-01-01T10:00:00Z", cancelled=True)]),  # skipped only
        ls_task(4, 9, []),  # not annotated yet
        ls_task(5, 11, [{
            "id": 9, "was_cancelled": False, "created_at": "2024-01-01T10:00:00Z",
            "result": [
                {"from_name": "comment", "type": "textarea", "value": {"text": ["blurry"]}},
                {"from_name": "label", "type": "choices", "value": {"choices": ["frog"]}},
            ],
        }]),
    ]  # fmt: skip
    path = tmp_path / "project-1-at-2024.json"
    path.write_text(json.dumps(tasks))
    with pytest.raises(LabelError, match=r"1 tasks have answers that disagree: Label Studio task 1 \(item 0\) "
                       r"\(pool_index 5\): 'dog' by unknown \(annotation 1\), 'cat' by unknown \(annotation 2\)\..*--resolve"):  # fmt: skip
        read_labels(path, CLASS_NAMES, pool_size=POOL_SIZE)
    batch = read_labels(path, CLASS_NAMES, pool_size=POOL_SIZE, resolve="latest")
    assert batch.pool_indices.tolist() == [5, 2, 11]
    assert batch.labels.tolist() == [1, 0, 3]
    assert batch.skipped.tolist() == [17]  # its only answer was cancelled
    assert batch.details["num_answers"] == [2, 1, 1]
    assert batch.details["resolution"] == ["latest", "single", "single"]
    assert batch.details["annotation_id"] == [1, 1, 9]


def _ls_flat_rows():
    """Rows as Label Studio's JSON_MIN and CSV exports write them: one per annotation, task data flattened."""
    base = {"image": "data:image/png;base64,AAAA", "annotator": "a@b.c", "lead_time": 2.5}
    return [
        {**base, "id": 1, "pool_index": 5, "file_name": "5.png", "label": "cat", "annotation_id": 10,
         "created_at": "2024-01-01T10:00:00Z", "updated_at": "2024-01-01T10:00:00Z", "was_cancelled": False},
        {**base, "id": 1, "pool_index": 5, "file_name": "5.png", "label": "dog", "annotation_id": 11,
         "created_at": "2024-01-02T10:00:00Z", "updated_at": "2024-01-02T10:00:00Z", "was_cancelled": False},
        {**base, "id": 2, "pool_index": 2, "file_name": "2.png", "label": "bird", "annotation_id": 12,
         "created_at": "2024-01-03T10:00:00Z", "updated_at": "2024-01-03T10:00:00Z", "was_cancelled": True},
        {**base, "id": 2, "pool_index": 2, "file_name": "2.png", "label": "cat", "annotation_id": 13,
         "created_at": "2024-01-01T10:00:00Z", "updated_at": "2024-01-01T10:00:00Z", "was_cancelled": False},
        {**base, "id": 3, "pool_index": 17, "file_name": "17.png", "label": "frog", "annotation_id": 14,
         "created_at": "2024-01-01T10:00:00Z", "updated_at": "2024-01-01T10:00:00Z", "was_cancelled": False},
    ]  # fmt: skip


def _write_ls_csv(path, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf8") as f:
        writer = csv.DictWriter(
            f, fieldnames=sorted(rows[0]), quoting=csv.QUOTE_NONNUMERIC, delimiter=delimiter
        )
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_read_labels_label_studio_json_min_export(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(_ls_flat_rows()))
    with pytest.raises(
        LabelError, match=r"item 0 \(pool_index 5\): 'cat' by a@b.c \(annotation 10\), 'dog' by a@b.c"
    ):
        read_labels(path, CLASS_NAMES)
    batch = read_labels(path, CLASS_NAMES, resolve="latest")
    assert dict(zip(batch.pool_indices.tolist(), batch.labels.tolist())) == {5: 1, 2: 0, 17: 3}


@pytest.mark.parametrize("extension", ["csv", "tsv"])
def test_read_labels_label_studio_csv_export(tmp_path, extension):
    path = _write_ls_csv(
        tmp_path / f"export.{extension}", _ls_flat_rows(), "\t" if extension == "tsv" else ","
    )
    batch = read_labels(path, CLASS_NAMES, resolve="latest")
    assert dict(zip(batch.pool_indices.tolist(), batch.labels.tolist())) == {5: 1, 2: 0, 17: 3}


# ----- refusals: LabelError naming the file, the row and the value -----


def _refusal_cases():
    def csv_file(header, rows, name="labels.csv"):
        return lambda d: write_csv(d / name, header, rows)

    def json_file(data, name="labels.json"):
        def make(d):
            (d / name).write_text(json.dumps(data))
            return d / name

        return make

    multi_choice = [ls_task(7, 4, [ls_annotation(["cat", "dog"], created="2024-01-01T10:00:00Z")])]
    flat_multi = [dict(_ls_flat_rows()[0], label={"choices": ["cat", "frog"]})]
    return {
        "file not found": (lambda d: d / "nope.csv", {}, ["nope.csv", "not found"]),
        "unknown extension": (lambda d: (d / "labels.xlsx").write_bytes(b"x") and d / "labels.xlsx", {}, [".xlsx", ".csv"]),
        "no index column": (csv_file(["idx", "label"], [(4, "cat")]), {}, ["'idx'", "pool_index", "index_column"]),
        "no label column": (csv_file(["pool_index", "target"], [(4, "cat")]), {}, ["'target'", "'class'", "label_column"]),
        "missing given column": (csv_file(["pool_index", "label"], [(4, "cat")]), {"label_column": "y"}, ["'y'"]),
        "unknown class name": (csv_file(["pool_index", "label"], [(4, "cat"), (6, "dgo")]), {}, ["'dgo'", "line 3", "'dog'", "'frog'"]),
        "id out of range": (csv_file(["pool_index", "label"], [(4, 7)]), {}, ["class id 7", "0 to 3"]),
        "negative id": (json_file([{"pool_index": 4, "label": -1}]), {}, ["class id -1"]),
        "negative pool index": (csv_file(["pool_index", "label"], [(-3, "cat")]), {}, ["-3", "negative"]),
        "non-integer pool index": (csv_file(["pool_index", "label"], [("3.5", "cat")]), {}, ["'3.5'"]),
        "empty pool index": (csv_file(["pool_index", "label"], [("", "cat")]), {}, ["empty cell"]),
        "pool index out of range": (csv_file(["pool_index", "label"], [(100, "cat")]), {"pool_size": POOL_SIZE}, ["100", "24 examples"]),
        "duplicate, same label": (csv_file(["pool_index", "label"], [(8, "cat"), (6, "dog"), (8, "cat")]), {}, ["pool index 8 appears twice", "line 2", "line 4", "'cat'"]),
        "duplicate, two labels": (json_file([{"pool_index": 8, "label": "cat"}, {"pool_index": 8, "label": 2}]), {}, ["8", "'cat'", "'bird'"]),
        "label studio multiple choices": (json_file(multi_choice), {}, ["task 7", "more than one choice", "'cat', 'dog'"]),
        "json_min multiple choices": (json_file(flat_multi), {}, ["more than one choice", "'frog'"]),
        "label studio task without pool index": (json_file([{"id": 3, "data": {"image": "x.png"}, "annotations": []}]), {}, ["data.pool_index", "'image'"]),
        "not a list": (json_file({"pool_index": 3}), {}, ["JSON list"]),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(_refusal_cases()))
def test_read_labels_refusals_name_the_value_and_write_nothing(tmp_path, case):
    make_source, kwargs, expected_parts = _refusal_cases()[case]
    source = make_source(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(LabelError) as error:
        read_labels(source, CLASS_NAMES, **kwargs)
    for part in expected_parts:
        assert part in str(error.value)
    assert snapshot(tmp_path) == before


# ----- the pieces every reader shares -----


@pytest.mark.parametrize(
    "names, message",
    [([], "non-empty list of strings"), (["cat", 3], "non-empty list of strings"), (["cat", "dog", "cat"], r"repeats \['cat'\]")],
)  # fmt: skip
def test_class_names_must_be_distinct_strings(names, message):
    assert check_class_names(("cat", "dog")) == ["cat", "dog"]
    with pytest.raises(LabelError, match=message):
        check_class_names(names)


@pytest.mark.parametrize(
    "value, message",
    [(True, "is True, not a non-negative"), (2.5, "is 2.5, not a"), ("x", "is 'x', not a"), (None, "is an empty cell"),
     (" ", "is an empty cell"), ("-1", "-1 is negative")],
)  # fmt: skip
def test_pool_index_cells_are_non_negative_integers(value, message):
    assert [parse_pool_index(cell, "f") for cell in (3, np.int64(4), 5.0, " 6 ", "+7")] == [3, 4, 5, 6, 7]
    with pytest.raises(LabelError, match=f"f, line 2: pool index {message}"):
        parse_pool_index(value, "f, line 2")
