import json

import pytest
import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import SaveStrategy

from prunefuse_hf.constants import DEFAULT_NUM_ROUNDS, METHODS
from prunefuse_hf.selection.strategies import STRATEGIES
from prunefuse_hf.trainer.prunefuse_config import PruneFuseConfig


def make_config(**kwargs):
    kwargs.setdefault("output_dir", "unused")
    return PruneFuseConfig(**kwargs)


def test_defaults_changed_from_training_arguments():
    config = PruneFuseConfig()
    stock = TrainingArguments()
    assert config.output_dir == "prunefuse-output"
    assert config.remove_unused_columns is False and stock.remove_unused_columns is True
    assert config.save_strategy == SaveStrategy.NO and stock.save_strategy != SaveStrategy.NO
    assert config.logging_steps == 10 and stock.logging_steps == 500
    assert config.report_to == []
    # Defaults that train a vision model from scratch (the paper's SGD protocol), not AdamW's fine-tuning ones.
    assert (config.learning_rate, stock.learning_rate) == (0.05, 5e-5)
    assert config.optim == "sgd" and config.optim_args == "momentum=0.9" and stock.optim != "sgd"
    assert (config.weight_decay, config.lr_scheduler_type, config.num_train_epochs) == (5e-4, "cosine", 5)
    assert (config.per_device_train_batch_size, stock.per_device_train_batch_size) == (128, 8)
    assert config.accelerator_config.split_batches is True and stock.accelerator_config.split_batches is False


def test_prunefuse_defaults():
    config = make_config(seed=7)
    assert config.pruning_ratio == 0.5
    assert config.importance == "l2"
    assert config.strategy == "least_confidence"
    assert config.initial_labeled_size == 1000
    assert config.query_size == [1000]
    assert config.num_rounds == DEFAULT_NUM_ROUNDS == 4
    assert config.query_sizes() == [1000] * 4
    assert config.selection_seed == 7  # None means "use seed"
    assert config.surrogate_init == "reinit"
    assert config.fusion is True and config.fusion_init == "dense_init" and config.copy_norm_stats is True
    assert config.sync_every == 0
    assert (config.distill_alpha, config.distill_temperature) == (0.5, 4.0)


def test_every_field_has_help():
    from dataclasses import fields

    own = {f.name for f in fields(PruneFuseConfig)} - {f.name for f in fields(TrainingArguments)}
    assert "pruning_ratio" in own
    for f in fields(PruneFuseConfig):
        if f.name in own:
            assert f.metadata.get("help"), f.name


@pytest.mark.parametrize(
    "field_name, value, message",
    [
        ("pruning_ratio", 1.0, r"pruning_ratio must be a number in \[0, 1\).*got 1.0"),
        ("pruning_ratio", -0.1, r"pruning_ratio must be .*got -0.1"),
        ("pruning_ratio", "half", r"pruning_ratio must be .*got 'half'"),
        ("importance", "l1", r"importance must be one of 'l2', got 'l1'"),
        ("strategy", "most_confused", r"strategy must be one of .*'least_confidence'.*got 'most_confused'"),
        ("initial_labeled_size", -1, r"initial_labeled_size must be an integer >= 0, got -1"),
        ("query_size", 0, r"query_size must be an integer >= 1, got 0"),
        ("query_size", [100, -5], r"query_size must be an integer >= 1, got -5"),
        ("query_size", [], r"query_size must be an integer >= 1 or a non-empty list"),
        ("num_rounds", 0, r"num_rounds must be an integer >= 1, got 0"),
        ("scoring_batch_size", 0, r"scoring_batch_size must be an integer >= 1, got 0"),
        ("selection_seed", -1, r"selection_seed must be an integer >= 0, got -1"),
        ("surrogate_init", "cold", r"surrogate_init must be one of 'reinit', 'warm', got 'cold'"),
        ("surrogate_num_train_epochs", 0, r"surrogate_num_train_epochs must be a number > 0 or None, got 0"),
        (
            "surrogate_learning_rate",
            -1e-3,
            r"surrogate_learning_rate must be a number > 0 or None, got -0.001",
        ),
        (
            "surrogate_per_device_train_batch_size",
            0,
            r"surrogate_per_device_train_batch_size must be an integer >= 1, got 0",
        ),
        ("fusion", "yes", r"fusion must be True or False, got 'yes'"),
        ("fusion_init", "zeros", r"fusion_init must be one of 'dense_init', 'fresh', got 'zeros'"),
        ("copy_norm_stats", 1, r"copy_norm_stats must be True or False, got 1"),
        ("sync_every", -1, r"sync_every must be an integer >= 0, got -1"),
        ("distill_alpha", 1.5, r"distill_alpha must be a number in \[0, 1\], got 1.5"),
        ("distill_temperature", 0, r"distill_temperature must be a number > 0, got 0"),
        (
            "pixel_cache_format",
            "webp",
            r"pixel_cache_format must be one of 'auto', 'raw', 'jpeg', 'png', got 'webp'",
        ),
        ("dataset_num_proc", 0, r"dataset_num_proc must be an integer >= 1, got 0"),
        ("pixel_cache_max_size", "lots", r"pixel_cache_max_size must be a size such as '50GB'.*got 'lots'"),
        ("pixel_cache_max_size", -1, r"pixel_cache_max_size must be a size such as '50GB'.*got -1"),
        ("pixel_cache_scope", "pool", r"pixel_cache_scope must be one of 'run', 'all', got 'pool'"),
    ],
)
def test_invalid_values_raise_naming_field_and_value(field_name, value, message):
    with pytest.raises(ValueError, match=message):
        make_config(**{field_name: value})


