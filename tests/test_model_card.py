import json
import re
from pathlib import Path

import pytest
import yaml
from transformers import ResNetConfig

from prunefuse_hf.model_card import (
    collect_model_card_facts,
    framework_versions,
    redact_secrets,
    render_model_card,
    write_model_card,
)

MODEL_CARDS = Path(__file__).parent.parent / "model_cards"
REFERENCE_RUN = Path(__file__).parent.parent / "runs" / "fashion-mnist-resnet" / "prunefuse"
REPO_IDS = dict(
    model_repo_id="your-org/fashion-mnist-resnet18-prunefuse",
    subset_repo_id="your-org/fashion-mnist-prunefuse-subset",
    surrogate_repo_id="your-org/fashion-mnist-resnet18-prunefuse-surrogate",
)
TOKEN = "hf_secretSECRETsecret123"


def normalize(card: str) -> str:
    """Versions change with every install: compare everything but the version numbers."""
    return re.sub(r"^(- [\w-]+): .+$", r"\1: <version>", card, flags=re.MULTILINE)


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def fake_run(path: Path, recipe=None, final_accuracy=0.8, selection=True) -> Path:
    """A finished run directory as the loop leaves it (only what the card reads)."""
    ResNetConfig(num_channels=1, num_labels=4, hidden_sizes=[8, 16], depths=[1, 1]).save_pretrained(
        path / "fused"
    )
    surrogate = {
        "labeled": 16,
        "epochs": 2,
        "seconds": 1.0,
        "flops": 100,
        "dense_flops": 400,
        "accuracy": None if final_accuracy is None else 0.5,
    }
    dense = {"labeled": 24, "epochs": 2, "seconds": 2.0, "flops": 400, "dense_flops": 400,
             "accuracy": final_accuracy, "accuracy_at_start": None}  # fmt: skip
    rounds = {"1": {"round": 1, "surrogate": surrogate}, "2": {"round": 2, "dense": dense}}
    if selection:
        rounds["1"]["selection"] = {"strategy": "entropy", "query_size": 8, "scored_examples": 80, "seconds": 0.5,
                                    "flops": 50, "dense_flops": 200}  # fmt: skip
    progress = {
        "config": {
            "pruning_ratio": 0.5,
            "importance": "l2",
            "strategy": "entropy",
            "initial_labeled_size": 16,
            "query_size": [8],
            "num_rounds": 1,
            "seed": 3,
            "surrogate_init": "reinit",
            "fusion": True,
            "fusion_init": "dense_init",
            "copy_norm_stats": True,
            "sync_every": 0,
            "distill_alpha": 0.0,
            "distill_temperature": 4.0,
        },  # fmt: skip
        "recipe": recipe,
        "rounds": rounds,
        "final": {**dense, "labeled": 24},
        "costs": {
            "image_size": [16, 16],
            "dense": {"params": 1000, "macs": 4000},
            "surrogate": {"params": 250, "macs": 1000},
        },  # fmt: skip
        "pool": {"num_examples": 96, "fingerprint": "abc"},
    }
    (path / "state.json").write_text(json.dumps(progress))
    return path


def test_reference_render_matches():
    facts = json.loads((MODEL_CARDS / "fashion-mnist-resnet.facts.json").read_text())
    expected = (MODEL_CARDS / "fashion-mnist-resnet.md").read_text()
    assert normalize(render_model_card(facts)) == normalize(expected)


@pytest.mark.skipif(
    not (REFERENCE_RUN / "state.json").is_file(), reason="the reference run is not on this machine"
)
def test_reference_facts_come_from_the_real_run():
    facts = collect_model_card_facts(REFERENCE_RUN, **REPO_IDS)
    stored = json.loads((MODEL_CARDS / "fashion-mnist-resnet.facts.json").read_text())
    facts["versions"] = stored["versions"] = None
    assert facts == stored


def test_card_states_the_run_facts(tmp_path):
    recipe = {
        "model_name_or_path": "microsoft/resnet-18",
        "dataset_name": "uoft-cs/cifar10",
        "max_pool_size": 96,
    }
    card = render_model_card(
        collect_model_card_facts(fake_run(tmp_path, recipe), subset_repo_id="org/subset")
    )
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-classification"
    assert meta["base_model"] == "microsoft/resnet-18"
    assert meta["datasets"] == ["uoft-cs/cifar10", "org/subset"]
    assert {"prunefuse", "active-learning"} <= set(meta["tags"])
    assert meta["model-index"][0]["results"][0]["metrics"][0] == {"type": "accuracy", "value": 0.8}
    for fact in ("ratio 0.5", "1.00k → 250 parameters (0.250×)", "`entropy`", "16 random, then +8",
                 "24 of 96 (25.0%)", "a seeded random pool of 96 examples", "| 1 | 16 | 0.5000 | – | 8 |",
                 "load_subset(\"org/subset\")", "none (plain cross-entropy)", "@misc{", "Kousar"):  # fmt: skip
        assert fact in card, fact
    assert "None" not in card


def test_optional_sections_vanish(tmp_path):
    card = render_model_card(collect_model_card_facts(fake_run(tmp_path, None, None, selection=False)))
    meta = front_matter(card)
    assert "base_model" not in meta and "datasets" not in meta and "model-index" not in meta
    for gone in ("## Training recipe", "## Selection cost", "## Results per round", "Selected subset",
                 "Surrogate:**", "Training data", "None", "accuracy of"):  # fmt: skip
        assert gone not in card, gone
    assert "## How to use" in card and "## Framework versions" in card and "\n\n\n" not in card


def test_local_base_model_is_not_put_in_front_matter(tmp_path):
    (tmp_path / "dense").mkdir()
    recipe = {"model_name_or_path": str(tmp_path / "dense")}
    card = render_model_card(collect_model_card_facts(fake_run(tmp_path / "run", recipe)))
    assert "base_model" not in front_matter(card)
    assert f"`{tmp_path / 'dense'}` (a local checkpoint" in card


def test_tokens_never_reach_the_card(tmp_path):
    recipe = {
        "dataset_name": "fashion_mnist",
        "hub_token": TOKEN,
        "push_to_hub": True,
        "nested": {"api_token": TOKEN},
    }
    run = fake_run(tmp_path, recipe)
    path = write_model_card(run)
    card = path.read_text()
    assert path == run / "fused" / "README.md"
    assert TOKEN not in card and "hub_token" not in card and "push_to_hub: true" in card
    assert redact_secrets({"a": [{"hub_token": 1, "b": 2}]}) == {"a": [{"b": 2}]}


def test_framework_versions_are_listed():
    versions = framework_versions()
    assert {"prunefuse-hf", "Transformers", "PyTorch", "Datasets", "huggingface_hub"} <= set(versions)
