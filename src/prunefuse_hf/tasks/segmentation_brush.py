"""Label Studio's brush masks: the RLE its `BrushLabels` results carry, the labeling config of a segmentation query
and the surrogate's masks as brush predictions.

The RLE is thi.ng's `rle-pack` format, which Label Studio's editor writes and its SDK reads and writes
(`label_studio_sdk/converter/brush.py`: `decode_rle`, `encode_rle`, `mask2rle`; the editor's `Region2RLE` /
`RLE2Region` in `web/dist/apps/labelstudio/358.js` of Label Studio 1.23.2). It packs the image's RGBA bytes (`height
* width * 4` values, row by row) as a bit stream: a 32-bit value count, a 5-bit word size minus one, four 4-bit run
length widths minus one, then runs: a bit (1: a repeated value, 0: literal values), 2 bits choosing a run length
width, the run length minus one in that width, and the value (or the literal values) in the word size. The editor
copies each pixel's alpha into R, G and B; a pixel belongs to the stroke when its alpha is not 0 (what `RLE2Region`
colors when it shows the region). Strokes are anti-aliased, so their edges carry partial alphas: they count.
"""

from __future__ import annotations

import numpy as np

from ..annotation.labels import LabelError, check_class_names
from .segmentation_masks import IGNORE_INDEX

BRUSH_TAG = "label"  # the BrushLabels tag's name
POLYGON_TYPES = ("polygonlabels", "polygon")
BRUSH_TYPES = ("brushlabels", "brush")
# The run length widths Label Studio's encoders use (rle-pack's defaults): runs of up to 8, 16, 256, 65536 values.
_RUN_BITS = (3, 4, 8, 16)
_HEADER_BITS = 32 + 5 + 4 * 4


