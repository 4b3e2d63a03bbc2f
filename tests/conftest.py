# ruff: noqa: E402 (the cache environment below is set before the libraries are imported)
import atexit
import copy
import csv
import functools
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

# The suite writes nothing outside temporary directories: the Hugging Face caches (hub, datasets, modules, token),
# the pixel cache and the user's cache and config folders (matplotlib's font cache, Label Studio's config) point into
# one folder, removed when the session ends. Set before anything imports `datasets`, `huggingface_hub` or
# `transformers` (they read these variables once, at import); test subprocesses inherit them (and a subprocess that
# imports this file keeps its parent's folder).
TEST_CACHE_ROOT_ENV = "PRUNEFUSE_TEST_CACHE_ROOT"
_OWNS_CACHE_ROOT = TEST_CACHE_ROOT_ENV not in os.environ
TEST_CACHE_ROOT = Path(
    os.environ.get(TEST_CACHE_ROOT_ENV) or tempfile.mkdtemp(prefix="prunefuse-hf-test-caches-")
)
if _OWNS_CACHE_ROOT:  # at exit, however the session ends (a collection-only run starts no fixture)
    atexit.register(shutil.rmtree, TEST_CACHE_ROOT, ignore_errors=True)
# The environment as the user set it (their caches, which the suite must leave as they were). pytest-xdist's workers
# (`make test` starts 2) inherit the suite's environment from the first process: it hands them the user's, as JSON.
USER_ENV_ENV = "PRUNEFUSE_TEST_USER_ENV"
USER_ENV = json.loads(os.environ[USER_ENV_ENV]) if USER_ENV_ENV in os.environ else dict(os.environ)
os.environ[USER_ENV_ENV] = json.dumps(USER_ENV)
os.environ.update({TEST_CACHE_ROOT_ENV: str(TEST_CACHE_ROOT), "HF_HOME": str(TEST_CACHE_ROOT / "hf_home"),
                   "PRUNEFUSE_PIXEL_CACHE": str(TEST_CACHE_ROOT / "pixels"),
                   "XDG_CACHE_HOME": str(TEST_CACHE_ROOT / "cache"), "XDG_CONFIG_HOME": str(TEST_CACHE_ROOT / "config"),
                   "MPLCONFIGDIR": str(TEST_CACHE_ROOT / "matplotlib")})  # fmt: skip
for _name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "HF_MODULES_CACHE", "HF_XET_CACHE",
              "HF_ASSETS_CACHE", "TRANSFORMERS_CACHE", "HF_EVALUATE_CACHE", "HF_METRICS_CACHE", "HF_TOKEN_PATH",
              "PRUNEFUSE_PIXEL_CACHE_MAX_SIZE"):  # fmt: skip
    os.environ.pop(_name, None)  # each derives from HF_HOME; the pixel cache's cap is the default one

# A suite started in the background by a non-interactive shell (`cmd &`, as many CI runners do) inherits SIGINT
# ignored, and then Python has no KeyboardInterrupt for it: the Label Studio loop tests press Ctrl-C in the process
# (`_thread.interrupt_main`, a no-op on an ignored signal) and send SIGINT to child processes (which inherit an ignored
# signal across exec). Give the suite Python's own handler, as in a terminal; children then start with the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import numpy as np
import pytest
import torch
import transformers
from datasets import ClassLabel, Dataset, Features, Image
from transformers import AutoConfig, DetrConfig, DetrForObjectDetection, ResNetConfig

from prunefuse_hf import prune_model
from prunefuse_hf.data.pixel_cache_build import usable_cores
from prunefuse_hf.pruning.families import FAMILY_ADAPTERS
from prunefuse_hf.pruning.support import refused_model_classes

# Under pytest-xdist each worker takes its share of the cores for torch's intra-op threads (2 workers on 2 cores: one
# each), instead of every worker starting one thread per core and the workers preempting each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(max(1, usable_cores() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


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


