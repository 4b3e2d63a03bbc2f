"""Every strategy, method and cold start on every image classifier a run accepts, or a refusal before any work.

What differs from one classifier to the next is tested on each tiny model directly: the pooled features (the input
of the layer that gives the logits, whatever it is called) on the dense model and on its surrogate, how they pair for
the label-free distillation, MC dropout for BALD (or a refusal whose way out works), and the refusal of a class that
cannot run on images alone. A few whole runs cover the riskiest families; the whole matrix, one tiny round per
combination, is a slow test.
"""

import copy
import functools
import re

import pytest
import torch
import transformers
from transformers import AutoConfig

from conftest import (
    GENERAL_TINY_CONFIGS,
    TEXT_TOWER,
    TINY_CONFIGS,
    VISION_TOWER,
    VIT_LIKE,
    make_image_dataset,
)
from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer
from prunefuse_hf.constants import INITIAL_STRATEGIES, METHODS
from prunefuse_hf.pruning.prune import prune_model
from prunefuse_hf.pruning.support import check_supported_model, classifier_class_name
from prunefuse_hf.selection.scoring import (
    active_dropout_layers,
    classifier_module,
    dropout_settings,
    score_pool,
)
from prunefuse_hf.selection.strategies import STRATEGIES
from prunefuse_hf.trainer.features import classifier_input_indices

NUM_LABELS = 4

# Image classifiers transformers offers beyond the pruning tests' families (a run accepts them at pruning_ratio 0,
# and at any ratio when the general path prunes them).
OTHER_TINY_CONFIGS = {
    "bit": dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck", num_groups=4),
    # depth [1, 2, 3]: CvT indexes each stage's drop-path rates by the stage number.
    "cvt": dict(embed_dim=[8, 16, 32], num_heads=[1, 2, 2], depth=[1, 2, 3]),
    "donut-swin": dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4),
    "focalnet": dict(embed_dim=8, depths=[1, 1], hidden_sizes=[8, 16], focal_levels=[2, 2], focal_windows=[3, 3],
                     image_size=32, patch_size=4),
    # HGNetV2 and TextNet: `classifier` only pools; the logits come from `fc`.
    "hgnet_v2": dict(stem_channels=[3, 8, 8], stage_in_channels=[8, 16, 32, 64], stage_mid_channels=[8, 8, 16, 16],
                     stage_out_channels=[16, 32, 64, 128], stage_num_blocks=[1, 1, 1, 1],
                     stage_numb_of_layers=[2, 2, 2, 2], hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1]),
    "textnet": dict(image_size=[32, 32]),
    "hiera": dict(embed_dim=8, image_size=[64, 64], patch_size=[7, 7], patch_stride=[4, 4], patch_padding=[3, 3],
                  depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], query_stride=[2, 2], masked_unit_size=[8, 8]),
    "ijepa": dict(VIT_LIKE, intermediate_size=64),
    "vit_msn": dict(VIT_LIKE, intermediate_size=64),
    "pvt": dict(image_size=32, num_encoder_blocks=2, depths=[1, 1], sequence_reduction_ratios=[2, 1],
                hidden_sizes=[8, 16], patch_sizes=[4, 2], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2]),
    "pvt_v2": dict(image_size=32, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                   patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2]),
    "segformer": dict(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2],
                      decoder_hidden_size=16),
    # Two heads (`head`, `dist_head`) on the same features, their logits averaged.
    "swiftformer": dict(embed_dims=[8, 16, 32, 64], depths=[1, 1, 1, 1]),
    "metaclip_2": dict(vision_config=VISION_TOWER, text_config=TEXT_TOWER),
    "perceiver": dict(d_model=32, num_latents=8, d_latents=32, num_blocks=1, num_self_attends_per_block=1,
                      num_self_attention_heads=2, num_cross_attention_heads=1, image_size=32),
}  # fmt: skip
# timm's wrapper needs timm, which needs torchvision (not importable here); dinat needs natten.
ACCEPTED = {
    **TINY_CONFIGS,
    **{k: v for k, v in GENERAL_TINY_CONFIGS.items() if k != "timm_wrapper"},
    **OTHER_TINY_CONFIGS,
}
# Image classifiers that cannot run on images alone (text tokens, patch positions): refused at any setting.
IMAGES_ALONE_REFUSED = {
    "imagegpt": dict(n_embd=16, n_layer=1, n_head=2, n_positions=64),
    "siglip2": dict(vision_config=VISION_TOWER, text_config=TEXT_TOWER),
}
IMAGE_SIZES = {"hiera": 64, "mobilevit": 64, "mobilevitv2": 64, "levit": 64}
# The general path cannot prune these (refused by name, with pruning_ratio: 0, which runs them).
UNPRUNABLE = {"donut-swin", "focalnet", "hiera", "pvt", "pvt_v2", "segformer", "perceiver", "cvt"}
# Pruning takes over a minute on two cores.
SLOW_TO_PRUNE = {"mobilevitv2"}


