"""Image decoding: every odd input either becomes RGB uint8 or fails with a clear reason."""

import io

import numpy as np
import pytest
from PIL import Image

from distill.errors import ImageDecodeError
from distill.images import decode_image, decode_png, encode_png


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)


def test_rgb_jpeg_and_png():
    assert np.array_equal(decode_image(_encode(Image.fromarray(RGB), "PNG")), RGB)
    out = decode_image(_encode(Image.fromarray(RGB), "JPEG", quality=95))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8


def test_modes_are_converted_to_rgb():
    gray = decode_image(_encode(Image.fromarray(RGB[:, :, 0]), "PNG"))
    assert gray.shape == (20, 30, 3) and np.array_equal(gray[:, :, 1], RGB[:, :, 0])
    cmyk = decode_image(_encode(Image.fromarray(RGB).convert("CMYK"), "JPEG", quality=95))
    assert cmyk.shape == (20, 30, 3)
    assert np.abs(cmyk.astype(int) - RGB).mean() < 12
    rgba = np.dstack([RGB, np.full((20, 30), 255, np.uint8)])
    rgba[:, :10, 3] = 0
    out = decode_image(_encode(Image.fromarray(rgba), "PNG"))
    assert (out[:, :10] == 0).all() and np.array_equal(out[:, 10:], RGB[:, 10:])
    wide = (RGB[:, :, 0].astype(np.uint16) << 8) | 0xFF
    out16 = decode_image(_encode(Image.fromarray(wide), "PNG"))
    assert np.array_equal(out16[:, :, 0], RGB[:, :, 0])


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (b"not an image at all", "cannot decode"),
    (_encode(Image.fromarray(RGB), "JPEG")[:200], "cannot decode"),
    (_encode(Image.fromarray(RGB[:1, :1]), "PNG"), "1x1"),
])  # fmt: skip
def test_bad_images_fail_with_a_reason(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data)


def test_decompression_bomb_is_refused_before_decoding():
    big = _encode(Image.new("L", (4000, 3000)), "PNG")
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(big, max_pixels=1_000_000)
    assert decode_image(big, max_pixels=20_000_000).shape == (3000, 4000, 3)


@pytest.mark.parametrize("array", [
    RGB, RGB[:, :, 0], (RGB[:, :, 0].astype(np.uint16) * 257),
])  # fmt: skip
def test_png_round_trip_is_lossless(array):
    back = decode_png(encode_png(array))
    assert back.dtype == array.dtype and np.array_equal(back, array)
    with pytest.raises(ValueError):
        encode_png(array.astype(np.float32))
