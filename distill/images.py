"""Image decoding and PNG encoding: the one place pixels enter or leave distill as bytes."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import struct
import threading
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import ExifTags, Image

from distill.errors import ImageDecodeError

__all__ = [
    "decode_image",
    "decode_own_png",
    "decode_png",
    "encode_png",
    "image_size",
    "without_addresses",
]

logger = logging.getLogger(__name__)

# PIL modes whose values are wider than 8 bits: shifted down to 8 bits, not clipped.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")

# EXIF orientation → the transposition that shows the image as a viewer does (1: as stored).
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = (5, 6, 7, 8)

# `<_io.BytesIO object at 0x7f3a…>` in an exception's text: an address that differs on every run
# and means nothing to a reader of the quarantine.
_ADDRESS = re.compile(r"\s+at\s+0x[0-9a-fA-F]+(?=>)")

# Pillow's own decompression-bomb limit is the module global `Image.MAX_IMAGE_PIXELS`, read at
# every `Image.open` (warning above it, error above twice it) and by a few plugins while loading
# (TIFF tiles, GIF frames). `decode_image` applies `max_pixels` itself, from the header, so that
# the configured limit governs in both directions; Pillow's is switched off only inside this lock
# and restored before the lock is released, so no two decodes ever disagree about it.
_PILLOW_LIMIT = threading.Lock()


def without_addresses(text: str) -> str:
    """`text` with the memory addresses of object reprs removed
    (`<_io.BytesIO object at 0x7f…>` → `<_io.BytesIO object>`)."""
    return _ADDRESS.sub("", text)


@contextlib.contextmanager
def _pillow_check_off() -> Iterator[int | None]:
    """Pillow's decompression-bomb check off for the block (under `_PILLOW_LIMIT`); yields the
    limit it had, which is set back afterwards."""
    with _PILLOW_LIMIT:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield saved
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _header(data: bytes) -> tuple[Image.Image, int | None]:
    """The image opened lazily (header only) whatever its size, and Pillow's own limit."""
    with _pillow_check_off() as pillow_limit:
        return Image.open(io.BytesIO(data)), pillow_limit


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent, unreadable or not one of 1..8)."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as exc:  # a corrupt EXIF block: viewers ignore it, so do we
        logger.debug("unreadable EXIF block (%s); the stored orientation is used", exc)
        return 1
    return value if isinstance(value, int) and value in _ORIENT else 1


def _failure(exc: BaseException, what: str = "cannot decode image") -> ImageDecodeError:
    if isinstance(exc, Image.UnidentifiedImageError):
        return ImageDecodeError(f"{what}: not a format Pillow can read (UnidentifiedImageError)")
    text = without_addresses(str(exc))
    hint = "truncated or incomplete file: " if "truncated" in text.lower() else ""
    return ImageDecodeError(f"{what}: {hint}{type(exc).__name__}: {text}")


def _open(data: bytes, max_pixels: int, min_side: int = 0,
          draft: tuple[int, int] | None = None, exif_transpose: bool = False) -> Image.Image:
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        img, pillow_limit = _header(data)
        w, h = img.size
        if w * h > max_pixels:
            raise ImageDecodeError(
                f"decompression bomb guard: {w}x{h} = {w * h} pixels exceeds "
                f"data.max_image_pixels = {max_pixels}"
            )
        if min(w, h) < min_side:
            raise ImageDecodeError(
                f"image is {w}x{h}; sides shorter than data.min_image_side = {min_side} "
                "pixels cannot be labelled"
            )
        orientation = _orientation(img) if exif_transpose and img.format == "JPEG" else 1
        if draft is not None and img.format == "JPEG" and img.mode in ("RGB", "L", "YCbCr"):
            if orientation in _SWAPS_SIDES:  # `draft` is the oriented size; the DCT sees stored
                draft = (draft[1], draft[0])
            img.draft(img.mode, draft)  # DCT-domain downscale, never below `draft`
        if pillow_limit is not None and w * h > pillow_limit:
            with _pillow_check_off():  # larger than Pillow's own limit, within ours
                img.load()
        else:
            img.load()
        if exif_transpose:
            orientation = _orientation(img)  # PNG and WebP may carry EXIF after the pixels
            if orientation != 1:
                img = img.transpose(_ORIENT[orientation])
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb guard: {without_addresses(str(exc))}") \
            from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise _failure(exc) from exc
    return img


