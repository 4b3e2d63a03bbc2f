"""A synthetic semantic-segmentation pool for offline recipes and tests: Fashion-MNIST items pasted at several
scales on textured canvases, with per-pixel masks in the guide's layout (`image`, `label`)."""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np
import PIL.Image

from ..data.images import open_image
from .detection_synthetic import IMAGE_ENCODERS, drawn_items, encode_pixels, place_square, textured_canvas
from .segmentation_data import CLASSES_COLUMN, MASK_COLUMN

BACKGROUND = "background"
# An item's pixels brighter than this (of 255) belong to the item in the mask; dimmer ones are background.
_OBJECT_LEVEL = 40


def synthetic_segmentation_pool(
    num_images: int,
    *,
    items: datasets.Dataset | None = None,
    split: str = "train",
    item_classes: Sequence[int] | None = None,
    image_size: int = 64,
    min_objects: int = 1,
    max_objects: int = 3,
    scales: tuple[int, ...] = (20, 28, 40),
    max_overlap: float = 0.2,
    image_format: str = "jpeg",
    seed: int = 0,
) -> datasets.Dataset:
    """
    Build a seeded segmentation dataset: each RGB canvas (a smooth random gradient plus noise and stripes, as in the
    synthetic detection pool) holds `min_objects`..`max_objects` items drawn from `items` (by default Fashion-MNIST's
    `split`), each resized to one of `scales` pixels, tinted, and pasted where it overlaps earlier items by at most
    `max_overlap` (IoU of their squares; an item that finds no place in 30 tries is left out).

    The mask gives every pixel of an item brighter than 40/255 the item's class id + 1 (a later item covers an
    earlier one), and every other pixel 0, the background class. Class names are `["background", *item names]`
    (with `item_classes`, the names of those item classes only, in that order),
    held by the `classes` column's `ClassLabel` (per image, the classes its mask holds), where
    `segmentation_class_names` finds them. The same arguments always give the same dataset.

    Args:
        num_images (`int`): Images to build.
        items (`datasets.Dataset`, *optional*): Grayscale items with `image` and a `label` `ClassLabel`.
        split (`str`, *optional*, defaults to `"train"`): Fashion-MNIST split, when `items` is not given.
        item_classes (`Sequence[int]`, *optional*): Draw only items of these classes (e.g. `[1, 5, 7, 8, 9]`:
            Fashion-MNIST's easily told apart trouser, sandal, sneaker, bag and ankle boot); mask id `k + 1` is
            `item_classes[k]`. Default: every class.
        image_size (`int`, *optional*, defaults to 64): Side of the square canvases.
        min_objects (`int`, *optional*, defaults to 1): Fewest items per image (0 allows background-only images).
        max_objects (`int`, *optional*, defaults to 3): Most items per image.
        scales (`tuple[int, ...]`, *optional*): Side lengths, in pixels, an item is resized to.
        max_overlap (`float`, *optional*, defaults to 0.2): Largest IoU of a new item's square with an earlier one.
        image_format (`str`, *optional*, defaults to `"jpeg"`): How the images are stored (`"jpeg"` or `"png"`);
            masks are always lossless PNG.
        seed (`int`, *optional*, defaults to 0): Seed of every draw.

    Returns:
        `datasets.Dataset` with `image`, `label` (the mask, an "L" PNG) and `classes`.

    Example:

    ```python
    >>> pool = synthetic_segmentation_pool(300, seed=0)  # doctest: +SKIP
    >>> pool.features["classes"].feature.names[:3], pool.num_rows  # doctest: +SKIP
    (['background', 'T-shirt/top', 'Trouser'], 300)
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
    item_names = list(items.features["label"].names)
    item_classes, candidates = drawn_items(items, item_classes)
    mask_id = np.zeros(len(item_names), dtype=np.uint8)
    mask_id[list(item_classes)] = np.arange(1, len(item_classes) + 1)
    names = [BACKGROUND, *(item_names[c] for c in item_classes)]
    rng = np.random.default_rng(seed)
    counts = rng.integers(min_objects, max_objects + 1, size=num_images)
    picks = candidates[rng.integers(0, len(candidates), size=int(counts.sum()))]
    # Only the items used are decoded.
    unique, inverse = np.unique(picks, return_inverse=True)
    chosen = items.select(unique.tolist())
    item_pixels = [np.asarray(open_image(v).convert("L"), dtype=np.uint8) for v in chosen["image"]]
    item_labels = np.asarray(chosen["label"], dtype=np.int64)

    images, masks, present = [], [], []
    position = 0
    grid = np.mgrid[0:image_size, 0:image_size].astype(np.float32) / image_size
    for count in counts:
        canvas = textured_canvas(rng, grid)
        mask = np.zeros((image_size, image_size), dtype=np.uint8)
        taken: list[tuple[int, int, int]] = []
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
            color = rng.uniform(150, 255, size=3).astype(np.float32)
            region = canvas[y : y + side, x : x + side]
            region[:] = region * (1 - alpha[..., None]) + color * alpha[..., None]
            visible = np.asarray(resized) > _OBJECT_LEVEL
            mask[y : y + side, x : x + side][visible] = mask_id[item_labels[item]]
        images.append(
            {"bytes": encode_pixels(canvas.clip(0, 255).astype(np.uint8), image_format), "path": None}
        )
        masks.append({"bytes": encode_pixels(mask, "png"), "path": None})
        present.append(np.unique(mask).tolist())
    features = datasets.Features(
        {
            "image": datasets.Image(),
            MASK_COLUMN: datasets.Image(),
            CLASSES_COLUMN: datasets.List(datasets.ClassLabel(names=names)),
        }
    )
    return datasets.Dataset.from_dict(
        {"image": images, MASK_COLUMN: masks, CLASSES_COLUMN: present}, features=features
    )
