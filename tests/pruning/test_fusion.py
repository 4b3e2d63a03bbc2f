"""`fuse_into_dense` for every supported family: exact fusion, and the checks that the models are the plan's.

The tiny per-family models come from `conftest.py` (pruned once per session there).
"""

import copy

import pytest
import torch
from transformers import AutoModelForImageClassification

from conftest import (
    IMAGE_SIZE,
    RATIOS,
    assert_fused_at_kept_indices,
    assert_same_outputs,
    assert_states_equal,
    batch,
    dense_model,
    kept_mask,
    make_image_dataset,
    pruned,
    tiny_resnet_config,
    train_steps,
)
from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer, PruningPlan, fuse_into_dense, prune_model
from prunefuse_hf.constants import DENSE_INIT_DIR, SURROGATE_DIR
from prunefuse_hf.pruning.families import SUPPORTED_FAMILIES
from prunefuse_hf.pruning.modeling import load_image_classifier
from prunefuse_hf.pruning.plan import config_hash

# Every supported family, plus ResNet with basic blocks (its tiny config uses bottlenecks).
CASES = [pytest.param(model_type, {}, id=model_type) for model_type in SUPPORTED_FAMILIES] + [
    pytest.param("resnet", {"layer_type": "basic"}, id="resnet-basic")
]
cases = pytest.mark.parametrize(("model_type", "config"), CASES)
families = pytest.mark.parametrize("model_type", SUPPORTED_FAMILIES)
NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def lowers_the_loss(model, lr):
    losses = train_steps(model, steps=2, lr=lr)
    return losses[1] < losses[0]


@cases
@pytest.mark.parametrize("ratio", [0.0, *RATIOS])
def test_fusing_the_untrained_surrogate_gives_back_the_dense_weights_bit_for_bit(model_type, config, ratio):
    dense, surrogate, plan = pruned(model_type, ratio, **config)
    assert (plan.num_pruned_tensors > 0) == (ratio > 0)
    assert_states_equal(fuse_into_dense(dense, surrogate, plan).state_dict(), dense.state_dict())


@cases
@pytest.mark.parametrize("ratio", RATIOS)
def test_a_trained_surrogate_lands_exactly_at_its_kept_indices_and_every_other_entry_keeps_theta0(
    model_type, config, ratio
):
    dense, surrogate, plan = pruned(model_type, ratio, **config)
    dense_before = copy.deepcopy(dense.state_dict())
    train_steps(surrogate)
    surrogate_state = copy.deepcopy(surrogate.state_dict())

    fused = fuse_into_dense(dense, surrogate, plan)

    assert_fused_at_kept_indices(fused, surrogate_state, dense_before, plan)
    # Neither input was modified by fusing.
    assert_states_equal(dense.state_dict(), dense_before)
    assert_states_equal(surrogate.state_dict(), surrogate_state)
    # The fused model trains: a step along its gradient lowers its loss. The largest step that does depends on the
    # family's curvature and on the CPU's float kernels (the tiny 17-block MobileNetV2 at p = 0.75 overshoots at 0.01
    # on some CPUs), so the step backtracks from 0.01 as a backtracking line search does.
    assert any(lowers_the_loss(copy.deepcopy(fused), lr) for lr in (0.01, 0.003, 0.001))


@families
def test_with_a_zero_ratio_the_fused_model_is_the_trained_surrogate(model_type):
    dense, surrogate, plan = pruned(model_type, 0.0)
    train_steps(surrogate, steps=1)
    assert_states_equal(fuse_into_dense(dense, surrogate, plan).state_dict(), surrogate.state_dict())


@cases
def test_without_norm_stats_only_running_statistics_keep_the_dense_values(model_type, config):
    dense, surrogate, plan = pruned(model_type, 0.5, **config)
    train_steps(surrogate, steps=1)
    with_stats = fuse_into_dense(dense, surrogate, plan).state_dict()
    without_stats = fuse_into_dense(dense, surrogate, plan, copy_norm_stats=False).state_dict()
    statistics = {name for name in with_stats if name.endswith(NORM_STATISTICS)}
    has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in dense.modules())
    assert bool(statistics) == has_batchnorm
    for name, tensor in without_stats.items():
        expected = dense.state_dict()[name] if name in statistics else with_stats[name]
        assert torch.equal(tensor, expected), name
    # The surrogate's training moved the statistics that copy_norm_stats=False keeps back.
    moved = [n for n in statistics if not torch.equal(with_stats[n], dense.state_dict()[n])]
    assert bool(moved) == has_batchnorm


@families
def test_the_fused_model_saves_and_reloads_with_identical_weights(tmp_path, model_type):
    dense, surrogate, plan = pruned(model_type, 0.5)
    train_steps(surrogate, steps=1)
    fused = fuse_into_dense(dense, surrogate, plan).eval()
    fused.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(dense)
    pixel_values, _ = batch(dense, size=2)
    with torch.no_grad():
        assert_same_outputs(reloaded(pixel_values).logits, fused(pixel_values).logits)
    assert_states_equal(reloaded.state_dict(), fused.state_dict())


