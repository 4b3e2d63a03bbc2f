"""Semantic-segmentation masks read as class ids: decoding a mask as stored (raw ids, never colors: palette PNGs
by index, an RGB mask only through a palette of one color per class id), and `reduce_labels` (0 a background that
is not a class). The dataset layout, its class names and its checks are `segmentation_data.py`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping

import numpy as np
import PIL.Image

from ..data.images import path_of

IGNORE_INDEX = 255
_INTEGER_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")


class MaskDecodeError(ValueError):
    """A mask cannot be read as class ids; the message names the pool index (or file), the value and the fix."""


def open_mask(value, *, pool_index: int | None = None, palette=None) -> np.ndarray:
    """
    Decode one mask to its class ids, an `(height, width)` int64 array.

    Masks are read as stored, never as a viewer shows them: an "L", "I" or 16-bit image gives its values, a palette
    ("P") image its palette indices (the Pascal VOC convention: the index is the class id, the palette only colors
    it). An RGB(A) mask is read through `palette` (one color per class id); without one it is accepted only when it
    is gray (R = G = B, its value the id), and refused otherwise.

    Args:
        value: What a `datasets.Image(decode=False)` column holds (`{"path", "bytes"}`), a path, bytes, a PIL image,
            or an array `(H, W)` (or `(H, W, 3)` colors).
        pool_index (`int`, *optional*): Named in the error message.
        palette (*optional*): Colors of the class ids for RGB masks: a list of `(r, g, b)` by class id, or a mapping
            `{(r, g, b): class_id}`.

    Returns:
        `np.ndarray` of shape `(height, width)`, int64.

    Raises:
        [`MaskDecodeError`]: no mask, an undecodable file, a colored mask without `palette`, or a color not in it.

    Example:

    ```python
    >>> open_mask(np.array([[0, 1], [255, 2]], dtype=np.uint8)).tolist()
    [[0, 1], [255, 2]]
    >>> open_mask(np.array([[[255, 0, 0], [0, 0, 0]]], dtype=np.uint8), palette=[(0, 0, 0), (255, 0, 0)]).tolist()
    [[1, 0]]
    ```
    """
    where = f"pool index {pool_index}" if pool_index is not None else "mask"
    path = path_of(value)
    shown = f" ({path})" if path else ""
    if value is None or (isinstance(value, dict) and not value.get("bytes") and not value.get("path")):
        raise MaskDecodeError(
            f"{where}: no mask (the value is None); give the image its mask, or drop the row from the pool"
        )
    try:
        pixels = _mask_pixels(value)
    except Exception as error:  # PIL raises many kinds of errors on corrupt files
        reason = " ".join(str(error).split()) or type(error).__name__
        raise MaskDecodeError(
            f"{where}: the mask{shown} cannot be decoded ({reason}); repair or replace the mask file, or drop "
            "the row"
        ) from None
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        return _colors_to_ids(pixels[..., :3], palette, where + shown)
    if pixels.ndim == 3 and pixels.shape[-1] in (1, 2):  # gray (and alpha)
        pixels = pixels[..., 0]
    if pixels.ndim != 2:
        raise MaskDecodeError(
            f"{where}: the mask{shown} has shape {pixels.shape}, not (height, width); store one class id per pixel"
        )
    if np.issubdtype(pixels.dtype, np.floating):
        if not np.all(np.isfinite(pixels)) or not np.array_equal(pixels, np.round(pixels)):
            raise MaskDecodeError(
                f"{where}: the mask{shown} holds non-integer values; store integer class ids (an 'L' or 'P' PNG)"
            )
    return pixels.astype(np.int64)


def _mask_pixels(value) -> np.ndarray:
    if isinstance(value, (np.ndarray, list)):
        return np.asarray(value)
    if isinstance(value, PIL.Image.Image):
        image = value
    elif isinstance(value, dict):
        data = value.get("bytes")
        image = PIL.Image.open(io.BytesIO(data)) if data else PIL.Image.open(value["path"])
    elif isinstance(value, (bytes, bytearray, memoryview)):
        image = PIL.Image.open(io.BytesIO(bytes(value)))
    else:
        image = PIL.Image.open(os.fspath(value))
    image.load()
    if image.mode in _INTEGER_MODES or image.mode == "F":
        return np.asarray(image)
    if image.mode in ("LA", "PA"):
        return np.asarray(image)[..., 0]
    return np.asarray(image.convert("RGB"))


def _colors_to_ids(colors: np.ndarray, palette, where: str) -> np.ndarray:
    colors = colors.astype(np.int64)
    if palette is None:
        if np.array_equal(colors[..., 0], colors[..., 1]) and np.array_equal(colors[..., 0], colors[..., 2]):
            return colors[..., 0]
        first = tuple(
            int(v) for v in colors.reshape(-1, 3)[np.flatnonzero(np.ptp(colors.reshape(-1, 3), 1))[0]]
        )
        raise MaskDecodeError(
            f"{where}: the mask is an RGB color image (e.g. color {first}) and no palette says which class each "
            "color is; pass `palette` (one (r, g, b) per class id), or store the class ids themselves (an 'L' or "
            "'P' PNG)"
        )
    color_of = _palette_mapping(palette)
    codes = (colors[..., 0] << 16) | (colors[..., 1] << 8) | colors[..., 2]
    unique, inverse = np.unique(codes, return_inverse=True)
    lookup = np.array([color_of.get(int(code), -1) for code in unique], dtype=np.int64)
    if (lookup < 0).any():
        code = int(unique[np.flatnonzero(lookup < 0)[0]])
        color = (code >> 16, (code >> 8) & 255, code & 255)
        raise MaskDecodeError(
            f"{where}: color {color} is not in the palette; add it to `palette` (with its class id) or repaint "
            "those pixels"
        )
    return lookup[inverse].reshape(codes.shape)


def _palette_mapping(palette) -> dict[int, int]:
    items = (
        palette.items() if isinstance(palette, Mapping) else ((tuple(c), i) for i, c in enumerate(palette))
    )
    mapping = {}
    for color, class_id in items:
        r, g, b = (int(v) for v in tuple(color)[:3])
        mapping[(r << 16) | (g << 8) | b] = int(class_id)
    return mapping


def reduce_mask_labels(mask: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """
    `reduce_labels` as the transformers image processors (`do_reduce_labels`) and `evaluate`'s `mean_iou` apply it:
    0 (a background that is not a class) becomes the ignore index, every other id is lowered by one, and the ignore
    index stays.

    Example:

    ```python
    >>> reduce_mask_labels(np.array([0, 1, 2, 255])).tolist()
    [255, 0, 1, 255]
    ```
    """
    mask = np.asarray(mask, dtype=np.int64)
    reduced = mask - 1
    reduced[(mask == 0) | (mask == ignore_index)] = ignore_index
    return reduced
