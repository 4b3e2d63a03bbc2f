"""Every pool image decodes to what an image viewer shows, and an image that cannot be decoded names itself.

References are computed in numpy from the pixels the test wrote, not with the PIL conversions under test,
except where `open_image` is documented to use PIL's own conversion (CMYK JPEG, LAB).
"""

import colorsys
import io
import re

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest

from conftest import make_image_dataset
from prunefuse_hf.data import images
from prunefuse_hf.data.images import ImageDecodeError, first_image, open_image, to_model_mode
from prunefuse_hf.utils.hub_ids import validate_hub_id

HEIGHT, WIDTH = 5, 7  # not square, so that a transposed result cannot pass


def over_white(color, alpha):
    """Reference compositing: round(color * a + 255 * (1 - a)) with a = alpha / 255, in float64."""
    color = np.asarray(color, dtype=np.float64)
    a = np.asarray(alpha, dtype=np.float64) / 255.0
    if color.ndim == a.ndim + 1:
        a = a[..., None]
    return np.round(color * a + 255.0 * (1.0 - a)).astype(np.uint8)


def scale_16_bit(values):
    return np.round(np.asarray(values, dtype=np.float64) * 255 / 65535).astype(np.uint8)


def palette_image(mode, palette, indices, alpha=None):
    image = PIL.Image.new(mode, (WIDTH, HEIGHT))
    image.putpalette(np.asarray(palette, dtype=np.uint8).ravel().tolist())
    if alpha is None:
        image.putdata(indices.ravel().tolist())
    else:
        image.putdata(list(zip(indices.ravel().tolist(), alpha.ravel().tolist())))
    return image


def from_16_bit(mode, values):
    byte_order = ">u2" if mode == "I;16B" else "<u2"
    return PIL.Image.frombytes(mode, (WIDTH, HEIGHT), values.astype(byte_order).tobytes())


# Each case returns (image, file format or None for an image passed as is, expected pixels, expected mode,
# tolerance). A tolerance of 1 is only used where PIL's own integer arithmetic produces the pixels
# (unpremultiplying La/RGBa, YCbCr to RGB).
def case_1(rng):
    bits = rng.integers(0, 2, (HEIGHT, WIDTH)).astype(bool)
    return PIL.Image.fromarray(bits), "PNG", np.where(bits, 255, 0), "L", 0


def case_l(rng):
    gray = rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    return PIL.Image.fromarray(gray), "PNG", gray, "L", 0


def case_l_transparency(rng):
    gray = rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    gray[0, :3] = 7
    image = PIL.Image.fromarray(gray)
    image.info["transparency"] = 7
    return image, "PNG", np.where(gray == 7, 255, gray), "L", 0


def case_rgb(rng):
    rgb = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    return PIL.Image.fromarray(rgb), "PNG", rgb, "RGB", 0


def case_rgb_transparency(rng):
    rgb = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    rgb[1, 2] = (1, 2, 3)
    image = PIL.Image.fromarray(rgb)
    image.info["transparency"] = (1, 2, 3)
    expected = rgb.copy()
    expected[np.all(rgb == (1, 2, 3), axis=-1)] = 255
    return image, "PNG", expected, "RGB", 0


def sixteen_bit_values(rng):
    values = rng.integers(0, 65536, (HEIGHT, WIDTH)).astype(np.uint16)
    values.flat[:4] = (0, 300, 32768, 65535)
    return values


def case_i16(rng):
    values = sixteen_bit_values(rng)
    return from_16_bit("I;16", values), "PNG", scale_16_bit(values), "L", 0


def case_i16_transparency(rng):
    values = sixteen_bit_values(rng)
    values.flat[5] = 1234
    image = from_16_bit("I;16", values)
    image.info["transparency"] = 1234
    return image, "PNG", np.where(values == 1234, 255, scale_16_bit(values)), "L", 0


def case_i16b(rng):
    values = sixteen_bit_values(rng)
    return from_16_bit("I;16B", values), "TIFF", scale_16_bit(values), "L", 0


def case_i16l(rng):
    values = sixteen_bit_values(rng)
    return from_16_bit("I;16L", values), None, scale_16_bit(values), "L", 0


