"""The config rules: how each family's config is written down narrower (`pruning/narrowing.py`).

Pruning through them end to end (reload, logits, fusion) is tested per family in `test_families.py`,
`test_roles.py` and `test_segmentation.py`; here the rules themselves.
"""

import pytest
from transformers import AutoConfig

from conftest import SEGMENTATION_TINY_CONFIGS, TINY_CONFIGS, tiny_config
from prunefuse_hf.pruning.families import FAMILY_ADAPTERS, SEGMENTATION_ADAPTERS
from prunefuse_hf.pruning.narrowing import scaled_width


def test_scaled_width_floors_the_kept_width_to_a_multiple():
    # (1 - 0.7) * 10 is 2.9999999999999996 in floating point: still 3 entries.
    assert scaled_width(10, 0.7, "ResNet", "hidden size") == 3
    assert scaled_width(24, 0.5, "Swin", "embed_dim", multiple=8) == 8
    assert scaled_width(64, 0.25, "ResNet", "hidden size") == 48


def test_scaled_width_that_vanishes_names_family_ratio_width_and_the_largest_ratio():
    with pytest.raises(ValueError, match=r"pruning_ratio=0.9 .*ViT family: head dimension 8 .*<= 0.875"):
        scaled_width(8, 0.9, "ViT", "head dimension")
    with pytest.raises(ValueError, match=r"multiple of 8; this width cannot be narrowed"):
        scaled_width(8, 0.5, "Swin", "embed_dim", multiple=8)


@pytest.mark.parametrize("model_type", list(TINY_CONFIGS))
def test_a_rule_returns_a_narrower_config_and_leaves_the_dense_one_untouched(model_type):
    dense = tiny_config(model_type)
    before = dense.to_dict()
    narrowed = FAMILY_ADAPTERS[model_type].narrowed_config(dense, 0.5)
    assert dense.to_dict() == before
    assert narrowed is not dense and type(narrowed) is type(dense)
    assert narrowed.to_dict() != before
    assert narrowed.num_labels == dense.num_labels


@pytest.mark.parametrize(
    "key", [key for key, adapter in SEGMENTATION_ADAPTERS.items() if adapter.backbone_type]
)
def test_upernet_narrows_its_backbone_as_the_backbone_image_classifier_does(key):
    values = dict(SEGMENTATION_TINY_CONFIGS[key])
    dense = AutoConfig.for_model(values.pop("model_type"), num_labels=5, **values)
    adapter = SEGMENTATION_ADAPTERS[key]
    assert dense.backbone_config.model_type == adapter.backbone_type
    narrowed = adapter.narrowed_config(dense, 0.5)
    expected = FAMILY_ADAPTERS[adapter.backbone_type].narrowed_config(dense.backbone_config, 0.5)
    assert narrowed.backbone_config.to_dict() == expected.to_dict()
    assert (narrowed.hidden_size, narrowed.auxiliary_channels) == (16, 8)
