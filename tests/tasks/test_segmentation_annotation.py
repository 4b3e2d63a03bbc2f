"""People label masks: Label Studio's brush RLE (checked bit by bit and against Label Studio's own SDK), the
segmentation query batch (images, empty masks, Label Studio import with the surrogate's masks as brush predictions)
and the masks read back from Label Studio JSON exports (brush and polygon results) and from a folder of mask images;
one test against a real Label Studio server (skipped, saying why, when it is not installed)."""

import copy
import csv
import io
import json
import subprocess
import zipfile

import datasets
import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest
import torch

from conftest import snapshot
from label_studio_server import label_studio_venv
from prunefuse_hf.annotation.label_studio import AnswersDisagree
from prunefuse_hf.annotation.labels import LabelError
from prunefuse_hf.annotation.queries import read_query_indices
from prunefuse_hf.tasks import (
    SegmentationLabels,
    decode_brush_rle,
    encode_brush_rle,
    read_segmentation_labels,
    segmentation_label_studio_config,
    segmentation_prediction,
    segmentation_predictions,
    write_segmentation_query,
)
from prunefuse_hf.tasks.segmentation_loading import dataset_from_mask_folder

CLASSES = ["road", "car", "tree"]
SIZES = [(40, 30), (50, 20), (24, 36), (30, 30), (32, 16)]
QUERIED = [3, 0, 2]


