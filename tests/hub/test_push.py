"""Pushing a finished run to a local Hub (tests/hub_server.py) with the unmodified client libraries, and using
what was pushed the way a user would: `pipeline()` and `load_subset()` in a fresh Python process."""

import hashlib
import json
import os
import subprocess
import sys

import datasets
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from huggingface_hub import HfApi
from transformers import AutoConfig, AutoModelForImageClassification, ViTImageProcessorPil, pipeline

from conftest import assert_same_outputs, assert_states_equal, make_image_dataset, tiny_resnet_config
from hub_server import HubServer, serve_local_hub
from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer, PruningPlan, load_subset
from prunefuse_hf.arguments import DataArguments
from prunefuse_hf.cli.main import main
from prunefuse_hf.data.loading import load_run_datasets
from prunefuse_hf.hub.push import PushError, push_query_batch, push_run
from prunefuse_hf.hub.subset import save_subset

MODEL, SUBSET, SURROGATE = "org/fused", "org/subset", "org/surrogate"
CLASSES = ["circle", "cross", "square", "triangle"]
LEAKED = "hf_should_not_leak"


@pytest.fixture
def hub(monkeypatch, tmp_path_factory):
    yield from serve_local_hub(monkeypatch, tmp_path_factory.mktemp("hf_home"))


def shapes(num_examples, seed):
    dataset = make_image_dataset(num_examples=num_examples, num_classes=4, seed=seed, mode="RGB")
    return dataset.cast_column("label", datasets.ClassLabel(names=CLASSES))


def run_config(output_dir, **overrides):
    values = dict(output_dir=str(output_dir), initial_labeled_size=12, query_size=8, num_rounds=1,
                  num_train_epochs=1, learning_rate=0.05, per_device_train_batch_size=8, scoring_batch_size=64,
                  disable_tqdm=True, use_cpu=True, seed=3, logging_steps=50)  # fmt: skip
    values.update(overrides)
    return PruneFuseConfig(**values)


def run_prunefuse(tmp_path, **overrides):
    """A finished trainer whose pool is a seeded 48-row draw (max_pool_size) of a saved 64-row dataset."""
    source = tmp_path / "source"
    shapes(64, seed=1).save_to_disk(source)
    recipe = {"dataset_name": str(source), "eval_split": None, "max_pool_size": 48, "hub_token": LEAKED}
    config = run_config(tmp_path / "run", **overrides)
    data_args = DataArguments(**{k: v for k, v in recipe.items() if k != "hub_token"})
    pool, _ = load_run_datasets(data_args, seed=config.seed)
    trainer = PruneFuseTrainer(tiny_resnet_config(num_channels=3, num_labels=4), args=config, train_dataset=pool,
                               recipe=recipe)  # fmt: skip
    trainer.train()
    return trainer, pool


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return run_prunefuse(tmp_path_factory.mktemp("hub_run"), hub_model_id=MODEL, hub_subset_id=SUBSET,
                         hub_surrogate_id=SURROGATE)  # fmt: skip


def snapshot(run_dir):
    return {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}  # fmt: skip


def logits(model, seed=0):
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(pixel_values=x).logits


def assert_no_secret(hub, repos):
    for repo, repo_type in repos:
        for path, content in hub.files(repo, repo_type).items():
            assert hub.state.token.encode() not in content and LEAKED.encode() not in content, (repo, path)


