"""Pushing a finished run to a local Hub (tests/hub_server.py) with the unmodified client libraries."""

import hashlib
import json

import datasets
import pyarrow.parquet as pq
import pytest
import torch
from huggingface_hub import HfApi
from transformers import AutoModelForImageClassification

from conftest import make_image_dataset, tiny_resnet_config
from hub_server import HubServer, serve_local_hub
from prunefuse_hf import PruningPlan, load_subset
from prunefuse_hf.arguments import DataArguments
from prunefuse_hf.cli import main
from prunefuse_hf.config import PruneFuseConfig
from prunefuse_hf.data import load_run_datasets
from prunefuse_hf.hub import PushError, push_run
from prunefuse_hf.loop import PruneFuseLoop

MODEL, SUBSET, SURROGATE = "org/fused", "org/subset", "org/surrogate"


@pytest.fixture
def hub(monkeypatch, tmp_path_factory):
    yield from serve_local_hub(monkeypatch, tmp_path_factory.mktemp("hf_home"))


def run_config(output_dir, **overrides):
    values = dict(output_dir=str(output_dir), initial_labeled_size=12, query_size=8, num_rounds=1,
                  num_train_epochs=1, learning_rate=0.05, per_device_train_batch_size=8, scoring_batch_size=64,
                  disable_tqdm=True, use_cpu=True, seed=3, logging_steps=50)  # fmt: skip
    values.update(overrides)
    return PruneFuseConfig(**values)


def run_prunefuse(tmp_path, **overrides):
    """A finished run whose pool is a seeded 48-row draw (max_pool_size) of a saved 64-row dataset."""
    source = tmp_path / "source"
    make_image_dataset(num_examples=64, seed=1).save_to_disk(source)
    recipe = {
        "dataset_name": str(source),
        "eval_split": None,
        "max_pool_size": 48,
        "hub_token": "hf_should_not_leak",
    }
    data_args = DataArguments(**{k: v for k, v in recipe.items() if k != "hub_token"})
    config = run_config(tmp_path / "run", **overrides)
    pool, _ = load_run_datasets(data_args, seed=config.seed)
    PruneFuseLoop(tiny_resnet_config(num_channels=1), pool, config, recipe=recipe).run()
    return tmp_path / "run", pool


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return run_prunefuse(tmp_path_factory.mktemp("hub_run"))


def snapshot(run_dir):
    return {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}  # fmt: skip


def logits(model, seed=0):
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(pixel_values=x).logits


def test_push_then_reload_model_surrogate_and_subset(hub, finished_run):
    run_dir, pool = finished_run
    before = snapshot(run_dir)
    result = push_run(
        run_dir, MODEL, subset_repo_id=SUBSET, surrogate_repo_id=SURROGATE, include_examples=True
    )
    assert set(result.commit_urls) == {"model", "subset", "surrogate"}
    assert snapshot(run_dir) == before  # a push only reads the run directory

    for name, repo in (("fused", MODEL), ("surrogate", SURROGATE)):
        local = AutoModelForImageClassification.from_pretrained(run_dir / name)
        remote = AutoModelForImageClassification.from_pretrained(repo)
        assert torch.equal(logits(local), logits(remote)), name
    plan = json.loads(hub.files(SURROGATE)["pruning_plan.json"])
    assert plan == PruningPlan.from_pretrained(run_dir / "surrogate").to_dict()

    card = hub.files(MODEL)["README.md"].decode()
    assert "datasets:" in card and SUBSET in card and SURROGATE in card and "push_to_hub" not in card
    assert (
        card.split("## Framework versions")[0]
        != (run_dir / "fused" / "README.md").read_text().split("## Framework")[0]
    )
    for repo, repo_type in ((MODEL, "model"), (SUBSET, "dataset"), (SURROGATE, "model")):
        for path, content in hub.files(repo, repo_type).items():
            assert hub.state.token.encode() not in content and b"hf_should_not_leak" not in content, path
    for path in run_dir.rglob("*"):
        assert not path.is_file() or b"hf_should_not_leak" not in path.read_bytes(), path

    # The subset: rebuilt from the recorded source, through the Hub, to the same examples.
    selection = pq.read_table(run_dir / "selection.parquet").to_pydict()
    subset = load_subset(SUBSET)
    assert subset["pool_index"][:] == selection["pool_index"]
    expected = pool.select(selection["pool_index"])
    assert subset["label"][:] == expected["label"][:]
    assert subset["image"][:] == expected["image"][:]
    rows = datasets.load_dataset(SUBSET, split="train")
    assert rows["pool_index"][:] == selection["pool_index"] and rows["round"][:] == selection["round"]
    examples = datasets.load_dataset(SUBSET, "examples", split="train")
    assert examples["label"][:] == expected["label"][:]


def test_second_push_updates_the_repos(hub, finished_run):
    run_dir, _ = finished_run
    push_run(run_dir, MODEL, subset_repo_id=SUBSET)
    first = hub.num_commits(MODEL), hub.num_commits(SUBSET, "dataset")
    assert main(["push", str(run_dir), "--model_repo_id", MODEL, "--subset_repo_id", SUBSET]) == 0
    assert (hub.num_commits(MODEL), hub.num_commits(SUBSET, "dataset")) == (first[0] + 1, first[1] + 1)
    assert "README.md" in hub.files(MODEL) and "model.safetensors" in hub.files(MODEL)


def test_push_to_a_branch_and_private_repo(hub, finished_run):
    run_dir, _ = finished_run
    push_run(run_dir, "bare-name", private=True, revision="v1")
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
def test_failed_push_changes_nothing_and_can_be_retried(
    hub, finished_run, monkeypatch, capsys, failure, message
):
    run_dir, _ = finished_run
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


def test_loop_pushes_at_the_end_and_its_trainers_never_push(hub, tmp_path):
    run_dir, _ = run_prunefuse(tmp_path, push_to_hub=True, hub_model_id=MODEL, hub_subset_id=SUBSET,
                               hub_surrogate_id=SURROGATE)  # fmt: skip
    assert set(hub.state.repos) == {("model", MODEL), ("dataset", SUBSET), ("model", SURROGATE)}
    assert [r for r in hub.requests if r == ("POST", "/api/repos/create")] == [
        ("POST", "/api/repos/create")
    ] * 3
    assert hub.num_commits(MODEL) == 2  # the repo's creation, then the one push at the end
    assert (run_dir / "fused" / "README.md").is_file()
    state = json.loads((run_dir / "state.json").read_text())
    assert state["completed"][-1] == "report"


def test_guard_refuses_the_real_hub(hub):
    with pytest.raises(Exception, match="test guard"):
        HfApi(endpoint="https://huggingface.co").whoami(token="hf_x")
    hub.guard.blocked.clear()


def test_trainer_push_to_hub_settings_still_work(hub, tmp_path):
    from prunefuse_hf.data import prepare_dataset
    from prunefuse_hf.trainer import PruneFuseTrainer

    model = AutoModelForImageClassification.from_config(tiny_resnet_config(num_channels=1))
    args = run_config(tmp_path / "trainer", push_to_hub=True, hub_model_id="org/trainer", max_steps=1)
    train = prepare_dataset(make_image_dataset(num_examples=8), model.config, train=True)
    trainer = PruneFuseTrainer(model=model, args=args, train_dataset=train)
    trainer.train()
    trainer.push_to_hub()
    assert "model.safetensors" in hub.files("org/trainer")