def _slow_if(names):
    return [
        pytest.param(name, marks=pytest.mark.slow) if name in names else name for name in sorted(ACCEPTED)
    ]


def build(model_type, seed=0, **overrides):
    torch.manual_seed(seed)
    values = {**copy.deepcopy({**ACCEPTED, **IMAGES_ALONE_REFUSED}[model_type]), **overrides}
    config = AutoConfig.for_model(model_type, num_labels=NUM_LABELS, **values)
    return getattr(transformers, classifier_class_name(model_type))(config).eval()


def pixels(model, size=6, seed=0):
    model_type = model.config.model_type
    channels = getattr(getattr(model.config, "vision_config", model.config), "num_channels", 3)
    side = IMAGE_SIZES.get(model_type, 32)
    return torch.randn(size, channels, side, side, generator=torch.Generator().manual_seed(seed))


class Batches(torch.utils.data.Dataset):
    def __init__(self, pixel_values):
        self.pixel_values = pixel_values

    def __len__(self):
        return len(self.pixel_values)

    def __getitem__(self, rows):
        return {"pixel_values": self.pixel_values[rows]}


def scores(model, x, outputs=("probs", "features"), **kwargs):
    return score_pool(model, Batches(x), batch_size=4, outputs=outputs, show_progress=False, **kwargs)


def assert_features_give_the_logits(model, x):
    """The scored features are what the model's logits are computed from: every linear layer with one output per
    class applied to them gives the logits, or their mean does (two heads on the same features)."""
    scored = scores(model, x)
    with torch.no_grad():
        logits = model(pixel_values=x).logits
        width = scored.features.shape[1]  # (Swin V2's position-bias MLP may also have NUM_LABELS outputs)
        heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == NUM_LABELS
                 and m.in_features == width]  # fmt: skip
        outputs = [head(scored.features) for head in heads]
    assert scored.features.shape == (len(x), classifier_module(model).in_features)
    assert any(torch.allclose(out, logits, atol=1e-4) for out in outputs) or torch.allclose(
        torch.stack(outputs).mean(0), logits, atol=1e-4
    ), type(model).__name__
    assert torch.allclose(scored.probs, torch.softmax(logits, -1), atol=1e-5)
    assert torch.isfinite(scored.features).all()
    return scored


@functools.cache
def _pruned(model_type):
    dense = build(model_type)
    return dense, *prune_model(dense, 0.5)


# ----- the pieces that differ per model -----


@pytest.mark.parametrize("model_type", sorted(ACCEPTED))
def test_dense_features_are_the_input_of_the_layer_that_gives_the_logits(model_type):
    model = build(model_type)
    check_supported_model(model, pruning_ratio=0.0)
    assert_features_give_the_logits(model, pixels(model))


@pytest.mark.parametrize("model_type", _slow_if(SLOW_TO_PRUNE))
def test_surrogate_features_pair_with_the_dense_features_or_pruning_is_refused_with_a_way_out(model_type):
    if model_type in UNPRUNABLE:
        model = build(model_type)
        with pytest.raises(NotImplementedError, match=r"cannot be pruned.*pruning_ratio=0"):
            prune_model(model, 0.5)
        check_supported_model(
            model, pruning_ratio=0.0
        )  # the way out is accepted (and its features work above)
        return
    dense, surrogate, plan = copy.deepcopy(_pruned(model_type))
    x = pixels(dense)
    dense_features = scores(dense, x).features
    surrogate_features = assert_features_give_the_logits(surrogate, x).features
    # What the label-free distillation pairs: the surrogate's features with the dense ones at the kept indices.
    kept = classifier_input_indices(surrogate, plan)
    paired = dense_features if kept is None else dense_features[:, kept]
    assert paired.shape == surrogate_features.shape
    assert surrogate_features.shape[1] <= dense_features.shape[1]