def test_push_then_reload_model_surrogate_and_subset(hub, finished):
    trainer, pool = finished
    run_dir = trainer.run_dir.path
    before = snapshot(run_dir)
    result = push_run(
        run_dir, MODEL, subset_repo_id=SUBSET, surrogate_repo_id=SURROGATE, include_examples=True
    )
    assert set(result.commit_urls) == {"model", "subset", "surrogate"}
    assert snapshot(run_dir) == before  # a push only reads the run directory

    for name, repo in (("fused", MODEL), ("surrogate", SURROGATE)):
        local = AutoModelForImageClassification.from_pretrained(run_dir / name)
        remote = AutoModelForImageClassification.from_pretrained(repo)
        assert_states_equal(remote.state_dict(), local.state_dict())
        assert_same_outputs(logits(remote), logits(local))
        assert "preprocessor_config.json" in hub.files(repo) and remote.config.id2label == dict(
            enumerate(CLASSES)
        )
    plan = json.loads(hub.files(SURROGATE)["pruning_plan.json"])
    assert plan == PruningPlan.from_pretrained(run_dir / "surrogate").to_dict()

    card = hub.files(MODEL)["README.md"].decode()
    assert f"{hub.endpoint}/datasets/{SUBSET}" in card and f"{hub.endpoint}/{SURROGATE}" in card
    assert "huggingface.co" not in card and str(run_dir.parent) not in card
    assert f'pipeline("image-classification", model="{MODEL}")' in card
    assert f"{hub.endpoint}/{MODEL}" in hub.files(SURROGATE)["README.md"].decode()
    dataset_card = hub.files(SUBSET, "dataset")["README.md"].decode()
    assert (
        f"({hub.endpoint}/{MODEL})" in dataset_card and "## Classes of the selected examples" in dataset_card
    )
    assert_no_secret(hub, ((MODEL, "model"), (SUBSET, "dataset"), (SURROGATE, "model")))
    for path in run_dir.rglob("*"):
        assert not path.is_file() or LEAKED.encode() not in path.read_bytes(), path

    # The subset: rebuilt from the recorded source, through the Hub, to the same examples and labels.
    selection = pq.read_table(run_dir / "selection.parquet").to_pydict()
    subset = load_subset(SUBSET)
    assert subset["pool_index"][:] == selection["pool_index"]
    expected = pool.select(selection["pool_index"])
    assert subset["label"][:] == expected["label"][:] == selection["label"]
    assert subset["image"][:] == expected["image"][:]
    rows = datasets.load_dataset(SUBSET, split="train")
    assert (
        rows["pool_index"][:] == selection["pool_index"] and rows["label_name"][:] == selection["label_name"]
    )
    examples = datasets.load_dataset(SUBSET, "examples", split="train")
    assert examples["label"][:] == expected["label"][:]


FRESH_PROCESS = """
import json, sys
from PIL import Image
from transformers import pipeline
import prunefuse_hf

classifier = pipeline("image-classification", model=sys.argv[1])
subset = prunefuse_hf.load_subset(sys.argv[2])
print(json.dumps({"label": classifier(Image.open(sys.argv[3]))[0]["label"], "pool_index": subset["pool_index"][:],
                  "labels": subset["label"][:], "names": subset.features["label"].names}))
"""


def test_trainer_push_to_hub_gives_repos_a_fresh_process_can_use(hub, finished, tmp_path):
    trainer, pool = finished
    url = trainer.push_to_hub()
    assert url.startswith(f"{hub.endpoint}/{MODEL}/commit/")
    assert {("model", MODEL), ("dataset", SUBSET), ("model", SURROGATE)} <= set(hub.state.repos)

    image = tmp_path / "image.png"
    pool[0]["image"].save(image)
    # The libraries read HF_ENDPOINT, HF_HOME and the token from the environment the hub fixture set.
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, MODEL, SUBSET, str(image)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    local = pipeline("image-classification", model=str(trainer.run_dir.fused_dir))
    assert answer["label"] in CLASSES and answer["label"] == local(str(image))[0]["label"]
    selection = pq.read_table(trainer.run_dir.selection_path).to_pydict()
    assert answer["pool_index"] == selection["pool_index"] and answer["labels"] == selection["label"]
    assert answer["names"] == CLASSES


def test_second_push_updates_the_repos(hub, finished):
    run_dir = finished[0].run_dir.path
    push_run(run_dir, MODEL, subset_repo_id=SUBSET)
    first = hub.num_commits(MODEL), hub.num_commits(SUBSET, "dataset")
    assert main(["push", str(run_dir), "--model_repo_id", MODEL, "--subset_repo_id", SUBSET]) == 0
    assert (hub.num_commits(MODEL), hub.num_commits(SUBSET, "dataset")) == (first[0] + 1, first[1] + 1)
    assert "README.md" in hub.files(MODEL) and "model.safetensors" in hub.files(MODEL)


def test_push_to_a_branch_and_private_repo(hub, finished):
    push_run(finished[0].run_dir.path, "bare-name", private=True, revision="v1")
    repo = hub.state.repos[("model", "test-user/bare-name")]
    assert repo.private and "config.json" in hub.files("test-user/bare-name", revision="v1")
    assert "config.json" not in hub.files("test-user/bare-name")  # main is untouched


