"""Image decoding: every odd input either becomes RGB uint8 or fails with a clear reason."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from distill.errors import ImageDecodeError
from distill.images import decode_image, decode_own_png, decode_png, encode_png


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


def _label_arrays() -> dict[str, np.ndarray]:
    """One array of each kind a shard stores as PNG, with label-like (piecewise constant,
    smooth) and noisy content, odd sizes."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:37, 0:53]
    smooth = (yy * 1000 + xx * 600).astype(np.uint16)
    return {
        "depth16_smooth": smooth,
        "depth16_noise": rng.integers(0, 65536, (37, 53)).astype(np.uint16),
        "depth16_extremes": np.where(xx % 2, 65535, 0).astype(np.uint16),
        "normals8": rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),
        "panoptic": np.kron(rng.choice(np.array([0, 1, 187, 255], np.uint8), (5, 7)),
                            np.ones((8, 8), np.uint8))[:37, :53],
        "groups16": (1 << rng.integers(0, 11, (37, 53))).astype(np.uint16),
        "text_mask": ((rng.random((37, 53)) > 0.7) * 255).astype(np.uint8),
        "one_row": rng.integers(0, 256, (1, 53), dtype=np.uint8),
        "one_column": rng.integers(0, 65536, (37, 1)).astype(np.uint16),
        "strided_rgb": rng.integers(0, 256, (74, 106, 3), dtype=np.uint8)[::2, ::2],
        "fortran": np.asfortranarray(rng.integers(0, 256, (37, 53), dtype=np.uint8)),
    }


@pytest.mark.parametrize("level", range(10))
def test_every_label_kind_decodes_to_itself_and_to_what_pillows_png_gave(level):
    """decode(encode(x)) == x at every level, and equals Pillow's own decode of the array as
    the encoder before the fast path wrote it (the shards written before and after hold the
    same labels)."""
    for name, array in _label_arrays().items():
        data = encode_png(array, level)
        back = decode_png(data)
        assert back.dtype == array.dtype and np.array_equal(back, array), name
        before = decode_png(_encode(Image.fromarray(np.ascontiguousarray(array)), "PNG",
                                    compress_level=1))
        assert np.array_equal(before, back), name