def unlabeled_image_folder(root, num_images=60, seed=0):
    """A flat folder of images (no class sub-folders, so no label column) and the class a person sees in each file."""
    dataset = make_image_dataset(num_images, num_classes=4, size=16, mode="RGB", seed=seed)
    root.mkdir(parents=True)
    truth = {}
    for i, row in enumerate(dataset):
        row["image"].save(root / f"img_{i:03d}.png")
        truth[f"img_{i:03d}.png"] = row["label"]
    return truth


@pytest.fixture
def image_dataset():
    return make_image_dataset()


def tiny_resnet_config(layer_type="basic", num_channels=3, num_labels=4, **kwargs):
    defaults = dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1])
    if layer_type == "bottleneck":
        defaults = dict(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 2])
    defaults.update(kwargs)
    return ResNetConfig(num_channels=num_channels, layer_type=layer_type, num_labels=num_labels, **defaults)


@pytest.fixture(scope="session", autouse=True)
def isolated_caches():
    """The folder every cache of the session is in (see the top of this file), checked before the first test."""
    import datasets
    import huggingface_hub.constants

    from prunefuse_hf.data.pixel_cache import resolve_cache_dir

    for what, path in (("datasets' cache", datasets.config.HF_DATASETS_CACHE),
                       ("the Hub cache", huggingface_hub.constants.HF_HUB_CACHE),
                       ("the pixel cache", resolve_cache_dir())):  # fmt: skip
        if not Path(path).resolve().is_relative_to(TEST_CACHE_ROOT.resolve()):
            raise RuntimeError(
                f"The tests would write {what} to {path}, outside their temporary folder {TEST_CACHE_ROOT}: "
                "something imported the Hugging Face libraries before tests/conftest.py set their environment."
            )
    return TEST_CACHE_ROOT


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio server on 127.0.0.1 (from the virtualenv `scripts/setup.sh` installs), started once for the
    session by the first test that asks for it; skipped, saying why, when Label Studio is not installed."""
    from label_studio_server import LabelStudioServer, label_studio_binary

    binary, why = label_studio_binary()
    if binary is None:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("label-studio")
    server = LabelStudioServer(binary, root / "data", root / "files")
    server.start()
    yield server
    server.stop()


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

    # The test module's own folder, so the fresh interpreter imports it by name.
    tests_dir = Path(sys.modules[function.__module__].__file__).parent
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[6]];"
        "import importlib, json; from accelerate import debug_launcher;"
        "function = getattr(importlib.import_module(sys.argv[2]), sys.argv[3]);"
        "debug_launcher(function, args=tuple(json.loads(sys.argv[4])), num_processes=int(sys.argv[5]))"
    )
    import json

    command = [sys.executable, "-c", code, str(tests_dir), function.__module__, function.__name__,
               json.dumps(list(args)), str(num_processes), str(Path(__file__).parent)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"{num_processes}-process run of {function.__name__} failed:\n{result.stderr[-4000:]}"
        )


def train_without_dropout(model):
    """Train mode (BatchNorm normalizes with the batch's statistics and updates its running ones) with every dropout
    and drop-path module off: a batch's loss is then a function of the weights alone, so a small step lowers it on
    any machine and whatever random state earlier tests left (MobileNetV2's classifier dropout made it rise)."""
    model.train()
    for module in model.modules():
        if "Dropout" in type(module).__name__ or "DropPath" in type(module).__name__:
            module.eval()


def sgd_steps(model, pixel_values, labels, steps=3, lr=0.1):
    """A few plain SGD steps in train mode without dropout (parameters and BatchNorm statistics both move); the
    losses."""
    import torch.nn.functional as F

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    train_without_dropout(model)
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
    from prunefuse_hf.data.image_processor import build_image_processor
    from prunefuse_hf.data.pixel_dataset import PixelDataset
    from prunefuse_hf.data.preprocessing import ImagePreprocessor

    class NormalizedPixels(PixelDataset):
        def batch(self, indices):
            return self.preprocessor.normalize(super().batch(indices))

    image = dataset[0]["image"]
    processor = build_image_processor(model_config, image=image if hasattr(image, "size") else None)
    preprocessor = ImagePreprocessor(processor, getattr(model_config, "num_channels", 3))
    pixels = NormalizedPixels(preprocessor.pixel_dataset(dataset, cache=False), np.arange(len(dataset)))
    pixels.preprocessor = preprocessor
    return pixels


# ----- one tiny model per supported family (test_families, test_fusion, test_modeling) -----

RATIOS = [0.25, 0.5, 0.75]
IMAGE_SIZE = 32

# Tiny configs (dropout and stochastic depth off, so that a few SGD steps on one batch lower the loss).
TINY_CONFIGS = {
    "resnet": dict(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1]),
    "convnext": dict(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], image_size=IMAGE_SIZE),
    "convnextv2": dict(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], image_size=IMAGE_SIZE),
    "vit": dict(
        image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64,
    ),
    "deit": dict(
        image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64,
    ),
    "swin": dict(
        image_size=IMAGE_SIZE, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
        window_size=4, drop_path_rate=0.0,
    ),
    # Divisor 2 so that the tiny widths can narrow at every tested ratio (the default 8 would round
    # most of them back up); the fine-grained 1280-wide head is off so that it scales too.
    "mobilenet_v2": dict(
        image_size=IMAGE_SIZE, depth_multiplier=0.5, depth_divisible_by=2, min_depth=2,
        finegrained_output=False, classifier_dropout_prob=0.0,
    ),
    "regnet": dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8, layer_type="y"),
    "efficientnet": dict(
        image_size=IMAGE_SIZE, width_coefficient=0.25, depth_coefficient=0.2, depth_divisor=2,
        hidden_dim=320, dropout_rate=0.0, drop_connect_rate=0.0,
    ),
}  # fmt: skip