@pytest.mark.parametrize(
    "failure, message",
    [
        ("500", "HTTP 500|500 Server Error|server error"),
        ("401", "token was refused"),
        ("down", "could not reach"),
    ],
)
def test_failed_push_changes_nothing_and_can_be_retried(hub, finished, monkeypatch, capsys, failure, message):
    run_dir = finished[0].run_dir.path
    before = snapshot(run_dir)
    if failure == "500":
        hub.fail(r"^POST /api/repos/create", 500)
    elif failure == "401":
        monkeypatch.setenv("HF_TOKEN", "hf_wrong_token")
    else:
        with HubServer() as gone:
            closed = gone.endpoint
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", closed)
    with pytest.raises(PushError, match=message) as error:
        push_run(run_dir, MODEL, subset_repo_id=SUBSET)
    assert "run the same push again" in str(error.value) and "hf_wrong_token" not in str(error.value)
    assert main(["push", str(run_dir), "--model_repo_id", MODEL]) == 2
    assert "prunefuse-hf push: error: Push failed" in capsys.readouterr().err
    assert snapshot(run_dir) == before

    hub.clear_failures()
    monkeypatch.setenv("HF_TOKEN", hub.state.token)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", hub.endpoint)
    push_run(run_dir, MODEL, subset_repo_id=SUBSET)
    assert "model.safetensors" in hub.files(MODEL)


def test_trainer_pushes_once_at_the_end_and_its_inner_trainers_never_push(hub, tmp_path):
    trainer, _ = run_prunefuse(tmp_path, push_to_hub=True, hub_model_id=MODEL, hub_subset_id=SUBSET,
                               hub_surrogate_id=SURROGATE)  # fmt: skip
    assert set(hub.state.repos) == {("model", MODEL), ("dataset", SUBSET), ("model", SURROGATE)}
    assert [r for r in hub.requests if r == ("POST", "/api/repos/create")] == [
        ("POST", "/api/repos/create")
    ] * 3
    assert hub.num_commits(MODEL) == 2  # the repo's creation, then the one push at the end
    assert (trainer.run_dir.fused_dir / "README.md").is_file()
    assert json.loads(trainer.run_dir.state_path.read_text())["completed"][-1] == "report"
    assert_no_secret(hub, ((MODEL, "model"), (SUBSET, "dataset"), (SURROGATE, "model")))


def test_query_batch_goes_to_a_dataset_repo_for_annotators(hub, tmp_path):
    from prunefuse_hf.annotation.queries import write_query_batch

    queried = [5, 0, 9]
    folder = write_query_batch(tmp_path / "round_2", shapes(12, seed=4), queried, class_names=CLASSES, round=2,
                               scores=[0.9, 0.5, 0.1])  # fmt: skip
    url = push_query_batch(folder, "org/queries", 2)
    assert url.startswith(f"{hub.endpoint}/datasets/org/queries/commit/")
    rows = datasets.load_dataset("org/queries", "round_2", split="train")
    assert rows["pool_index"][:] == queried and "label" not in rows.column_names
    files = hub.files("org/queries", "dataset")
    assert files["round_2/labels.csv"].decode().splitlines()[0] == "pool_index,file_name,label"
    assert {"round_2/label_studio_tasks.json", "round_2/label_studio_config.xml"} <= set(files)


def test_guard_refuses_the_real_hub(hub):
    with pytest.raises(Exception, match="test guard"):
        HfApi(endpoint="https://huggingface.co").whoami(token="hf_x")
    hub.guard.blocked.clear()


# ----- the main use case, end to end -----


