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


def run_in_processes(function, *args, num_processes=2, timeout=300):
    """Run `function(*args)` in `num_processes` CPU processes with `accelerate.debug_launcher`.

    The launcher forks; a pytest process whose OpenMP pool is already running (any earlier test that
    ran torch ops) would deadlock its forked children. So the launch happens from a fresh interpreter,
    which imports `function` by module and name (a test module's top-level function).
    """
    import subprocess
    import sys
    from pathlib import Path

    tests_dir = Path(__file__).parent
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import importlib, json; from accelerate import debug_launcher;"
        "function = getattr(importlib.import_module(sys.argv[2]), sys.argv[3]);"
        "debug_launcher(function, args=tuple(json.loads(sys.argv[4])), num_processes=int(sys.argv[5]))"
    )
    import json

    command = [sys.executable, "-c", code, str(tests_dir), function.__module__, function.__name__,
               json.dumps(list(args)), str(num_processes)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"{num_processes}-process run of {function.__name__} failed:\n{result.stderr[-4000:]}"
        )


def sgd_steps(model, pixel_values, labels, steps=3, lr=0.1):
    """A few plain SGD steps in train mode (parameters and BatchNorm statistics both move); the losses."""
    import torch.nn.functional as F

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(pixel_values).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def kept_mask(plan, name):
    """Boolean mask of the dense entries of tensor `name` that the surrogate kept."""
    mask = torch.zeros(plan.dense_shapes[name], dtype=torch.bool)
    mask[plan.index(name)] = True
    return mask


def tiny_recipe(dataset, num_rounds=2) -> str:
    """A recipe for a real `prunefuse-hf run` on a saved tiny pool (a few seconds on a CPU)."""
    return f"""
model_config: {{model_type: resnet, num_channels: 1, embedding_size: 16, hidden_sizes: [16, 32], depths: [1, 1]}}
dataset_name: {dataset}
eval_split: null
pruning_ratio: 0.5
strategy: least_confidence
initial_labeled_size: 16
query_size: 8
num_rounds: {num_rounds}
num_train_epochs: 2
learning_rate: 0.05
per_device_train_batch_size: 8
scoring_batch_size: 32
disable_tqdm: true
seed: 5
"""


def assert_fused_at_kept_indices(fused, surrogate_state, dense_state, plan):
    """Every surrogate tensor sits exactly at its kept indices; every other entry kept its dense value;
    and training made the fusion visible (at least one tensor changed)."""
    changed = 0
    for name, fused_tensor in fused.state_dict().items():
        mask = kept_mask(plan, name)
        assert torch.equal(fused_tensor[plan.index(name)], surrogate_state[name]), name
        assert torch.equal(fused_tensor[~mask], dense_state[name][~mask]), name
        changed += not torch.equal(fused_tensor, dense_state[name])
    assert changed > 0


def normalized_pixels(dataset, model_config):
    """`dataset` as a `PixelDataset` whose batches are normalized float pixels (what a model reads), decoded lazily."""
    from prunefuse_hf.preprocessing import ImagePreprocessor, PixelDataset, build_image_processor

    class NormalizedPixels(PixelDataset):
        def batch(self, indices):
            return self.preprocessor.normalize(super().batch(indices))

    image = dataset[0]["image"]
    processor = build_image_processor(model_config, image=image if hasattr(image, "size") else None)
    preprocessor = ImagePreprocessor(processor, getattr(model_config, "num_channels", 3))
    pixels = NormalizedPixels(preprocessor.pixel_dataset(dataset, cache=False), np.arange(len(dataset)))
    pixels.preprocessor = preprocessor
    return pixels