# Families the general path prunes (`GENERAL_FAMILIES`): tiny configs, attention heads of 2 dimensions or more.
VIT_LIKE = dict(
    image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2
)
VISION_TOWER = dict(VIT_LIKE, intermediate_size=64)
TEXT_TOWER = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
GENERAL_TINY_CONFIGS = {
    "dinov2": dict(VIT_LIKE, mlp_ratio=2, layerscale_value=0.5),
    "dinov2_with_registers": dict(VIT_LIKE, mlp_ratio=2, num_register_tokens=4, layerscale_value=0.5),
    "siglip": dict(vision_config=VISION_TOWER, text_config=TEXT_TOWER),
    "clip": dict(vision_config=VISION_TOWER, text_config=TEXT_TOWER),
    "beit": dict(
        VIT_LIKE, intermediate_size=64, use_relative_position_bias=True, layer_scale_init_value=0.5,
        use_mean_pooling=True,
    ),
    "data2vec-vision": dict(
        VIT_LIKE, intermediate_size=64, use_relative_position_bias=True, layer_scale_init_value=0.5
    ),
    # embed_dim 24 on a 16 x 16 grid: the channels-last slice rule cannot tell height from channels when equal.
    "swinv2": dict(image_size=IMAGE_SIZE, patch_size=2, embed_dim=24, depths=[1, 1], num_heads=[2, 4], window_size=4),
    "mobilenet_v1": dict(depth_multiplier=0.25, image_size=IMAGE_SIZE),
    "mobilevit": dict(
        image_size=64, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 64], num_attention_heads=2
    ),
    "poolformer": dict(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1]),
    "mobilevitv2": dict(image_size=64, width_multiplier=0.25),
    "levit": dict(image_size=64, hidden_sizes=[16, 32, 48], num_attention_heads=[1, 2, 3], depths=[1, 1, 1], key_dim=[8, 8, 8]),
    # timm models through TimmWrapperForImageClassification (needs timm, which needs torchvision).
    "timm_wrapper": dict(architecture="resnet18", model_args=dict(layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], stem_width=8)),
}  # fmt: skip
TIMM_TINY_MODEL_ARGS = {
    "resnet18": dict(layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], stem_width=8),
    "convnext_atto": dict(depths=[1, 1, 1, 1], dims=[8, 16, 32, 64]),
    "vit_tiny_patch16_224": dict(img_size=IMAGE_SIZE, patch_size=8, embed_dim=32, depth=2, num_heads=2),
    "efficientnet_b0": dict(drop_rate=0.0),
    "mobilenetv3_small_050": dict(),
}


