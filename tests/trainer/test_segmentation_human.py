"""People label masks in a segmentation run: `annotation="human"` stops at each round with the mask query (images,
empty mask templates, a Label Studio BrushLabels import, the surrogate's masks as brush predictions from round 2), the
masks come back from a painted folder and from a real Label Studio server, are stored in the run (`labeled_masks/`)
and checked against the images, the fused segmenter is trained on them, and the subset carries them; bad answers are
refused before anything is stored."""

import json

import datasets
import numpy as np
import pytest
import torch
import yaml

from prunefuse_hf import PruneFuseTrainer
from prunefuse_hf.annotation.labels import LabelError
from prunefuse_hf.hub import load_subset, save_subset
from prunefuse_hf.tasks import (
    SEGMENTATION,
    decode_brush_rle,
    open_mask,
    segmentation_prediction,
    write_segmentation_query,
)
from segmentation_human_run import (
    INITIAL,
    QUERY,
    filled_masks,
    human_config,
    human_pools,
    stored_masks,
    tiny_segformer,
)


@pytest.fixture(scope="module")
def pools():
    return human_pools()


@pytest.mark.slow  # about 35 s: two rounds and the final training beside a Label Studio server
def test_two_rounds_painted_then_label_studio_train_the_fused_segmenter_and_the_subset_carries_the_masks(
    tmp_path, pools, label_studio
):
    from prunefuse_hf.annotation.label_studio_api import LabelStudioClient, pull_export, push_query

    pool, test, names, truth = pools
    run = tmp_path / "run"
    trainer = PruneFuseTrainer(
        tiny_segformer(len(names)), args=human_config(tmp_path, names), train_dataset=pool, eval_dataset=test
    )
    trainer.train()
    assert trainer.awaiting_labels == 1 and not trainer.done
    query = run / "queries" / "round_1"
    assert "BrushLabels" in (query / "label_studio_config.xml").read_text()
    first = json.loads((query / "label_studio_tasks.json").read_text())
    assert len(first) == INITIAL and all("predictions" not in task for task in first)  # no surrogate yet
    templates = sorted((query / "masks").iterdir())
    assert len(templates) == INITIAL and all((open_mask(p) == 255).all() for p in templates)

    result = trainer.add_labels(filled_masks(query, truth, tmp_path / "painted_1"))
    assert result.added == INITIAL
    stored = stored_masks(run)
    assert sorted(stored) == sorted(t["data"]["pool_index"] for t in first)
    assert all(np.array_equal(stored[i], truth[i]) for i in stored)

    trainer.train(resume_from_checkpoint=True)
    assert trainer.awaiting_labels == 2
    second = run / "queries" / "round_2"
    tasks = json.loads((second / "label_studio_tasks.json").read_text())
    assert len(tasks) == QUERY and not {t["data"]["pool_index"] for t in tasks} & set(stored)
    # The round-1 surrogate's masks ride along as brush predictions covering every pixel of the image.
    for task in tasks:
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "run-surrogate-round1"
        assert {r["type"] for r in prediction["result"]} == {"brushlabels"}
        covered = sum(decode_brush_rle(r["value"]["rle"], 32, 32).astype(int) for r in prediction["result"])
        assert (covered == 1).all()

    # Round 2 through a real Label Studio: push the BrushLabels project, an annotator paints the true masks (one
    # brush region per class) on all images but one, which is skipped; pull.
    server = label_studio
    pushed = push_query(run, url=server.url, token=server.token)
    assert pushed["imported"] == QUERY
    client = LabelStudioClient(server.url, token=server.token)
    assert "BrushLabels" in client.get(f"/api/projects/{pushed['project']}")["label_config"]
    user = server.user("masks@example.com")
    expected = {i: truth[i] for i in stored}
    skipped = min(client.tasks(pushed["project"]), key=lambda t: t["id"])
    for task in client.tasks(pushed["project"]):
        index = task["data"]["pool_index"]
        if task["id"] == skipped["id"]:
            client.request("POST", f"/api/tasks/{task['id']}/annotations", params={"was_cancelled": 1},
                           json={"completed_by": user, "result": [], "was_cancelled": True})  # fmt: skip
            continue
        painted = segmentation_prediction(truth[index], names)["result"]
        client.post(f"/api/tasks/{task['id']}/annotations", {"completed_by": user, "result": painted})
        expected[index] = truth[index]
    export = pull_export(run, url=server.url, token=server.token)
    result = trainer.add_labels(export)
    assert result.added == QUERY - 1 and result.skipped.tolist() == [skipped["data"]["pool_index"]]

    used = []
    labeled_rows = trainer.examples.labeled_rows

    def recording(indices):  # what the trainings of round 2 (surrogate and fused segmenter) train on
        rows = labeled_rows(indices)
        used.append({i: open_mask(np.asarray(m)) for i, m in zip(indices, rows["label"])})
        return rows

    trainer.examples.labeled_rows = recording
    trainer.train(resume_from_checkpoint=True)
    assert trainer.done
    stored = stored_masks(run)
    assert sorted(stored) == sorted(expected) and all(
        np.array_equal(stored[i], expected[i]) for i in expected
    )
    assert used and sorted(used[-1]) == sorted(
        stored
    )  # the fused segmenter trained on exactly the stored masks
    assert all(np.array_equal(used[-1][i], stored[i]) for i in stored)
    index = datasets.Dataset.from_parquet(str(run / "labeled_masks.parquet"))
    assert set(index["annotator"]) == {
        None,
        "masks@example.com",
    }  # a folder names nobody; Label Studio who painted
    assert sorted(p.name for p in (run / "labeled_masks").iterdir()) == sorted(
        name.split("/")[1] for name in index["mask_file"]
    )
    dense_init = SEGMENTATION.model_class().from_pretrained(run / "dense_init")
    fused = SEGMENTATION.model_class().from_pretrained(run / "fused")
    assert any(not torch.equal(a, b) for a, b in zip(dense_init.parameters(), fused.parameters()))
    assert trainer.metrics["final"]["labeled"] == INITIAL + QUERY - 1  # the skipped image is not labeled

    # The subset carries people's masks: in selection.parquet, the examples, and load_subset's rows.
    folder = save_subset(run, tmp_path / "subset", pool=pool, include_examples=True)
    card = (folder / "README.md").read_text()
    assert yaml.safe_load(card.split("---\n")[1])["task_categories"] == ["image-segmentation"]
    assert "`label` (the annotations people gave for the image; empty for an image they skipped)" in card
    selection = datasets.load_dataset(str(folder), split="train")
    assert isinstance(selection.features["label"], datasets.Image)
    assert "label_name" not in selection.column_names  # classification's class-id columns are gone
    for row in selection:
        mask = row["label"]
        assert (mask is None) == (row["pool_index"] == skipped["data"]["pool_index"])
        assert mask is None or np.array_equal(np.asarray(mask), truth[row["pool_index"]])
    examples = datasets.load_dataset(str(folder), "examples", split="train")
    for row, index in zip(examples, selection["pool_index"]):
        assert row["label"] is None or np.array_equal(np.asarray(row["label"]), truth[index])
    rows = load_subset(folder, source=pool)
    assert rows["pool_index"] == selection["pool_index"]
    assert sum(row["label"] is not None for row in rows) == INITIAL + QUERY - 1


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, pools):
    """A human segmentation run stopped at its first query (refused answers leave it as it is)."""
    pool, test, names, _ = pools
    tmp_path = tmp_path_factory.mktemp("stopped")
    trainer = PruneFuseTrainer(
        tiny_segformer(len(names)), args=human_config(tmp_path, names), train_dataset=pool, eval_dataset=test
    )
    trainer.train()
    return trainer, tmp_path / "run" / "queries" / "round_1"


