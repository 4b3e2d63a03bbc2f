"""Images to model inputs: geometry once into cached uint8 pixels, normalization on tensors, same numbers as the
processor."""

import re

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import (
    ConvNextImageProcessorPil,
    ResNetForImageClassification,
    ViTConfig,
    ViTImageProcessorPil,
)

from conftest import make_image_dataset, tiny_resnet_config
from prunefuse_hf.constants import LABELS, PIXEL_VALUES
from prunefuse_hf.data import images as images_module
from prunefuse_hf.data.image_processor import build_image_processor, pretrained_image_processor
from prunefuse_hf.data.images import ImageDecodeError
from prunefuse_hf.data.pixel_dataset import PixelDataset
from prunefuse_hf.data.preprocessing import ImagePreprocessor, random_crop_and_flip
from prunefuse_hf.trainer.distillation_trainer import DistillationTrainer


def preprocessor_for(config, processor=None, image_size=None, image=None, **kwargs):
    processor = build_image_processor(config, processor, image_size=image_size, image=image)
    return ImagePreprocessor(processor, config.num_channels, **kwargs)


def previous_pixels(image, mode, size):
    """The package's earlier transform (and the default processor's own): mode, PIL bilinear resize, (x/255-0.5)/0.5."""
    image = image.convert(mode).resize((size[1], size[0]), PIL.Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array).permute(2, 0, 1).div(255.0).sub(0.5).div(0.5)


@pytest.mark.parametrize(("mode", "num_channels"), [("L", 3), ("RGB", 1), ("L", 1), ("RGB", 3)])
def test_pixels_equal_the_previous_transform_exactly(tmp_path, mode, num_channels):
    dataset = make_image_dataset(6, size=16, mode=mode)
    preprocessor = preprocessor_for(tiny_resnet_config(num_channels=num_channels), image_size=20)
    model_mode = "RGB" if num_channels == 3 else "L"
    for cache in (True, False):
        pixels = preprocessor.pixel_dataset(dataset, cache=cache, cache_dir=tmp_path)
        batch = PixelDataset(pixels, np.arange(6)).batch(list(range(6)))
        assert batch.dtype == torch.uint8 and batch.shape == (6, num_channels, 20, 20)
        normalized = preprocessor.normalize(batch)
        for i in range(6):
            assert torch.equal(normalized[i], previous_pixels(dataset[i]["image"], model_mode, (20, 20)))


@pytest.mark.parametrize(
    "processor",
    [
        ViTImageProcessorPil(
            size={"height": 24, "width": 24}, image_mean=[0.2, 0.3, 0.4], image_std=[0.3, 0.2, 0.1]
        ),
        ConvNextImageProcessorPil(size={"shortest_edge": 20}, crop_pct=0.875),
    ],
    ids=["vit", "convnext-crop"],
)
def test_geometry_then_normalization_equals_the_pretrained_processor(tmp_path, processor):
    dataset = make_image_dataset(5, size=30, mode="RGB")
    preprocessor = preprocessor_for(tiny_resnet_config(), processor)
    pixels = PixelDataset(preprocessor.pixel_dataset(dataset, cache_dir=tmp_path), np.arange(5)).batch(
        range(5)
    )
    expected = processor([dataset[i]["image"] for i in range(5)], return_tensors="pt")[PIXEL_VALUES]
    assert torch.equal(preprocessor.normalize(pixels), expected)


def test_size_comes_from_image_size_then_the_config_then_the_images():
    image = PIL.Image.new("RGB", (12, 10))
    assert build_image_processor(tiny_resnet_config(), image_size=24).size == {"height": 24, "width": 24}
    assert build_image_processor(ViTConfig(image_size=32)).size == {"height": 32, "width": 32}
    assert build_image_processor(tiny_resnet_config(), image=image).size == {"height": 10, "width": 12}
    with pytest.raises(ValueError, match="No image size: set `image_size`"):
        build_image_processor(tiny_resnet_config())


