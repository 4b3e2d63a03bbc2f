"""The general pruning path: families without a narrowed config, pruned by Torch-Pruning and rebuilt from the plan.

For each family: prune, save as safetensors + dense config + plan, reload with identical weights (and logits to float
rounding), fuse back exactly (an untrained surrogate gives θ0 bit for bit; a trained one sits at the kept indices and
re-selecting the fused model gives the trained surrogate's weights), and classify raw PIL images with `pipeline()`.
The default run keeps two fast classes (DINOv2 with registers: tokens, layer scale, heads; PoolFormer: convolutions
and layer scales); the whole matrix, timm included, runs under `-m slow`.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import PvtV2Config, PvtV2ForImageClassification, pipeline

from conftest import (
    GENERAL_TINY_CONFIGS,
    TIMM_TINY_MODEL_ARGS,
    assert_fused_at_kept_indices,
    assert_same_outputs,
    assert_states_equal,
    general_dense_model,
)
from prunefuse_hf import fuse_into_dense, prune_model
from prunefuse_hf.constants import PRUNING_PATH_REPLAY, PRUNING_PLAN_NAME
from prunefuse_hf.data.image_processor import build_image_processor
from prunefuse_hf.pruning import (
    GENERAL_FAMILIES,
    PruningPlan,
    load_surrogate,
    rebuild_surrogate,
    save_surrogate,
)
from prunefuse_hf.pruning.support import check_supported_model, support_table_markdown
from prunefuse_hf.pruning.tracing import example_pixel_values

FAST = ["dinov2_with_registers", "poolformer"]
SLOW = [t for t in GENERAL_TINY_CONFIGS if t not in FAST and t != "timm_wrapper"]
# Families whose attention Torch-Pruning cannot split into heads: pruned with attention outputs kept dense.
FALLBACK = {"mobilevitv2", "levit"}


def sgd_steps(model, pixel_values, steps=2):
    """Small SGD steps that move every trained weight. At lr 0.05 the tiny LeViT's gradients grew to thousands on a
    batch of 2 and its eval logits became NaN on one thread count and not the other; 0.005 keeps every family finite."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005)
    labels = torch.arange(pixel_values.shape[0]) % model.config.num_labels
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(pixel_values=pixel_values).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(pixel_values=pixel_values).logits).all()


def images(size, count=3):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def check_general_path(dense, tmp_path, expect_fallback=False):
    dense.eval()
    dense_state = {name: t.clone() for name, t in dense.state_dict().items()}
    surrogate, plan = prune_model(dense, 0.5)
    assert plan.pruning_path == PRUNING_PATH_REPLAY and plan.attention_outputs_dense == expect_fallback
    assert plan.pruning_history and plan.num_pruned_tensors > 0
    # The dense model is untouched; the surrogate is narrower (the classifier's outputs stay).
    assert all(torch.equal(t, dense_state[n]) for n, t in dense.state_dict().items())
    dense_params = sum(p.numel() for p in dense.parameters())
    assert sum(p.numel() for p in surrogate.parameters()) < 0.6 * dense_params
    classifier_outputs = {
        n: t.shape[0] for n, t in dense_state.items() if n.endswith(("classifier.weight", "fc.weight"))
    }
    for name, outputs in classifier_outputs.items():
        assert plan.surrogate_shape(name)[0] == outputs, name

    # Saved as safetensors + dense config + plan; rebuilt by replaying the history with identical weights.
    save_surrogate(surrogate, plan, tmp_path / "surrogate")
    assert json.loads((tmp_path / "surrogate" / PRUNING_PLAN_NAME).read_text())["pruning_path"] == "replay"
    reloaded = load_surrogate(tmp_path / "surrogate")
    pixel_values = example_pixel_values(dense, batch_size=2)
    surrogate.eval()
    with torch.no_grad():
        assert_same_outputs(
            reloaded(pixel_values=pixel_values).logits, surrogate(pixel_values=pixel_values).logits
        )
    assert_states_equal(reloaded.state_dict(), surrogate.state_dict())

    # An untrained surrogate fuses back to θ0 bit for bit.
    fused = fuse_into_dense(dense, reloaded, PruningPlan.from_pretrained(tmp_path / "surrogate"))
    for name, tensor in fused.state_dict().items():
        assert torch.equal(tensor, dense_state[name]), name

    # A trained one sits at the kept indices; selecting them again from the fused model gives its weights and logits.
    sgd_steps(surrogate, pixel_values)
    trained = {name: t.clone() for name, t in surrogate.state_dict().items()}
    fused = fuse_into_dense(dense, surrogate, plan)
    assert_fused_at_kept_indices(fused, trained, dense_state, plan)
    reselected = rebuild_surrogate(plan)
    reselected.load_state_dict({n: t[plan.index(n)] for n, t in fused.state_dict().items()}, strict=True)
    with torch.no_grad():
        assert_same_outputs(
            reselected(pixel_values=pixel_values).logits, surrogate(pixel_values=pixel_values).logits
        )
    assert_states_equal(reselected.state_dict(), trained)
    return surrogate, reloaded, fused


