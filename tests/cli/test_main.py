"""The `prunefuse-hf prune`, `fuse` and `cache` commands (run, compare, push and label are tested with their
modules)."""

import subprocess
import sys

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

from conftest import general_dense_model, make_image_dataset, tiny_resnet_config
from prunefuse_hf import PruningPlan, build_image_processor
from prunefuse_hf.cli.main import main
from prunefuse_hf.data.preprocessing import ImagePreprocessor
from prunefuse_hf.pruning import load_surrogate
from prunefuse_hf.pruning.cost import model_cost
from prunefuse_hf.pruning.plan import config_hash


def prune(model, output_dir, *extra):
    return main(
        ["prune", "--model", str(model), "--pruning_ratio", "0.5", "--output_dir", str(output_dir), *extra]
    )


def fuse(dense, surrogate, output_dir):
    return main(
        ["fuse", "--dense", str(dense), "--surrogate", str(surrogate), "--output_dir", str(output_dir)]
    )


def test_prune_then_fuse_from_the_command_line(tmp_path, capsys):
    tiny_resnet_config(num_labels=4).save_pretrained(tmp_path / "config")
    surrogate_dir, fused_dir = tmp_path / "surrogate", tmp_path / "fused"

    assert prune(tmp_path / "config", surrogate_dir) == 0
    out = capsys.readouterr().out
    assert "dense initialization saved" in out and "params" in out and "macs" in out
    surrogate = AutoModelForImageClassification.from_pretrained(surrogate_dir)
    assert surrogate.config.hidden_sizes == [8, 16]
    assert PruningPlan.from_pretrained(surrogate_dir).pruning_ratio == 0.5

    _assert_fusing_the_untrained_surrogate_changes_nothing(surrogate_dir, fused_dir, capsys)


def test_prune_names_the_input_size_of_its_mac_counts_as_the_run_would_count(tmp_path, capsys):
    tiny_resnet_config(num_labels=4).save_pretrained(tmp_path / "config")
    assert prune(tmp_path / "config", tmp_path / "at32", "--image_size", "32") == 0
    out = capsys.readouterr().out
    assert "MACs per image at 32×32 (--image_size)" in out
    macs_32 = int(out.split("macs")[1].split()[0].replace(",", ""))
    dense = AutoModelForImageClassification.from_pretrained(tmp_path / "at32" / "dense_init")
    assert macs_32 == model_cost(dense, (32, 32)).macs  # what a run at image_size 32 reports
    # No size anywhere: the count says which size it used and how to get the run's.
    assert prune(tmp_path / "config", tmp_path / "default") == 0
    assert "MACs per image at 64×64 (no size given; pass --image_size (the recipe's image_size)" in (
        capsys.readouterr().out
    )
    # A checkpoint with its own image processor is counted at the processor's output size.
    processor = build_image_processor(tiny_resnet_config(), image_size=24)
    dense.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    assert prune(tmp_path / "ckpt", tmp_path / "from_ckpt") == 0
    assert "MACs per image at 24×24 (the checkpoint's image processor)" in capsys.readouterr().out


def test_fuse_writes_a_pipeline_ready_model_with_the_image_processor(tmp_path, capsys):
    tiny_resnet_config(num_labels=4).save_pretrained(tmp_path / "config")
    assert prune(tmp_path / "config", tmp_path / "surrogate", "--image_size", "24") == 0
    assert fuse(tmp_path / "surrogate" / "dense_init", tmp_path / "surrogate", tmp_path / "fused") == 0
    assert (tmp_path / "fused" / "preprocessor_config.json").is_file()
    predictions = pipeline("image-classification", model=str(tmp_path / "fused"))(Image.new("RGB", (40, 30)))
    assert len(predictions) == 4
    # Checkpoints are written and read without progress bars.
    assert "Writing model shards" not in capsys.readouterr().err

    # Neither checkpoint has a processor and no size is known: said, with the fix.
    assert prune(tmp_path / "config", tmp_path / "bare") == 0
    for name in ("bare", "bare/dense_init"):
        (tmp_path / name / "preprocessor_config.json").unlink(missing_ok=True)
    assert fuse(tmp_path / "bare" / "dense_init", tmp_path / "bare", tmp_path / "fused_bare") == 0
    assert "pass --image_size so that pipeline() can read" in capsys.readouterr().out