def test_sync_every_requires_fusion():
    with pytest.raises(ValueError, match="sync_every must be 0 when fusion is False, got sync_every=2"):
        make_config(fusion=False, sync_every=2)
    assert make_config(fusion=False).sync_every == 0
    assert make_config(sync_every=2).sync_every == 2


def test_valid_edge_values_are_accepted():
    config = make_config(pruning_ratio=0, distill_alpha=0, strategy="random")
    assert config.pruning_ratio == 0.0 and config.distill_alpha == 0.0
    assert make_config(distill_alpha=1).distill_alpha == 1.0


def test_strategies_come_from_the_registry():
    for name in (
        "random",
        "least_confidence",
        "entropy",
        "margin",
        "kcenter_greedy",
        "badge",
        "cluster_margin",
        "dropquery",
        "bald",
    ):
        assert name in STRATEGIES
        method = "feature_proxy" if name == "dropquery" else "prunefuse"  # dropquery needs the linear probe
        assert make_config(method=method, strategy=name).strategy == name
    help_text = {f.name: f.metadata["help"] for f in __import__("dataclasses").fields(PruneFuseConfig)}[
        "strategy"
    ]
    assert all(f"'{name}'" in help_text for name in STRATEGIES)


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_sets_every_field_it_names(method):
    config = make_config(method=method)
    for name, value in METHODS[method].items():
        assert getattr(config, name) == value, name
    assert config.method_overrides == {}


def test_method_values_per_baseline():
    dense_al, svp, random_, prunefuse = (
        make_config(method=m) for m in ("dense_al", "svp", "random", "prunefuse")
    )
    # Dense-selector AL: the dense model selects, and the final model is a fresh dense model (no fusion, no KD).
    assert (dense_al.pruning_ratio, dense_al.fusion, dense_al.distill_alpha) == (0.0, False, 0.0)
    assert (svp.pruning_ratio, svp.fusion, svp.distill_alpha) == (0.5, False, 0.0)
    assert (random_.strategy, random_.fusion, random_.distill_alpha) == ("random", False, 0.0)
    assert not random_.needs_teacher and not dense_al.needs_teacher
    assert (prunefuse.fusion, prunefuse.distill_alpha, prunefuse.needs_teacher) == (True, 0.5, True)


def test_explicit_fields_win_over_the_method_and_are_recorded():
    config = make_config(method="svp", distill_alpha=0.3, pruning_ratio=0.7)
    assert (config.fusion, config.distill_alpha, config.pruning_ratio) == (False, 0.3, 0.7)
    assert config.method_overrides == {"distill_alpha": 0.3, "pruning_ratio": 0.7}
    # Giving the method's own value is not an override.
    assert make_config(method="svp", fusion=False).method_overrides == {}


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match=r"method must be one of .*'svp'.*got 'SVP'"):
        make_config(method="SVP")