def general_dense_model(model_type, seed=0, num_labels=4, **kwargs):
    """A tiny model of a general-path family, built from its config (no download)."""
    from prunefuse_hf.pruning.support import classifier_class_name

    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        model_type, num_labels=num_labels, **{**GENERAL_TINY_CONFIGS[model_type], **kwargs}
    )
    return getattr(transformers, classifier_class_name(model_type))(config).eval()


# Image classification families (the detectors' other classes are tested in test_roles.py).
REFUSED_CLASSES = [
    (model_type, name)
    for model_type, names in refused_model_classes().items()
    if model_type in FAMILY_ADAPTERS
    for name in names
]


def tiny_config(model_type, num_labels=4, **kwargs):
    return AutoConfig.for_model(model_type, num_labels=num_labels, **{**TINY_CONFIGS[model_type], **kwargs})


def model_class(model_type):
    """The class PruneFuse runs for the family (DeiT also maps to its inference-only "WithTeacher" variant)."""
    return getattr(transformers, FAMILY_ADAPTERS[model_type].model_class)


def dense_model(model_type, seed=0, **kwargs):
    torch.manual_seed(seed)
    return model_class(model_type)(tiny_config(model_type, **kwargs))


@functools.cache
def _pruned(model_type, ratio, config_items):
    dense = dense_model(model_type, **dict(config_items))
    surrogate, plan = prune_model(dense, ratio)
    return dense, surrogate, plan


def pruned(model_type, ratio, **kwargs):
    """A dense model (tiny config plus `kwargs`), its surrogate and plan; pruned once per session, fresh copies
    per test."""
    return copy.deepcopy(_pruned(model_type, ratio, tuple(sorted(kwargs.items()))))


def batch(model, seed=0, size=8):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(size, model.config.num_channels, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.randint(0, model.config.num_labels, (size,), generator=generator)
    return pixel_values, labels


def train_steps(model, steps=3, lr=0.05, seed=0):
    pixel_values, labels = batch(model, seed)
    return sgd_steps(model, pixel_values, labels, steps=steps, lr=lr)


def assert_states_equal(actual, expected):
    assert set(actual) == set(expected)
    for name, tensor in actual.items():
        assert torch.equal(tensor, expected[name]), name


def assert_same_outputs(actual, expected):
    """
    Outputs of two copies of the same weights (a model and its reload, a local and a downloaded checkpoint): equal up
    to float rounding, relative to the largest output. The weights themselves are compared bitwise
    (`assert_states_equal`); their outputs are not bitwise promised by torch's CPU kernels, which pick their code
    path by thread count and memory alignment: with one thread, a 1x1 convolution gave outputs that differ in their
    last bits for bitwise-equal inputs and weights, one copy 64-byte aligned, the other at offset 24 in a safetensors
    buffer.
    """
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))


# ----- labels of a small pool, read from files and stored (test_label_files, test_annotation) -----

CLASS_NAMES = ["cat", "dog", "bird", "frog"]
INDICES = [5, 2, 17, 9]
LABELS = [1, 0, 3, 1]
NAMES = [CLASS_NAMES[k] for k in LABELS]
POOL_SIZE = 24