def check_pipeline(model, dense):
    size = example_pixel_values(dense).shape[-1]
    processor = build_image_processor(dense.config, image=images(size, 1)[0])
    classifier = pipeline("image-classification", model=model, image_processor=processor)
    predictions = classifier(images(size), top_k=2)
    assert len(predictions) == 3 and all(len(p) == 2 for p in predictions)
    assert {p["label"] for ps in predictions for p in ps} <= set(dense.config.id2label.values())


@pytest.mark.parametrize("model_type", FAST)
def test_general_path_prunes_reloads_and_fuses_exactly(tmp_path, model_type):
    dense = general_dense_model(model_type)
    surrogate, reloaded, fused = check_general_path(dense, tmp_path)
    check_pipeline(reloaded, dense)
    check_pipeline(fused, dense)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", SLOW)
def test_every_general_family_prunes_reloads_fuses_and_classifies(tmp_path, model_type):
    dense = general_dense_model(model_type)
    _, reloaded, fused = check_general_path(dense, tmp_path, expect_fallback=model_type in FALLBACK)
    check_pipeline(reloaded, dense)
    check_pipeline(fused, dense)


@pytest.mark.slow
@pytest.mark.parametrize("architecture", list(TIMM_TINY_MODEL_ARGS))
def test_timm_models_take_the_general_path(tmp_path, architecture):
    # timm 1.0 imports torchvision at module level; where torchvision cannot be imported this skips.
    pytest.importorskip("timm")
    dense = general_dense_model(
        "timm_wrapper", architecture=architecture, model_args=TIMM_TINY_MODEL_ARGS[architecture]
    )
    check_general_path(dense, tmp_path)


def test_dinov2_narrows_tokens_position_embeddings_and_layer_scale_and_keeps_heads_and_registers():
    dense = general_dense_model("dinov2_with_registers")
    surrogate, plan = prune_model(dense, 0.5)
    state = surrogate.state_dict()
    prefix = "dinov2_with_registers.embeddings."
    assert state[prefix + "cls_token"].shape == (1, 1, 16)
    assert state[prefix + "register_tokens"].shape == (1, 4, 16)  # the register count is kept
    assert state[prefix + "position_embeddings"].shape == (1, 17, 16)
    assert state[prefix + "mask_token"].shape == (1, 32)  # unused by the classifier: stays dense
    layer = surrogate.dinov2_with_registers.encoder.layer[0]
    assert state["dinov2_with_registers.encoder.layer.0.layer_scale1.lambda1"].shape == (16,)
    attention = next(
        m for m in layer.modules() if hasattr(m, "num_attention_heads") or hasattr(m, "num_heads")
    )
    heads = getattr(attention, "num_attention_heads", getattr(attention, "num_heads", None))
    assert heads == 2
    # Every head keeps the same positions (Torch-Pruning's head-dimension rule, also the named adapters').
    query = next(n for n in plan.kept_indices if n.endswith(("q_proj.weight", "query.weight")))
    kept = plan.kept_indices[query][0]
    assert len(kept) == 16 and [i - 16 for i in kept[8:]] == kept[:8] and max(kept[:8]) < 16
    # The classifier reads cls ⊕ mean(patches): both halves lose the same channels.
    classifier_inputs = plan.kept_indices["classifier.weight"][1]
    assert len(classifier_inputs) == 32 and classifier_inputs[:16] == [i - 32 for i in classifier_inputs[16:]]


def test_families_neither_path_can_prune_are_refused_by_name_with_the_way_to_run_them():
    pvt = PvtV2ForImageClassification(
        PvtV2Config(image_size=32, hidden_sizes=[8, 16, 32, 64], num_attention_heads=[1, 2, 2, 4],
                    depths=[1, 1, 1, 1], sr_ratios=[4, 2, 1, 1], num_labels=3)
    )  # fmt: skip
    expected = r"PvtV2ForImageClassification \(model_type 'pvt_v2'\) cannot be pruned: its attention .*pruning_ratio=0"
    with pytest.raises(NotImplementedError, match=expected):
        check_supported_model(pvt, pruning_ratio=0.5)
    with pytest.raises(NotImplementedError, match=expected):
        prune_model(pvt, 0.5)
    check_supported_model(pvt, pruning_ratio=0.0)  # the dense model can still select for itself
    surrogate, plan = prune_model(pvt, 0.0)
    assert plan.kept_indices == {}


def test_the_support_table_lists_every_general_family_and_its_path():
    table = support_table_markdown()
    for family in GENERAL_FAMILIES.values():
        assert f"| `{family.model_class}` | general (replay) |" in table
    assert "`PvtV2ForImageClassification`" in table and "FocalNet" in table


def test_the_readme_shows_the_generated_support_table():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert support_table_markdown() in readme
