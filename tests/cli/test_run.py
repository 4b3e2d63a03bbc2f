from pathlib import Path

import pytest

from prunefuse_hf.cli.main import main
from prunefuse_hf.cli.run import parse_run_arguments
from prunefuse_hf.constants import METHODS

RECIPE = """
# Model arguments
model_config: {model_type: resnet, num_channels: 1, hidden_sizes: [8, 16], depths: [1, 1], embedding_size: 8}
# Data arguments
dataset_name: fashion_mnist
max_pool_size: 500
# PruneFuse
pruning_ratio: 0.5
query_size: [100, 200]
output_dir: runs/x
learning_rate: 0.1
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def test_recipe_values_are_parsed_and_flags_override_them(recipe):
    model_args, data_args, config, run_args, effective = parse_run_arguments(
        ["--config", str(recipe), "--learning_rate", "0.01", "--strategy", "entropy", "--resume"]
    )
    assert model_args.model_config["hidden_sizes"] == [8, 16]
    assert data_args.max_pool_size == 500
    assert config.query_size == [100, 200] and config.num_rounds == 2
    assert config.learning_rate == 0.01 and config.strategy == "entropy"
    assert run_args.resume and not run_args.overwrite
    assert effective["learning_rate"] == 0.01 and effective["pruning_ratio"] == 0.5


def test_recipe_and_flags_pick_the_refreshed_proxy_and_dropquery(recipe, capsys):
    recipe.write_text(
        RECIPE.replace("pruning_ratio: 0.5", "method: feature_proxy_refreshed\nproxy_refresh_every: 2")
    )
    _, _, config, _, _ = parse_run_arguments(["--config", str(recipe), "--strategy", "dropquery",
                                              "--dropquery_dropout", "0.5"])  # fmt: skip
    assert (config.method, config.selector, config.proxy_refresh_every) == (
        "feature_proxy_refreshed",
        "linear_probe",
        2,
    )
    assert (config.strategy, config.dropquery_dropout, config.mc_samples) == ("dropquery", 0.5, 3)
    assert config.method_overrides == {"strategy": "dropquery", "proxy_refresh_every": 2}
    assert main(["run", "--config", str(recipe), "--method", "dense_al", "--strategy", "dropquery"]) == 2
    assert "strategy 'dropquery' drops out the input features of the linear probe" in capsys.readouterr().err


def test_unknown_recipe_key_is_named(recipe, capsys):
    recipe.write_text(RECIPE + "pruning_ration: 0.3\n")
    assert main(["run", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "Unknown key(s) in recipe" in err and "'pruning_ration'" in err


def test_unknown_flag_is_named(recipe, capsys):
    assert main(["run", "--config", str(recipe), "--no_such_field", "1"]) == 2
    assert "--no_such_field" in capsys.readouterr().err


def test_out_of_range_value_is_named(recipe, capsys):
    assert main(["run", "--config", str(recipe), "--pruning_ratio", "1.2"]) == 2
    assert "pruning_ratio must be a number in [0, 1)" in capsys.readouterr().err


def test_recipe_without_a_model_is_refused(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text("dataset_name: fashion_mnist\n")
    assert main(["run", "--config", str(path)]) == 2
    assert "Set model_name_or_path" in capsys.readouterr().err


def test_help_is_short_and_points_to_every_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: prunefuse-hf run --config RECIPE.yaml")
    assert len(text.splitlines()) < 150
    for option in ("--config", "--resume", "--verbose", "--model_name_or_path", "--dataset_name", "--method",
                   "--pruning_ratio", "--query_size", "--num_train_epochs", "--learning_rate"):  # fmt: skip
        assert option in text, option
    assert "--adam_beta1" not in text and "--surrogate_init " not in text
    assert "surrogate_init" in text  # named among the other fields
    assert "`prunefuse-hf run --help-all` describes them all." in text


def test_help_all_names_the_command_and_lists_its_own_options_first(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help-all"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: prunefuse-hf run --config RECIPE.yaml")
    headings = ["this command:", "model (ModelArguments):", "data (DataArguments):",
                "PruneFuse (PruneFuseConfig):", "training (transformers.TrainingArguments"]  # fmt: skip
    positions = [text.index(heading) for heading in headings]
    assert positions == sorted(positions)
    # The run's own options come before the hundreds of TrainingArguments fields.
    assert text.index("--config") < text.index("--method") < text.index("--adam_beta1")
    assert text.index("--pruning_ratio") < text.index("training (transformers.TrainingArguments")


RECIPES = sorted(
    p for p in (Path(__file__).parents[2] / "recipes").rglob("*.yaml") if "accelerate" not in p.parts[-2]
)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_recipe_parses_and_its_method_sets_its_fields(path):
    model_args, data_args, config, _, effective = parse_run_arguments(["--config", str(path)])
    assert model_args.model_source is not None and data_args.dataset_name
    assert Path(config.output_dir).name == effective["method"]  # the run directory names what ran
    method = METHODS[effective["method"]]
    for name, value in method.items():
        assert getattr(config, name) == effective.get(name, value), (path, name)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run"], "No recipe: prunefuse-hf run --config RECIPE.yaml"),
        (["run", "--confg", "recipe.yaml"], "Unknown argument(s): ['--confg', 'recipe.yaml']"),
        (["run", "--config", "missing.yaml"], "--config missing.yaml: no such recipe file"),
    ],
)
def test_a_missing_or_mistyped_recipe_is_named_before_anything_else(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--eval_split", "null", "--max_eval_samples", "None"],
                                   ["--eval_split=None", "--max_eval_samples=null"]])  # fmt: skip
def test_null_on_the_command_line_is_none_as_in_a_recipe(flags):
    recipe = str(Path(__file__).parents[2] / "recipes" / "synthetic-detection-detr" / "prunefuse.yaml")
    _, data_args, config, _, effective = parse_run_arguments(["--config", recipe, *flags, "--seed", "3"])
    # Not a split named "null", nor an int refused by argparse.
    assert data_args.eval_split is None and data_args.max_eval_samples is None and config.seed == 3
    assert effective["eval_split"] is None and effective["max_eval_samples"] is None
    # A field that does not allow None keeps the string, for its own check to refuse.
    _, data_args, *_ = parse_run_arguments(["--config", recipe, "--dataset_name", "null"])
    assert data_args.dataset_name == "null"