def predicted_mask(index):
    """The surrogate's mask of pool image `index`: class stripes and a block of 255 (not predicted)."""
    width, height = SIZES[index]
    mask = (np.arange(width)[None, :] * 3 // width + index) % 3 + np.zeros((height, 1), dtype=np.int64)
    mask[: height // 4, : width // 4] = 255
    return mask


def segmentation_pool():
    rows = {
        "image": [PIL.Image.new("RGB", size, (30 * i, 90, 200 - 30 * i)) for i, size in enumerate(SIZES)],
        "label": [PIL.Image.new("L", size, 1) for size in SIZES],
    }
    return (
        datasets.Dataset.from_dict(rows)
        .cast_column("image", datasets.Image())
        .cast_column("label", datasets.Image())
    )


def write_query(tmp_path, predictions=True, **kwargs):
    return write_segmentation_query(tmp_path / "queries" / "round_2", segmentation_pool(), QUERIED,
                                    class_names=CLASSES, round=2, model_version="run-surrogate-round1",
                                    predictions=[predicted_mask(i) for i in QUERIED] if predictions else None,
                                    **kwargs)  # fmt: skip


def tasks_of(query):
    return json.loads((query / "label_studio_tasks.json").read_text())


def export_of(tasks, answers=None):
    """A Label Studio JSON export of `tasks`: each answered by one annotator who accepted the predictions, or as
    `answers[pool_index]` says (a list of annotations: result lists, None for a skip)."""
    exported = []
    for task_id, task in enumerate(tasks, start=1):
        index = task["data"]["pool_index"]
        given = (answers or {}).get(index, [task["predictions"][0]["result"]])
        annotations = [
            {"id": 100 * task_id + k, "completed_by": k + 1, "result": copy.deepcopy(result or []),
             "was_cancelled": result is None, "ground_truth": False,
             "created_at": f"2026-12-05T10:00:0{k}Z", "updated_at": f"2026-12-05T10:00:0{k}Z"}
            for k, result in enumerate(given)
        ]  # fmt: skip
        exported.append({"id": task_id, "data": task["data"], "annotations": annotations})
    return exported


def brush(class_name, mask, region="b"):
    height, width = np.shape(mask)
    return {"id": region, "from_name": "label", "to_name": "image", "type": "brushlabels", "original_width": width,
            "original_height": height, "image_rotation": 0,
            "value": {"format": "rle", "rle": encode_brush_rle(mask), "brushlabels": [class_name]}}  # fmt: skip


def polygon(class_name, points, size, region="p"):
    return {"id": region, "from_name": "polygon", "to_name": "image", "type": "polygonlabels",
            "original_width": size[0], "original_height": size[1], "image_rotation": 0,
            "value": {"points": points, "closed": True, "polygonlabels": [class_name]}}  # fmt: skip


def save(tmp_path, content, name="export.json"):
    path = tmp_path / name
    path.write_text(json.dumps(content))
    return path


def masks_of(labels: SegmentationLabels) -> dict:
    return {index: mask.astype(np.int64) for index, mask in zip(labels.pool_indices.tolist(), labels.masks)}


# ----- the brush RLE -----


def test_rle_bits_against_a_hand_encoded_pixel():
    # One painted pixel: 4 values of 255. Header: 4 values (32 bits), word size 8 (7 in 5 bits), run length widths
    # 3, 4, 8, 16 (2, 3, 7, 15 in 4 bits each); one repeated run: 1, width choice 00, length 4 - 1 in 3 bits, 255.
    bits = f"{4:032b}" + "00111" + "0010" + "0011" + "0111" + "1111" + "1" + "00" + "011" + "11111111"
    bits += "0" * (8 - len(bits) % 8)
    assert encode_brush_rle([[1]]) == [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]
    assert decode_brush_rle(encode_brush_rle([[1]]), 1, 1).tolist() == [[True]]


@pytest.mark.parametrize("shape, density", [((7, 9), 0.5), ((1, 1), 0.0), ((64, 48), 0.1), ((300, 300), 1.0),
                                            ((120, 257), 0.97)])  # fmt: skip
def test_rle_round_trips_random_masks(shape, density):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    mask = rng.random(shape) < density
    mask[shape[0] // 2 :, : shape[1] // 3] = (
        True  # long runs too (a full 300x300 mask is runs of 65536 values)
    )
    assert np.array_equal(decode_brush_rle(encode_brush_rle(mask), shape[1], shape[0]), mask)


def test_rle_matches_label_studio_sdk_both_ways(tmp_path):
    """Our bytes are those of the SDK's `mask2rle`, and each decoder reads the other's."""
    python = label_studio_venv() / "bin" / "python"
    if not python.is_file():
        pytest.skip(
            f"Label Studio's virtualenv is not installed ({python} is missing): make setup installs it."
        )
    rng = np.random.default_rng(0)
    masks = [rng.random((13, 17)) < 0.4, np.ones((260, 300), dtype=bool), rng.random((40, 3)) < 0.9]
    (tmp_path / "masks.json").write_text(json.dumps([m.astype(int).tolist() for m in masks]))
    script = (
        "import json, sys, numpy as np\n"
        "from label_studio_sdk.converter.brush import decode_rle, mask2rle\n"
        "masks, ours = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))\n"
        "theirs = [mask2rle((np.array(m) * 255).astype(np.uint8)) for m in masks]\n"
        "read = [(decode_rle(r).reshape(len(m), len(m[0]), 4)[:, :, 3] > 0).astype(int).tolist()"
        " for r, m in zip(ours, masks)]\n"
        "print(json.dumps({'theirs': theirs, 'read': read}))\n"
    )
    (tmp_path / "ours.json").write_text(json.dumps([encode_brush_rle(m) for m in masks]))
    done = subprocess.run([str(python), "-c", script, str(tmp_path / "masks.json"), str(tmp_path / "ours.json")],
                          capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
    answer = json.loads(done.stdout)
    for mask, theirs, read in zip(masks, answer["theirs"], answer["read"]):
        assert theirs == encode_brush_rle(mask)
        assert np.array_equal(np.array(read, dtype=bool), mask)
        assert np.array_equal(decode_brush_rle(theirs, mask.shape[1], mask.shape[0]), mask)


def test_rle_refusals():
    with pytest.raises(
        LabelError, match=r"region 0: the RLE holds 8 values, but a 3x2 image has 24 \(RGBA\)"
    ):
        decode_brush_rle(encode_brush_rle([[1, 0]]), 3, 2, where="region 0")
    with pytest.raises(LabelError, match=r"the RLE ends early"):
        decode_brush_rle(encode_brush_rle(np.eye(4))[:9], 4, 4)
    with pytest.raises(LabelError, match=r"value.rle is not a list of bytes"):
        decode_brush_rle([0, 300], 1, 1)


# ----- the query batch -----


def test_query_batch_holds_images_empty_masks_and_label_studio_tasks_with_brush_predictions(tmp_path):
    query = write_query(tmp_path)
    assert sorted(p.name for p in query.iterdir()) == [
        "dataset", "images", "label_studio_config.xml", "label_studio_tasks.json", "labels.csv", "masks"
    ]  # fmt: skip
    assert read_query_indices(query).tolist() == QUERIED
    with open(query / "labels.csv", newline="") as f:
        assert list(csv.reader(f))[:2] == [
            ["pool_index", "file_name", "mask_file_name", "width", "height"], ["3", "3.png", "3.png", "30", "30"]
        ]  # fmt: skip
    rows = datasets.load_from_disk(str(query / "dataset"))
    assert rows["pool_index"] == QUERIED and "label" not in rows.column_names  # the pool's masks stay out
    for index in QUERIED:
        template = np.asarray(PIL.Image.open(query / "masks" / f"{index}.png"))
        assert template.shape == SIZES[index][::-1] and (template == 255).all()
    folder = dataset_from_mask_folder(query)  # the image-folder layout of load_segmentation_dataset
    assert folder["file_name"] == sorted(f"{i}.png" for i in QUERIED)
    assert [image.size for image in folder["image"]] == [SIZES[i] for i in sorted(QUERIED)]
    assert [image.getpixel((0, 0)) for image in folder["image"]] == [
        (30 * i, 90, 200 - 30 * i) for i in sorted(QUERIED)
    ]

    config = (query / "label_studio_config.xml").read_text()
    assert config == segmentation_label_studio_config(CLASSES)
    assert '<BrushLabels name="label" toName="image">' in config and config.count('<Label value="car"/>') == 2
    for task in tasks_of(query):
        index = task["data"]["pool_index"]
        assert (task["data"]["file_name"], task["data"]["round"]) == (f"{index}.png", 2)
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "run-surrogate-round1"
        expected = predicted_mask(index)
        # One brush result per class present, each exactly that class's pixels; 255 is not predicted.
        assert [r["value"]["brushlabels"] for r in prediction["result"]] == [[c] for c in CLASSES]
        for k, result in enumerate(prediction["result"]):
            assert (result["original_width"], result["original_height"]) == SIZES[index]
            assert (result["type"], result["from_name"], result["to_name"]) == (
                "brushlabels",
                "label",
                "image",
            )
            assert np.array_equal(decode_brush_rle(result["value"]["rle"], *SIZES[index]), expected == k)


def test_the_same_query_is_kept_and_another_refused(tmp_path):
    query = write_query(tmp_path)
    before = snapshot(query)
    assert write_query(tmp_path) == query and snapshot(query) == before
    with pytest.raises(LabelError, match="already holds a different query"):
        write_segmentation_query(query, segmentation_pool(), [0, 1], class_names=CLASSES, round=2)
    assert sorted(p.name for p in query.parent.iterdir()) == ["round_2"]


def test_background_is_no_label_and_fills_unpainted_pixels(tmp_path):
    query = write_query(tmp_path, background=0)
    config = (query / "label_studio_config.xml").read_text()
    assert '"road"' not in config and config.count('<Label value="car"/>') == 2
    labels = [r["value"]["brushlabels"][0] for r in tasks_of(query)[0]["predictions"][0]["result"]]
    assert labels == ["car", "tree"]  # the background class is what stays unpainted
    export = export_of(tasks_of(query))
    got = masks_of(read_segmentation_labels(export, class_names=CLASSES, query=query, background=0))
    for index in QUERIED:
        expected = predicted_mask(index)
        expected[expected == 255] = 0  # not predicted, so unpainted: background
        assert np.array_equal(got[index], expected)
    with pytest.raises(LabelError, match=r"background must be a class id in \[0, 3\) .* got 3"):
        segmentation_label_studio_config(CLASSES, background=3)


def test_prediction_refusals(tmp_path):
    pool = segmentation_pool()
    with pytest.raises(LabelError, match=r"2 predictions for 3 queried pool indices"):
        write_segmentation_query(tmp_path / "q", pool, QUERIED, class_names=CLASSES, round=2,
                                 predictions=[predicted_mask(i) for i in QUERIED[:2]])  # fmt: skip
    wrong = [predicted_mask(i) for i in QUERIED]
    wrong[1] = wrong[1].T
    with pytest.raises(LabelError, match=r"prediction for pool index 0: the predicted mask is 30x40, the image "
                                         r"40x30; predict at the image's size"):  # fmt: skip
        write_segmentation_query(
            tmp_path / "q", pool, QUERIED, class_names=CLASSES, round=2, predictions=wrong
        )
    wrong[1] = np.full((30, 40), 7)
    with pytest.raises(
        LabelError, match=r"pool index 0: mask value \[7\] is neither a class id in \[0, 3\) nor 255"
    ):
        write_segmentation_query(
            tmp_path / "q", pool, QUERIED, class_names=CLASSES, round=2, predictions=wrong
        )
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    assert segmentation_prediction(np.full((2, 2), 255), CLASSES)["result"] == []


# ----- reading Label Studio exports -----


def test_accepted_predictions_read_back_with_skip_and_references(tmp_path):
    query = write_query(tmp_path)
    export = export_of(tasks_of(query), answers={2: [None]})  # pool index 2 skipped
    labels = read_segmentation_labels(save(tmp_path, export), class_names=CLASSES, query=query)
    assert labels.pool_indices.tolist() == [3, 0] and labels.skipped.tolist() == [2]
    for index, mask in masks_of(labels).items():
        assert np.array_equal(mask, predicted_mask(index))  # 255 where nobody painted
    assert all(mask.dtype == np.uint8 for mask in labels.masks)
    assert labels.details == {"annotator": ["1", "1"], "annotation_id": [100, 200], "num_answers": [1, 1],
                              "resolution": ["single", "single"]}  # fmt: skip
    assert labels.references[0]["file_name"] == "3.png" and labels.places[1] == "Label Studio task 2 (item 1)"


def test_polygons_are_rasterized_and_later_regions_win(tmp_path):
    query = write_query(tmp_path)
    width, height = SIZES[3]  # 30x30
    road = np.zeros((height, width), dtype=bool)
    road[:, :20] = True
    points = [[10.0, 20.0], [50.0, 20.0], [50.0, 60.0], [10.0, 60.0]]  # percent: (3, 6) to (15, 18) px
    results = [brush("road", road, "r1"), polygon("car", points, (width, height), "p1"),
               brush("tree", np.eye(30, dtype=bool), "t1")]  # fmt: skip
    labels = read_segmentation_labels(
        export_of(tasks_of(query), {3: [results]}), class_names=CLASSES, query=query
    )
    got = masks_of(labels)[3]
    expected = np.full((height, width), 255)
    expected[road] = 0
    expected[6:19, 3:16] = 1  # PIL fills the outline's pixels too: columns 3..15, rows 6..18
    expected[np.eye(30, dtype=bool)] = 2  # drawn last: wins over the road and the car
    assert np.array_equal(got, expected)
    # The same polygon through PIL directly; drawn after the tree, the car wins over the tree's diagonal.
    canvas = PIL.Image.new("1", (width, height))
    PIL.ImageDraw.Draw(canvas).polygon(
        [(3.0, 6.0), (15.0, 6.0), (15.0, 18.0), (3.0, 18.0)], fill=1, outline=1
    )
    reversed_ = read_segmentation_labels(
        export_of(tasks_of(query), {3: [results[:0:-1]]}), class_names=CLASSES
    )
    assert np.array_equal(masks_of(reversed_)[3] == 1, np.asarray(canvas))


def test_several_answers_are_refused_or_resolved(tmp_path):
    query = write_query(tmp_path)
    tasks = tasks_of(query)
    accepted = tasks[0]["predictions"][0]["result"]
    changed = accepted + [brush("tree", np.ones((30, 30), dtype=bool), "all")]
    export = export_of(tasks, answers={3: [accepted, changed]})
    with pytest.raises(LabelError) as refused:
        read_segmentation_labels(export, class_names=CLASSES, query=query)
    assert ("1 images have several answers with different masks: Label Studio task 1 (item 0) (pool_index 3): "
            "annotation 100 by 1, annotation 101 by 2." in str(refused.value))  # fmt: skip
    assert "resolve=ground_truth|latest" in str(refused.value)
    # What `label-studio loop` says once and waits on, one line per image, as for class labels and boxes.
    assert isinstance(refused.value, AnswersDisagree) and len(refused.value.conflicts) == 1
    latest = read_segmentation_labels(export, class_names=CLASSES, resolve="latest")
    assert (masks_of(latest)[3] == 2).all() and latest.details["resolution"][0] == "latest"
    with pytest.raises(LabelError, match="No annotation .* is marked ground truth there"):
        read_segmentation_labels(export, class_names=CLASSES, resolve="ground_truth")
    export[0]["annotations"][0]["ground_truth"] = True
    truth = read_segmentation_labels(export, class_names=CLASSES, resolve="ground_truth")
    assert np.array_equal(masks_of(truth)[3], predicted_mask(3)) and truth.details["annotation_id"][0] == 100
    with pytest.raises(LabelError, match=r"resolve must be one of \['ground_truth', 'latest'\] for masks"):
        read_segmentation_labels(export, class_names=CLASSES, resolve="majority")
    same = read_segmentation_labels(export_of(tasks, {3: [accepted, accepted]}), class_names=CLASSES)
    assert same.details["resolution"][0] == "agreed" and same.details["num_answers"][0] == 2


def _one_region(tmp_path, query, change):
    tasks = tasks_of(query)
    result = copy.deepcopy(tasks[0]["predictions"][0]["result"][:1])  # pool index 3, 30x30
    change(result)
    return save(tmp_path, export_of(tasks, answers={3: [result]}))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r[0]["value"].update(brushlabels=["sky"]),
         r"task 1 \(item 0\) \(pool_index 3\), annotation 100, region 0: unknown class name 'sky'\. Valid names"),
        (lambda r: r[0].update(original_width=60, original_height=60),
         r"region 0: the region was drawn on a 60x60 image, but the pool image is 30x30: the task shows another"),
        (lambda r: r[0]["value"].update(rle=encode_brush_rle(np.ones((30, 31)))),
         r"region 0: the RLE holds 3720 values, but a 30x30 image has 3600 \(RGBA\)"),
        (lambda r: r[0]["value"].update(brushlabels=["road", "car"]),
         r"region 0: the region has several classes \['road', 'car'\]; give every stroke or polygon exactly one"),
        (lambda r: r[0].update(type="rectanglelabels"),
         r"a rectanglelabels result \('label'\) is not a mask\. Semantic segmentation reads BrushLabels and "),
        (lambda r: r[0].update(image_rotation=90),
         r"region 0: drawn on the image turned by 90 degrees"),
        (lambda r: r.append(polygon("car", [[1, 1], [5, 5]], (30, 30))),
         r"region 1: the polygon's points \[\[1, 1\], \[5, 5\]\] are not 3 or more \[x, y\] percents"),
        (lambda r: r[0]["value"].update(format="png"),
         r"a brush result of format 'png' without `rle`"),
    ],
    ids=["unknown-class", "other-size", "rle-size", "two-classes", "rectangle", "rotated", "short-polygon", "format"],
)  # fmt: skip
def test_refused_regions_name_pool_index_value_and_fix(tmp_path, change, message):
    query = write_query(tmp_path)
    with pytest.raises(LabelError, match=message):
        read_segmentation_labels(_one_region(tmp_path, query, change), class_names=CLASSES, query=query)