def case_i16n(rng):
    values = sixteen_bit_values(rng)
    return from_16_bit("I;16N", values), None, scale_16_bit(values), "L", 0


def case_i_8_bit_range(rng):
    values = rng.integers(0, 256, (HEIGHT, WIDTH)).astype(np.int32)
    return PIL.Image.fromarray(values), "TIFF", values, "L", 0


def case_i_16_bit_range(rng):
    values = rng.integers(0, 65536, (HEIGHT, WIDTH)).astype(np.int32)
    values.flat[0] = 65535
    return PIL.Image.fromarray(values), "TIFF", scale_16_bit(values), "L", 0


def case_i_wide_range(rng):
    values = rng.integers(-1000, 100_000, (HEIGHT, WIDTH)).astype(np.int32)
    low, high = values.min(), values.max()
    expected = np.round((values.astype(np.float64) - low) * 255 / (high - low))
    return PIL.Image.fromarray(values), "TIFF", expected, "L", 0


def case_f_unit_range(rng):
    values = rng.random((HEIGHT, WIDTH)).astype(np.float32)
    values.flat[:2] = (0.0, 1.0)
    return PIL.Image.fromarray(values), "TIFF", np.round(values.astype(np.float64) * 255), "L", 0


def case_f_wide_range(rng):
    values = rng.uniform(-20, 300, (HEIGHT, WIDTH)).astype(np.float32)
    expected = np.round(np.clip(values.astype(np.float64), 0, 255))
    return PIL.Image.fromarray(values), "TIFF", expected, "L", 0


def case_p_gray(rng):
    levels = np.arange(0, 256, 17)
    palette = np.stack([levels] * 3, axis=-1)
    indices = rng.integers(0, len(levels), (HEIGHT, WIDTH))
    return palette_image("P", palette, indices), "PNG", levels[indices], "L", 0


def case_p_color(rng):
    palette = rng.integers(0, 256, (16, 3))
    indices = rng.integers(0, 16, (HEIGHT, WIDTH))
    return palette_image("P", palette, indices), "PNG", palette[indices], "RGB", 0


def case_p_alpha_table(rng):
    palette = rng.integers(0, 256, (16, 3))
    alpha = rng.integers(0, 256, 16)
    indices = rng.integers(0, 16, (HEIGHT, WIDTH))
    image = palette_image("P", palette, indices)
    image.info["transparency"] = bytes(alpha.tolist())
    return image, "PNG", over_white(palette[indices], alpha[indices]), "RGB", 0


def case_p_transparent_index(rng):
    palette = rng.integers(0, 256, (16, 3))
    indices = rng.integers(0, 16, (HEIGHT, WIDTH))
    indices[0, 0] = 3
    image = palette_image("P", palette, indices)
    image.info["transparency"] = 3
    expected = palette[indices].copy()
    expected[indices == 3] = 255
    return image, "PNG", expected, "RGB", 0


def case_pa(rng):
    palette = rng.integers(0, 256, (16, 3))
    indices = rng.integers(0, 16, (HEIGHT, WIDTH))
    alpha = rng.integers(0, 256, (HEIGHT, WIDTH))
    image = palette_image("PA", palette, indices, alpha)
    return image, "TIFF", over_white(palette[indices], alpha), "RGB", 0


def case_la(rng):
    gray, alpha = rng.integers(0, 256, (2, HEIGHT, WIDTH), dtype=np.uint8)
    image = PIL.Image.merge("LA", [PIL.Image.fromarray(gray), PIL.Image.fromarray(alpha)])
    return image, "PNG", over_white(gray, alpha), "L", 0


def case_la_premultiplied(rng):
    gray, alpha = rng.integers(0, 256, (2, HEIGHT, WIDTH), dtype=np.uint8)
    image = PIL.Image.merge("LA", [PIL.Image.fromarray(gray), PIL.Image.fromarray(alpha)]).convert("La")
    # Premultiplied over white is stored + 255 - alpha; PIL unpremultiplies with integers first.
    stored = np.asarray(image).astype(np.float64)
    return image, None, stored[..., 0] + 255 - stored[..., 1], "L", 1