def test_mixed_image_sizes_without_a_size_are_refused_naming_the_row(tmp_path):
    images = [PIL.Image.new("L", (8, 8)), PIL.Image.new("L", (8, 8)), PIL.Image.new("L", (10, 8))]
    dataset = datasets.Dataset.from_dict(
        {"image": images}, features=datasets.Features({"image": datasets.Image()})
    )
    preprocessor = preprocessor_for(tiny_resnet_config(), image=images[0], uniform_size=(8, 8))
    with pytest.raises(ValueError, match=r"different sizes: 10×8 \(pool index 2\).*Set image_size"):
        preprocessor.pixel_dataset(dataset, cache_dir=tmp_path)


def test_pixel_arrays_are_accepted(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, size=(3, 6, 6), dtype=np.uint8)
    features = datasets.Features(
        {"image": datasets.Array2D((6, 6), "uint8"), "label": datasets.Value("int64")}
    )
    dataset = datasets.Dataset.from_dict({"image": pixels, "label": [0, 1, 2]}, features=features)
    preprocessor = preprocessor_for(tiny_resnet_config(num_channels=1), image_size=6)
    batch = PixelDataset(preprocessor.pixel_dataset(dataset, cache_dir=tmp_path), np.arange(3)).batch(
        [0, 1, 2]
    )
    assert torch.equal(
        preprocessor.normalize(batch)[:, 0], (torch.from_numpy(pixels).float() / 255 - 0.5) / 0.5
    )


def test_unsupported_channel_counts_and_processor_mismatch_are_named():
    with pytest.raises(ValueError, match="4 input channels"):
        build_image_processor(tiny_resnet_config(num_channels=4), image_size=8)
    with pytest.raises(ValueError, match="normalizes 3 channels but the model expects 1"):
        build_image_processor(
            tiny_resnet_config(num_channels=1), ViTImageProcessorPil(size={"height": 8, "width": 8})
        )


def test_the_cache_is_reused_and_keyed_by_the_preprocessing(tmp_path, monkeypatch):
    dataset = make_image_dataset(12, size=16)
    preprocessor = preprocessor_for(tiny_resnet_config(), image_size=16)
    first = preprocessor.pixel_dataset(dataset, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("pixels-*.arrow"))) == 1

    decoded = []
    original = images_module.open_image
    monkeypatch.setattr(
        "prunefuse_hf.data.preprocessing.open_image", lambda *a, **k: decoded.append(1) or original(*a, **k)
    )
    again = preprocessor.pixel_dataset(dataset, cache_dir=tmp_path)
    # The second pass reads the Arrow file: only the first image is opened (to read the output shape).
    assert len(decoded) == 1
    assert np.array_equal(np.asarray(again[:][PIXEL_VALUES]), np.asarray(first[:][PIXEL_VALUES]))
    other = preprocessor_for(tiny_resnet_config(), image_size=12)
    assert other.cache_key(dataset) != preprocessor.cache_key(dataset)


@pytest.fixture
def counted_decodes(monkeypatch):
    """Twelve images, a preprocessor for them, and a list that grows by one at every image decoded."""
    decoded = []
    original = images_module.open_image
    monkeypatch.setattr(
        "prunefuse_hf.data.preprocessing.open_image", lambda *a, **k: decoded.append(1) or original(*a, **k)
    )
    return make_image_dataset(12, size=16), preprocessor_for(tiny_resnet_config(), image_size=16), decoded


def test_without_the_cache_nothing_is_decoded_until_read(tmp_path, counted_decodes):
    dataset, preprocessor, decoded = counted_decodes
    lazy = preprocessor.pixel_dataset(dataset, cache=False, validate=False, cache_dir=tmp_path)
    # The first image (the output shape) and the timed sample of the cost message (at most 16: all 12 here).
    assert len(decoded) == 1 + 12 and not list(tmp_path.glob("pixels-*"))
    assert PixelDataset(lazy, np.arange(12)).batch([3, 4]).shape == (2, 3, 16, 16)
    assert len(decoded) == 1 + 12 + 2


