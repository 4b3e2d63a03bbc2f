"""The object-detection recipe with `--annotation human`, through the CLI: the run stops at each query for boxes,
`prunefuse-hf label` brings a filled-in COCO file (and refuses a box outside its image, naming it), `run --resume`
trains on the stored boxes, to a fused detector."""

import json
from pathlib import Path

import datasets

from prunefuse_hf.cli.main import main

RECIPE = Path(__file__).parents[2] / "recipes" / "synthetic-detection-detr" / "prunefuse.yaml"


def _filled(query: Path, out: Path) -> tuple[Path, dict]:
    """The query's COCO template with one box per image (its class: the pool index modulo 3)."""
    coco = json.loads((query / "annotations.json").read_text())
    given = {}
    for k, image in enumerate(coco["images"]):
        box = [4.0, 6.0, image["width"] / 2, image["height"] / 3]
        coco["annotations"].append({"id": k + 1, "image_id": image["id"], "bbox": box,
                                    "category_id": image["pool_index"] % 3, "area": box[2] * box[3], "iscrowd": 0})  # fmt: skip
        given[image["pool_index"]] = {"bbox": [box], "category": [image["pool_index"] % 3]}
    out.write_text(json.dumps(coco))
    return out, given


def test_label_and_resume_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["run", "--config", str(RECIPE), "--output_dir", str(run), "--annotation", "human", "--max_pool_size", "24",
            "--max_eval_samples", "6", "--image_size", "48", "--initial_labeled_size", "6", "--query_size", "4",
            "--num_rounds", "1", "--num_train_epochs", "1", "--disable_tqdm", "true"]  # fmt: skip
    given = {}
    for round_ in (1, 2):
        assert main(argv + (["--resume"] if round_ > 1 else [])) == 0
        query = run / "queries" / f"round_{round_}"
        captured = capsys.readouterr()
        out = captured.out
        assert str(query) in out and "--resume" in out
        # The printed line and the run's log name the file a COCO tool fills in.
        files = "dataset/, annotations.json (COCO template to fill in), labels.csv, label_studio_tasks.json"
        assert f"label the {6 if round_ == 1 else 4} images in {query} ({files}), then:" in out
        assert f"images to label for round {round_}: {query} ({files})" in captured.err
        tasks = json.loads((query / "label_studio_tasks.json").read_text())
        assert all(("predictions" in task) == (round_ > 1) for task in tasks)
        path, boxes = _filled(query, tmp_path / f"boxes_{round_}.json")
        if round_ == 1:  # a box past its image is refused, named, and nothing is stored
            coco = json.loads(path.read_text())
            coco["annotations"][0]["bbox"][0] = 500.0
            bad = tmp_path / "bad.json"
            bad.write_text(json.dumps(coco))
            assert main(["label", str(run), "--labels", str(bad)]) == 2
            error = capsys.readouterr().err
            assert "bad.json" in error and "500.0" in error and "Fix the boxes" in error
            assert not (run / "labeled_objects.parquet").exists()
        assert main(["label", str(run), "--labels", str(path)]) == 0
        assert f"{len(boxes)} labels added" in capsys.readouterr().out
        given.update(boxes)
    assert main(argv + ["--resume"]) == 0
    assert "final model: 10 labeled examples, map " in capsys.readouterr().out
    rows = datasets.Dataset.from_parquet(str(run / "labeled_objects.parquet"))
    assert dict(zip(rows["pool_index"], rows["objects"])) == given
    assert sorted(set(rows["round"])) == [1, 2]
    assert (run / "fused" / "config.json").is_file()