def case_rgba(rng):
    rgba = rng.integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)
    return PIL.Image.fromarray(rgba), "PNG", over_white(rgba[..., :3], rgba[..., 3]), "RGB", 0


def case_rgba_premultiplied(rng):
    rgba = rng.integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)
    image = PIL.Image.fromarray(rgba).convert("RGBa")
    stored = np.asarray(image).astype(np.float64)
    return image, None, stored[..., :3] + 255 - stored[..., 3:], "RGB", 1


def case_cmyk_tiff(rng):
    cmyk = rng.integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8).astype(np.float64)
    expected = np.round((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255)
    return (
        PIL.Image.frombytes("CMYK", (WIDTH, HEIGHT), cmyk.astype(np.uint8).tobytes()),
        "TIFF",
        expected,
        "RGB",
        0,
    )


def case_cmyk_jpeg(rng):
    cmyk = rng.integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)
    # Lossy: the expected pixels are filled in from the decoded file (see `expected_pixels`).
    return PIL.Image.frombytes("CMYK", (WIDTH, HEIGHT), cmyk.tobytes()), "JPEG", None, "RGB", 0


def case_ycbcr(rng):
    ycbcr = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    y, cb, cr = (ycbcr[..., i].astype(np.float64) - offset for i, offset in enumerate((0, 128, 128)))
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    image = PIL.Image.frombytes("YCbCr", (WIDTH, HEIGHT), ycbcr.tobytes())
    return image, "TIFF", np.clip(np.round(rgb), 0, 255), "RGB", 1


def case_lab(rng):
    lab = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    lab[0, 0] = (128, 0, 0)  # neutral: must come out gray
    return PIL.Image.frombytes("LAB", (WIDTH, HEIGHT), lab.tobytes()), "TIFF", None, "RGB", 0


def case_hsv(rng):
    hsv = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    rgb = np.array([[colorsys.hsv_to_rgb(*(pixel / 255)) for pixel in row] for row in hsv]) * 255
    return PIL.Image.frombytes("HSV", (WIDTH, HEIGHT), hsv.tobytes()), None, np.round(rgb), "RGB", 0


CASES = {
    "1": case_1,
    "L": case_l,
    "L-transparency": case_l_transparency,
    "RGB": case_rgb,
    "RGB-transparency": case_rgb_transparency,
    "I;16": case_i16,
    "I;16-transparency": case_i16_transparency,
    "I;16B": case_i16b,
    "I;16L": case_i16l,
    "I;16N": case_i16n,
    "I-8-bit-range": case_i_8_bit_range,
    "I-16-bit-range": case_i_16_bit_range,
    "I-wide-range": case_i_wide_range,
    "F-unit-range": case_f_unit_range,
    "F-wide-range": case_f_wide_range,
    "P-gray": case_p_gray,
    "P-color": case_p_color,
    "P-alpha-table": case_p_alpha_table,
    "P-transparent-index": case_p_transparent_index,
    "PA": case_pa,
    "LA": case_la,
    "La": case_la_premultiplied,
    "RGBA": case_rgba,
    "RGBa": case_rgba_premultiplied,
    "CMYK-TIFF": case_cmyk_tiff,
    "CMYK-JPEG": case_cmyk_jpeg,
    "YCbCr": case_ycbcr,
    "LAB": case_lab,
    "HSV": case_hsv,
}