def test_without_creating_a_cache_a_one_pass_dataset_reads_an_existing_one_or_decodes_as_read(
    tmp_path, counted_decodes, caplog
):
    dataset, preprocessor, decoded = counted_decodes
    with caplog.at_level("INFO", logger="prunefuse_hf"):
        lazy = preprocessor.pixel_dataset(dataset, cache_dir=tmp_path, create_cache=False)
    # Only the first image (the output shape): no sample, no validation pass, no file, no cost message.
    assert len(decoded) == 1 and not list(tmp_path.glob("pixels-*"))
    assert "Not caching" not in caplog.text and "Caching" not in caplog.text
    assert PixelDataset(lazy, np.arange(12)).batch([3, 4]).shape == (2, 3, 16, 16) and len(decoded) == 3

    cached = preprocessor.pixel_dataset(dataset, cache_dir=tmp_path)  # e.g. the run's pool
    decoded.clear()
    again = preprocessor.pixel_dataset(dataset, cache_dir=tmp_path, create_cache=False)
    assert not PixelDataset(again, np.arange(12)).decodes_per_batch and len(decoded) == 1
    assert torch.equal(
        PixelDataset(again, np.arange(12)).batch([3, 4]), PixelDataset(cached, np.arange(12)).batch([3, 4])
    )
    assert len(list(tmp_path.glob("pixels-*.json"))) == 1


def test_without_the_cache_every_image_is_still_decoded_once_up_front(tmp_path, counted_decodes):
    dataset, preprocessor, decoded = counted_decodes
    preprocessor.pixel_dataset(dataset, cache=False, cache_dir=tmp_path)
    assert len(decoded) == 1 + 12 + 12 and not list(tmp_path.glob("pixels-*"))


def test_the_cache_is_skipped_when_the_disk_is_too_small(tmp_path, monkeypatch, caplog):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    preprocessor = preprocessor_for(tiny_resnet_config(), image_size=16)
    with caplog.at_level("WARNING", logger="prunefuse_hf"):
        pixels = preprocessor.pixel_dataset(make_image_dataset(12, size=16), cache_dir=tmp_path)
    assert not list(tmp_path.glob("pixels-*"))
    # The time per pass is measured: any machine's speed passes.
    assert re.search(
        re.escape(
            f"Not caching decoded pixels (~9.0 KB needed as JPEG q90, 1.0 KB free in {tmp_path} (the cache takes at "
            "most half of the free space)): every scoring pass and epoch decodes 12 images again, ~"
        )
        + r"[\d.]+ (s|min|h) per pass on one core \(measured ",
        caplog.text,
    )
    assert "Set cache_pixels: true and pixel_cache_format: jpeg (~" in caplog.text
    assert PixelDataset(pixels, np.arange(12)).batch([0]).shape == (1, 3, 16, 16)


def test_a_damaged_file_is_named_while_caching(tmp_path):
    folder = tmp_path / "pool" / "cat"
    folder.mkdir(parents=True)
    for i in range(3):
        PIL.Image.new("RGB", (8, 8), (i, i, i)).save(folder / f"{i}.png")
    damaged = folder / "1.png"
    damaged.write_bytes(damaged.read_bytes()[:40])
    dataset = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "pool"), split="train")
    preprocessor = preprocessor_for(tiny_resnet_config(), image_size=8)
    with pytest.raises(ImageDecodeError, match=r"1\.png"):
        preprocessor.pixel_dataset(dataset, cache_dir=tmp_path / "cache")


def test_a_damaged_file_is_named_when_two_processes_build_the_cache(tmp_path):
    folder = tmp_path / "pool" / "cat"
    folder.mkdir(parents=True)
    for i in range(40):
        PIL.Image.new("RGB", (8, 8), (i, i, i)).save(folder / f"{i:02d}.png")
    # Row 1 is not among the timed sample's rows (spread over the pool): a building process meets it.
    damaged = folder / "01.png"
    damaged.write_bytes(damaged.read_bytes()[:40])
    dataset = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "pool"), split="train")
    preprocessor = preprocessor_for(tiny_resnet_config(), image_size=8)
    with pytest.raises(ImageDecodeError, match=r"01\.png at pool index 1"):
        preprocessor.pixel_dataset(dataset, cache_dir=tmp_path / "cache", num_proc=2)
    assert not list((tmp_path / "cache").glob("*.json"))  # nothing marks the interrupted build as complete