@pytest.mark.parametrize("model_type", sorted(ACCEPTED))
def test_bald_samples_with_dropout_or_is_refused_with_a_way_out_that_works(model_type):
    model = build(model_type)
    x = pixels(model, size=4)
    try:
        active_dropout_layers(model)
    except ValueError as error:
        settings = dropout_settings(model)
        message = str(error)
        if not settings:
            assert re.search(
                r"No setting of \w+'s config adds dropout layers.*bald cannot run on it", message
            )
            return
        assert f"one of {', '.join(settings)} above 0" in message
        # The way out: the first setting named, above 0.
        value = model.config.to_dict()[settings[0]]
        model = build(model_type, **{settings[0]: [0.1] * len(value) if isinstance(value, list) else 0.1})
    with torch.no_grad():  # weights away from their initialization (some families start with constant logits)
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    mc = scores(model, x, outputs=("mc_probs", "probs"), mc_samples=3).mc_probs
    assert mc.shape == (4, 3, NUM_LABELS)
    assert (mc.std(dim=1) > 0).any()  # the samples differ: dropout was on
    assert not model.training


@pytest.mark.parametrize("model_type", sorted(IMAGES_ALONE_REFUSED))
@pytest.mark.parametrize("pruning_ratio", [0.0, 0.5])
def test_a_classifier_that_cannot_run_on_images_alone_is_refused_at_every_setting(model_type, pruning_ratio):
    model = build(model_type)
    with pytest.raises(ValueError, match=r"cannot run on images alone.*no setting runs it.*another family"):
        check_supported_model(model, pruning_ratio=pruning_ratio)


@pytest.mark.parametrize("model_type, to_use", [("levit", "LevitForImageClassification"),
                                                ("deit", "DeiTForImageClassification")])  # fmt: skip
def test_distilled_two_head_classes_are_refused_naming_the_class_that_runs(tmp_path, model_type, to_use):
    config = AutoConfig.for_model(model_type, num_labels=NUM_LABELS, **ACCEPTED[model_type])
    teacher = getattr(transformers, f"{to_use}WithTeacher")(config)
    pool = make_image_dataset(num_examples=32, num_classes=NUM_LABELS, mode="RGB")
    args = PruneFuseConfig(
        output_dir=str(tmp_path / "run"), initial_labeled_size=8, query_size=8, num_rounds=1
    )
    with pytest.raises(ValueError, match=rf"{to_use}WithTeacher .*Use {to_use}"):
        PruneFuseTrainer(teacher, args=args, train_dataset=pool)
    assert not (tmp_path / "run").exists()
    ok = _args(tmp_path / "ok", model_type, pruning_ratio=0.0)
    PruneFuseTrainer(getattr(transformers, to_use)(config), args=ok, train_dataset=pool)


def test_features_of_a_head_applied_twice_are_its_last_input():
    class Twice(torch.nn.Module):  # the head runs on an auxiliary token first, then on the pooled features
        def __init__(self):
            super().__init__()
            self.config = AutoConfig.for_model("resnet", num_labels=3)
            self.body = torch.nn.Linear(12, 5)
            self.fc = torch.nn.Linear(5, 3)

        def forward(self, pixel_values):
            hidden = self.body(pixel_values.flatten(1))
            self.fc(hidden * 0)
            return transformers.modeling_outputs.ImageClassifierOutput(logits=self.fc(hidden))

    model = Twice()
    x = torch.randn(6, 3, 2, 2)
    scored = scores(model, x)
    assert torch.allclose(model.fc(scored.features), model(x).logits)


# ----- refusals before any work, through the trainer -----


def _args(output_dir, model_type, **overrides):
    values = dict(output_dir=str(output_dir), initial_labeled_size=8, query_size=8, num_rounds=1,
                  num_train_epochs=1, per_device_train_batch_size=8, scoring_batch_size=32, disable_tqdm=True,
                  image_size=IMAGE_SIZES.get(model_type, 32), cache_pixels=False, mc_samples=2, seed=1)  # fmt: skip
    values.update(overrides)
    return PruneFuseConfig(**values)


class Decoded(Exception):
    """Raised where the pool would be decoded: anything refused must be refused before it."""


