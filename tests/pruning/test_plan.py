"""`PruningPlan`: indexing, shapes, validation, its JSON file, and the config hash that identifies the dense model."""

import json
import os

import pytest
import torch
from transformers import AutoModelForImageClassification, ResNetForImageClassification

from conftest import tiny_resnet_config
from prunefuse_hf import PruningPlan, prune_model
from prunefuse_hf.constants import PRUNING_PLAN_NAME
from prunefuse_hf.pruning.plan import architecture_fields, config_hash


def dense_resnet(**kwargs):
    torch.manual_seed(0)
    return ResNetForImageClassification(tiny_resnet_config(**kwargs))


def hand_made_plan(**kwargs):
    """A plan over three tensors: `w` [4, 3] (rows 0 and 2, column 1 kept), `b` [4] (unpruned), `s` [] (a scalar)."""
    return PruningPlan(pruning_ratio=0.5, importance="l2", model_type="resnet", dense_config={}, surrogate_config={},
                       dense_shapes={"w": [4, 3], "b": [4], "s": []}, kept_indices={"w": {0: [0, 2], 1: [1]}},
                       **kwargs)  # fmt: skip


def test_index_selects_the_kept_entries_and_writes_a_surrogate_tensor_back_in_place():
    plan = hand_made_plan()
    dense = torch.arange(12.0).view(4, 3)
    assert dense[plan.index("w")].tolist() == [[1.0], [7.0]]
    dense[plan.index("w")] = torch.tensor([[-1.0], [-2.0]])
    assert dense.tolist() == [[0, -1, 2], [3, 4, 5], [6, -2, 8], [9, 10, 11]]
    # Unpruned tensors (and scalars) are selected whole.
    bias, scalar = torch.arange(4.0), torch.tensor(5.0)
    assert torch.equal(bias[plan.index("b")], bias) and torch.equal(scalar[plan.index("s")], scalar)
    assert (
        plan.surrogate_shape("w") == [2, 1]
        and plan.surrogate_shape("b") == [4]
        and plan.num_pruned_tensors == 1
    )


def test_check_models_names_the_tensors_a_surrogate_has_too_many_or_too_few_of():
    dense = dense_resnet()
    _, plan = prune_model(dense, 0.5)
    deeper, _ = prune_model(dense_resnet(depths=[2, 1]), 0.5)
    with pytest.raises(
        ValueError, match=r"surrogate model does not match .* missing \[\], unexpected \['resnet.encoder"
    ):
        plan.check_models(dense, deeper)


def test_a_pruned_plan_round_trips_through_json_and_stores_each_kept_list_once(tmp_path):
    _, plan = prune_model(dense_resnet(), 0.5)
    data = plan.to_dict()
    assert data["format_version"] == 2
    assert data["dense_config"]["hidden_sizes"] == [16, 32] and data["surrogate_config"]["hidden_sizes"] == [
        8,
        16,
    ]
    # Coupled tensors share one stored index list instead of repeating it.
    assert len(data["kept_index_groups"]) < sum(len(t["pruned_dims"]) for t in data["tensors"].values())
    assert PruningPlan.from_dict(json.loads(json.dumps(data))) == plan

    path = plan.save_pretrained(tmp_path)
    assert path == os.path.join(tmp_path, PRUNING_PLAN_NAME)
    assert PruningPlan.from_pretrained(tmp_path) == plan  # the directory
    assert PruningPlan.from_pretrained(path) == plan  # or the file itself
    assert os.listdir(tmp_path) == [PRUNING_PLAN_NAME]  # no temporary file left behind


def test_a_crash_while_saving_leaves_the_previous_plan(tmp_path, monkeypatch):
    old = hand_made_plan()
    old.save_pretrained(tmp_path)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    new = hand_made_plan(dense_name_or_path="new")
    with pytest.raises(KeyboardInterrupt):
        new.save_pretrained(tmp_path)
    monkeypatch.undo()
    assert PruningPlan.from_pretrained(tmp_path) == old


def test_loading_errors_name_the_file_and_the_version(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"No {PRUNING_PLAN_NAME} at .*prune_model"):
        PruningPlan.from_pretrained(tmp_path)
    data = hand_made_plan().to_dict()
    data["format_version"] = 99
    with pytest.raises(ValueError, match="format_version 99; this prunefuse-hf reads versions 1, 2"):
        PruningPlan.from_dict(data)


def test_config_hash_identifies_the_architecture_not_the_path_names_or_training(tmp_path):
    dense = dense_resnet()
    digest = config_hash(dense.config)
    assert len(digest) == 16 and int(digest, 16) >= 0
    dense.save_pretrained(tmp_path)  # writes architectures, dtype and the transformers version
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert reloaded.config._name_or_path == str(tmp_path) and config_hash(reloaded.config) == digest
    reloaded.config.id2label = {i: f"class {i}" for i in range(4)}
    reloaded.config.label2id = {f"class {i}": i for i in range(4)}
    reloaded.config.problem_type = "single_label_classification"  # what the first training step sets
    assert config_hash(reloaded.config) == digest
    assert architecture_fields(reloaded.config)["num_labels"] == 4
    # The number of classes and every width or depth are the architecture.
    assert config_hash(tiny_resnet_config(num_labels=5)) != digest
    assert config_hash(tiny_resnet_config(hidden_sizes=[16, 64])) != digest
    assert config_hash(tiny_resnet_config(layer_type="bottleneck")) != digest


def test_the_plan_records_the_dense_config_hash_and_checks_it():
    dense = dense_resnet()
    _, plan = prune_model(dense, 0.5)
    assert plan.dense_config_hash == config_hash(dense.config)
    plan.check_dense_identity(dense)
    with pytest.raises(
        ValueError, match=r"an unnamed model \(built from a config\) \(config hash [0-9a-f]{16}\)"
    ):
        plan.check_dense_identity(dense_resnet(depths=[2, 1]))


def test_a_stored_hash_from_another_version_defers_to_the_recorded_dense_config():
    # Another transformers version (new config fields) or an older prunefuse-hf (other hashed fields) stores
    # another hash for the same architecture: the recorded config decides.
    dense = dense_resnet()
    _, plan = prune_model(dense, 0.5)
    plan.dense_config_hash = "0123456789abcdef"
    plan.check_dense_identity(dense)
    plan.dense_config_hash = None  # plans written before the hash was recorded
    plan.check_dense_identity(dense)
    plan.dense_config_hash = "0123456789abcdef"
    with pytest.raises(
        ValueError, match=r"\(config hash 0123456789abcdef\).* differ in depths: plan \[1, 1\]"
    ):
        plan.check_dense_identity(dense_resnet(depths=[2, 1]))