@pytest.mark.parametrize("name", list(CASES))
def test_open_image_shows_what_a_viewer_shows(name, tmp_path):
    rng = np.random.default_rng(sum(map(ord, name)))
    image, file_format, expected, expected_mode, tolerance = CASES[name](rng)
    if file_format is None:  # a mode no file format keeps: passed as a decoded PIL image
        source_mode = image.mode
        results = [open_image(image)]
    else:
        path = tmp_path / f"image.{file_format.lower()}"
        image.save(path, format=file_format)
        data = path.read_bytes()
        with PIL.Image.open(path) as reopened:
            source_mode = reopened.mode
            if expected is None:  # PIL's own conversion is the documented behavior for this mode
                expected = np.asarray(reopened.convert("RGB"))
        results = [
            open_image({"path": str(path), "bytes": None}),
            open_image({"path": None, "bytes": data}),
            open_image({"path": str(path), "bytes": data}),
            open_image(str(path)),
            open_image(data),
        ]
    # The file really is in the mode under test (PNG and TIFF keep these modes).
    assert source_mode == name.split("-")[0]
    for result in results:
        assert result.mode == expected_mode
        pixels = np.asarray(result).astype(np.int64)
        assert pixels.shape == np.shape(expected)
        np.testing.assert_allclose(pixels, np.asarray(expected, dtype=np.int64), rtol=0, atol=tolerance)
    if name == "LAB":
        assert len(set(np.asarray(results[0])[0, 0].tolist())) == 1


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.full((HEIGHT, WIDTH), 32768, dtype=np.uint16)
    path = tmp_path / "mid_gray.png"
    from_16_bit("I;16", values).save(path)
    with PIL.Image.open(path) as image:
        assert np.all(np.asarray(image.convert("L")) == 255)  # the pitfall: PIL clips to white
    assert np.all(np.asarray(open_image(str(path))) == 128)


def test_black_icon_on_transparent_background_is_shown_over_white(tmp_path):
    rgba = np.zeros((HEIGHT, WIDTH, 4), dtype=np.uint8)
    rgba[1:4, 2:5, 3] = 255  # an opaque black square; the rest is transparent black
    path = tmp_path / "icon.png"
    PIL.Image.fromarray(rgba).save(path)
    with PIL.Image.open(path) as image:
        assert np.all(np.asarray(image.convert("RGB")) == 0)  # the pitfall: all black
    pixels = np.asarray(open_image(str(path)))
    assert np.all(pixels[1:4, 2:5] == 0)
    background = np.ones((HEIGHT, WIDTH), dtype=bool)
    background[1:4, 2:5] = False
    assert np.all(pixels[background] == 255)


@pytest.mark.parametrize(
    "array, expected, mode",
    [
        (np.arange(35, dtype=np.uint8).reshape(5, 7), np.arange(35).reshape(5, 7), "L"),
        (np.arange(35, dtype=np.uint8).reshape(5, 7, 1), np.arange(35).reshape(5, 7), "L"),
        (np.arange(105, dtype=np.uint8).reshape(5, 7, 3), np.arange(105).reshape(5, 7, 3), "RGB"),
        (np.linspace(0, 1, 35).reshape(5, 7), np.round(np.linspace(0, 1, 35) * 255).reshape(5, 7), "L"),
        (
            np.array([[[10, 20, 30, 0], [10, 20, 30, 255]]], dtype=np.uint8),
            [[[255] * 3, [10, 20, 30]]],
            "RGB",
        ),
        (np.array([[[10, 0], [10, 128]]], dtype=np.uint8), over_white([[10, 10]], [[0, 128]]), "L"),
        (np.array([[0, 300, 65535]], dtype=np.uint16), scale_16_bit([[0, 300, 65535]]), "L"),
        ([[0, 128], [255, 7]], [[0, 128], [255, 7]], "L"),
    ],
    ids=["uint8-HxW", "uint8-HxWx1", "uint8-HxWx3", "float-unit", "RGBA", "LA", "uint16", "nested-list"],
)
def test_open_image_from_array(array, expected, mode):
    image = open_image(array)
    assert image.mode == mode
    np.testing.assert_array_equal(np.asarray(image), np.asarray(expected, dtype=np.uint8))


def test_exif_orientation_is_applied(tmp_path):
    rng = np.random.default_rng(0)
    rgb = np.repeat(np.repeat(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), 8, axis=0), 8, axis=1)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    path = tmp_path / "photo.jpg"
    PIL.Image.fromarray(rgb).save(path, exif=exif)
    with PIL.Image.open(path) as image:
        assert image.size == (48, 32)
        reference = np.asarray(PIL.ImageOps.exif_transpose(image))
    for value in ({"path": str(path), "bytes": None}, {"path": None, "bytes": path.read_bytes()}):
        result = open_image(value)
        assert result.size == (32, 48)
        np.testing.assert_array_equal(np.asarray(result), reference)
        assert result.getexif().get(0x0112, 1) == 1  # the tag is consumed, so a second pass is a no-op


