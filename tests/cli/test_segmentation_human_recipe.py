"""The semantic-segmentation recipe with `--annotation human`, through the CLI: the run stops at each query for masks,
`prunefuse-hf label` brings a folder of painted masks (and refuses a mask holding a value that is no class, naming the
file and the value), round 2 goes through `label-studio push` and `pull` against a real Label Studio server, and
`run --resume` trains on the stored masks, to a fused segmenter."""

import json
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest

from prunefuse_hf.cli.main import main
from prunefuse_hf.tasks import open_mask, segmentation_prediction

RECIPE = Path(__file__).parents[2] / "recipes" / "synthetic-segmentation-segformer" / "prunefuse.yaml"
NUM_CLASSES = 11


def _painted(query: Path, out: Path) -> dict:
    """The query's mask templates painted: the whole image of class (pool index modulo 11), a 255 corner left."""
    out.mkdir()
    rows = [line.split(",") for line in (query / "labels.csv").read_text().splitlines()[1:]]
    given = {}
    for index, _, mask_file, width, height in rows:
        mask = np.full((int(height), int(width)), int(index) % NUM_CLASSES, dtype=np.uint8)
        mask[:4, :4] = 255
        PIL.Image.fromarray(mask, mode="L").save(out / mask_file)
        given[int(index)] = mask
    return given


def _stored(run: Path) -> dict:
    rows = datasets.Dataset.from_parquet(str(run / "labeled_masks.parquet"))
    return {i: open_mask(run / name) for i, name in zip(rows["pool_index"], rows["mask_file"])}


@pytest.mark.slow  # about 65 s: three CLI runs of the recipe beside a Label Studio server
def test_label_a_folder_then_label_studio_and_resume_through_the_cli(
    tmp_path, capsys, monkeypatch, label_studio
):
    from prunefuse_hf.annotation.label_studio_api import LabelStudioClient, project_record

    run = tmp_path / "run"
    argv = ["run", "--config", str(RECIPE), "--output_dir", str(run), "--annotation", "human", "--max_pool_size", "16",
            "--max_eval_samples", "4", "--image_size", "32", "--initial_labeled_size", "4", "--query_size", "3",
            "--num_rounds", "1", "--num_train_epochs", "1", "--disable_tqdm", "true"]  # fmt: skip
    assert main(argv) == 0
    query = run / "queries" / "round_1"
    captured = capsys.readouterr()
    files = "dataset/, masks/ (mask templates to paint), labels.csv, label_studio_tasks.json"
    assert f"label the 4 images in {query} ({files}), then:" in captured.out
    assert f"images to label for round 1: {query} ({files})" in captured.err
    given = _painted(query, tmp_path / "painted")
    # A mask holding a value that is no class id is refused, named, and nothing is stored.
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in (tmp_path / "painted").iterdir():
        (bad / path.name).write_bytes(path.read_bytes())
    first = sorted(bad.iterdir())[0]
    mask = open_mask(first).astype(np.uint8)
    mask[10, 10] = 50
    PIL.Image.fromarray(mask, mode="L").save(first)
    assert main(["label", str(run), "--labels", str(bad)]) == 2
    error = capsys.readouterr().err
    assert f"bad/{first.name}" in error and "mask value [50]" in error and "paint with class ids" in error
    assert not (run / "labeled_masks.parquet").exists() and not (run / "labeled_masks").exists()
    assert main(["label", str(run), "--labels", str(tmp_path / "painted")]) == 0
    assert "4 labels added" in capsys.readouterr().out

    # Round 2 through Label Studio: push, paint every task's mask there, pull.
    assert main(argv + ["--resume"]) == 0
    capsys.readouterr()
    server = label_studio
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    assert main(["label-studio", "push", str(run), "--url", server.url]) == 0
    assert "round 2: 3 tasks imported" in capsys.readouterr().out
    client = LabelStudioClient(server.url, token=server.token)
    project = project_record(run)["project"]
    names = json.loads((run / "state.json").read_text())["class_names"]
    user = server.user("painter@example.com")
    for task in client.tasks(project):
        if task["data"]["round"] != 2:
            continue
        index = task["data"]["pool_index"]
        image = PIL.Image.open(run / "queries" / "round_2" / "images" / task["data"]["file_name"])
        mask = np.full((image.height, image.width), (index * 7) % NUM_CLASSES, dtype=np.uint8)
        mask[: image.height // 2] = 1
        result = segmentation_prediction(mask, names)["result"]
        client.post(f"/api/tasks/{task['id']}/annotations", {"completed_by": user, "result": result})
        given[index] = mask
    assert main(["label-studio", "pull", str(run)]) == 0
    assert "3 labels added" in capsys.readouterr().out

    assert main(argv + ["--resume"]) == 0
    assert "final model: 7 labeled examples, mean_iou " in capsys.readouterr().out
    stored = _stored(run)
    assert sorted(stored) == sorted(given) and all(np.array_equal(stored[i], given[i]) for i in given)
    rows = datasets.Dataset.from_parquet(str(run / "labeled_masks.parquet"))
    assert sorted(set(rows["round"])) == [1, 2] and set(rows["annotator"]) == {None, "painter@example.com"}
    assert (run / "fused" / "config.json").is_file()