def _pillow_png(data: bytes) -> np.ndarray:
    """Pillow's own decode of a PNG, as decode_png read every PNG before its fast path."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode.startswith("I"):
            return np.asarray(img, dtype=np.uint32).astype(np.uint16)
        return np.asarray(img, dtype=np.uint8).copy()


@pytest.mark.parametrize("level", [0, 1, 3, 6, 9])
def test_the_own_layout_decoder_reads_encode_png_as_pillow_does(level):
    """encode_png's layout is decoded by zlib + numpy (decode_own_png), to Pillow's pixels;
    a PNG Pillow wrote (its own filters per row) is left to Pillow."""
    for name, array in _label_arrays().items():
        data = encode_png(array, level)
        own = decode_own_png(data)
        assert own is not None, name
        pillow = _pillow_png(data)
        assert own.dtype == pillow.dtype and own.shape == pillow.shape, name
        assert np.array_equal(own, pillow), name
        foreign = _encode(Image.fromarray(np.ascontiguousarray(array)), "PNG", compress_level=6)
        if decode_own_png(foreign) is not None:  # only if Pillow happened to filter all Up
            assert np.array_equal(decode_own_png(foreign), array), name


def test_png_the_own_decoder_does_not_read_is_left_to_pillow():
    """Anything but encode_png's exact layout (an ancillary chunk, another filter, a damaged
    or truncated stream, another bit depth) goes to Pillow: the same pixels or the same error
    as before the fast path."""
    data = encode_png(RGB)
    ihdr_end = 8 + 25
    gamma = struct.pack(">I", 45455)
    chunk = struct.pack(">I", 4) + b"gAMA" + gamma + struct.pack(">I", zlib.crc32(b"gAMA" + gamma))
    with_gamma = data[:ihdr_end] + chunk + data[ihdr_end:]
    assert decode_own_png(with_gamma) is None
    assert np.array_equal(decode_png(with_gamma), RGB)
    gray1 = _encode(Image.fromarray(RGB[:, :, 0] > 127), "PNG")  # 1-bit
    assert decode_own_png(gray1) is None
    for broken in (data[: len(data) // 2], data[:40] + b"\0" * 20 + data[60:], b"not a png"):
        assert decode_own_png(broken) is None
        with pytest.raises(Exception) as ours:
            decode_png(broken)
        with pytest.raises(Exception) as pillows:
            _pillow_png(broken)
        assert type(ours.value) is type(pillows.value)


def test_png_encoder_rejects_empty_arrays_and_bad_levels():
    with pytest.raises(ValueError, match="empty"):
        encode_png(np.zeros((0, 4), np.uint8))
    with pytest.raises(ValueError, match=r"0\.\.9"):
        encode_png(RGB, 10)


# ---------------------------------------------------------------------------------------------
# data.max_image_pixels is THE limit, whatever Pillow's own (Image.MAX_IMAGE_PIXELS) says


def test_max_pixels_governs_above_and_below_pillows_own_limit(monkeypatch):
    # Pillow warns above its MAX_IMAGE_PIXELS and raises above twice it; shrink it so a small
    # image sits in both zones. 40x30 = 1200 pixels.
    png = _encode(Image.new("L", (40, 30)), "PNG")
    for pillow in (1000, 500):  # 1200 > 1000: Pillow would warn; 1200 > 2 * 500: it would raise
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow)
        assert decode_image(png, max_pixels=1200).shape == (30, 40, 3)
        assert pillow == Image.MAX_IMAGE_PIXELS  # left as it was, for everyone else
        with pytest.raises(ImageDecodeError, match=r"1200 pixels exceeds data\.max_image_pixels"
                                                   r" = 1199"):
            decode_image(png, max_pixels=1199)
        assert pillow == Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # someone switched Pillow's off
    with pytest.raises(ImageDecodeError, match="decompression bomb guard"):
        decode_image(png, max_pixels=100)
    assert Image.MAX_IMAGE_PIXELS is None


def test_limits_hold_for_concurrent_decodes_and_pillows_is_restored(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # below every image here
    png = _encode(Image.fromarray(RGB), "PNG")  # 30x20 = 600 pixels

    def decode(limit: int) -> str:
        try:
            return str(decode_image(png, max_pixels=limit).shape)
        except ImageDecodeError as exc:
            return "refused" if "max_image_pixels = " in str(exc) else str(exc)

    limits = [600, 599] * 40
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(decode, limits))
    assert got == ["(20, 30, 3)", "refused"] * 40
    assert Image.MAX_IMAGE_PIXELS == 100


@pytest.mark.slow  # ~3 s and ~1 GB: a real 90-megapixel decode
def test_a_90_megapixel_png_decodes_when_the_setting_allows_it():
    # The red-team case: data.max_image_pixels = 1e9 was ignored for 10000 x 9000 = 90 M pixels,
    # above Pillow's 89.5 M default. A 1-bit PNG of zeros is 11 kB on disk.
    big = _encode(Image.new("1", (10000, 9000)), "PNG")
    assert len(big) < 100_000
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's default is what this is about
    out = decode_image(big, max_pixels=10**9)
    assert out.shape == (9000, 10000, 3) and not out.any()
    del out
    with pytest.raises(ImageDecodeError, match=r"exceeds data\.max_image_pixels = 89478485"):
        decode_image(big)  # the default stays Pillow's number, applied by us


# ---------------------------------------------------------------------------------------------
# messages and orientation


def test_a_corrupt_image_is_reported_without_a_memory_address():
    with pytest.raises(ImageDecodeError) as info:
        decode_image(b"\x89PNG but not really an image at all")
    message = str(info.value)
    assert "cannot decode image" in message and "not a format Pillow can read" in message
    assert "0x" not in message and "object at" not in message
    from distill.images import without_addresses

    assert without_addresses("cannot identify image file <_io.BytesIO object at 0x7f3a2b1c>") \
        == "cannot identify image file <_io.BytesIO object>"
    assert without_addresses("<function f at 0xdeadbeef> and 0x10 stays") == \
        "<function f> and 0x10 stays"


def _exif_jpeg(pixels: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation,turn", [
    (1, lambda a: a), (3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)),
    (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1]),
])  # fmt: skip
def test_exif_orientation_is_applied_only_when_asked(orientation, turn):
    stored = np.zeros((40, 64, 3), np.uint8)
    stored[:8, :16] = 255  # a white block in the stored top-left corner
    data = _exif_jpeg(stored, orientation)
    plain = decode_image(data)
    assert plain.shape == (40, 64, 3) and plain[:8, :16].min() > 200  # the stored pixels
    shown = decode_image(data, exif_transpose=True)
    expected = turn(stored)
    assert shown.shape == expected.shape
    assert np.abs(shown.astype(int) - expected).mean() < 4
    # `at_least` is the oriented size; the DCT-scaled decode still covers it
    half = decode_image(data, exif_transpose=True, at_least=(shown.shape[1] // 2,
                                                              shown.shape[0] // 2))
    assert half.shape[:2] == (shown.shape[0] // 2, shown.shape[1] // 2)


def test_exif_orientation_of_a_png_and_a_broken_tag_are_handled():
    stored = RGB.copy()
    exif = Image.Exif()
    exif[0x0112] = 6
    png = _encode(Image.fromarray(stored), "PNG", exif=exif.tobytes())
    assert np.array_equal(decode_image(png, exif_transpose=True), np.rot90(stored, -1))
    assert np.array_equal(decode_image(png), stored)
    exif[0x0112] = 42  # not an orientation: the stored pixels
    odd = _encode(Image.fromarray(stored), "PNG", exif=exif.tobytes())
    assert np.array_equal(decode_image(odd, exif_transpose=True), stored)