def test_refused_sources_and_tasks(tmp_path):
    query = write_query(tmp_path)
    export = export_of(tasks_of(query))
    with pytest.raises(LabelError, match=r"Label Studio task 1 \(item 0\) has no data.pool_index"):
        read_segmentation_labels([{**export[0], "data": {"image": "x.png"}}], class_names=CLASSES)
    with pytest.raises(
        LabelError, match=r"pool index 3 is labeled twice \(Label Studio task 1 \(item 0\) and "
    ):
        read_segmentation_labels(export + [{**export[0], "id": 9}], class_names=CLASSES)
    with pytest.raises(LabelError, match=r"pool index 3 is out of range; the pool has 2 images"):
        read_segmentation_labels(export, class_names=CLASSES, dataset=segmentation_pool().select(range(2)))
    with pytest.raises(LabelError, match=r"not a Label Studio JSON export .* export JSON"):
        read_segmentation_labels([{"pool_index": 3, "label": []}], class_names=CLASSES)  # JSON_MIN
    with pytest.raises(LabelError, match=r"Label file .*missing.json not found"):
        read_segmentation_labels(tmp_path / "missing.json", class_names=CLASSES)
    empty = export_of(tasks_of(query), {3: [[]]})
    with pytest.raises(LabelError, match=r"an answer without regions, and no image size: pass query="):
        read_segmentation_labels(empty, class_names=CLASSES)
    # With the pool the size is known: an empty answer is a mask of 255 (nothing labeled) at the image's size.
    assert masks_of(read_segmentation_labels(empty, class_names=CLASSES, dataset=segmentation_pool()))[
        3
    ].shape == (30, 30)


