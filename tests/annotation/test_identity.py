"""Labels land on the image the annotator saw: a query records what each queried image is; `prunefuse-hf label`,
`label-studio pull` (through the same ingest) and `run --resume` refuse a pool that changed under the query, and
label files whose rows refer to other images than the query's, naming the pool index and both images."""

import base64
import io
import json
import re
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image as PILImage

from conftest import make_image_dataset, snapshot, unlabeled_image_folder
from prunefuse_hf.annotation.identity import check_references, file_names, query_images
from prunefuse_hf.annotation.labels import LabelBatch, LabelError
from prunefuse_hf.annotation.readers import read_labels
from prunefuse_hf.cli.main import main
from prunefuse_hf.data.images import image_identities

CLASSES = ["circle", "cross", "square", "triangle"]


@pytest.fixture
def waiting(tmp_path, capsys):
    """`prunefuse-hf run` on an image folder, stopped at its first query (8 images); the labels a person gives."""
    truth = unlabeled_image_folder(tmp_path / "images", num_images=24)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""
model_config: {{model_type: resnet, num_channels: 3, embedding_size: 8, hidden_sizes: [8, 16], depths: [1, 1]}}
dataset_name: {tmp_path / "images"}
eval_split: null
annotation: human
class_names: {CLASSES}
initial_labeled_size: 8
query_size: 4
num_rounds: 1
num_train_epochs: 1
per_device_train_batch_size: 4
cache_pixels: false
disable_tqdm: true
output_dir: {tmp_path / "run"}
""")
    assert main(["run", "--config", str(recipe)]) == 0
    capsys.readouterr()
    run_dir = tmp_path / "run"
    template = (run_dir / "queries" / "round_1" / "labels.csv").read_text().splitlines()[1:]
    rows = [line.split(",")[:2] for line in template]
    labeled = tmp_path / "labels.csv"
    labeled.write_text(
        "pool_index,file_name,label\n" + "".join(f"{i},{name},{CLASSES[truth[name]]}\n" for i, name in rows)
    )
    return run_dir, recipe, labeled, [int(i) for i, _ in rows], tmp_path / "images"


def _change(images: Path, change: str, queried: list[int]) -> None:
    files = sorted(images.iterdir())
    if (
        change == "replaced"
    ):  # one image removed before the queried ones and another added: same size, shifted
        files[0].unlink()
        shutil.copy(files[-1], images / "img_999.png")
        (images / "img_999.png").write_bytes(_other_png())
    elif change == "shrank":
        files[0].unlink()
    elif change == "grew_at_the_end":  # every queried row is the same image, but the pool is not the run's
        (images / "zzz_new.png").write_bytes(_other_png())
    elif change == "reordered":  # two queried files swap their names
        a, b = files[queried[0]], files[queried[1]]
        a.rename(images / "tmp.png")
        b.rename(a)
        (images / "tmp.png").rename(b)


def _other_png() -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


CHANGES = {
    "replaced": r"pool index \d+ was '.*img_0\d\d\.png' when annotators were shown it, now it is '.*img_0\d\d\.png'",
    "shrank": r"the pool has 23 images now, the run's had 24",
    "grew_at_the_end": r"the pool has 25 images now, the run's had 24",
    "reordered": r"pool index \d+ was '.*img_0\d\d\.png' when annotators were shown it, that file now holds other",
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_label_refuses_labels_for_a_pool_that_changed_under_the_query(waiting, capsys, change):
    run_dir, recipe, labeled, queried, images = waiting
    _change(images, change, queried)
    before = snapshot(run_dir)
    assert main(["label", str(run_dir), "--labels", str(labeled)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(CHANGES[change], err), err
    assert "Restore the pool (its folder) as it was" in err and "start a new run" in err
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("change", list(CHANGES))
def test_resume_refuses_labels_ingested_before_the_pool_changed(waiting, capsys, change):
    run_dir, recipe, labeled, queried, images = waiting
    assert main(["label", str(run_dir), "--labels", str(labeled)]) == 0
    _change(images, change, queried)
    capsys.readouterr()
    assert main(["run", "--config", str(recipe), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"Cannot resume {run_dir}" in err
    assert re.search(CHANGES[change], err) or (
        change == "grew_at_the_end" and "it had 24 images, it has 25 now" in err
    ), err
    assert "Restore the pool (its folder) as it was" in err
    state = json.loads((run_dir / "state.json").read_text())
    assert "label:1" not in state["completed"]


def test_an_unchanged_pool_labels_and_resumes_and_the_labels_are_the_annotators(waiting, capsys):
    run_dir, recipe, labeled, queried, images = waiting
    assert main(["label", str(run_dir), "--labels", str(labeled)]) == 0
    assert main(["run", "--config", str(recipe), "--resume"]) == 0
    selection = json.loads((run_dir / "state.json").read_text())["queries"]["1"]
    truth = {line.split(",")[1]: line.split(",")[2] for line in labeled.read_text().splitlines()[1:]}
    assert [Path(p).name for p in selection["images"]["path"]] == selection["images"]["file_name"]
    assert set(selection["images"]["file_name"]) == set(truth)


def _export(run_dir: Path, labeled: Path, rotate: bool) -> list[dict]:
    """A Label Studio JSON export of the query's tasks, answered; `rotate` gives each task another task's image
    (an export of another project whose pool indices match this run's)."""
    tasks = json.loads((run_dir / "queries" / "round_1" / "label_studio_tasks.json").read_text())
    answers = {int(line.split(",")[0]): line.split(",")[2] for line in labeled.read_text().splitlines()[1:]}
    data = [dict(task["data"]) for task in tasks]
    if rotate:
        for task, other in zip(data, data[1:] + data[:1]):
            task.update({k: other[k] for k in ("image", "image_path", "file_name")})
    return [{"id": 100 + n, "data": d, "annotations": [{"id": n, "was_cancelled": False, "result": [
                {"from_name": "label", "to_name": "image", "type": "choices",
                 "value": {"choices": [answers[d["pool_index"]]]}}]}]}
            for n, d in enumerate(data)]  # fmt: skip


@pytest.mark.parametrize("reference", ["all", "file_name", "image_path", "image"])
def test_an_export_of_other_images_with_matching_pool_indices_is_refused(
    waiting, tmp_path, capsys, reference
):
    run_dir, recipe, labeled, queried, images = waiting
    export = _export(run_dir, labeled, rotate=True)
    if reference != "all":  # only one reference differs: each is checked on its own
        honest = _export(run_dir, labeled, rotate=False)
        for task, right in zip(export, honest):
            task["data"] = {**right["data"], reference: task["data"][reference]}
    path = tmp_path / "other_project.json"
    path.write_text(json.dumps(export))
    before = snapshot(run_dir)
    assert main(["label", str(run_dir), "--labels", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(path) in err, err
    assert re.search(r"Label Studio task 10\d \(item \d\) labels pool index \d+ and refers to", err), err
    assert re.search(
        r"but pool index \d+ of round 1's query is '.*img_0\d\d\.png' \(file_name 'img_0\d\d\.png'\)", err
    )
    assert {"all": "file_name 'img_", "file_name": "file_name 'img_", "image_path": "image_path '",
            "image": "an image (its data: URI) with other pixels"}[reference] in err  # fmt: skip
    assert snapshot(run_dir) == before
    # The export of this run's own tasks is accepted.
    path.write_text(json.dumps(_export(run_dir, labeled, rotate=False)))
    assert main(["label", str(run_dir), "--labels", str(path)]) == 0


def test_a_csv_whose_file_names_are_not_the_querys_is_refused(waiting, tmp_path, capsys):
    run_dir, recipe, labeled, queried, images = waiting
    lines = labeled.read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    names = [row[1] for row in rows]
    swapped = [[row[0], name, row[2]] for row, name in zip(rows, names[1:] + names[:1])]
    path = tmp_path / "swapped.csv"
    path.write_text(lines[0] + "\n" + "".join(",".join(row) + "\n" for row in swapped))
    assert main(["label", str(run_dir), "--labels", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(path))}: 8 labels refer to other images than this run's query: line 2 "
                     rf"labels pool index {rows[0][0]} and refers to file_name '{names[1]}'", err), err  # fmt: skip


def test_python_add_labels_checks_the_trainers_pool(tmp_path):
    from conftest import tiny_resnet_config
    from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer

    truth = unlabeled_image_folder(tmp_path / "images", num_images=20)
    pool = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "images"), split="train")
    args = PruneFuseConfig(output_dir=str(tmp_path / "run"), annotation="human", class_names=CLASSES,
                           initial_labeled_size=6, query_size=4, num_rounds=1, num_train_epochs=1,
                           per_device_train_batch_size=4, cache_pixels=False, disable_tqdm=True)  # fmt: skip
    trainer = PruneFuseTrainer(tiny_resnet_config(num_labels=4), args=args, train_dataset=pool)
    trainer.train()
    record = trainer.progress["queries"]["1"]
    rows = [(i, CLASSES[truth[n]]) for i, n in zip(record["pool_indices"], record["images"]["file_name"])]
    path = tmp_path / "labels.csv"
    path.write_text("pool_index,label\n" + "".join(f"{i},{y}\n" for i, y in rows))
    victim = Path(record["images"]["path"][2])
    victim.write_bytes(_other_png())  # the file annotators saw was replaced by another image
    with pytest.raises(
        LabelError, match=rf"pool index {rows[2][0]} was '{re.escape(str(victim))}' .*other pixels"
    ):
        trainer.add_labels(path)
    assert not (tmp_path / "run" / "labels.parquet").exists()