@pytest.fixture
def no_decoding(monkeypatch):
    from prunefuse_hf.data.preprocessing import ImagePreprocessor

    def refuse(*args, **kwargs):
        raise Decoded

    monkeypatch.setattr(ImagePreprocessor, "pixel_dataset", refuse)


def settings_matrix():
    """Every method (at its own strategy), every strategy (with dense_al and with prunefuse), every cold start."""
    for method in METHODS:
        yield dict(method=method)
    for strategy in STRATEGIES:
        yield dict(method="dense_al", strategy=strategy)
        yield dict(method="prunefuse", strategy=strategy)
    for initial in INITIAL_STRATEGIES:
        yield dict(method="prunefuse", initial_strategy=initial)


def expected_refusal(model_type, settings) -> str | None:
    """What the matrix expects: the setting a refusal must name, or `None` when the combination runs."""
    if settings.get("strategy") == "dropquery" and METHODS[settings["method"]]["selector"] == "trained":
        return r"strategy 'dropquery' drops out the input features of the linear probe"
    args = PruneFuseConfig(output_dir="unused", **settings)
    if args.pruning_ratio > 0 and model_type in UNPRUNABLE:
        return r"cannot be pruned.*pruning_ratio=0"
    if args.strategy == "bald" and args.selector == "trained":
        model = build(model_type)
        try:
            active_dropout_layers(model)
        except ValueError:
            return r"strategy 'bald'.*(above 0|bald cannot run on it)"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(ACCEPTED))
def test_every_setting_is_accepted_or_refused_before_the_pool_is_decoded(tmp_path, no_decoding, model_type):
    pool = make_image_dataset(num_examples=32, num_classes=NUM_LABELS, mode="RGB")
    for k, settings in enumerate(settings_matrix()):
        refusal = expected_refusal(model_type, settings)
        output_dir = tmp_path / f"run{k}"
        if refusal is None:
            with pytest.raises(Decoded):
                PruneFuseTrainer(
                    build(model_type), args=_args(output_dir, model_type, **settings), train_dataset=pool
                )
        else:  # refused by the config itself, or by the trainer
            with pytest.raises((ValueError, NotImplementedError), match=refusal):
                PruneFuseTrainer(
                    build(model_type), args=_args(output_dir, model_type, **settings), train_dataset=pool
                )
        assert not output_dir.exists()


# ----- whole runs -----


RISKY_RUNS = [
    # `classifier` only pools, the logits come from `fc`: every feature setting once.
    ("hgnet_v2", dict(method="prunefuse_distilled", strategy="badge", initial_strategy="typiclust")),
    ("hgnet_v2", dict(method="feature_proxy", strategy="kcenter_greedy")),
    ("hgnet_v2", dict(method="feature_proxy", strategy="cluster_margin")),
    # A head that normalizes first; attention heads the general path keeps dense.
    ("levit", dict(method="prunefuse_distilled", strategy="kcenter_greedy", initial_strategy="typiclust")),
    # Two heads averaged, stochastic depth as BALD's dropout.
    ("swiftformer", dict(method="prunefuse", strategy="bald", model_overrides=dict(drop_path_rate=0.1))),
    # Unprunable: its way out (pruning_ratio 0) with every feature setting.
    ("segformer", dict(method="feature_proxy", strategy="badge", initial_strategy="typiclust")),
]


@pytest.mark.parametrize("model_type, settings", RISKY_RUNS, ids=lambda v: v if isinstance(v, str) else "-".join(
    str(x) for x in v.values() if isinstance(x, str)))  # fmt: skip
def test_risky_families_run_a_whole_round(tmp_path, model_type, settings):
    settings = dict(settings)
    overrides = settings.pop("model_overrides", {})
    pool = make_image_dataset(num_examples=40, num_classes=NUM_LABELS, mode="RGB", seed=2)
    args = _args(tmp_path / "run", model_type, **settings)
    trainer = PruneFuseTrainer(build(model_type, **overrides), args=args, train_dataset=pool)
    trainer.train()
    assert trainer.done
    query = trainer.progress["queries"]["2"]
    assert query["strategy"] == args.strategy and len(query["pool_indices"]) == 8
    assert not set(query["pool_indices"]) & set(trainer.progress["queries"]["1"]["pool_indices"])
    assert trainer.progress["queries"]["1"]["strategy"] == args.initial_strategy