def truncated_png(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "cat" / "7.png"
    path.parent.mkdir()
    PIL.Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("as_dict", [True, False])
def test_truncated_file_names_the_file(tmp_path, as_dict):
    path = truncated_png(tmp_path)
    value = {"path": str(path), "bytes": None} if as_dict else str(path)
    with pytest.raises(ImageDecodeError) as error:
        open_image(value, pool_index=12)
    message = str(error.value)
    assert message.startswith(f"Cannot decode image {path} at pool index 12 (")
    assert "truncated" in message
    assert message.endswith("repair or remove the file, or drop the row from the dataset.")
    assert "\n" not in message


def test_lazily_opened_pil_image_names_its_file(tmp_path):
    path = truncated_png(tmp_path)
    with PIL.Image.open(path) as image:  # opening succeeds: only reading the pixels fails
        with pytest.raises(ImageDecodeError, match=re.escape(str(path))):
            open_image(image)


def test_path_of_names_the_file_of_every_value_form(tmp_path):
    from pathlib import Path

    from prunefuse_hf.data.images import path_of

    png = tmp_path / "cat.png"
    PIL.Image.new("L", (2, 2)).save(png)
    with PIL.Image.open(png) as opened:
        assert path_of(opened) == str(png)
    assert path_of({"path": Path("cats/1.png"), "bytes": None}) == "cats/1.png"
    assert path_of(Path("cats/1.png")) == "cats/1.png" and path_of("cats/1.png") == "cats/1.png"
    for no_file in ({"path": None, "bytes": b"..."}, {"path": "", "bytes": None}, PIL.Image.new("L", (2, 2)),
                    np.zeros((2, 2), np.uint8), None):  # fmt: skip
        assert path_of(no_file) is None


def test_truncated_bytes_name_the_pool_index(tmp_path):
    path = truncated_png(tmp_path)
    with pytest.raises(ImageDecodeError, match=r"^Cannot decode image at pool index 3 \(.*truncated"):
        open_image({"path": None, "bytes": path.read_bytes()}, pool_index=3)


def test_garbage_bytes_name_the_pool_index():
    with pytest.raises(ImageDecodeError) as error:
        open_image({"path": None, "bytes": b"not an image" * 10}, pool_index=5)
    message = str(error.value)
    assert "pool index 5" in message
    assert "not an image format PIL can identify" in message
    assert "BytesIO" not in message


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "pool" / "missing.png"
    with pytest.raises(ImageDecodeError) as error:
        open_image({"path": str(path), "bytes": None})
    assert str(error.value) == (
        f"Cannot decode image {path} (file not found): check the path, or drop the row from the dataset."
    )


def test_remote_path_is_read_with_datasets_xopen(monkeypatch):
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7)
    buffer = io.BytesIO()
    PIL.Image.fromarray(gray).save(buffer, format="PNG")
    remote_files = {"hf://datasets/org/pool/7.png": buffer.getvalue()}

    def fake_xopen(path, mode):
        if path not in remote_files:
            raise FileNotFoundError(path)
        return io.BytesIO(remote_files[path])

    monkeypatch.setattr(images, "xopen", fake_xopen)
    image = open_image({"path": "hf://datasets/org/pool/7.png", "bytes": None})
    np.testing.assert_array_equal(np.asarray(image), gray)
    with pytest.raises(
        ImageDecodeError, match=r"^Cannot decode image hf://datasets/org/pool/8.png \(file not found\)"
    ):
        open_image("hf://datasets/org/pool/8.png")