def _smaller(masks):
    name = sorted(masks)[0]
    masks[name] = masks[name][:20, :30]


def _unknown_class(masks):
    masks[sorted(masks)[1]][0, 0] = 9


def _template_left(masks):
    for name in sorted(masks)[:4]:
        masks[name][:] = 255


@pytest.mark.parametrize(
    "change, message",
    [
        (_smaller, r"painted, painted/\d+\.png \(pool_index \d+\): the mask is 30x20, its image 32x32"),
        (_unknown_class, r"painted, painted/\d+\.png \(pool_index \d+\): mask value \[9\] is neither a class id in "
                         r"\[0, 4\) nor 255"),
        (_template_left, r"4 of the 6 images queried in round 1 have no masks.*template as written.*allow_partial"),
    ],
)  # fmt: skip
def test_refused_masks_name_file_image_value_and_fix_and_store_nothing(
    stopped, pools, tmp_path, change, message
):
    trainer, query = stopped
    run = query.parents[1]
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(LabelError, match=message):
        trainer.add_labels(filled_masks(query, pools[3], tmp_path / "painted", change))
    assert sorted(p.name for p in run.iterdir()) == before  # no labeled_masks.parquet, no labeled_masks/


def test_an_export_of_another_runs_images_is_refused(stopped, pools, tmp_path):
    trainer, query = stopped
    pool, _, names, truth = pools
    indices = trainer.progress["queries"]["1"]["pool_indices"]
    other_pool = pool.map(lambda row: {"image": row["image"].transpose(0)})  # same sizes, other pixels
    other = write_segmentation_query(tmp_path / "other", other_pool, indices, class_names=names, round=1)
    tasks = json.loads((other / "label_studio_tasks.json").read_text())
    for task in tasks:  # annotated in another project: same pool indices, other images
        index = task["data"]["pool_index"]
        result = segmentation_prediction(truth[index], names)["result"]
        task["annotations"] = [{"id": index + 1, "result": result, "completed_by": 1}]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    with pytest.raises(LabelError, match=r"export\.json: 6 labels refer to other images than this run's query.*"
                                         r"an image \(its data: URI\) with other pixels"):  # fmt: skip
        trainer.add_labels(export)
    with pytest.raises(LabelError, match="a majority of masks is not defined"):
        trainer.add_labels(export, resolve="majority")
    assert not (query.parents[1] / "labeled_masks.parquet").exists()