def snapshot(directory: Path) -> dict:
    """{relative path: bytes} of every file under `directory` (hidden temporary files included)."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ----- one tiny model per supported object detector (test_roles) -----

DETECTION_IMAGE_SIZE = 64
_TINY_RESNET_BACKBONE = dict(
    model_type="resnet", embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], out_features=["stage2"]
)
_TINY_DETR = dict(
    use_timm_backbone=False,
    use_pretrained_backbone=False,
    backbone=None,
    backbone_config=_TINY_RESNET_BACKBONE,
    d_model=32,
    encoder_layers=1,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=48,
    num_queries=10,
    dropout=0.0,
)
# Deformable DETR: two backbone maps and one extra level; d_model a multiple of its input projections' 32 norm groups
# at every tested ratio.
_TINY_DEFORMABLE_DETR = dict(
    _TINY_DETR,
    backbone_config=dict(_TINY_RESNET_BACKBONE, out_features=["stage1", "stage2"]),
    d_model=128,
    num_feature_levels=3,
    encoder_n_points=2,
    decoder_n_points=2,
)
# RT-DETR: three backbone maps into the hybrid encoder, its decoder on three levels.
_TINY_RT_DETR = dict(
    backbone_config=dict(
        model_type="rt_detr_resnet",
        embedding_size=16,
        hidden_sizes=[16, 32, 48],
        depths=[1, 1, 1],
        layer_type="basic",
        out_indices=[1, 2, 3],
    ),
    encoder_in_channels=[16, 32, 48],
    encoder_hidden_dim=32,
    encoder_ffn_dim=64,
    encoder_attention_heads=2,
    d_model=32,
    decoder_in_channels=[32, 32, 32],
    decoder_ffn_dim=48,
    decoder_attention_heads=4,
    decoder_layers=2,
    decoder_n_points=2,
    num_queries=10,
    num_denoising=4,
)
DETECTION_TINY_CONFIGS = {
    "detr": _TINY_DETR,
    "conditional_detr": _TINY_DETR,
    "yolos": dict(
        image_size=[DETECTION_IMAGE_SIZE, DETECTION_IMAGE_SIZE], patch_size=8, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, num_detection_tokens=5, use_mid_position_embeddings=True,
    ),
    "deformable_detr": _TINY_DEFORMABLE_DETR,
    "rt_detr": _TINY_RT_DETR,
    "rt_detr_v2": _TINY_RT_DETR,
}  # fmt: skip


def detection_config(model_type, num_labels=3, **kwargs):
    return AutoConfig.for_model(
        model_type, num_labels=num_labels, **{**copy.deepcopy(DETECTION_TINY_CONFIGS[model_type]), **kwargs}
    )


def detection_model(model_type, seed=0, **kwargs):
    """A tiny detector of a supported family, built from its config (no download), in eval mode."""
    from prunefuse_hf.pruning.families import DETECTION_ADAPTERS

    torch.manual_seed(seed)
    model_class = getattr(transformers, DETECTION_ADAPTERS[model_type].model_class)
    return model_class(detection_config(model_type, **kwargs)).eval()


@functools.cache
def _pruned_detector(model_type, ratio):
    dense = detection_model(model_type)
    surrogate, plan = prune_model(dense, ratio)
    return dense, surrogate, plan


# ----- semantic segmentation: one tiny model per segmentation registry entry (test_segmentation) -----

# Keyed as `SEGMENTATION_ADAPTERS` and `GENERAL_SEGMENTATION_FAMILIES` are (class name, "/backbone" for UperNet).
SEGMENTATION_TINY_CONFIGS = {
    "SegformerForSemanticSegmentation": dict(
        model_type="segformer", hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 3, 4], depths=[1, 1, 1, 1],
        decoder_hidden_size=32, classifier_dropout_prob=0.0, drop_path_rate=0.0,
    ),
    "UperNetForSemanticSegmentation/convnext": dict(
        model_type="upernet", hidden_size=32, auxiliary_channels=16, pool_scales=[1, 2, 3, 6],
        backbone_config=dict(
            model_type="convnext", num_stages=4, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
            out_features=["stage1", "stage2", "stage3", "stage4"],
        ),
    ),
    "UperNetForSemanticSegmentation/swin": dict(
        model_type="upernet", hidden_size=32, auxiliary_channels=16, pool_scales=[1, 2, 3, 6],
        backbone_config=dict(
            model_type="swin", image_size=IMAGE_SIZE, patch_size=2, embed_dim=16, depths=[1, 1, 1],
            num_heads=[2, 2, 4], window_size=4, drop_path_rate=0.0, out_features=["stage1", "stage2", "stage3"],
        ),
    ),
    # Output stride 8 (dilated last stages): 4 x 4 logits on 32 x 32 images.
    "MobileNetV2ForSemanticSegmentation": dict(
        model_type="mobilenet_v2", image_size=IMAGE_SIZE, depth_multiplier=0.25, output_stride=8,
        classifier_dropout_prob=0.0,
    ),
}  # fmt: skip
SEGMENTATION_NUM_LABELS = 5


def segmentation_model(key, seed=0, num_labels=SEGMENTATION_NUM_LABELS, **kwargs):
    """A tiny segmentation model of a registry entry, built from its config (no download), in eval mode."""
    values = {**SEGMENTATION_TINY_CONFIGS[key], **kwargs}
    torch.manual_seed(seed)
    config = AutoConfig.for_model(values.pop("model_type"), num_labels=num_labels, **values)
    return getattr(transformers, key.split("/")[0])(config).eval()


@functools.cache
def _pruned_segmentation(key, ratio):
    dense = segmentation_model(key)
    surrogate, plan = prune_model(dense, ratio)
    return dense, surrogate, plan


def pruned_detector(model_type, ratio):
    """A tiny detector, its surrogate and plan; pruned once per session, fresh copies per test."""
    return copy.deepcopy(_pruned_detector(model_type, ratio))


def detection_batch(model, seed=0, size=2):
    """Seeded pixels and COCO-style targets (`class_labels`, `boxes` as normalized center x, y, width, height)."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(size, 3, DETECTION_IMAGE_SIZE, DETECTION_IMAGE_SIZE, generator=generator)
    labels = [
        {
            "class_labels": torch.randint(0, model.config.num_labels, (2,), generator=generator),
            "boxes": torch.rand(2, 2, generator=generator).mul(0.5).add(0.25).repeat(1, 2).mul(torch.tensor([1, 1, 0.5, 0.5])),
        }
        for _ in range(size)
    ]  # fmt: skip
    return pixel_values, labels