# ----- a folder of mask images -----


def test_mask_folder_is_matched_to_the_query_by_file_name(tmp_path):
    query = write_query(tmp_path, predictions=False)
    for index in (3, 2):
        palette = PIL.Image.fromarray(predicted_mask(index).astype(np.uint8), mode="L").convert("P")
        palette.save(query / "masks" / f"{index}.png")  # a paint tool's palette PNG: read by index
    labels = read_segmentation_labels(query, class_names=CLASSES)  # pool index 0 is still the template
    assert labels.pool_indices.tolist() == [2, 3] and labels.skipped.tolist() == []
    for index, mask in masks_of(labels).items():
        assert np.array_equal(mask, predicted_mask(index))
    assert labels.places == ["masks/2.png", "masks/3.png"] and labels.references[0] == {"file_name": "2.png"}
    # The folder elsewhere, with the query named; another suffix of the same name is the same mask.
    (tmp_path / "filled").mkdir()
    PIL.Image.fromarray(predicted_mask(0).astype(np.uint8)).save(tmp_path / "filled" / "0.bmp")
    labels = read_segmentation_labels(tmp_path / "filled", class_names=CLASSES, query=query)
    assert np.array_equal(masks_of(labels)[0], predicted_mask(0))
    with pytest.raises(LabelError, match=r"matched to its query by file name: pass query="):
        read_segmentation_labels(tmp_path / "filled", class_names=CLASSES)
    PIL.Image.new("L", (40, 30), 1).save(tmp_path / "filled" / "7.png")
    with pytest.raises(
        LabelError, match=r"filled/7.png is no image of the query .* Name each mask as the query's"
    ):
        read_segmentation_labels(tmp_path / "filled", class_names=CLASSES, query=query)