def image_size(data: bytes, max_pixels: int = 89_478_485,
               exif_transpose: bool = False) -> tuple[int, int]:
    """(width, height) of encoded image bytes as stored, reading only the header (a header is
    no decompression bomb: `max_pixels` is accepted for symmetry and not applied). With
    `exif_transpose`, the size `decode_image(exif_transpose=True)` gives: sides swapped for an
    orientation that turns the image by 90° (a PNG whose EXIF follows its pixels is read whole
    to find out)."""
    try:
        img, _ = _header(data)
        with img:
            w, h = img.size
            if exif_transpose and _orientation(img) in _SWAPS_SIDES:
                return h, w
            return w, h
    except Exception as exc:
        raise _failure(exc, "cannot read image header") from exc


def decode_image(
    data: bytes, max_pixels: int = 89_478_485, min_side: int = 8,
    at_least: tuple[int, int] | None = None, exif_transpose: bool = False,
) -> np.ndarray:
    """Decode JPEG/PNG/... bytes to an RGB uint8 array (H, W, 3).

    Grayscale, palette, CMYK and 16-bit images are converted (16-bit values keep their top 8
    bits); an alpha channel is composited over black, the letterbox padding colour. Raises
    `ImageDecodeError` with the reason for empty, truncated or corrupt data, images larger than
    `max_pixels` (decompression bombs) and images with a side shorter than `min_side`.
    `max_pixels` is THE limit, checked from the header before any pixel is decoded: Pillow's
    own `Image.MAX_IMAGE_PIXELS` neither refuses an image within it nor admits one above it.

    `at_least` (width, height): a JPEG may be decoded at 1/2, 1/4 or 1/8 scale in the DCT
    domain (libjpeg's scaled decoding, several times faster) as long as the result is at least
    that large — for a caller that shrinks the image anyway. Other formats decode in full.

    `exif_transpose`: apply the EXIF orientation tag, giving the pixels a viewer shows (plain
    image folders); by default the stored pixels are returned, which is what COCO's
    annotations refer to. `at_least` is then the oriented size.
    """
    img = _open(data, max_pixels, min_side, at_least, exif_transpose)
    if img.mode in _WIDE_MODES:
        arr = np.asarray(img, dtype=np.uint32)
        shift = 8 if arr.max(initial=0) < 65536 else 24
        gray = (arr >> shift).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "F":
        raise ImageDecodeError("floating-point images are not photographs; refusing to guess a range")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        rgb = rgba[:, :, :3] * (rgba[:, :, 3:] / 255.0)
        return np.rint(rgb).astype(np.uint8)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, P, CMYK, YCbCr, 1
    return np.asarray(img, dtype=np.uint8).copy()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_UP = 2  # the PNG filter type "Up": each byte minus the byte above it


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """Encode a uint8 (H, W), uint8 (H, W, 3) or uint16 (H, W) array losslessly as PNG
    (8-bit grayscale, 8-bit RGB, 16-bit grayscale; any PNG reader decodes it).

    Written here rather than by Pillow, which spends most of its time choosing a filter per row
    and letting deflate search for long matches: every row is filtered "Up" (one vectorised
    subtraction; label maps and smooth depth become runs of zeros) and deflated with zlib's
    default strategy at `compress_level` (0 stores). Z_RLE encoded ~15 % faster at level 1 but
    its distance-1 matches inflate 2.5x slower (5.6 vs 2.2 ms per coco-mini sample's maps), and
    a shard is written once and read every epoch (docs/DECISIONS.md)."""
    ok = (array.dtype in (np.uint8, np.uint16) and array.ndim == 2) or (
        array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    )
    if not ok:
        raise ValueError(f"cannot PNG-encode an array of dtype {array.dtype} shape {array.shape}")
    if not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level must be 0..9, got {compress_level}")
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"cannot PNG-encode an empty array of shape {array.shape}")
    bit_depth = 16 if array.dtype == np.uint16 else 8
    colour_type = 2 if array.ndim == 3 else 0  # RGB / grayscale
    rows = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder(">")).view(np.uint8)
    rows = rows.reshape(height, -1)  # PNG samples are big-endian, rows of bytes
    raw = np.empty((height, rows.shape[1] + 1), np.uint8)
    raw[:, 0] = _PNG_UP
    raw[0, 1:] = rows[0]  # the row above the first is zeros
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # uint8 arithmetic wraps mod 256, as PNG's
    deflate = zlib.compressobj(compress_level, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY)
    idat = deflate.compress(raw.data) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"".join((_PNG_SIGNATURE, _png_chunk(b"IHDR", header), _png_chunk(b"IDAT", idat),
                     _png_chunk(b"IEND", b"")))