@pytest.mark.parametrize(
    "query_size, num_rounds, expected_sizes, expected_rounds",
    [
        (500, None, [500] * DEFAULT_NUM_ROUNDS, DEFAULT_NUM_ROUNDS),
        (500, 2, [500, 500], 2),
        ([500], 3, [500, 500, 500], 3),
        ([4000, 5000, 5000], None, [4000, 5000, 5000], 3),
        ([4000, 5000], 2, [4000, 5000], 2),
    ],
)
def test_query_size_int_or_list(query_size, num_rounds, expected_sizes, expected_rounds):
    config = make_config(query_size=query_size, num_rounds=num_rounds)
    assert isinstance(config.query_size, list)
    assert config.num_rounds == expected_rounds
    assert config.query_sizes() == expected_sizes


def test_query_size_list_must_match_num_rounds():
    with pytest.raises(
        ValueError, match=r"query_size lists 2 per-round sizes \[4000, 5000\] but num_rounds=3"
    ):
        make_config(query_size=[4000, 5000], num_rounds=3)


def test_query_sizes_for_other_round_counts():
    assert make_config(query_size=100).query_sizes(6) == [100] * 6
    config = make_config(query_size=[1, 2])
    assert config.query_sizes(2) == [1, 2]
    with pytest.raises(ValueError, match="num_rounds=5"):
        config.query_sizes(5)


def test_surrogate_training_args_apply_overrides(tmp_path):
    config = make_config(
        num_train_epochs=3,
        learning_rate=1e-3,
        per_device_train_batch_size=32,
        weight_decay=5e-4,
        surrogate_num_train_epochs=1.5,
        surrogate_learning_rate=0.1,
        surrogate_per_device_train_batch_size=64,
    )
    args = config.surrogate_training_args(str(tmp_path / "surrogate"))
    assert isinstance(args, TrainingArguments)
    assert args.output_dir == str(tmp_path / "surrogate")
    assert (args.num_train_epochs, args.learning_rate, args.per_device_train_batch_size) == (1.5, 0.1, 64)
    assert args.weight_decay == 5e-4 and args.remove_unused_columns is False and args.report_to == []
    # The original is untouched.
    assert (config.output_dir, config.num_train_epochs, config.learning_rate) == ("unused", 3, 1e-3)
    assert config.per_device_train_batch_size == 32


def test_surrogate_training_args_default_to_training_settings(tmp_path):
    config = make_config(num_train_epochs=2, learning_rate=1e-3, per_device_train_batch_size=16)
    args = config.surrogate_training_args(str(tmp_path))
    assert (args.num_train_epochs, args.learning_rate, args.per_device_train_batch_size) == (2, 1e-3, 16)


def test_dense_training_args_ignore_surrogate_overrides(tmp_path):
    config = make_config(
        num_train_epochs=2, learning_rate=1e-3, surrogate_learning_rate=0.1, surrogate_num_train_epochs=9
    )
    args = config.dense_training_args(str(tmp_path / "fused"))
    assert args.output_dir == str(tmp_path / "fused")
    assert (args.num_train_epochs, args.learning_rate) == (2, 1e-3)
    assert (args.distill_alpha, args.distill_temperature) == (0.5, 4.0)


RECIPE = """
# Model arguments
output_dir: runs/fmnist
seed: 3
# Training arguments
num_train_epochs: 2
learning_rate: 0.05
per_device_train_batch_size: 128
# PruneFuse arguments
pruning_ratio: 0.7
strategy: entropy
initial_labeled_size: 500
query_size: [1000, 2000]
surrogate_init: warm
surrogate_num_train_epochs: 1
fusion: true
fusion_init: fresh
copy_norm_stats: false
sync_every: 1
distill_alpha: 0.0
distill_temperature: 2.0
"""


