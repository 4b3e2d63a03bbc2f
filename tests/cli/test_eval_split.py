"""An evaluation split is never the pool itself: a source that holds one split (a single saved `Dataset`, an image
folder with its masks, a COCO folder) is refused for `eval_split` before any work, for every task, and a sub-folder
per split (`train/`, `test/`) gives the two splits of an image or COCO folder."""

import json
from pathlib import Path

import numpy as np
import PIL.Image

from conftest import make_image_dataset, tiny_recipe
from prunefuse_hf.cli.main import main
from prunefuse_hf.tasks import load_detection_dataset, load_segmentation_dataset

RECIPES = Path(__file__).parents[2] / "recipes"
CLASSES = ["background", "thing"]


def _mask_folder(folder: Path, names) -> Path:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for name in names:
        PIL.Image.new("RGB", (8, 8)).save(folder / "images" / f"{name}.png")
        PIL.Image.fromarray(np.eye(8, dtype=np.uint8)).save(folder / "masks" / f"{name}.png")
    (folder / "id2label.json").write_text(json.dumps(dict(enumerate(CLASSES))))
    return folder


def _coco_folder(folder: Path, names) -> Path:
    folder.mkdir(parents=True)
    images = [{"id": k, "file_name": f"{name}.png", "width": 8, "height": 8} for k, name in enumerate(names)]
    for image in images:
        PIL.Image.new("RGB", (8, 8)).save(folder / image["file_name"])
    boxes = [{"id": k, "image_id": k, "category_id": 1, "bbox": [1, 1, 4, 4]} for k in range(len(names))]
    coco = {"images": images, "annotations": boxes, "categories": [{"id": 1, "name": "thing"}]}
    (folder / "annotations.json").write_text(json.dumps(coco))
    return folder


def _refused(capsys, argv, run_dir):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "eval_split: 'test'" in err and "gives the same rows as train_split 'train'" in err, err
    assert "eval_split: null" in err and "Traceback" not in err
    assert not run_dir.exists()


def test_a_single_saved_dataset_is_not_its_own_evaluation_set(tmp_path, capsys):
    make_image_dataset(num_examples=24, num_classes=4, seed=1).save_to_disk(tmp_path / "pool")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_recipe(tmp_path / "pool").replace("eval_split: null", "eval_split: test"))
    run_dir = tmp_path / "run"
    _refused(capsys, ["run", "--config", str(recipe), "--output_dir", str(run_dir)], run_dir)


def test_a_mask_folder_is_not_its_own_evaluation_set(tmp_path, capsys):
    folder = _mask_folder(tmp_path / "masks", ["a", "b", "c"])
    run_dir = tmp_path / "run"
    argv = ["run", "--config", str(RECIPES / "synthetic-segmentation-segformer" / "prunefuse.yaml"),
            "--dataset_name", str(folder), "--output_dir", str(run_dir)]  # fmt: skip
    _refused(capsys, argv, run_dir)


def test_a_coco_folder_is_not_its_own_evaluation_set(tmp_path, capsys):
    folder = _coco_folder(tmp_path / "boxes", ["a", "b", "c"])
    run_dir = tmp_path / "run"
    argv = ["run", "--config", str(RECIPES / "synthetic-detection-detr" / "prunefuse.yaml"),
            "--dataset_name", str(folder), "--output_dir", str(run_dir)]  # fmt: skip
    _refused(capsys, argv, run_dir)


def test_split_sub_folders_give_the_two_splits_of_image_and_coco_folders(tmp_path):
    _mask_folder(tmp_path / "masks" / "train", ["a", "b", "c"])
    _mask_folder(tmp_path / "masks" / "test", ["x", "y"])
    assert load_segmentation_dataset(str(tmp_path / "masks"), "train")["file_name"] == [
        "a.png",
        "b.png",
        "c.png",
    ]
    assert load_segmentation_dataset(str(tmp_path / "masks"), "test")["file_name"] == ["x.png", "y.png"]
    _coco_folder(tmp_path / "boxes" / "train", ["a", "b", "c"])
    _coco_folder(tmp_path / "boxes" / "test", ["x", "y"])
    assert load_detection_dataset(str(tmp_path / "boxes"), "train")["file_name"] == [
        "a.png",
        "b.png",
        "c.png",
    ]
    assert load_detection_dataset(str(tmp_path / "boxes"), "test")["file_name"] == ["x.png", "y.png"]
