"""Image decoding and PNG encoding: the one place pixels enter or leave distill as bytes."""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
from PIL import Image

from distill.errors import ImageDecodeError

__all__ = [
    "decode_image",
    "decode_png",
    "encode_png",
    "image_size",
]

logger = logging.getLogger(__name__)

# PIL modes whose values are wider than 8 bits: shifted down to 8 bits, not clipped.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _open(data: bytes, max_pixels: int, min_side: int = 0,
          draft: tuple[int, int] | None = None) -> Image.Image:
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; we refuse at the limit itself.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
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
            if draft is not None and img.format == "JPEG" and img.mode in ("RGB", "L", "YCbCr"):
                img.draft(img.mode, draft)  # DCT-domain downscale, never below `draft`
            img.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb guard: {exc}") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        hint = "truncated or incomplete file: " if "truncated" in str(exc).lower() else ""
        raise ImageDecodeError(
            f"cannot decode image: {hint}{type(exc).__name__}: {exc}") from exc
    return img


def image_size(data: bytes, max_pixels: int = 89_478_485) -> tuple[int, int]:
    """(width, height) of encoded image bytes, reading only the header."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception as exc:
        raise ImageDecodeError(f"cannot read image header: {type(exc).__name__}: {exc}") from exc


def decode_image(
    data: bytes, max_pixels: int = 89_478_485, min_side: int = 8,
    at_least: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode JPEG/PNG/... bytes to an RGB uint8 array (H, W, 3).

    Grayscale, palette, CMYK and 16-bit images are converted (16-bit values keep their top 8
    bits); an alpha channel is composited over black, the letterbox padding colour. Raises
    `ImageDecodeError` with the reason for empty, truncated or corrupt data, images larger than
    `max_pixels` (decompression bombs) and images with a side shorter than `min_side`.

    `at_least` (width, height): a JPEG may be decoded at 1/2, 1/4 or 1/8 scale in the DCT
    domain (libjpeg's scaled decoding, several times faster) as long as the result is at least
    that large — for a caller that shrinks the image anyway. Other formats decode in full.
    """
    img = _open(data, max_pixels, min_side, at_least)
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


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """Encode a uint8 (H, W), uint8 (H, W, 3) or uint16 (H, W) array losslessly as PNG."""
    ok = (array.dtype in (np.uint8, np.uint16) and array.ndim == 2) or (
        array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    )
    if not ok:
        raise ValueError(f"cannot PNG-encode an array of dtype {array.dtype} shape {array.shape}")
    # PIL infers L / RGB / I;16 (a true 16-bit grayscale PNG) from dtype and shape.
    img = Image.fromarray(np.ascontiguousarray(array))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Decode a PNG written by `encode_png` back to the same array (dtype and shape)."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.asarray(img, dtype=np.uint32).astype(np.uint16)
        if img.mode not in ("L", "RGB"):
            raise ValueError(f"unexpected PNG mode {img.mode!r}")
        return np.asarray(img, dtype=np.uint8).copy()