def test_query_images_and_references_of_a_saved_dataset_pool(tmp_path):
    """Images stored in the dataset (no file): the pixel digest is what identifies them; a data: URI of other
    pixels is refused even though the file names (`<pool_index>.png`) match."""
    pool = make_image_dataset(10, mode="RGB", seed=3)
    record = {"pool_indices": [4, 7], "images": query_images(pool, "image", [4, 7])}
    assert record["images"]["path"] == [None, None] and record["images"]["file_name"] == ["4.png", "7.png"]
    digests, _ = image_identities(pool, "image", [4, 7, 4])
    assert digests[0] == digests[2] == record["images"]["digest"][0] != digests[1]

    def uri(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    queries = {"1": record}
    ok = LabelBatch([4, 7], [0, 1], "x.json", references=[{"image": uri(pool[4]["image"]), "file_name": "4.png"},
                                                         {"image": uri(pool[7]["image"])}], places=["a", "b"])  # fmt: skip
    check_references(ok, queries, "run")
    other = LabelBatch([4], [0], "x.json", references=[{"image": uri(pool[5]["image"]), "file_name": "4.png"}],
                       places=["Label Studio task 9 (item 0)"])  # fmt: skip
    with pytest.raises(
        LabelError,
        match=r"x\.json: 1 labels .*task 9 .* pool index 4 and refers to an image .*"
        r"other pixels, but pool index 4 of round 1's query is '4\.png' \(an image",
    ):
        check_references(other, queries, "run")


def test_references_are_read_from_every_label_file_kind(tmp_path):
    frame = {
        "pool_index": [3, 5],
        "label": ["cat", ""],
        "file_name": ["a.png", "b.png"],
        "image_path": ["/p/a.png", "/p/b.png"],
    }
    datasets.Dataset.from_dict(frame).to_parquet(tmp_path / "l.parquet")
    datasets.Dataset.from_dict(frame).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "l.jsonl").write_text(
        "".join(json.dumps(dict(zip(frame, v))) + "\n" for v in zip(*frame.values()))
    )
    for source in ("l.parquet", "saved", "l.jsonl"):
        batch = read_labels(tmp_path / source, ["cat", "dog"])
        assert batch.pool_indices.tolist() == [3]  # a blank label is no label
        assert batch.references == [{"file_name": "a.png", "image_path": "/p/a.png"}], source


def test_file_names_are_unique_per_query():
    assert file_names([4, 9, 2], ["/a/x.png", "/b/x.png", None]) == ["4_x.png", "9_x.png", "2.png"]