def test_a_new_head_on_a_checkpoint_is_saved_as_the_dense_initialization(tmp_path, capsys):
    AutoModelForImageClassification.from_config(tiny_resnet_config(num_labels=4)).save_pretrained(
        tmp_path / "ckpt"
    )
    assert prune(tmp_path / "ckpt", tmp_path / "surrogate", "--num_labels", "6") == 0
    assert "dense initialization saved" in capsys.readouterr().out
    dense = AutoModelForImageClassification.from_pretrained(tmp_path / "surrogate" / "dense_init")
    assert dense.config.num_labels == 6
    assert fuse(tmp_path / "surrogate" / "dense_init", tmp_path / "surrogate", tmp_path / "fused") == 0


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    tiny_resnet_config().save_pretrained(tmp_path / "config")
    code = main(["prune", "--model", str(tmp_path / "config"), "--pruning_ratio", "1.5",
                 "--output_dir", str(tmp_path / "s")])  # fmt: skip
    assert code == 2
    assert (
        "pruning_ratio must be a number in [0, 1) (the fraction" in (err := capsys.readouterr().err)
        and "got 1.5." in err
    )
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("model", ["/nonexistent", "./missing"])
def test_prune_names_a_model_path_that_does_not_exist(tmp_path, capsys, model):
    assert prune(model, tmp_path / "s") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"prunefuse-hf prune: error: No model at '{model}'")
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_fuse_refuses_a_dense_checkpoint_of_another_architecture_naming_both(tmp_path, capsys):
    tiny_resnet_config().save_pretrained(tmp_path / "config")
    tiny_resnet_config(hidden_sizes=[16, 64]).save_pretrained(tmp_path / "other_config")
    assert prune(tmp_path / "config", tmp_path / "surrogate") == 0
    assert prune(tmp_path / "other_config", tmp_path / "other") == 0
    capsys.readouterr()

    assert fuse(tmp_path / "other" / "dense_init", tmp_path / "surrogate", tmp_path / "fused") == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after transformers' loading progress bars
    plan = PruningPlan.from_pretrained(tmp_path / "surrogate")
    other = AutoModelForImageClassification.from_pretrained(tmp_path / "other" / "dense_init")
    assert err.startswith("prunefuse-hf fuse: error: The dense model is not the architecture")
    assert f"'{tmp_path / 'config'}' (config hash {plan.dense_config_hash})" in err
    assert f"'{tmp_path / 'other' / 'dense_init'}' (config hash {config_hash(other.config)})" in err
    assert "hidden_sizes: plan [16, 32], given [16, 64]" in err and "dense_init" in err
    assert "Traceback" not in err and not (tmp_path / "fused").exists()


def test_fuse_names_a_dense_path_without_weights(tmp_path, capsys):
    tiny_resnet_config().save_pretrained(tmp_path / "config")
    assert prune(tmp_path / "config", tmp_path / "surrogate") == 0
    capsys.readouterr()
    assert fuse(tmp_path / "config", tmp_path / "surrogate", tmp_path / "fused") == 2
    assert "holds a config but no weights" in capsys.readouterr().err
    assert fuse(tmp_path / "missing", tmp_path / "surrogate", tmp_path / "fused") == 2
    assert f"No model at '{tmp_path / 'missing'}'" in capsys.readouterr().err


def test_prune_then_fuse_a_family_without_a_narrowed_config(tmp_path, capsys):
    # DINOv2 has no narrowed config: the surrogate is safetensors + the dense config + the plan's history.
    general_dense_model("dinov2_with_registers").config.save_pretrained(tmp_path / "config")
    surrogate_dir, fused_dir = tmp_path / "surrogate", tmp_path / "fused"
    assert prune(tmp_path / "config", surrogate_dir) == 0
    assert "params" in capsys.readouterr().out
    plan = PruningPlan.from_pretrained(surrogate_dir)
    assert plan.pruning_path == "replay"
    surrogate = load_surrogate(surrogate_dir)
    assert surrogate.dinov2_with_registers.embeddings.cls_token.shape[-1] == 16

    _assert_fusing_the_untrained_surrogate_changes_nothing(surrogate_dir, fused_dir, capsys)


