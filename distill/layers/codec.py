"""The value codecs label layers share: an array checked against its image's size and stored as
PNG bytes, PNG bytes back to an array, and a [0, 1] target as uint8 levels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from distill.errors import ShardError
from distill.images import decode_png, encode_png

if TYPE_CHECKING:
    from distill.shards import Sample

__all__ = ["check_hw", "png_value", "unit_u8", "unpng"]


def check_hw(sample: Sample, label: str, array: np.ndarray) -> None:
    """Raise unless `array` has the image's (height, width): labels are stored at the original
    resolution."""
    if array.shape[:2] != (sample.height, sample.width):
        raise ShardError(
            f"image {sample.image_id}: {label} is {array.shape[1]}x{array.shape[0]}, the image is "
            f"{sample.width}x{sample.height}; labels are stored at the original resolution"
        )


def png_value(sample: Sample, label: str, array: np.ndarray | None, level: int) -> bytes | None:
    """`array` as PNG bytes after checking its size; None stays None."""
    if array is None:
        return None
    check_hw(sample, label, array)
    return encode_png(array, level)


def unpng(value: bytes | None) -> np.ndarray | None:
    return None if value is None else decode_png(value)


def unit_u8(unit: np.ndarray) -> np.ndarray:
    """A target in [0, 1] → uint8 levels (255 = 1.0), rounded half up, clipped. In place on one
    float32 copy: this runs on ~2M values per example and was the loader's second cost after
    PNG/JPEG decoding."""
    scaled = np.multiply(unit, 255.0, dtype=np.float32)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    scaled += 0.5
    return scaled.astype(np.uint8)
