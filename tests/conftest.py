import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from transformers import ResNetConfig


def make_image_dataset(num_examples=64, num_classes=4, size=16, mode="L", seed=0):
    """Seeded images whose class is visible (a bright square whose position depends on the label),
    so that a tiny model can learn them in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=num_examples)
    images = []
    channels = 3 if mode == "RGB" else 1
    cell = size // num_classes
    for label in labels:
        pixels = rng.integers(0, 60, size=(size, size, channels), dtype=np.uint8)
        pixels[:, label * cell : (label + 1) * cell] = 220
        images.append(pixels[..., 0] if channels == 1 else pixels)
    features = Features({"image": Image(), "label": ClassLabel(num_classes=num_classes)})
    return Dataset.from_dict({"image": images, "label": labels.tolist()}, features=features)


@pytest.fixture
def image_dataset():
    return make_image_dataset()


def tiny_resnet_config(layer_type="basic", num_channels=3, num_labels=4, **kwargs):
    defaults = dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1])
    if layer_type == "bottleneck":
        defaults = dict(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 2])
    defaults.update(kwargs)
    return ResNetConfig(num_channels=num_channels, layer_type=layer_type, num_labels=num_labels, **defaults)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
