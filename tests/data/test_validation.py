"""Checks of the run's settings: input size and BatchNorm batches of one example against the model, the labeling
budget against the pool."""

import pytest
import torch
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from conftest import tiny_resnet_config
from prunefuse_hf import PruneFuseConfig
from prunefuse_hf.data.validation import check_batchnorm_batch_sizes, check_input_size, check_labeling_budget


def tiny_vit(image_size=32):
    torch.manual_seed(0)
    return ViTForImageClassification(
        ViTConfig(image_size=image_size, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32, num_labels=3)
    )  # fmt: skip


def tiny_convnext():
    torch.manual_seed(0)
    return ConvNextForImageClassification(ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1]))


def settings(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), initial_labeled_size=8, query_size=4, num_rounds=1,
                  per_device_train_batch_size=2)  # fmt: skip
    return PruneFuseConfig(**{**values, **overrides})


def test_the_smallest_per_example_batchnorm_extent_is_returned_and_the_model_left_as_it_was():
    model = ResNetForImageClassification(tiny_resnet_config())
    model.train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    # Stem /4, then stage 2 /2: 32×32 inputs reach the last BatchNorm as 4×4 maps.
    assert check_input_size(model, (3, 32, 32)) == 16
    assert check_input_size(model, (3, 4, 4)) == 1
    assert model.training
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
    assert check_input_size(tiny_vit(), (3, 32, 32)) is None  # no BatchNorm


def test_too_small_inputs_name_image_size_and_the_smallest_size_that_works():
    # ConvNeXt's 4×4 patchify stem and 2×2 downsampling need 8×8 inputs.
    with pytest.raises(
        ValueError,
        match=r"ConvNextForImageClassification cannot take 4×4 inputs \(.*Kernel size.*\): set image_size to at least 8\.$",
    ):
        check_input_size(tiny_convnext(), (3, 4, 4))
    assert check_input_size(tiny_convnext(), (3, 8, 8)) is None
    # The setting named is the caller's.
    with pytest.raises(ValueError, match="set size to at least 8"):
        check_input_size(tiny_convnext(), (3, 4, 4), image_size_field="size")


@pytest.mark.parametrize("size", [16, 48])
def test_a_vit_given_another_size_than_its_config_is_told_to_use_its_config_size(size):
    model = tiny_vit(image_size=32)
    with pytest.raises(
        ValueError,
        match=rf"ViTForImageClassification cannot take {size}×{size} inputs \(Input image size \({size}\*{size}\) "
        r"doesn't match model \(32\*32\)\): set image_size to 32, the model's config.image_size\.$",
    ):
        check_input_size(model, (3, size, size))
    # Trying other sizes left the model as it was: it still takes its own size.
    assert check_input_size(model, (3, 32, 32)) is None


def test_batches_of_one_are_refused_when_batchnorm_sees_1x1_maps(tmp_path):
    smallest = check_input_size(ResNetForImageClassification(tiny_resnet_config()), (3, 4, 4))
    assert smallest == 1
    with pytest.raises(
        ValueError, match=r"per_device_train_batch_size: 1 cannot train this model: .*1×1 feature maps"
    ):
        check_batchnorm_batch_sizes(settings(tmp_path, per_device_train_batch_size=1), smallest)
    with pytest.raises(ValueError, match="surrogate_per_device_train_batch_size: 1 .* at least 2"):
        check_batchnorm_batch_sizes(settings(tmp_path, surrogate_per_device_train_batch_size=1), smallest)
    check_batchnorm_batch_sizes(settings(tmp_path, per_device_train_batch_size=2), smallest)


def test_batches_of_one_are_accepted_with_larger_maps_or_without_batchnorm(tmp_path):
    one = settings(tmp_path, per_device_train_batch_size=1)
    check_batchnorm_batch_sizes(
        one, check_input_size(ResNetForImageClassification(tiny_resnet_config()), (3, 32, 32))
    )
    check_batchnorm_batch_sizes(one, check_input_size(tiny_vit(), (3, 32, 32)))  # no BatchNorm: None


def test_the_labeling_budget_must_fit_in_the_pool(tmp_path):
    check_labeling_budget(settings(tmp_path, initial_labeled_size=8, query_size=[4, 6], num_rounds=2), 18)
    with pytest.raises(
        ValueError,
        match=r"initial_labeled_size \(8\) \+ query_size over 2 rounds \(10\) = 18, but the pool has 17 examples",
    ):
        check_labeling_budget(settings(tmp_path, initial_labeled_size=8, query_size=[4, 6], num_rounds=2), 17)