def previous_augmentation(pixel_values, padding):
    """The package's earlier per-example loop, kept as the reference of the vectorized one."""
    _, _, height, width = pixel_values.shape
    padded = torch.nn.functional.pad(pixel_values, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (len(pixel_values), 2))
    flips = torch.rand(len(pixel_values)) < 0.5
    out = torch.empty_like(pixel_values)
    for i, ((top, left), flip) in enumerate(zip(offsets.tolist(), flips.tolist())):
        crop = padded[i, :, top : top + height, left : left + width]
        out[i] = crop.flip(-1) if flip else crop
    return out


def test_augmentation_equals_the_per_example_reference_and_only_runs_in_training():
    batch = torch.randn(16, 3, 12, 10)
    torch.manual_seed(1)
    expected = previous_augmentation(batch, 4)
    torch.manual_seed(1)
    assert torch.equal(random_crop_and_flip(batch, 4), expected)

    preprocessor = preprocessor_for(tiny_resnet_config(), image_size=16, augment=True)
    pixels = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    plain = preprocessor.normalize(pixels)
    torch.manual_seed(2)
    first = preprocessor.normalize(pixels, train=True)
    torch.manual_seed(2)
    assert torch.equal(preprocessor.normalize(pixels, train=True), first)
    assert not torch.equal(first, plain) and first.shape == plain.shape
    # Zero padding and cropped pixels only.
    assert torch.isin(first, torch.cat([plain.unique(), torch.zeros(1)])).all()