def encode_brush_rle(mask) -> list[int]:
    """
    A binary mask as Label Studio's brush RLE, the bytes `label_studio_sdk.converter.brush.mask2rle` writes: every
    pixel as 4 equal bytes (255 where `mask` is true, else 0), word size 8, run length widths 3, 4, 8, 16.

    Args:
        mask (array-like of shape `(height, width)`): True (non-zero) where the class is.

    Returns:
        `list[int]`: the RLE bytes, as `value.rle` of a `brushlabels` result holds them.

    Example:

    ```python
    >>> rle = encode_brush_rle([[0, 1], [1, 1]])
    >>> decode_brush_rle(rle, 2, 2).astype(int).tolist()
    [[0, 1], [1, 1]]
    ```
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise LabelError(f"a brush mask is (height, width), got shape {mask.shape}.")
    values = np.repeat(np.where(mask.reshape(-1) != 0, 255, 0).astype(np.int64), 4)
    count = len(values)
    codes, widths = [], []
    if count:
        ends = np.append(np.flatnonzero(values[1:] != values[:-1]), count - 1)
        lengths = np.diff(np.append(-1, ends))
        run_values = values[ends]
        # Runs longer than 65536 values are split, as the SDK's encoder does.
        pieces = -(-lengths // 2**16)
        run_values = np.repeat(run_values, pieces)
        starts = np.repeat(np.cumsum(pieces) - pieces, pieces)
        k = np.arange(len(run_values)) - starts
        lengths = np.minimum(np.repeat(lengths, pieces) - k * 2**16, 2**16)
        choice = np.searchsorted(np.array([8, 16, 256]), lengths, side="left")  # width 3, 4, 8 or 16 bits
        run_bits = np.array(_RUN_BITS)[choice]
        repeated = (lengths > 1).astype(np.int64)
        # One run: [repeated bit][2-bit width choice][length - 1][8-bit value]; a single value is a literal run.
        codes = (((repeated << 2 | choice) << run_bits | (lengths - 1)) << 8) | run_values
        widths = 1 + 2 + run_bits + 8
    header = (count << 5 | 7) << 16 | sum((b - 1) << (12 - 4 * i) for i, b in enumerate(_RUN_BITS))
    codes = np.concatenate([[header >> 32, header & 0xFFFFFFFF], codes]).astype(np.uint64)
    widths = np.concatenate([[_HEADER_BITS - 32, 32], widths]).astype(np.int64)
    positions = np.arange(32)
    bits = (codes[:, None] >> (widths[:, None] - 1 - positions).clip(0).astype(np.uint64)) & np.uint64(1)
    stream = bits[positions < widths[:, None]].astype(np.uint8)
    # The SDK pads to whole bytes, adding a zero byte when the stream already ends on one; the editor reads either.
    stream = np.concatenate([stream, np.zeros(8 - len(stream) % 8, dtype=np.uint8)])
    return np.packbits(stream).tolist()


def decode_brush_rle(rle, width: int, height: int, *, where: str = "brush result") -> np.ndarray:
    """
    A brush result's mask: Label Studio's RLE decoded (any word size and run length widths, as rle-pack's `decode`)
    to the image's RGBA bytes, true where the alpha is not 0.

    Args:
        rle (`list[int]`): The RLE bytes (`value.rle`).
        width (`int`), height (`int`): The image's size (`original_width`, `original_height`).
        where (`str`): Names the result in errors.

    Returns:
        `np.ndarray` of shape `(height, width)`, bool.

    Raises:
        LabelError: bytes that are not RLE, or an RLE of another length than `width * height * 4` values.

    Example:

    ```python
    >>> decode_brush_rle(encode_brush_rle([[1, 0, 0]]), 3, 1).tolist()
    [[True, False, False]]
    ```
    """
    try:
        data = bytes(int(v) for v in rle)
    except (TypeError, ValueError):
        raise LabelError(
            f"{where}: value.rle is not a list of bytes (0..255). Export from Label Studio again."
        ) from None
    end = len(data) * 8
    data += bytes(5)
    position = 0

    def read(n: int) -> int:
        nonlocal position
        if position + n > end:
            raise LabelError(f"{where}: the RLE ends early (after {end} bits); the result is damaged. Draw the mask "
                             "again or export again.")  # fmt: skip
        byte = position >> 3
        window = int.from_bytes(data[byte : byte + 5], "big")
        value = (window >> (40 - (position & 7) - n)) & ((1 << n) - 1)
        position += n
        return value

    count = read(32)
    word = read(5) + 1
    run_bits = [read(4) + 1 for _ in range(4)]
    if count != width * height * 4:
        raise LabelError(
            f"{where}: the RLE holds {count} values, but a {width}x{height} image has {width * height * 4} (RGBA): "
            "the mask was drawn on an image of another size. Label the query's images and export again."
        )
    if word > 32:
        raise LabelError(f"{where}: the RLE's word size is {word} bits; Label Studio writes at most 32.")
    out = np.zeros(count, dtype=np.uint32)
    i = 0
    while i < count:
        repeated = read(1)
        j = min(count, i + 1 + read(run_bits[read(2)]))
        if repeated:
            out[i:j] = read(word)
        else:
            out[i:j] = [read(word) for _ in range(j - i)]
        i = j
    return out.reshape(height, width, 4)[:, :, 3] != 0


def segmentation_label_studio_config(class_names: list[str], *, background: int | None = None) -> str:
    """
    The Label Studio labeling config for masks: an `<Image>`, a `<BrushLabels name="label">` and a
    `<PolygonLabels name="polygon">` of the class names (annotators paint, or outline; both are read back).

    `background` (a class id) is left out of the labels: the pixels nobody paints are that class. Without it every
    class is a label and unpainted pixels are not labeled (the ignore index 255, which no loss and no metric counts;
    with `reduce_labels` that is how a 0-background reads).

    Example:

    ```python
    >>> print(segmentation_label_studio_config(["road", "car"]))  # doctest: +NORMALIZE_WHITESPACE
    <View>
      <Image name="image" value="$image" zoom="true"/>
      <BrushLabels name="label" toName="image">
        <Label value="road"/>
        <Label value="car"/>
      </BrushLabels>
      <PolygonLabels name="polygon" toName="image">
        <Label value="road"/>
        <Label value="car"/>
      </PolygonLabels>
    </View>
    ```
    """
    from xml.sax.saxutils import quoteattr

    names = check_class_names(class_names)
    check_background(background, names)
    labels = "".join(f"    <Label value={quoteattr(n)}/>\n" for k, n in enumerate(names) if k != background)
    return (
        "<View>\n"
        '  <Image name="image" value="$image" zoom="true"/>\n'
        f'  <BrushLabels name="{BRUSH_TAG}" toName="image">\n{labels}  </BrushLabels>\n'
        f'  <PolygonLabels name="polygon" toName="image">\n{labels}  </PolygonLabels>\n'
        "</View>\n"
    )


def check_background(background, class_names: list[str]) -> int | None:
    """`background` as a class id of `class_names`, or `None`; a `LabelError` otherwise."""
    if background is None:
        return None
    if (
        isinstance(background, bool)
        or not isinstance(background, (int, np.integer))
        or not 0 <= background < len(class_names)
    ):
        raise LabelError(f"background must be a class id in [0, {len(class_names)}) (the class unpainted pixels are) or "
                         f"None (they are not labeled: {IGNORE_INDEX}), got {background!r}.")  # fmt: skip
    return int(background)


def segmentation_prediction(mask, class_names: list[str], *, background: int | None = None,
                            model_version: str | None = None, where: str = "prediction") -> dict:  # fmt: skip
    """
    A Label Studio prediction (pre-annotation) of one image's class-id mask: one brush result per class it holds
    (the background class and the ignore index 255 left out), for [`segmentation_label_studio_config`].

    Args:
        mask (array-like or `PIL.Image.Image` of shape `(height, width)`): Class ids, as the image is shown.
        class_names (`list[str]`): The class names.
        background (`int`, *optional*): The class unpainted pixels are (not predicted as strokes).
        model_version (`str`, *optional*): Names the model.
        where (`str`): Names the image in errors.

    Returns:
        `dict`: `{"model_version", "result": [brushlabels results with `value.rle`, `original_width`,
        `original_height`]}`.

    Raises:
        LabelError: a mask that is not 2-D, or holds an id that is neither a class nor 255.

    Example:

    ```python
    >>> p = segmentation_prediction(np.array([[0, 1], [1, 255]]), ["road", "car"])
    >>> [r["value"]["brushlabels"] for r in p["result"]], p["result"][0]["original_width"]
    ([['road'], ['car']], 2)
    ```
    """
    ids = np.asarray(mask, dtype=np.int64)
    if ids.ndim != 2:
        raise LabelError(f"{where}: a predicted mask is (height, width) class ids, got shape {ids.shape}.")
    present = np.unique(ids).tolist()
    bad = [v for v in present if not (0 <= v < len(class_names) or v == IGNORE_INDEX)]
    if bad:
        raise LabelError(f"{where}: mask value {bad[:5]} is neither a class id in [0, {len(class_names)}) nor "
                         f"{IGNORE_INDEX} (not labeled).")  # fmt: skip
    height, width = ids.shape
    result = [
        {"id": f"prediction-{k}", "from_name": BRUSH_TAG, "to_name": "image", "type": "brushlabels",
         "original_width": int(width), "original_height": int(height), "image_rotation": 0,
         "value": {"format": "rle", "rle": encode_brush_rle(ids == k), "brushlabels": [class_names[k]]}}
        for k in present if k != IGNORE_INDEX and k != background
    ]  # fmt: skip
    return {"model_version": model_version or "prunefuse", "result": result}