def test_decompression_bomb_names_the_setting(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    PIL.Image.new("L", (20, 20)).save(path)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(
        ImageDecodeError, match=re.escape(str(path)) + r" \(.*decompression bomb.*MAX_IMAGE_PIXELS"
    ):
        open_image(str(path))


@pytest.mark.parametrize(
    "value, reason",
    [
        ({"path": None, "bytes": None}, "the row holds neither a path nor bytes"),
        (None, "the value is None"),
        (np.zeros((2, 3, 4, 5), dtype=np.uint8), r"an array of shape \(2, 3, 4, 5\) is not an image"),
        (np.zeros((4, 4, 5), dtype=np.uint8), r"an array of shape \(4, 4, 5\) is not an image"),
    ],
    ids=["empty-row", "none", "4d-array", "5-channels"],
)
def test_value_without_an_image_is_a_decode_error(value, reason):
    with pytest.raises(ImageDecodeError, match=r"^Cannot decode image at pool index 9 \(" + reason):
        open_image(value, pool_index=9)


def test_unsupported_type_is_a_type_error():
    with pytest.raises(TypeError, match="not int"):
        open_image(42)


def test_to_model_mode_gray_to_rgb_repeats_the_channel():
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7)
    rgb = to_model_mode(PIL.Image.fromarray(gray), num_channels=3)
    assert rgb.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(rgb), np.stack([gray] * 3, axis=-1))


def test_to_model_mode_rgb_to_gray_uses_luma():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    gray = to_model_mode(PIL.Image.fromarray(rgb), num_channels=1)
    assert gray.mode == "L"
    # ITU-R 601-2 luma; PIL computes it in fixed point, hence the tolerance of 1.
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(np.asarray(gray).astype(np.float64), np.round(luma), rtol=0, atol=1)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_to_model_mode_keeps_an_image_already_in_mode(mode):
    image = PIL.Image.new(mode, (3, 2))
    assert to_model_mode(image, num_channels={"L": 1, "RGB": 3}[mode]) is image


@pytest.mark.parametrize("num_channels", [0, 2, 4])
def test_to_model_mode_refuses_other_channel_counts(num_channels):
    with pytest.raises(ValueError, match=f"num_channels={num_channels} is not supported"):
        to_model_mode(PIL.Image.new("L", (3, 2)), num_channels=num_channels)


def test_to_model_mode_refuses_images_not_decoded_by_open_image():
    with pytest.raises(ValueError, match="mode 'RGBA'.*open_image"):
        to_model_mode(PIL.Image.new("RGBA", (3, 2)), num_channels=3)


@pytest.mark.parametrize("value", ["org/name", "name", "Org-1/name_2.v3", None])
def test_validate_hub_id_accepts_valid_ids(value):
    assert validate_hub_id("hub_model_id", value) is None


@pytest.mark.parametrize(
    "field, value, rule",
    [
        ("hub_model_id", "me/ fmnist-prunefuse", "alphanumeric"),
        ("hub_subset_id", "a/b/c", "more than one '/'"),
        ("hub_surrogate_id", "", "alphanumeric"),
        ("dataset_name", "org/na me", "alphanumeric"),
        ("hub_model_id", "org/na--me", "--"),
        ("hub_model_id", "org/námé", "non-ASCII"),
    ],
)
def test_validate_hub_id_refuses_invalid_ids(field, value, rule):
    with pytest.raises(ValueError) as error:
        validate_hub_id(field, value)
    message = str(error.value)
    assert message.startswith(f"{field} {value!r} is not a valid Hub model repo id (")
    assert rule in message
    assert message.endswith("; use ORG/NAME with letters, digits, '-', '_' and '.'")


def test_validate_hub_id_names_the_repo_type():
    with pytest.raises(ValueError, match="^dataset_name 'a b' is not a valid Hub dataset repo id"):
        validate_hub_id("dataset_name", "a b", repo_type="dataset")
    with pytest.raises(ValueError, match="repo_type='models'"):
        validate_hub_id("hub_model_id", "org/name", repo_type="models")


def test_the_first_image_is_decoded_and_an_empty_pool_is_refused():
    pool = make_image_dataset(3, size=12)
    image = first_image(pool, "image")
    assert isinstance(image, PIL.Image.Image) and image.size == (12, 12)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(pool[0]["image"]))
    with pytest.raises(ValueError, match="The pool has no rows."):
        first_image(pool.select([]), "image")