def test_pixel_dataset_trains_with_the_distillation_trainer(tmp_path):
    from transformers import AutoModelForImageClassification, TrainingArguments

    config = tiny_resnet_config(num_labels=4)
    model = AutoModelForImageClassification.from_config(config)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    dataset = make_image_dataset(16)
    preprocessor = preprocessor_for(config, image_size=16, augment=True)
    train = PixelDataset(
        preprocessor.pixel_dataset(dataset, cache_dir=tmp_path), np.arange(16), dataset["label"]
    )
    assert set(train[0]) == {PIXEL_VALUES, LABELS} and train[0][LABELS].item() == dataset[0]["label"]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=8,
                             remove_unused_columns=False, report_to=[], use_cpu=True, save_strategy="no")  # fmt: skip
    DistillationTrainer(model=model, args=args, train_dataset=train, preprocessor=preprocessor).train()
    changed = [name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert "classifier.1.weight" in changed


def test_the_pretrained_processor_is_the_checkpoints_own_when_it_has_one(tmp_path):
    config = tiny_resnet_config()
    model = ResNetForImageClassification(config)
    model.save_pretrained(tmp_path / "bare")
    assert pretrained_image_processor(str(tmp_path / "bare")) is None  # weights, no processor
    ConvNextImageProcessorPil(size={"shortest_edge": 40}).save_pretrained(tmp_path / "bare")
    assert pretrained_image_processor(tmp_path / "bare").size == {"shortest_edge": 40}
    config.save_pretrained(tmp_path / "config_only")
    ConvNextImageProcessorPil().save_pretrained(tmp_path / "config_only")
    assert pretrained_image_processor(str(tmp_path / "config_only")) is None  # random weights: the run's own
    reloaded = ResNetForImageClassification.from_pretrained(tmp_path / "bare")
    assert pretrained_image_processor(reloaded).size == {"shortest_edge": 40}
    assert pretrained_image_processor(model) is None and pretrained_image_processor(config) is None


# ----- the pixel cache: processes, formats, messages, DataLoader workers -----


def smooth_images(num_examples, width=48, height=36, seed=0):
    """Photo-like images (smooth colour waves): what a lossy format is made for, unlike noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    images = []
    for _ in range(num_examples):
        a = rng.uniform(0, 6, (3, 3))
        waves = [127 + 120 * np.sin(a[c, 0] * x + a[c, 1] * y + a[c, 2]) for c in range(3)]
        images.append(np.stack(waves, -1).astype(np.uint8))
    labels = rng.integers(0, 4, num_examples).tolist()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def all_pixels(pixels, count):
    return PixelDataset(pixels, np.arange(count)).batch(list(range(count)))


def test_two_processes_build_the_same_pixels_and_any_num_proc_reuses_them(tmp_path, monkeypatch):
    dataset = smooth_images(40)
    preprocessor = preprocessor_for(tiny_resnet_config(), image_size=32)
    single = all_pixels(preprocessor.pixel_dataset(dataset, cache_dir=tmp_path / "one", num_proc=1), 40)
    pixels = preprocessor.pixel_dataset(dataset, cache_dir=tmp_path / "two", num_proc=2)
    key = preprocessor.cache_key(dataset, "raw")
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        f"pixels-{key}.json", f"pixels-{key}_00000_of_00002.arrow", f"pixels-{key}_00001_of_00002.arrow"
    ]  # fmt: skip
    # Zero-copy views over both shards; a batch that crosses them is the single process's pixels.
    assert not PixelDataset(pixels, np.arange(40)).decodes_per_batch
    assert torch.equal(all_pixels(pixels, 40), single)
    assert torch.equal(PixelDataset(pixels, np.arange(40)).batch([39, 0, 20, 19]), single[[39, 0, 20, 19]])

    decoded = []
    original = images_module.open_image
    monkeypatch.setattr(
        "prunefuse_hf.data.preprocessing.open_image", lambda *a, **k: decoded.append(1) or original(*a, **k)
    )
    for num_proc in (1, 3, None):
        again = preprocessor.pixel_dataset(dataset, cache_dir=tmp_path / "two", num_proc=num_proc)
        assert torch.equal(all_pixels(again, 40), single)
    assert len(decoded) == 3  # the output shape, once per call; the pixels come from the two shards


def test_an_interrupted_build_is_rebuilt(tmp_path, counted_decodes):
    dataset, preprocessor, decoded = counted_decodes
    preprocessor.pixel_dataset(dataset, cache_dir=tmp_path)
    key = preprocessor.cache_key(dataset, "raw")
    # A build stopped before its description was written: its file is not trusted.
    (tmp_path / f"pixels-{key}.json").unlink()
    (tmp_path / f"pixels-{key}.arrow").write_bytes(b"half a file")
    decoded.clear()
    pixels = preprocessor.pixel_dataset(dataset, cache_dir=tmp_path)
    assert len(decoded) == 1 + 12 + 12  # shape, sample, every image
    assert all_pixels(pixels, 12).shape == (12, 3, 16, 16)
    assert (tmp_path / f"pixels-{key}.json").is_file()


@pytest.mark.parametrize("num_channels", [3, 1])
def test_compact_formats_round_trip_png_exactly_and_jpeg_within_a_few_levels(tmp_path, num_channels):
    dataset = smooth_images(24, width=96, height=72)
    preprocessor = preprocessor_for(tiny_resnet_config(num_channels=num_channels), image_size=64)
    expected = all_pixels(preprocessor.pixel_dataset(dataset, cache=False, validate=False), 24)
    sizes = {}
    for cache_format in ("raw", "png", "jpeg"):
        pixels = preprocessor.pixel_dataset(dataset, cache_dir=tmp_path, cache_format=cache_format)
        key = preprocessor.cache_key(dataset, cache_format)
        sizes[cache_format] = (tmp_path / f"pixels-{key}.arrow").stat().st_size
        batch = all_pixels(pixels, 24)
        assert batch.dtype == torch.uint8 and batch.shape == expected.shape
        assert tuple(pixels[3][PIXEL_VALUES].shape) == (num_channels, 64, 64)
        assert PixelDataset(pixels, np.arange(24)).decodes_per_batch == (cache_format != "raw")
        if cache_format == "jpeg":
            # Lossy: JPEG q90 with 4:2:0 chroma on these images is within 3 levels on average.
            difference = (batch.int() - expected.int()).abs()
            assert difference.float().mean() < 3 and difference.max() <= 40
        else:
            assert torch.equal(batch, expected)
    assert sizes["jpeg"] < sizes["png"] < sizes["raw"]
    assert sizes["jpeg"] < sizes["raw"] / 4


def test_auto_stores_raw_pixels_for_small_pools_and_jpeg_beyond_the_limit(tmp_path, monkeypatch):
    from prunefuse_hf.data import pixel_formats

    dataset = smooth_images(12)
    preprocessor = preprocessor_for(tiny_resnet_config(), image_size=16)
    preprocessor.pixel_dataset(dataset, cache_dir=tmp_path / "small")
    assert [p.name for p in (tmp_path / "small").glob("*.arrow")] == [
        f"pixels-{preprocessor.cache_key(dataset, 'raw')}.arrow"
    ]
    monkeypatch.setattr(pixel_formats, "AUTO_RAW_MAX_BYTES", 12 * 3 * 16 * 16 - 1)
    pixels = preprocessor.pixel_dataset(dataset, cache_dir=tmp_path / "large")
    assert [p.name for p in (tmp_path / "large").glob("*.arrow")] == [
        f"pixels-{preprocessor.cache_key(dataset, 'jpeg')}.arrow"
    ]
    assert PixelDataset(pixels, np.arange(12)).decodes_per_batch


def test_the_build_is_announced_with_its_size_and_time_before_it_starts(tmp_path, caplog):
    dataset = smooth_images(40)
    preprocessor = preprocessor_for(tiny_resnet_config(), image_size=32)
    with caplog.at_level("INFO", logger="prunefuse_hf"):
        preprocessor.pixel_dataset(dataset, cache_dir=tmp_path, cache_format="jpeg", num_proc=2)
    announced, done = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith(("Caching", "Cached"))
    ][:2]
    assert re.fullmatch(
        rf"Caching 40 images at 3×32×32 as JPEG q90 \(~[\d.]+ KB est\.\) in {re.escape(str(tmp_path))} with 2 "
        r"processes: ~[\d.]+ s \(measured [\d,]+ images/s per process on a sample of 16\)",
        announced,
    )
    assert done.startswith("Cached 40 images in ")
    estimate = float(re.search(r"~([\d.]+) KB est", announced).group(1)) * 1000
    # The estimate is the sample's mean encoded size times the images; the file adds Arrow's offsets.
    stored = sum(p.stat().st_size for p in tmp_path.glob("*.arrow"))
    assert 0.8 < stored / estimate < 1.3


def test_not_caching_says_so_with_the_cost_per_pass(tmp_path, caplog):
    preprocessor = preprocessor_for(tiny_resnet_config(), image_size=16)
    with caplog.at_level("INFO", logger="prunefuse_hf"):
        preprocessor.pixel_dataset(smooth_images(12), cache=False, validate=False, cache_dir=tmp_path)
    (record,) = [r for r in caplog.records if "Not caching" in r.getMessage()]
    # A cheap pass (under a minute) that the user asked for is said at INFO; the disk rule says it as a warning.
    assert record.levelname == "INFO"
    assert re.fullmatch(
        r"Not caching decoded pixels \(cache_pixels is false\): every scoring pass and epoch decodes 12 images "
        r"again, ~[\d.]+ s per pass on one core \(measured [\d,]+ images/s on a sample of 12; DataLoader workers, "
        r"dataloader_num_workers, divide it\)\. Set cache_pixels: true and pixel_cache_format: jpeg \(~[\d.]+ KB\) "
        r"to cache\.",
        record.getMessage(),
    )


def test_bad_cache_settings_are_refused_naming_the_field(tmp_path):
    preprocessor = preprocessor_for(tiny_resnet_config(), image_size=16)
    with pytest.raises(
        ValueError, match="pixel_cache_format must be one of 'auto', 'raw', 'jpeg', 'png', got 'webp'"
    ):
        preprocessor.pixel_dataset(smooth_images(4), cache_dir=tmp_path, cache_format="webp")
    with pytest.raises(ValueError, match="dataset_num_proc must be an integer >= 1, got 0"):
        preprocessor.pixel_dataset(smooth_images(4), cache_dir=tmp_path, num_proc=0)


def test_damaged_bytes_in_a_compact_cache_name_the_cache_and_the_fix():
    from prunefuse_hf.data.pixel_formats import CompactPixels

    with pytest.raises(
        ImageDecodeError, match=r"pixel cache /c/pixels-abc\.arrow .*prunefuse-hf cache clear abc"
    ):
        CompactPixels("/c/pixels-abc.arrow", "abc")({PIXEL_VALUES: [b"not an image"]})


@pytest.mark.parametrize("cache", [False, "jpeg"], ids=["lazy", "jpeg"])
def test_dataloader_workers_decode_the_same_batches(tmp_path, cache):
    import pickle

    dataset = smooth_images(20)
    preprocessor = preprocessor_for(tiny_resnet_config(), image_size=16)
    if cache:
        pixels = preprocessor.pixel_dataset(dataset, cache_dir=tmp_path, cache_format=cache)
    else:
        pixels = preprocessor.pixel_dataset(dataset, cache=False, validate=False)
    train = PixelDataset(pixels, np.arange(20), dataset["label"])
    # Workers started with "spawn" (macOS, Windows) receive the dataset pickled.
    assert torch.equal(pickle.loads(pickle.dumps(train)).batch([1, 2]), train.batch([1, 2]))
    batches = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(train, batch_size=6, num_workers=workers)
        batches[workers] = list(loader)
    assert len(batches[2]) == 4
    for one, two in zip(batches[0], batches[2]):
        assert torch.equal(one[PIXEL_VALUES], two[PIXEL_VALUES]) and torch.equal(one[LABELS], two[LABELS])


@pytest.mark.parametrize("failure", ["full", "read_only", "damaged"])
def test_a_pixel_cache_that_cannot_be_used_leaves_the_pixels_exact_and_says_so_once(
    tmp_path, monkeypatch, caplog, failure
):
    """A full disk or a read-only directory (simulated: the tests run as root) and a damaged cache file: the pixels
    come from decoding, one warning names the cache and the fix, and no partial cache file is left."""
    import errno
    import logging

    from prunefuse_hf.data import pixel_cache_build as module

    module._SAID_UNUSABLE.clear()
    dataset = make_image_dataset(12, mode="RGB", seed=4)
    preprocessor = ImagePreprocessor(build_image_processor(tiny_resnet_config(), image_size=16), 3, "image")
    expected = PixelDataset(preprocessor.pixel_dataset(dataset, cache=False), np.arange(12)).batch(range(12))
    cache_dir = tmp_path / "cache"
    if failure == "damaged":
        preprocessor.pixel_dataset(dataset, cache=True, cache_dir=cache_dir)
        for path in cache_dir.glob("*.arrow"):
            path.write_bytes(b"not arrow")
    else:
        error = OSError(errno.ENOSPC, "No space left on device") if failure == "full" else PermissionError(
            errno.EACCES, "Permission denied"
        )  # fmt: skip
        real_map = datasets.Dataset.map

        def failing_map(self, *args, **kwargs):
            if kwargs.get("cache_file_name"):
                open(kwargs["cache_file_name"], "wb").close()  # a build that wrote part of its file
                raise error
            return real_map(self, *args, **kwargs)

        monkeypatch.setattr(datasets.Dataset, "map", failing_map)
    with caplog.at_level(logging.WARNING, logger="prunefuse_hf"):
        for _ in range(2):  # said once, however often the cache is asked for
            pixels = preprocessor.pixel_dataset(dataset, cache=True, cache_dir=cache_dir)
            torch.testing.assert_close(PixelDataset(pixels, np.arange(12)).batch(range(12)), expected)
    if failure == "damaged":  # removed, built again once, then read
        said = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
        assert len(said) == 1 and str(cache_dir) in said[0] and "building it again" in said[0], said
        assert len(list(cache_dir.glob("*.arrow"))) == 1
        return
    said = [r.getMessage() for r in caplog.records if "Going on without the pixel cache" in r.getMessage()]
    assert len(said) == 1 and str(cache_dir) in said[0] and "PRUNEFUSE_PIXEL_CACHE" in said[0], said
    assert not list(cache_dir.glob("*.arrow"))  # nothing half-built or damaged is left behind