def test_settings_refused_before_any_work(tmp_path, pools):
    pool, test, names, _ = pools
    model = tiny_segformer(len(names))
    with pytest.raises(ValueError, match=r"class_names: None.*no 'label' column.*Set class_names"):
        PruneFuseTrainer(model, args=human_config(tmp_path, None), train_dataset=pool)
    with pytest.raises(
        ValueError, match=r"annotation_resolve: 'majority' is for image classification runs.*latest"
    ):
        PruneFuseTrainer(
            model, args=human_config(tmp_path, names, annotation_resolve="majority"), train_dataset=pool
        )
    with pytest.raises(
        ValueError, match=r"evaluation set.*label"
    ):  # the evaluation set still needs its masks
        PruneFuseTrainer(model, args=human_config(tmp_path, names), train_dataset=pool, eval_dataset=pool)
    assert not (tmp_path / "run").exists()


def test_class_names_come_from_the_models_id2label_when_not_given(tmp_path, pools):
    pool, _, names, _ = pools
    model = tiny_segformer(len(names))
    model.id2label = dict(enumerate(names))
    trainer = PruneFuseTrainer(model, args=human_config(tmp_path, None), train_dataset=pool)
    assert trainer.class_names == names


def test_with_reduce_labels_people_paint_the_reduced_ids_and_the_run_trains_on_them_as_painted(
    tmp_path, pools
):
    pool, _, names, truth = pools
    # reduce_labels: 0 is a background that is no class; the run's classes (and the query's) are the others.
    reduced = [np.where(mask == 0, 255, mask - 1).astype(np.uint8) for mask in truth]
    args = human_config(tmp_path, names[1:], reduce_labels=True)
    trainer = PruneFuseTrainer(tiny_segformer(len(names) - 1), args=args, train_dataset=pool)
    trainer.train()
    query = tmp_path / "run" / "queries" / "round_1"
    assert trainer.add_labels(filled_masks(query, reduced, tmp_path / "painted")).added == INITIAL
    indices = trainer.progress["queries"]["1"]["pool_indices"]
    prepared = trainer.examples.train_dataset(np.asarray(indices))
    for k, index in enumerate(indices):  # 32 x 32 images at image_size 32: the labels are the painted ids
        assert np.array_equal(prepared[k]["labels"].numpy(), reduced[index])
    assert set(trainer.examples.class_counts(np.asarray(indices))) <= set(names[1:])