def test_parse_yaml_recipe_and_round_trip_through_json():
    (config,) = HfArgumentParser(PruneFuseConfig).parse_dict(yaml.safe_load(RECIPE))
    assert config.pruning_ratio == 0.7 and config.strategy == "entropy"
    assert config.query_sizes() == [1000, 2000] and config.num_rounds == 2
    assert (
        config.surrogate_init == "warm" and config.fusion_init == "fresh" and config.copy_norm_stats is False
    )
    assert config.selection_seed == 3 and config.num_train_epochs == 2

    saved = json.loads(config.to_json_string())
    own = [
        "pruning_ratio",
        "importance",
        "strategy",
        "initial_labeled_size",
        "query_size",
        "num_rounds",
        "scoring_batch_size",
        "selection_seed",
        "surrogate_init",
        "surrogate_num_train_epochs",
        "surrogate_learning_rate",
        "surrogate_per_device_train_batch_size",
        "fusion",
        "fusion_init",
        "copy_norm_stats",
        "sync_every",
        "distill_alpha",
        "distill_temperature",
    ]
    (reloaded,) = HfArgumentParser(PruneFuseConfig).parse_dict(
        {k: saved[k] for k in own + ["output_dir", "seed"]}
    )
    for name in own:
        assert getattr(reloaded, name) == getattr(config, name), name


def test_int_query_size_from_yaml():
    (config,) = HfArgumentParser(PruneFuseConfig).parse_dict({"query_size": 250, "num_rounds": 3})
    assert config.query_sizes() == [250, 250, 250]


def test_command_line_overrides():
    parser = HfArgumentParser(PruneFuseConfig)
    (config,) = parser.parse_args_into_dataclasses(
        [
            "--query_size",
            "4000",
            "5000",
            "--pruning_ratio",
            "0.8",
            "--fusion",
            "false",
            "--selection_seed",
            "11",
        ]
    )
    assert config.query_sizes() == [4000, 5000]
    assert config.pruning_ratio == 0.8 and config.fusion is False and config.selection_seed == 11
    (config,) = parser.parse_args_into_dataclasses(["--query_size", "300", "--num_rounds", "2"])
    assert config.query_sizes() == [300, 300]


def test_unknown_recipe_key_is_rejected():
    with pytest.raises(ValueError, match="pruning_rate"):
        HfArgumentParser(PruneFuseConfig).parse_dict({"pruning_rate": 0.5})


@pytest.mark.parametrize("field_name", ["hub_model_id", "hub_subset_id", "hub_surrogate_id", "hub_query_id"])
def test_hub_ids_are_validated_when_the_config_is_built(field_name):
    with pytest.raises(ValueError, match=rf"{field_name} 'me/ fmnist-prunefuse' is not a valid Hub"):
        make_config(push_to_hub=True, **{field_name: "me/ fmnist-prunefuse"})
    assert getattr(make_config(**{field_name: "me/fmnist-prunefuse"}), field_name) == "me/fmnist-prunefuse"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"initial_strategy": "kmeans"}, "initial_strategy must be one of 'random', 'typiclust', got 'kmeans'."),
        ({"selector": "probe"}, "selector must be one of 'trained', 'linear_probe', got 'probe'."),
        ({"method": "feature_proxy", "strategy": "bald"},
         "strategy 'bald' needs MC-dropout passes of a trained model, but selector='linear_probe' scores with a "
         "linear head (no dropout); choose another strategy or selector='trained'."),
        ({"surrogate_distill_epochs": -1}, "surrogate_distill_epochs must be a number >= 0 (0 = none), got -1."),
        ({"method": "dense_al", "surrogate_distill_epochs": 1},
         "surrogate_distill_epochs=1.0 needs a pruned surrogate, but pruning_ratio is 0 (the dense model is its own "
         "selector); set pruning_ratio > 0 or surrogate_distill_epochs: 0."),
    ],
)  # fmt: skip
def test_selector_cold_start_and_distillation_settings_are_checked(overrides, message):
    with pytest.raises(ValueError) as error:
        make_config(**overrides)
    assert str(error.value) == message