@pytest.mark.parametrize(
    "mask, message",
    [
        (
            PIL.Image.new("L", (40, 31), 1),
            r"masks/0.png \(pool_index 0\): the mask is 40x31, its image 40x30",
        ),
        (PIL.Image.new("L", (40, 30), 3), r"mask value \[3\] is neither a class id in \[0, 3\) nor 255"),
        (PIL.Image.new("RGB", (40, 30), (200, 10, 10)), r"the mask is an RGB color image .* pass `palette`"),
    ],
    ids=["size", "value", "colors"],
)
def test_refused_mask_files(tmp_path, mask, message):
    query = write_query(tmp_path, predictions=False)
    mask.save(query / "masks" / "0.png")
    with pytest.raises(LabelError, match=message):
        read_segmentation_labels(query, class_names=CLASSES)


def test_self_contained_examples_run():
    import doctest
    import inspect

    import prunefuse_hf.tasks.segmentation_brush as brush_module
    import prunefuse_hf.tasks.segmentation_labels as labels_module

    for module, obj in [(brush_module, encode_brush_rle), (brush_module, decode_brush_rle),
                        (brush_module, segmentation_label_studio_config), (brush_module, segmentation_prediction),
                        (labels_module, SegmentationLabels)]:  # fmt: skip
        doc = "\n".join(
            "" if line.strip().startswith("```") else line for line in inspect.getdoc(obj).splitlines()
        )
        test = doctest.DocTestParser().get_doctest(doc, dict(vars(module)), obj.__name__, None, 0)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        runner.run(test)
        assert test.examples and runner.failures == 0, obj.__name__