@families
def test_a_trained_fused_model_can_be_pruned_again_and_fused_exactly(model_type):
    # The sync_every loop: fuse, train the fused model, prune it again for the next surrogate.
    dense, surrogate, plan = pruned(model_type, 0.5)
    train_steps(surrogate)
    fused = fuse_into_dense(dense, surrogate, plan)
    train_steps(fused, steps=2)

    next_surrogate, next_plan = prune_model(fused, 0.5)
    assert next_surrogate.config.to_dict() == surrogate.config.to_dict()
    fused_state = fused.state_dict()
    for name, tensor in next_surrogate.state_dict().items():
        assert torch.equal(fused_state[name][next_plan.index(name)], tensor), name
    assert_states_equal(fuse_into_dense(fused, next_surrogate, next_plan).state_dict(), fused_state)
    train_steps(next_surrogate, steps=2, seed=1)
    refused = fuse_into_dense(fused, next_surrogate, next_plan).state_dict()
    for name, tensor in next_surrogate.state_dict().items():
        assert torch.equal(refused[name][next_plan.index(name)], tensor), name


@families
def test_a_dense_model_of_another_architecture_is_refused_naming_both_identities(tmp_path, model_type):
    dense, surrogate, plan = pruned(model_type, 0.5)
    dense_model(model_type, num_labels=5).save_pretrained(tmp_path)
    other = AutoModelForImageClassification.from_pretrained(tmp_path)
    with pytest.raises(ValueError) as error:
        fuse_into_dense(other, surrogate, plan)
    message = str(error.value)
    assert f"an unnamed model (built from a config) (config hash {config_hash(dense.config)})" in message
    assert f"'{tmp_path}' (config hash {config_hash(other.config)})" in message
    assert "differ in num_labels: plan 4, given 5." in message
    assert "identifies the architecture, not the weights" in message and "dense_init" in message


@families
def test_a_dense_model_of_the_same_architecture_with_other_weights_and_names_is_accepted(model_type):
    _, surrogate, plan = pruned(model_type, 0.5)
    # Another seed, other class names, and a problem_type set by training: the same architecture.
    other = dense_model(model_type, seed=1, id2label={i: f"class {i}" for i in range(4)})
    other.config.problem_type = "single_label_classification"
    assert config_hash(other.config) == plan.dense_config_hash
    fused = fuse_into_dense(other, surrogate, plan).state_dict()
    other_state, surrogate_state = other.state_dict(), surrogate.state_dict()
    for name, tensor in fused.items():
        mask = kept_mask(plan, name)
        assert torch.equal(tensor[plan.index(name)], surrogate_state[name]), name
        assert torch.equal(tensor[~mask], other_state[name][~mask]), name


def test_a_surrogate_of_another_plan_is_refused_naming_the_tensor():
    dense = dense_model("resnet", layer_type="basic")
    _, plan = prune_model(dense, 0.5)
    other_surrogate, _ = prune_model(dense, 0.25)
    with pytest.raises(ValueError, match="surrogate tensor '.*' has shape .* pruning plan expects"):
        fuse_into_dense(dense, other_surrogate, plan)


def test_a_runs_own_dense_init_and_surrogate_fuse_while_another_dense_is_refused(tmp_path):
    # The trainer names the classes before pruning and saves every checkpoint with them.
    pool = make_image_dataset(num_examples=24, num_classes=4, seed=1, mode="RGB")
    args = PruneFuseConfig(output_dir=str(tmp_path / "run"), pruning_ratio=0.5, strategy="least_confidence",
                           initial_labeled_size=8, query_size=4, num_rounds=1, num_train_epochs=1,
                           per_device_train_batch_size=4, scoring_batch_size=16, image_size=IMAGE_SIZE,
                           disable_tqdm=True, seed=3)  # fmt: skip
    PruneFuseTrainer(tiny_resnet_config(), args=args, train_dataset=pool).train()
    run_dir = tmp_path / "run"
    dense = load_image_classifier(run_dir / DENSE_INIT_DIR, from_config=False)
    surrogate = load_image_classifier(run_dir / SURROGATE_DIR, from_config=False)
    plan = PruningPlan.from_pretrained(run_dir / SURROGATE_DIR)
    assert dense.config.id2label == {i: str(i) for i in range(4)}

    fused = fuse_into_dense(dense, surrogate, plan)
    assert_fused_at_kept_indices(fused, surrogate.state_dict(), dense.state_dict(), plan)

    wider = load_image_classifier(tiny_resnet_config(hidden_sizes=[16, 64]), class_names=list("0123"))
    with pytest.raises(ValueError, match=r"differ in hidden_sizes: plan \[16, 32\], given \[16, 64\]"):
        fuse_into_dense(wider, surrogate, plan)