def test_the_pretrained_model_methods_and_the_cold_start():
    proxy = make_config(method="feature_proxy")
    assert (proxy.selector, proxy.pruning_ratio, proxy.fusion, proxy.distill_alpha) == (
        "linear_probe",
        0.0,
        False,
        0.0,
    )
    assert not proxy.needs_teacher and proxy.initial_strategy == "random"
    distilled = make_config(method="prunefuse_distilled")
    assert (distilled.surrogate_distill_epochs, distilled.fusion, distilled.selector) == (
        1.0,
        True,
        "trained",
    )
    # Every method works with either first query; an explicit selector is recorded as an override.
    assert make_config(method="svp", initial_strategy="typiclust").initial_strategy == "typiclust"
    assert make_config(method="svp", selector="linear_probe").method_overrides == {"selector": "linear_probe"}
    help_text = {f.name: f.metadata["help"] for f in __import__("dataclasses").fields(PruneFuseConfig)}
    assert "'feature_proxy': a linear head" in help_text["method"]
    assert "'random', 'typiclust'" in help_text["initial_strategy"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"method": "feature_proxy", "proxy_refresh_every": -1}, "proxy_refresh_every must be an integer >= 0, got -1."),
        ({"method": "feature_proxy", "proxy_refresh_every": 1.5},
         "proxy_refresh_every must be an integer >= 0, got 1.5."),
        ({"method": "dense_al", "proxy_refresh_every": 2},
         "proxy_refresh_every=2 refreshes the linear probe's dense-model features, but selector='trained' and "
         "pruning_ratio=0.0; set selector='linear_probe' and pruning_ratio=0 (method 'feature_proxy'), or "
         "proxy_refresh_every=0."),
        ({"method": "feature_proxy_refreshed", "pruning_ratio": 0.5},
         "proxy_refresh_every=1 refreshes the linear probe's dense-model features, but selector='linear_probe' and "
         "pruning_ratio=0.5; set selector='linear_probe' and pruning_ratio=0 (method 'feature_proxy'), or "
         "proxy_refresh_every=0."),
        ({"method": "feature_proxy_refreshed", "strategy": "random"},
         "proxy_refresh_every=1 refreshes features that strategy 'random' never reads; choose a model-based strategy "
         "or proxy_refresh_every=0."),
        ({"method": "dense_al", "strategy": "dropquery"},
         "strategy 'dropquery' drops out the input features of the linear probe, but selector='trained'; set "
         "selector='linear_probe' (method 'feature_proxy' or 'feature_proxy_refreshed')."),
        ({"method": "feature_proxy", "strategy": "dropquery", "dropquery_dropout": 1.0},
         "dropquery_dropout must be a number in (0, 1), got 1.0."),
        ({"method": "feature_proxy", "strategy": "dropquery", "dropquery_dropout": 0},
         "dropquery_dropout must be a number in (0, 1), got 0."),
    ],
)  # fmt: skip
def test_refresh_and_dropquery_settings_are_refused_naming_field_value_and_fix(overrides, message):
    with pytest.raises(ValueError) as error:
        make_config(**overrides)
    assert str(error.value) == message


def test_refresh_rounds_and_dropquery_defaults():
    refreshed = make_config(method="feature_proxy_refreshed", query_size=[10] * 5)
    assert (refreshed.selector, refreshed.pruning_ratio, refreshed.proxy_refresh_every) == (
        "linear_probe",
        0.0,
        1,
    )
    assert [r for r in range(1, 7) if refreshed.refreshes_proxy(r)] == [2, 3, 4, 5]
    every_two = make_config(method="feature_proxy", proxy_refresh_every=2, query_size=[10] * 5)
    assert [r for r in range(1, 7) if every_two.refreshes_proxy(r)] == [3, 5]
    assert every_two.method_overrides == {"proxy_refresh_every": 2}
    assert not any(make_config(method="feature_proxy").refreshes_proxy(r) for r in range(1, 7))
    # DropQuery's passes default to the paper's 3 (bald keeps 10); an explicit value wins.
    dropquery = make_config(method="feature_proxy", strategy="dropquery")
    assert (dropquery.mc_samples, dropquery.dropquery_dropout) == (3, 0.75)
    assert make_config(method="feature_proxy", strategy="dropquery", mc_samples=5).mc_samples == 5
    assert make_config(method="dense_al", strategy="bald").mc_samples == 10