# ----- a real Label Studio server -----


def test_label_studio_server_shows_brush_predictions_and_exports_masks_read_back(label_studio, tmp_path):
    from prunefuse_hf.annotation.label_studio_api import LabelStudioClient

    server = label_studio
    query = write_query(tmp_path)
    client = LabelStudioClient(server.url, token=server.token)
    config = (query / "label_studio_config.xml").read_text()
    project = client.post("/api/projects", {"title": "PruneFuse masks", "label_config": config})["id"]
    client.post(f"/api/projects/{project}/import", tasks_of(query))
    by_index = {t["data"]["pool_index"]: t for t in client.tasks(project)}
    assert sorted(by_index) == sorted(QUERIED)
    for index, task in by_index.items():  # the surrogate's masks are on the server, as brush RLE
        (prediction,) = client.get(f"/api/tasks/{task['id']}")["predictions"]
        assert prediction["model_version"] == "run-surrogate-round1"
        for k, result in enumerate(prediction["result"]):
            assert result["value"]["brushlabels"] == [CLASSES[k]]
            assert np.array_equal(
                decode_brush_rle(result["value"]["rle"], *SIZES[index]), predicted_mask(index) == k
            )

    # Annotators: one accepts 3's masks, one paints 0 and outlines a car on it, 2 is skipped.
    users = [server.user(email) for email in ("mask1@example.com", "mask2@example.com")]
    accepted = client.get(f"/api/tasks/{by_index[3]['id']}")["predictions"][0]["result"]
    width, height = SIZES[0]
    rng = np.random.default_rng(7)
    painted = rng.random((height, width)) < 0.3
    outlined = [[25.0, 10.0], [75.0, 10.0], [50.0, 90.0]]
    drawn = [brush("tree", painted, "s1"), polygon("car", outlined, (width, height), "s2")]
    for index, user, result in ((3, users[0], accepted), (0, users[1], drawn)):
        client.post(f"/api/tasks/{by_index[index]['id']}/annotations",
                    {"completed_by": user, "result": result, "lead_time": 2.0})  # fmt: skip
    client.request("POST", f"/api/tasks/{by_index[2]['id']}/annotations", params={"was_cancelled": 1},
                   json={"completed_by": users[1], "result": [], "was_cancelled": True, "lead_time": 1.0})  # fmt: skip
    answer = client.request("GET", f"/api/projects/{project}/export",
                            params={"exportType": "JSON", "download_all_tasks": "false"})  # fmt: skip
    path = tmp_path / "export.json"
    path.write_bytes(answer.content)

    labels = read_segmentation_labels(path, class_names=CLASSES, query=query)
    got = masks_of(labels)
    assert sorted(got) == [0, 3] and labels.skipped.tolist() == [2]
    assert np.array_equal(got[3], predicted_mask(3))
    canvas = PIL.Image.new("1", (width, height))
    vertices = [(x / 100 * width, y / 100 * height) for x, y in outlined]
    PIL.ImageDraw.Draw(canvas).polygon(vertices, fill=1, outline=1)
    expected = np.full((height, width), 255)
    expected[painted] = 2
    expected[np.asarray(canvas)] = 1  # the polygon came second: it wins
    assert np.array_equal(got[0], expected)
    assert dict(zip(labels.pool_indices.tolist(), labels.details["annotator"])) == {
        3: str(users[0]),
        0: str(users[1]),
    }

    # Label Studio's own brush converter (its BRUSH_TO_PNG export: one alpha layer per region) sees the same pixels.
    answer = client.request("GET", f"/api/projects/{project}/export",
                            params={"exportType": "BRUSH_TO_PNG", "download_all_tasks": "false"})  # fmt: skip
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        layers = {name: np.asarray(PIL.Image.open(io.BytesIO(archive.read(name))))
                  for name in archive.namelist() if name.endswith(".png")}  # fmt: skip
    (tree,) = [
        layer for name, layer in layers.items() if f"task-{by_index[0]['id']}-" in name and "-tree-" in name
    ]
    assert np.array_equal(tree > 0, painted)
    for k, name in enumerate(CLASSES):
        (layer,) = [
            layer for n, layer in layers.items() if f"task-{by_index[3]['id']}-" in n and f"-{name}-" in n
        ]
        assert np.array_equal(layer > 0, predicted_mask(3) == k)


