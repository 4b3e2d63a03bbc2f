"""A synthetic detection pool for offline recipes and tests: Fashion-MNIST items pasted at several scales on
textured canvases, in the cppe-5 layout (tight COCO boxes, `ClassLabel` categories)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import datasets
import numpy as np
import PIL.Image

from ..data.images import open_image
from .detection_data import detection_features

# An item's pixels brighter than this (of 255) belong to the object; its box is their tight bounding box.
_OBJECT_LEVEL = 40
_PLACEMENT_TRIES = 30
IMAGE_ENCODERS = {"jpeg": {"format": "JPEG", "quality": 95}, "png": {"format": "PNG", "compress_level": 1}}


def synthetic_detection_pool(
    num_images: int,
    *,
    items: datasets.Dataset | None = None,
    split: str = "train",
    item_classes: Sequence[int] | None = None,
    image_size: int = 96,
    min_objects: int = 1,
    max_objects: int = 4,
    scales: tuple[int, ...] = (20, 28, 40, 56),
    max_overlap: float = 0.1,
    image_format: str = "jpeg",
    seed: int = 0,
) -> datasets.Dataset:
    """
    Build a seeded detection dataset: each RGB canvas (a smooth random gradient plus noise and stripes) holds
    `min_objects`..`max_objects` items drawn from `items` (by default Fashion-MNIST's `split`, from
    `prunefuse_hf.load_image_dataset("fashion_mnist", ...)`), each resized to one of `scales` pixels, tinted, and
    pasted where it overlaps earlier items by at most `max_overlap` of its area (IoU of their squares); an item that
    finds no such place in 30 tries is left out, so crowded canvases hold fewer items than drawn (with the defaults,
    about 26/30/29/15 % of the images hold 1/2/3/4 items).

    Boxes are the tight COCO `[x, y, width, height]` boxes of the items' visible pixels; categories are the items'
    classes (the `items` label `ClassLabel` names; with `item_classes`, the names of those item classes only, in that
    order). The same arguments always give the same dataset.

    Args:
        num_images (`int`): Images to build.
        items (`datasets.Dataset`, *optional*): Grayscale items with `image` and a `label` `ClassLabel`.
        split (`str`, *optional*, defaults to `"train"`): Fashion-MNIST split, when `items` is not given.
        item_classes (`Sequence[int]`, *optional*): Draw only items of these classes (e.g. `[1, 5, 7, 8, 9]`:
            Fashion-MNIST's easily told apart trouser, sandal, sneaker, bag and ankle boot); category `k` is
            `item_classes[k]`. Default: every class.
        image_size (`int`, *optional*, defaults to 96): Side of the square canvases.
        min_objects (`int`, *optional*, defaults to 1): Fewest items per image (0 allows background images).
        max_objects (`int`, *optional*, defaults to 4): Most items per image.
        scales (`tuple[int, ...]`, *optional*): Side lengths, in pixels, an item is resized to.
        max_overlap (`float`, *optional*, defaults to 0.1): Largest IoU of a new item's square with an earlier one.
        image_format (`str`, *optional*, defaults to `"jpeg"`): How the images are stored: `"jpeg"` (quality 95,
            about ten times faster to write than PNG) or `"png"` (lossless).
        seed (`int`, *optional*, defaults to 0): Seed of every draw.

    Returns:
        `datasets.Dataset` with `image`, `image_id`, `width`, `height` and `objects` (`id`, `area`, `bbox`,
        `category` `ClassLabel`).

    Raises:
        `ValueError`: `min_objects` above `max_objects`, a scale larger than the canvas, an unknown `image_format`, or
            `item_classes` that are not distinct class ids of the items.

    Example:

    ```python
    >>> pool = synthetic_detection_pool(1000, seed=0)
    >>> pool.features["objects"]["category"].feature.names[:2], pool.num_rows
    (['T-shirt/top', 'Trouser'], 1000)
    ```
    """
    if not 0 <= min_objects <= max_objects:
        raise ValueError(f"Need 0 <= min_objects <= max_objects, got {min_objects} and {max_objects}.")
    if max(scales) > image_size:
        raise ValueError(f"Scales {scales} must fit in the {image_size}-pixel canvas.")
    if image_format not in IMAGE_ENCODERS:
        raise ValueError(f"image_format must be one of {list(IMAGE_ENCODERS)}, got {image_format!r}.")
    if items is None:
        from ..data.loading import load_image_dataset

        items = load_image_dataset("fashion_mnist", split=split)
    item_classes, candidates = drawn_items(items, item_classes)
    category = np.full(len(items.features["label"].names), -1, dtype=np.int64)
    category[item_classes] = np.arange(len(item_classes))
    names = [items.features["label"].names[c] for c in item_classes]
    rng = np.random.default_rng(seed)
    counts = rng.integers(min_objects, max_objects + 1, size=num_images)
    picks = candidates[rng.integers(0, len(candidates), size=int(counts.sum()))]
    # Only the items used are decoded.
    unique, inverse = np.unique(picks, return_inverse=True)
    chosen = items.select(unique.tolist())
    item_pixels = [np.asarray(open_image(v).convert("L"), dtype=np.uint8) for v in chosen["image"]]
    item_labels = category[np.asarray(chosen["label"], dtype=np.int64)]

    images, objects = [], []
    position = 0
    grid = np.mgrid[0:image_size, 0:image_size].astype(np.float32) / image_size
    for count in counts:
        canvas = textured_canvas(rng, grid)
        taken: list[tuple[int, int, int]] = []
        row = {"id": [], "area": [], "bbox": [], "category": []}
        for _ in range(count):
            item = inverse[position]
            position += 1
            side = int(rng.choice(scales))
            place = place_square(rng, image_size, side, taken, max_overlap)
            if place is None:
                continue
            x, y = place
            taken.append((x, y, side))
            resized = PIL.Image.fromarray(item_pixels[item]).resize(
                (side, side), PIL.Image.Resampling.BILINEAR
            )
            alpha = np.asarray(resized, dtype=np.float32) / 255.0
            visible = np.asarray(resized) > _OBJECT_LEVEL
            if not visible.any():
                continue
            color = rng.uniform(150, 255, size=3).astype(np.float32)
            region = canvas[y : y + side, x : x + side]
            region[:] = region * (1 - alpha[..., None]) + color * alpha[..., None]
            rows, cols = np.nonzero(visible)
            x0, y0 = x + int(cols.min()), y + int(rows.min())
            w, h = int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)
            row["id"].append(len(row["id"]))
            row["area"].append(float(w * h))
            row["bbox"].append([float(x0), float(y0), float(w), float(h)])
            row["category"].append(int(item_labels[item]))
        images.append(
            {"bytes": encode_pixels(canvas.clip(0, 255).astype(np.uint8), image_format), "path": None}
        )
        objects.append(row)
    features = detection_features(names)
    return datasets.Dataset.from_dict(
        {
            "image": images,
            "image_id": list(range(num_images)),
            "width": [image_size] * num_images,
            "height": [image_size] * num_images,
            "objects": objects,
        },
        features=features,
    )


def drawn_items(items: datasets.Dataset, item_classes: Sequence[int] | None) -> tuple[list[int], np.ndarray]:
    """
    The item classes a synthetic pool draws from and where their items are.

    Args:
        items (`datasets.Dataset`): Items with a `label` `ClassLabel`.
        item_classes (`Sequence[int]`, *optional*): Class ids to draw from; `None`: every class.

    Returns:
        `tuple[list[int], np.ndarray]`: the class ids, and the positions in `items` of the items of those classes.

    Raises:
        `ValueError`: `item_classes` empty, repeated, or not class ids of `items`.

    Example:

    ```python
    >>> import datasets
    >>> items = datasets.Dataset.from_dict({"label": [0, 1, 2, 1]},
    ...                                    features=datasets.Features({"label": datasets.ClassLabel(num_classes=3)}))
    >>> drawn_items(items, [1])
    ([1], array([1, 3]))
    ```
    """
    num_classes = len(items.features["label"].names)
    if item_classes is None:
        return list(range(num_classes)), np.arange(len(items))
    item_classes = [int(c) for c in item_classes]
    if (
        not item_classes
        or len(set(item_classes)) != len(item_classes)
        or not all(0 <= c < num_classes for c in item_classes)
    ):
        raise ValueError(
            f"item_classes must be distinct class ids of the items (0..{num_classes - 1}), got {item_classes}."
        )
    labels = np.asarray(items.with_format("numpy")["label"])
    return item_classes, np.flatnonzero(np.isin(labels, item_classes))


def textured_canvas(rng: np.random.Generator, grid: np.ndarray) -> np.ndarray:
    """A dim RGB canvas: a random linear gradient, stripes of random period and direction, and pixel noise."""
    ys, xs = grid
    size = xs.shape[0]
    base = rng.uniform(10, 70, size=3).astype(np.float32)
    gradient = rng.uniform(-30, 30, size=(2, 3)).astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(0.05, 0.3)
    stripes = (12 * np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period)).astype(np.float32)
    canvas = base + xs[..., None] * gradient[0] + ys[..., None] * gradient[1] + stripes[..., None]
    return canvas + rng.integers(-8, 9, size=(size, size, 3), dtype=np.int8)


def encode_pixels(pixels: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, **IMAGE_ENCODERS[image_format])
    return buffer.getvalue()


def place_square(rng, size: int, side: int, taken, max_overlap: float) -> tuple[int, int] | None:
    for _ in range(_PLACEMENT_TRIES):
        x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        if all(_square_iou((x, y, side), other) <= max_overlap for other in taken):
            return x, y
    return None


def _square_iou(a, b) -> float:
    (ax, ay, a_side), (bx, by, b_side) = a, b
    w = max(0, min(ax + a_side, bx + b_side) - max(ax, bx))
    h = max(0, min(ay + a_side, by + b_side) - max(ay, by))
    inter = w * h
    return inter / (a_side * a_side + b_side * b_side - inter)