def _assert_fusing_the_untrained_surrogate_changes_nothing(surrogate_dir, fused_dir, capsys):
    dense_dir = surrogate_dir / "dense_init"
    assert fuse(dense_dir, surrogate_dir, fused_dir) == 0
    assert "0 of" in capsys.readouterr().out  # an untrained surrogate changes nothing
    fused = AutoModelForImageClassification.from_pretrained(fused_dir)
    dense = AutoModelForImageClassification.from_pretrained(dense_dir)
    for (name, a), b in zip(fused.state_dict().items(), dense.state_dict().values()):
        assert torch.equal(a, b), name


def cached_pool(cache_dir, size, cache_format):
    """Build the pixel cache of a 10-image pool at `size` px; its key."""
    dataset = make_image_dataset(10, size=size, mode="RGB", seed=size)
    preprocessor = ImagePreprocessor(
        build_image_processor(tiny_resnet_config(), image_size=size), num_channels=3
    )
    preprocessor.pixel_dataset(dataset, cache_dir=cache_dir, cache_format=cache_format)
    return preprocessor.cache_key(dataset, cache_format)


def test_cache_list_and_clear_from_the_command_line(tmp_path, capsys):
    raw, png = cached_pool(tmp_path, 16, "raw"), cached_pool(tmp_path, 20, "png")
    assert main(["cache", "list", "--cache_dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["key", "size", "images", "shape", "format", "last", "used", "processor"]
    assert lines[1].split()[0] == png and lines[1].split()[3:6] == ["10", "3×20×20", "png"]
    assert lines[2].split()[0] == raw and lines[2].split()[3:6] == ["10", "3×16×16", "raw"]
    assert lines[3].startswith("2 caches, ") and lines[3].endswith(f" in {tmp_path}")
    assert (
        lines[4]
        == "cap: 50.0 GB, least recently used caches removed beyond it ($PRUNEFUSE_PIXEL_CACHE_MAX_SIZE "
        "or pixel_cache_max_size)"
    )

    assert main(["cache", "clear", "--cache-dir", str(tmp_path), "--older-than", "0", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("would remove 2 caches, ")
    assert main(["cache", "clear", "--cache_dir", str(tmp_path), raw[:8]]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith(f"removed {raw} (")
    assert main(["cache", "clear", "--cache_dir", str(tmp_path), "--all"]) == 0
    assert main(["cache", "list", "--cache_dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"no pixel caches in {tmp_path}"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            [],
            "say which caches to remove: --older_than DAYS, KEY ... (from `prunefuse-hf cache list`), or --all.",
        ),
        (["--older_than", "-2"], "older_than_days must be a number >= 0, got -2.0."),
        (["feedbeef"], "Key 'feedbeef' matches no cache in"),
    ],
)
def test_cache_clear_refuses_a_missing_or_bad_selector_with_the_fix(tmp_path, capsys, arguments, message):
    key = cached_pool(tmp_path, 16, "raw")
    capsys.readouterr()  # the build's progress bar
    assert main(["cache", "clear", "--cache_dir", str(tmp_path), *arguments]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunefuse-hf cache: error: ") and message in err and "Traceback" not in err
    assert (tmp_path / f"pixels-{key}.json").is_file()


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["cache", "list", "--cache_dir", "{tmp}"], ["label", "{tmp}", "--labels", "labels.csv"]],
)
def test_commands_that_do_not_train_do_not_import_torch(argv, tmp_path):
    # Each command imports what it needs: --help, cache and label start without torch (benchmarks/startup.py times it).
    argv = [part.replace("{tmp}", str(tmp_path)) for part in argv]
    code = (
        "import sys\nfrom prunefuse_hf.cli.main import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'transformers.modeling_utils' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False False", (argv, done.stderr[-2000:])