def test_surrogate_predictions_are_the_processors_post_processed_masks_at_each_image_size(tmp_path):
    from transformers import SegformerImageProcessorPil

    from conftest import segmentation_model

    model = segmentation_model("SegformerForSemanticSegmentation", num_labels=len(CLASSES)).train()
    processor = SegformerImageProcessorPil(size={"height": 32, "width": 32})
    pool = segmentation_pool()
    rng = np.random.default_rng(0)  # noise, so that the masks hold several classes
    images = [
        PIL.Image.fromarray(rng.integers(0, 256, (*SIZES[i][::-1], 3), dtype=np.uint8)) for i in QUERIED
    ]
    masks = segmentation_predictions(model, processor, images, batch_size=2)
    assert model.training  # given back as it came
    assert [mask.shape for mask in masks] == [SIZES[i][::-1] for i in QUERIED]
    model.eval()
    with torch.no_grad():
        outputs = model(**processor(images=images, return_tensors="pt"))
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[m.shape for m in masks])
    for mask, reference in zip(masks, expected):
        assert mask.dtype == np.uint8 and np.array_equal(mask, reference.numpy())
    assert len(np.unique(np.concatenate([mask.ravel() for mask in masks]))) > 1
    query = write_segmentation_query(
        tmp_path / "q", pool, QUERIED, class_names=CLASSES, round=1, predictions=masks
    )
    for task, mask in zip(tasks_of(query), masks):
        index = task["data"]["pool_index"]
        for result in task["predictions"][0]["result"]:
            k = CLASSES.index(result["value"]["brushlabels"][0])
            assert np.array_equal(decode_brush_rle(result["value"]["rle"], *SIZES[index]), mask == k)
