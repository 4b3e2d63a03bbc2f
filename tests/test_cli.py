import pytest
import torch
from transformers import AutoModelForImageClassification, BertConfig, ResNetForImageClassification

from conftest import tiny_resnet_config
from prunefuse_hf import PruningPlan
from prunefuse_hf.cli import main
from prunefuse_hf.modeling import load_image_classifier


def test_prune_then_fuse_from_the_command_line(tmp_path, capsys):
    tiny_resnet_config(num_labels=4).save_pretrained(tmp_path / "config")
    surrogate_dir, fused_dir = tmp_path / "surrogate", tmp_path / "fused"

    assert (
        main(
            [
                "prune",
                "--model",
                str(tmp_path / "config"),
                "--pruning_ratio",
                "0.5",
                "--output_dir",
                str(surrogate_dir),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "dense initialization saved" in out and "params" in out and "macs" in out
    surrogate = AutoModelForImageClassification.from_pretrained(surrogate_dir)
    assert surrogate.config.hidden_sizes == [8, 16]
    assert PruningPlan.from_pretrained(surrogate_dir).pruning_ratio == 0.5

    dense_dir = surrogate_dir / "dense_init"
    assert (
        main(
            [
                "fuse",
                "--dense",
                str(dense_dir),
                "--surrogate",
                str(surrogate_dir),
                "--output_dir",
                str(fused_dir),
            ]
        )
        == 0
    )
    assert "0 of" in capsys.readouterr().out  # an untrained surrogate changes nothing
    fused = AutoModelForImageClassification.from_pretrained(fused_dir)
    dense = AutoModelForImageClassification.from_pretrained(dense_dir)
    for (name, a), b in zip(fused.state_dict().items(), dense.state_dict().values()):
        assert torch.equal(a, b), name


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    tiny_resnet_config().save_pretrained(tmp_path / "config")
    code = main(
        [
            "prune",
            "--model",
            str(tmp_path / "config"),
            "--pruning_ratio",
            "1.5",
            "--output_dir",
            str(tmp_path / "s"),
        ]
    )
    assert code == 2
    assert "pruning_ratio must be in [0, 1), got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_load_image_classifier_from_config_checkpoint_and_dict(tmp_path):
    config = tiny_resnet_config(num_labels=4)
    built = load_image_classifier(config, num_labels=7, num_channels=1)
    assert built.config.num_labels == 7 and built.config.num_channels == 1
    assert config.num_labels == 4  # the caller's config is not modified

    from_dict = load_image_classifier({"model_type": "resnet", "hidden_sizes": [8, 16], "depths": [1, 1]})
    assert isinstance(from_dict, ResNetForImageClassification)

    dense = ResNetForImageClassification(config)
    dense.save_pretrained(tmp_path / "ckpt")
    reloaded = load_image_classifier(tmp_path / "ckpt")
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), dense.state_dict().values()))
    new_head = load_image_classifier(tmp_path / "ckpt", num_labels=9)
    assert new_head.classifier[-1].out_features == 9
    assert torch.equal(
        new_head.resnet.embedder.embedder.convolution.weight,
        dense.resnet.embedder.embedder.convolution.weight,
    )


def test_load_image_classifier_picks_the_plain_classifier_of_multi_class_families():
    from transformers import DeiTConfig

    config = DeiTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32)  # fmt: skip
    assert type(load_image_classifier(config, num_labels=3)).__name__ == "DeiTForImageClassification"


def test_load_image_classifier_refuses_non_image_models(tmp_path):
    with pytest.raises(ValueError, match="'bert'.*no image-classification model"):
        load_image_classifier(BertConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2))
    with pytest.raises(ValueError, match="model_type"):
        load_image_classifier({"hidden_sizes": [8]})