def _unfilter_up(rows: np.ndarray) -> np.ndarray:
    """Undo PNG's "Up" filter on (H, B) filtered bytes: each row plus the unfiltered row above
    it, mod 256, i.e. a running sum down every column. As log2(H) whole-array additions
    (Hillis-Steele; uint8 arithmetic wraps like PNG's), several times faster than numpy's
    column-wise `cumsum` or a loop over rows."""
    a = np.ascontiguousarray(rows)
    b = np.empty_like(a)
    k = 1
    while k < a.shape[0]:
        b[:k] = a[:k]
        np.add(a[k:], a[:-k], out=b[k:])
        a, b = b, a
        k *= 2
    return a


def decode_own_png(data: bytes) -> np.ndarray | None:
    """The array of a PNG in `encode_png`'s own layout (one IHDR, IDAT chunks, IEND; 8-bit gray
    or RGB or 16-bit gray, not interlaced; every row filtered Up) decoded with zlib and numpy,
    which is 1.5-3x faster than Pillow's decoder and its copy out; None for any other PNG, or
    one that is not valid, which Pillow then decodes (or refuses) as before."""
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 33:
        return None
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", data[16:29])
    samples = {0: 1, 2: 3}.get(colour)
    if (samples is None or (depth, colour) not in ((8, 0), (8, 2), (16, 0))
            or (compression, filtering, interlace) != (0, 0, 0) or width == 0 or height == 0
            or zlib.crc32(data[12:29]) != struct.unpack(">I", data[29:33])[0]):
        return None
    idat: list[memoryview] = []
    view = memoryview(data)
    pos = 33
    try:
        while True:
            (length,) = struct.unpack(">I", data[pos : pos + 4])
            kind = data[pos + 4 : pos + 8]
            if kind == b"IDAT":
                idat.append(view[pos + 8 : pos + 8 + length])
            elif kind == b"IEND":
                break
            else:
                return None  # an ancillary chunk (gAMA, tRNS, ...): Pillow may read it
            pos += 12 + length
        row_bytes = width * samples * depth // 8
        raw = zlib.decompress(b"".join(idat), bufsize=height * (row_bytes + 1))
    except (struct.error, zlib.error):
        return None
    if len(raw) != height * (row_bytes + 1):
        return None
    filtered = np.frombuffer(raw, np.uint8).reshape(height, row_bytes + 1)
    if not (filtered[:, 0] == _PNG_UP).all():
        return None
    rows = _unfilter_up(filtered[:, 1:])
    if depth == 16:
        return rows.view(">u2").astype(np.uint16)
    return rows.reshape(height, width, samples) if samples == 3 else rows


def decode_png(data: bytes) -> np.ndarray:
    """Decode a PNG written by `encode_png` back to the same array (dtype and shape). Its own
    layout is decoded with zlib and numpy (`decode_own_png`), any other PNG by Pillow."""
    own = decode_own_png(data)
    if own is not None:
        return own
    with Image.open(io.BytesIO(data)) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.asarray(img, dtype=np.uint32).astype(np.uint16)
        if img.mode not in ("L", "RGB"):
            raise ValueError(f"unexpected PNG mode {img.mode!r}")
        return np.asarray(img, dtype=np.uint8).copy()
