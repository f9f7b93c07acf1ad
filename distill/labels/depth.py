"""16-bit depth encoding (paper §3.2: DAv2's 8-bit PNG output widened to 16 bits)."""

from __future__ import annotations

import numpy as np

from distill.errors import LabelError

__all__ = ["DEPTH_LEVELS", "decode_depth16", "encode_depth16", "normalize_depth", "quantize_unit"]

DEPTH_LEVELS = 65535


def normalize_depth(depth: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Map a float depth map to [0, 1] by its own min and max; returns (map, min, max).

    A constant map becomes all zeros (there is no range to spread).
    """
    if depth.ndim != 2:
        raise LabelError(f"depth must be a 2-D map, got shape {depth.shape}")
    d = depth.astype(np.float64, copy=False)
    if not np.isfinite(d).all():
        bad = int((~np.isfinite(d)).sum())
        raise LabelError(f"depth map has {bad} non-finite values (NaN or inf)")
    lo, hi = float(d.min()), float(d.max())
    span = hi - lo
    if span <= 0.0:
        return np.zeros(d.shape, np.float32), lo, hi
    return ((d - lo) / span).astype(np.float32), lo, hi


def encode_depth16(depth: np.ndarray) -> tuple[np.ndarray, float, float]:
    """`d16 = round((d - min) / (max - min) * 65535)` → (uint16 map, min, max).

    `decode_depth16` recovers the float map to within (max - min) / 65535 / 2.
    """
    unit, lo, hi = normalize_depth(depth)
    return quantize_unit(unit), lo, hi


def quantize_unit(unit: np.ndarray) -> np.ndarray:
    """A [0, 1] map (from `normalize_depth`) → its uint16 levels."""
    return np.rint(unit * DEPTH_LEVELS).astype(np.uint16)


def decode_depth16(d16: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Invert `encode_depth16`: float32 map in the original units."""
    if d16.dtype != np.uint16:
        raise LabelError(f"a depth16 map is uint16, got {d16.dtype}")
    return (lo + d16.astype(np.float64) * ((hi - lo) / DEPTH_LEVELS)).astype(np.float32)