def pruned_segmentation(key, ratio):
    """A tiny segmentation model, its surrogate and plan; pruned once per session, fresh copies per test."""
    return copy.deepcopy(_pruned_segmentation(key, ratio))


def segmentation_batch(model, seed=0, size=4):
    """Seeded pixels and per-pixel class ids (ignore index 255 on a few pixels)."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.randint(0, model.config.num_labels, (size, IMAGE_SIZE, IMAGE_SIZE), generator=generator)
    labels[:, :2, :2] = 255
    return pixel_values, labels


def segmentation_sgd_steps(model, steps=3, lr=0.05, seed=0):
    """A few SGD steps on the model's own per-pixel loss, in train mode without dropout; the losses."""
    pixel_values, labels = segmentation_batch(model, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    train_without_dropout(model)
    losses = []
    for _ in range(steps):
        loss = model(pixel_values=pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def detection_items(num=12, num_classes=3, seed=0):
    """Small gray items of `num_classes` classes, the objects `synthetic_detection_pool` pastes in tests."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(num):
        pixels = np.zeros((28, 28), dtype=np.uint8)
        pixels[6:22, 8:20] = rng.integers(120, 255)
        images.append(pixels)
    features = Features({"image": Image(), "label": ClassLabel(num_classes=num_classes)})
    return Dataset.from_dict({"image": images, "label": [i % num_classes for i in range(num)]}, features)


def tiny_detr(num_labels=3, num_queries=8):
    """A DETR with a two-stage ResNet backbone, small enough to train in a test."""
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"])
    config = DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, d_model=16,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=num_queries, num_labels=num_labels,
    )  # fmt: skip
    return DetrForObjectDetection(config)
