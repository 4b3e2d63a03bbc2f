"""Decoding pool images to what an image viewer shows, and checking Hub repo ids given in a recipe.

`PIL.Image.open(...).convert(mode)` is not enough for real pools: it clips 16-bit grayscale to 255 (an
almost white image) instead of scaling it, drops alpha so that a transparent background turns black,
ignores the EXIF orientation of photos, and reports a truncated file as `image file is truncated` without
saying which file, and only once the pixels are read. `open_image` handles each of these and always returns
an "L" or "RGB" image; `to_model_mode` then matches the model's channel count.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import PIL.ImageOps
from datasets.utils.file_utils import is_local_path, xopen
from transformers.utils import logging

logger = logging.get_logger(__name__)

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# Modes whose colors PIL converts correctly on its own (CMYK JPEGs, including Adobe's inverted ones).
_PIL_TO_RGB_MODES = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX")
# Alpha modes and the mode PIL unpremultiplies them to first (La and RGBa store premultiplied colors).
_ALPHA_MODES = {"LA": "LA", "La": "LA", "RGBA": "RGBA", "RGBa": "RGBA"}
_ORIENTATION_TAG = 0x0112
_VALUE_TYPES = (dict, str, os.PathLike, bytes, bytearray, memoryview, PIL.Image.Image, np.ndarray, list)
_DEFAULT_FIX = "repair or remove the file, or drop the row from the dataset."


class ImageDecodeError(ValueError):
    """An image cannot be decoded; the message names the file (path) or the pool index and the fix."""


class _InvalidImageValue(ValueError):
    """A value that holds no image (no path nor bytes, or an array of the wrong shape), with its own fix."""

    def __init__(self, reason: str, fix: str):
        super().__init__(reason)
        self.fix = fix


def open_image(value, *, pool_index: int | None = None) -> PIL.Image.Image:
    """
    Decode one pool image to what an image viewer shows, as an "L" or "RGB" image.

    The image is opened, fully decoded (so that a truncated file fails here, not later in a batch), turned
    upright according to its EXIF orientation, then converted:

    - one-channel content ("1", "L", "LA", "I;16*", "I", "F", palettes whose entries are all gray) gives "L",
      everything else "RGB";
    - alpha ("LA", "PA", "RGBA", premultiplied "La"/"RGBa", palettes or "L"/"RGB"/"I;16" images with a
      `transparency` entry) is composited over a white background, as viewers show it;
    - 16-bit grayscale is scaled by `value * 255 / 65535` and rounded, not clipped;
    - "I" (32-bit integers) is kept as is when every value is in [0, 255], scaled as 16-bit when every value is
      in [0, 65535], otherwise its min..max range is stretched to 0..255 (a constant image is clipped);
    - "F" (floats) is multiplied by 255 when every value is in [0, 1], otherwise clipped to [0, 255]; both
      are rounded and NaN becomes 0;
    - "1" gives 0 and 255; "CMYK", "YCbCr", "LAB" and "HSV" use PIL's own `convert("RGB")`.

    Args:
        value (`dict`, `str`, `os.PathLike`, `bytes`, `PIL.Image.Image` or `np.ndarray`):
            What a `datasets.Image(decode=False)` column holds (`{"path": str | None, "bytes": bytes | None}`;
            the bytes are used when present and the path names the file in messages; a path that is not local,
            such as `hf://...`, is read with `datasets`' `xopen`), a file path, the bytes of an image file, a
            PIL image (opened lazily, or decoded by a `datasets.Image()` column, which has already applied and
            removed the EXIF orientation), or a pixel array (also as nested lists): HxW or HxWxC with C in 1,
            2 (gray and alpha), 3 or 4 (RGBA), of uint8, or floats in [0, 1]; uint16 and other integer or
            float arrays follow the "I;16", "I" and "F" rules above.
        pool_index (`int`, *optional*):
            Position of the image in the pool, named in the error message (useful when there is no path).

    Returns:
        `PIL.Image.Image`: A fully loaded image of mode "L" or "RGB". An image that is already "L" or "RGB"
        without transparency is returned as is (not copied).

    Raises:
        ImageDecodeError: If the image cannot be decoded (unknown format, truncated or corrupt file, missing
            file, decompression bomb, array that is not an image, row with neither path nor bytes). The message
            names the path when known, else the pool index, with the reason and the fix.
        TypeError: If `value` is of none of the supported types (a programming error, not a bad image).

    Example:

    ```python
    >>> import io
    >>> import numpy as np
    >>> import PIL.Image
    >>> from prunefuse_hf.data import open_image
    >>> sixteen_bit = PIL.Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    >>> buffer = io.BytesIO()
    >>> sixteen_bit.save(buffer, format="PNG")
    >>> image = open_image({"path": None, "bytes": buffer.getvalue()})
    >>> image.mode, np.asarray(image).tolist()
    ('L', [[0, 128, 255]])
    ```
    """
    if value is not None and not isinstance(value, _VALUE_TYPES):
        raise TypeError(
            f"open_image expects a datasets Image value ({{'path': ..., 'bytes': ...}}), a path, bytes, a PIL image "
            f"or a numpy array, not {type(value).__name__}."
        )
    path = path_of(value)
    # PIL plugins raise many kinds of exceptions on corrupt data (OSError, SyntaxError, struct.error,
    # IndexError, zlib.error, ...): everything raised while decoding one image is reported as that image's error.
    try:
        image = _decode(value)
    except Exception as error:
        raise _decode_error(path, pool_index, error) from None
    return image


def to_model_mode(image: PIL.Image.Image, num_channels: int) -> PIL.Image.Image:
    """
    Give an image returned by [`open_image`] the channel count of the model.

    "L" images are repeated to "RGB" for 3-channel models; "RGB" images become "L" with PIL's ITU-R 601-2 luma
    (`L = R * 299/1000 + G * 587/1000 + B * 114/1000`) for 1-channel models.

    Args:
        image (`PIL.Image.Image`):
            An "L" or "RGB" image, as returned by [`open_image`].
        num_channels (`int`):
            The model's input channels (`model.config.num_channels`): 1 or 3.

    Returns:
        `PIL.Image.Image`: The image in mode "L" (1 channel) or "RGB" (3 channels); returned as is when it
        already is.

    Raises:
        ValueError: If `num_channels` is not 1 or 3, or if the image is neither "L" nor "RGB" (pass it through
            [`open_image`] first, so that alpha and 16-bit data are converted as a viewer shows them).

    Example:

    ```python
    >>> import PIL.Image
    >>> from prunefuse_hf.data import to_model_mode
    >>> to_model_mode(PIL.Image.new("L", (4, 4), 7), num_channels=3).getpixel((0, 0))
    (7, 7, 7)
    ```
    """
    target = {1: "L", 3: "RGB"}.get(num_channels) if isinstance(num_channels, int) else None
    if target is None:
        raise ValueError(f"num_channels={num_channels!r} is not supported: models must take 1 or 3 channels.")
    if image.mode not in ("L", "RGB"):
        raise ValueError(
            f"to_model_mode expects an 'L' or 'RGB' image but got mode {image.mode!r}: decode it with "
            "`open_image` first, so that alpha, palettes and 16-bit data are converted as a viewer shows them."
        )
    return image if image.mode == target else image.convert(target)


def first_image(dataset: datasets.Dataset, column: str) -> PIL.Image.Image:
    """
    The pool's first image, decoded by [`open_image`]; a run given no other size resizes to its size.

    Args:
        dataset (`datasets.Dataset`): The pool.
        column (`str`): The image column (an `Image` feature or pixel arrays).

    Returns:
        `PIL.Image.Image`: row 0's image.

    Raises:
        `ValueError`: the pool has no rows.
        [`ImageDecodeError`]: the image does not decode (the error names pool index 0).

    Example:

    ```python
    >>> first_image(pool, "image").size
    (28, 28)
    ```
    """
    if len(dataset) == 0:
        raise ValueError("The pool has no rows.")
    stored = dataset.select([0]).select_columns([column])
    if isinstance(stored.features[column], datasets.Image):
        stored = stored.cast_column(column, datasets.Image(decode=False))
    return open_image(stored[0][column], pool_index=0)


def image_identities(
    dataset: datasets.Dataset, column: str, indices
) -> tuple[list[str | None], list[str | None]]:
    """
    What identifies the images of some rows, as an annotator sees them: a digest of each image's decoded pixels
    and the file it is read from. Only the rows in `indices` are read and decoded.

    Args:
        dataset (`datasets.Dataset`): The pool.
        column (`str`): The image column.
        indices (array-like of int): The rows, each `< len(dataset)`.

    Returns:
        `tuple`: the pixel digests (16 hex digits, of the image [`open_image`] decodes; `None` where no image can
        be read there now, e.g. a removed file) and the paths (`None` for images stored without a file), in the
        order of `indices`.

    Example:

    ```python
    >>> digests, paths = image_identities(pool, "image", [3, 0])
    >>> len(digests[0]), paths[0]
    (16, '/data/images/cat_3.png')
    ```
    """
    indices = [int(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
    if not indices:
        return [], []
    rows = dataset.select(indices).select_columns([column])
    if isinstance(rows.features[column], datasets.Image):
        rows = rows.cast_column(column, datasets.Image(decode=False))
    digests, paths = [], []
    for index, value in zip(indices, rows[column]):
        paths.append(path_of(value))
        try:
            digests.append(pixel_digest(open_image(value, pool_index=index)))
        except ImageDecodeError:
            digests.append(None)
    return digests, paths


def pixel_digest(image: PIL.Image.Image) -> str:
    """A digest of a decoded image's pixels, mode and size (8-byte BLAKE2b, as 16 hex digits): the same for a
    re-encoded file of the same content, different for any other image."""
    digest = hashlib.blake2b(f"{image.mode} {image.size}".encode(), digest_size=8)
    digest.update(image.tobytes())
    return digest.hexdigest()


def path_of(value) -> str | None:
    """
    The file an image (or mask) value comes from, known before anything is read: to name it in errors and to find
    files beside it.

    Args:
        value: A dataset cell: a `{"path", "bytes"}` dict, a path, a PIL image, or an array.

    Returns:
        `str` or `None`: the dict's path, the path itself, or the PIL image's file name; `None` when it has none.

    Example:

    ```python
    >>> path_of({"path": "cats/1.png", "bytes": None}), path_of([[0, 255]])
    ('cats/1.png', None)
    ```
    """
    if isinstance(value, dict):
        path = value.get("path")
        return os.fspath(path) if path else None
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    return getattr(value, "filename", None) or None


def _decode(value) -> PIL.Image.Image:
    if value is None:
        raise _InvalidImageValue("the value is None", "drop the row from the dataset or give it an image.")
    if isinstance(value, (np.ndarray, list)):
        return _from_array(np.asarray(value))
    if isinstance(value, PIL.Image.Image):
        image = value
    elif isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            image = PIL.Image.open(io.BytesIO(data))
        elif path:
            image = PIL.Image.open(io.BytesIO(_read_file(os.fspath(path))))
        else:
            raise _InvalidImageValue(
                "the row holds neither a path nor bytes", "drop the row from the dataset or give it an image."
            )
    elif isinstance(value, (str, os.PathLike)):
        image = PIL.Image.open(io.BytesIO(_read_file(os.fspath(value))))
    else:  # bytes, bytearray, memoryview
        image = PIL.Image.open(io.BytesIO(bytes(value)))
    # Loading before reading the EXIF data: PNG may store it after the pixels.
    image.load()
    if image.getexif().get(_ORIENTATION_TAG, 1) != 1:
        image = PIL.ImageOps.exif_transpose(image)
    return _to_viewer_mode(image)


def _read_file(path: str) -> bytes:
    # Reading the bytes ourselves leaves no file handle open behind a lazily loaded image.
    if is_local_path(path):
        return Path(path).read_bytes()
    with xopen(path, "rb") as file:
        return file.read()


def _to_viewer_mode(image: PIL.Image.Image) -> PIL.Image.Image:
    mode = image.mode
    if mode in ("P", "PA"):
        palette = image.getpalette("RGB") or []
        is_gray = all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))
        # PIL applies the palette's alpha, the `transparency` index or table, and the PA alpha band.
        rgba = np.asarray(image.convert("RGBA"))
        rgb = _over_white(rgba[..., :3], rgba[..., 3])
        return PIL.Image.fromarray(rgb[..., 0].copy() if is_gray else rgb)
    if mode in _ALPHA_MODES:
        pixels = np.asarray(image if mode == _ALPHA_MODES[mode] else image.convert(_ALPHA_MODES[mode]))
        blended = _over_white(pixels[..., :-1], pixels[..., -1])
        return PIL.Image.fromarray(blended[..., 0].copy() if mode[0] == "L" else blended)
    if mode in _PIL_TO_RGB_MODES:
        return image.convert("RGB")
    if mode in ("L", "RGB") and "transparency" not in image.info:
        return image
    if mode in ("1", "L", "RGB", "I", "F") or mode in _SIXTEEN_BIT_MODES:
        raw = np.asarray(image)
        pixels = _to_uint8(raw)
        transparent = _transparent_mask(raw, image.info.get("transparency"))
        if transparent is not None:
            pixels = np.where(
                transparent[..., None] if pixels.ndim == 3 else transparent, np.uint8(255), pixels
            )
        return PIL.Image.fromarray(np.ascontiguousarray(pixels))
    logger.debug("Converting an image of unusual mode %r with PIL's convert('RGB').", mode)
    return image.convert("RGB")


def _transparent_mask(raw: np.ndarray, transparency) -> np.ndarray | None:
    """Pixels equal to the single transparent value of a gray or RGB image (PNG's tRNS chunk), if any."""
    if transparency is None or isinstance(transparency, bytes):
        return None
    if raw.ndim == 3:
        return np.all(raw == np.asarray(transparency), axis=-1)
    return raw == transparency


def _from_array(array: np.ndarray) -> PIL.Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.size == 0 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (2, 3, 4)):
        raise _InvalidImageValue(
            f"an array of shape {array.shape} is not an image",
            "give HxW or HxWxC arrays with C in 1, 2, 3, 4 (uint8, or floats in [0, 1]).",
        )
    pixels = _to_uint8(array)
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        pixels = _over_white(pixels[..., :-1], pixels[..., -1])
        if pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
    return PIL.Image.fromarray(np.ascontiguousarray(pixels))


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """8-bit pixels for any numeric pixel array, following the rules of `open_image` for its dtype."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:  # mode "1"
        return np.where(array, np.uint8(255), np.uint8(0))
    if array.dtype.kind == "f":
        values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        return np.round(np.clip(values, 0.0, 255.0)).astype(np.uint8)
    if array.dtype.kind not in "iu":
        raise ValueError(f"pixels of dtype {array.dtype} are not supported")
    values = array.astype(np.int64)
    low, high = int(values.min()), int(values.max())
    is_sixteen_bit = array.dtype.kind == "u" and array.dtype.itemsize == 2  # any byte order ("I;16B")
    if is_sixteen_bit or (low >= 0 and 255 < high <= 65535):
        # No value lands exactly halfway between two levels (value / 257), so rounding has no ties.
        return np.round(values * (255.0 / 65535.0)).astype(np.uint8)
    if low >= 0 and high <= 255:
        return values.astype(np.uint8)
    if high > low:
        logger.debug("Stretching integer pixels in [%d, %d] to [0, 255].", low, high)
        return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)
    return np.clip(values, 0, 255).astype(np.uint8)


def _over_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """`round(color * a + 255 * (1 - a))` with `a = alpha / 255`, in exact integer arithmetic."""
    alpha = alpha.astype(np.uint32)[..., None]
    # The numerator is an integer and 255 is odd, so no result is exactly halfway: adding 127 rounds.
    blended = (color.astype(np.uint32) * alpha + 255 * (255 - alpha) + 127) // 255
    return blended.astype(np.uint8)


def _decode_error(path: str | None, pool_index: int | None, error: Exception) -> ImageDecodeError:
    where = "Cannot decode image"
    if path:
        where += f" {path}"
    if pool_index is not None:
        where += f" at pool index {pool_index}"
    fix = _DEFAULT_FIX
    if isinstance(error, _InvalidImageValue):
        reason, fix = str(error), error.fix
    elif isinstance(error, PIL.Image.DecompressionBombError):
        reason = str(error)
        fix = (
            "if the file is trusted, raise `PIL.Image.MAX_IMAGE_PIXELS`; otherwise remove it or drop the row."
        )
    elif isinstance(error, PIL.UnidentifiedImageError):
        # PIL's own message names an in-memory buffer object, which says nothing.
        reason = "not an image format PIL can identify"
    elif isinstance(error, FileNotFoundError):
        reason, fix = "file not found", "check the path, or drop the row from the dataset."
    elif isinstance(error, IsADirectoryError):
        reason, fix = "a directory, not a file", "check the path, or drop the row from the dataset."
    elif isinstance(error, PermissionError):
        reason, fix = "permission denied", "make the file readable, or drop the row from the dataset."
    else:
        reason = " ".join(str(error).split()) or type(error).__name__
    return ImageDecodeError(f"{where} ({reason}): {fix}")
