"""`load_image_classifier`: from a config, a dict or a checkpoint, always as the class PruneFuse runs."""

import pytest
import torch
import transformers
from transformers import (
    BertConfig,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    ResNetForImageClassification,
)

from conftest import REFUSED_CLASSES, tiny_config, tiny_resnet_config
from prunefuse_hf.pruning.families import FAMILY_ADAPTERS
from prunefuse_hf.pruning.modeling import build_dense_model, check_model_path, load_image_classifier


def tiny_deit_config(**kwargs):
    return DeiTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, **kwargs)  # fmt: skip


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


def test_class_names_become_id2label_of_a_config_and_of_a_checkpoint(tmp_path):
    names = ["cat", "dog", "bird"]
    built = load_image_classifier(tiny_resnet_config(num_labels=4), class_names=names)
    assert built.config.id2label == {0: "cat", 1: "dog", 2: "bird"} and built.config.label2id["bird"] == 2
    ResNetForImageClassification(tiny_resnet_config(num_labels=4)).save_pretrained(tmp_path)
    loaded = load_image_classifier(tmp_path, class_names=names)
    assert loaded.config.num_labels == 3 and loaded.config.id2label[1] == "dog"


def test_from_config_true_initializes_and_false_requires_weights(tmp_path):
    torch.manual_seed(0)
    dense = ResNetForImageClassification(tiny_resnet_config())
    dense.save_pretrained(tmp_path / "ckpt")
    random = load_image_classifier(tmp_path / "ckpt", from_config=True)
    assert not torch.equal(random.classifier[-1].weight, dense.classifier[-1].weight)
    tiny_resnet_config().save_pretrained(tmp_path / "config_only")
    with pytest.raises(FileNotFoundError, match=r"'.*config_only' holds a config but no weights"):
        load_image_classifier(tmp_path / "config_only", from_config=False)
    with pytest.raises(ValueError, match="from_config=False needs a checkpoint"):
        load_image_classifier(tiny_resnet_config(), from_config=False)


def test_a_config_naming_the_distilled_deit_builds_the_plain_classifier():
    config = tiny_deit_config(architectures=["DeiTForImageClassificationWithTeacher"])
    model = load_image_classifier(config, num_labels=3)
    assert type(model) is DeiTForImageClassification
    assert model.config.architectures == ["DeiTForImageClassification"]
    assert type(load_image_classifier(tiny_deit_config(), num_labels=3)) is DeiTForImageClassification


def test_a_distilled_deit_checkpoint_loads_its_encoder_into_the_plain_classifier(tmp_path):
    torch.manual_seed(0)
    distilled = DeiTForImageClassificationWithTeacher(tiny_deit_config(num_labels=3))
    distilled.save_pretrained(tmp_path)
    model = load_image_classifier(tmp_path, num_labels=3)
    assert type(model) is DeiTForImageClassification
    assert model.config.architectures == ["DeiTForImageClassification"]
    for name, tensor in distilled.deit.state_dict().items():
        assert torch.equal(model.deit.state_dict()[name], tensor), name


@pytest.mark.parametrize(("model_type", "class_name"), REFUSED_CLASSES)
def test_a_checkpoint_of_a_refused_class_loads_as_the_familys_image_classifier(
    tmp_path, model_type, class_name
):
    torch.manual_seed(0)
    saved = getattr(transformers, class_name)(tiny_config(model_type))
    saved.save_pretrained(tmp_path)
    model = load_image_classifier(tmp_path, num_labels=3)
    assert type(model).__name__ == FAMILY_ADAPTERS[model_type].model_class
    # The encoder weights carry over (checkpoints of bare models and backbones have no base-model prefix).
    prefix = model.base_model_prefix
    loaded = model.state_dict()
    carried = 0
    for name, tensor in saved.state_dict().items():
        target = name if name in loaded else f"{prefix}.{name}"
        if target in loaded and loaded[target].shape == tensor.shape and tensor.ndim > 1:
            assert torch.equal(loaded[target], tensor), name
            carried += 1
    assert carried > 0


@pytest.mark.parametrize("path", ["/nonexistent", "./missing", "~/missing", "a/b/c"])
def test_a_path_that_does_not_exist_is_refused_by_name_not_taken_for_a_hub_id(path):
    with pytest.raises(FileNotFoundError, match=f"No model at '{path}'"):
        check_model_path(path)
    with pytest.raises(FileNotFoundError, match=f"No model at '{path}'"):
        load_image_classifier(path)
    assert check_model_path("microsoft/resnet-50") == "microsoft/resnet-50"


def test_load_image_classifier_refuses_non_image_models():
    with pytest.raises(ValueError, match="'bert'.*no image-classification model"):
        load_image_classifier(BertConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2))
    with pytest.raises(ValueError, match="model_type"):
        load_image_classifier({"hidden_sizes": [8]})


def test_the_dense_model_takes_the_datasets_class_names_and_a_model_must_match_their_count():
    names = ["cat", "dog", "bird", "frog"]
    built = build_dense_model(tiny_resnet_config(num_labels=2), names, "label")
    assert built.config.num_labels == 4 and built.config.id2label == dict(enumerate(names))
    model = ResNetForImageClassification(tiny_resnet_config(num_labels=4))
    dense = build_dense_model(model, names, "label")
    assert dense is model and dense.config.label2id == {name: i for i, name in enumerate(names)}
    with pytest.raises(
        ValueError, match="The model has 4 labels but the dataset's 'fine' column has 3 classes"
    ):
        build_dense_model(ResNetForImageClassification(tiny_resnet_config(num_labels=4)), names[:3], "fine")