@pytest.mark.slow
def test_pretrained_hub_model_on_a_hub_dataset_end_to_end(hub, tmp_path):
    # A "pretrained" checkpoint with its own processor and its own (other) class names, on the Hub.
    pretrained = AutoModelForImageClassification.from_config(
        tiny_resnet_config(num_channels=3, num_labels=5, id2label={i: f"pretrained_{i}" for i in range(5)},
                           label2id={f"pretrained_{i}": i for i in range(5)})
    )  # fmt: skip
    with torch.no_grad():  # weights no initialization would give
        for parameter in pretrained.parameters():
            parameter.add_(0.25)
    pretrained.push_to_hub("org/pretrained")
    processor = ViTImageProcessorPil(
        size={"height": 24, "width": 24}, image_mean=[0.4] * 3, image_std=[0.2] * 3
    )
    processor.push_to_hub("org/pretrained")
    datasets.DatasetDict({"train": shapes(64, seed=1), "test": shapes(24, seed=2)}).push_to_hub("org/shapes")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model_name_or_path": "org/pretrained", "dataset_name": "org/shapes", "eval_split": "test",
        "pruning_ratio": 0.5, "initial_labeled_size": 16, "query_size": 8, "num_rounds": 1, "num_train_epochs": 1,
        "learning_rate": 0.05, "per_device_train_batch_size": 8, "scoring_batch_size": 64, "disable_tqdm": True,
        "use_cpu": True, "seed": 5,
    }))  # fmt: skip
    run_dir = tmp_path / "run"
    assert main(["run", "--config", str(recipe), "--output_dir", str(run_dir)]) == 0

    # The pretrained weights are what got pruned; only the classifier head (5 -> 4 classes) is new.
    plan = PruningPlan.from_pretrained(run_dir / "surrogate_init")
    surrogate_init = AutoModelForImageClassification.from_pretrained(run_dir / "surrogate_init").state_dict()
    dense_state = pretrained.state_dict()
    compared = 0
    for name, tensor in surrogate_init.items():
        if name.startswith("classifier."):
            assert tensor.shape[0] == len(CLASSES) and dense_state[name].shape[0] == 5, name
            continue
        assert torch.equal(tensor, dense_state[name][plan.index(name)]), name
        compared += 1
    assert compared == len(surrogate_init) - 2
    # The fused model is pipeline-ready with the checkpoint's processor and the dataset's class names.
    saved = json.loads((run_dir / "fused" / "preprocessor_config.json").read_text())
    assert (saved["image_mean"], saved["image_std"], saved["size"]) == (
        [0.4] * 3,
        [0.2] * 3,
        {"height": 24, "width": 24},
    )
    assert AutoConfig.from_pretrained(run_dir / "fused").id2label == dict(enumerate(CLASSES))
    classifier = pipeline("image-classification", model=str(run_dir / "fused"))
    assert classifier(shapes(1, seed=9)[0]["image"])[0]["label"] in CLASSES
    card = (run_dir / "fused" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == "org/pretrained" and "org/shapes" in meta["datasets"]
    assert f"[org/pretrained]({hub.endpoint}/org/pretrained)" in card
    assert f"[org/shapes]({hub.endpoint}/datasets/org/shapes)" in card
    # The run pins the data: the recipe records the dataset's commit, so the subset rebuilds after later commits.
    pinned = HfApi().dataset_info("org/shapes").sha
    state = json.loads((run_dir / "state.json").read_text())
    assert state["recipe"]["dataset_revision"] == pinned
    assert f"revision `{pinned}`" in card
    HfApi().upload_file(path_or_fileobj=b"# Shapes\n", path_in_repo="README.md", repo_id="org/shapes",
                        repo_type="dataset")  # fmt: skip
    subset = load_subset(save_subset(run_dir, tmp_path / "subset"))
    assert (
        subset["pool_index"][:]
        == pq.read_table(run_dir / "selection.parquet").column("pool_index").to_pylist()
    )


def test_private_push_to_an_existing_public_repo_is_refused_naming_it_and_uploads_nothing(
    hub, finished, capsys
):
    run_dir = finished[0].run_dir.path
    HfApi().create_repo("org/public-model", private=False)
    commits = hub.num_commits("org/public-model")
    with pytest.raises(
        PushError, match=r"model repo org/public-model \(hub_model_id.*\) already exists and is public"
    ):
        push_run(run_dir, "org/public-model", private=True)
    assert main(["push", str(run_dir), "--model_repo_id", "org/public-model", "--private"]) == 2
    err = capsys.readouterr().err
    assert "org/public-model" in err and "update_repo_settings" in err and "without --private" in err
    assert hub.num_commits("org/public-model") == commits and "config.json" not in hub.files(
        "org/public-model"
    )
    # Made private first, the same push goes through; without --private the public repo gets the files.
    HfApi().update_repo_settings("org/public-model", private=True)
    push_run(run_dir, "org/public-model", private=True)
    assert "config.json" in hub.files("org/public-model")


@pytest.mark.parametrize(
    "request_pattern, kwargs, field",
    [
        (r"^POST /api/repos/create", {}, r"hub_model_id \(prunefuse-hf push --model_repo_id\) = 'org/fused'"),
        (
            r"^POST /api/datasets/.*/branch",
            {"subset_repo_id": SUBSET, "revision": "v 1"},
            r"hub_revision .* = 'v 1'",
        ),
    ],
)
def test_a_hub_error_about_a_recipe_value_names_the_field_the_value_and_the_fix(
    hub, finished, request_pattern, kwargs, field
):
    hub.fail(request_pattern, 400)
    with pytest.raises(PushError, match=rf"The Hub refused {field}: fix that value in the recipe"):
        push_run(finished[0].run_dir.path, MODEL, **kwargs)
