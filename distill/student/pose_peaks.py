"""Peaks of the student's joint heatmaps: 3×3 local maxima above a threshold, one per plateau,
refined to sub-pixel precision (step 1 of `distill.student.pose`)."""

from __future__ import annotations

import numpy as np

from distill.errors import LabelError

__all__ = ["find_peaks"]

_EPS = 1e-6


# Raster tie rule: a peak is > its neighbours before it in raster order and ≥ those after it,
# so a plateau gives one peak, its first pixel (exactly one for any convex plateau).
_BEFORE = ((-1, -1), (-1, 0), (-1, 1), (0, -1))
_AFTER = ((0, 1), (1, -1), (1, 0), (1, 1))
_MAX_RUN = 8  # pixels: how far a plateau's extent is followed


def _peaks_of(maps: np.ndarray, threshold: float) -> list[np.ndarray]:
    """Peaks of every channel of a (C, H, W) stack: a list of C (N, 3) float32 arrays of x, y,
    value, highest value first."""
    maps = np.asarray(maps, dtype=np.float32)
    channels, height, width = maps.shape
    pad = np.pad(maps, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)

    def shifted(dy: int, dx: int) -> np.ndarray:
        return pad[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    peak = maps > threshold
    for dy, dx in _BEFORE:
        peak &= maps > shifted(dy, dx)
    for dy, dx in _AFTER:
        peak &= maps >= shifted(dy, dx)
    ch, ys, xs = np.nonzero(peak)
    values = maps[ch, ys, xs]
    fx, fy = xs.astype(np.float64), ys.astype(np.float64)

    # Per axis: a plateau peak moves to the middle of its run of equal pixels (right, down);
    # a single-pixel peak to the vertex of the parabola through the logs of its two neighbours
    # and itself (exact for a Gaussian), within ±0.5 px; none against the border.
    logc = np.log(np.maximum(values, _EPS))
    for dy, dx in ((0, 1), (1, 0)):
        lo = pad[ch, ys + 1 - dy, xs + 1 - dx]
        hi = pad[ch, ys + 1 + dy, xs + 1 + dx]
        run = np.zeros(len(ch), np.int64)
        going = hi == values
        for step in range(1, _MAX_RUN + 1):
            run += going
            if step == _MAX_RUN or not going.any():
                break
            y = np.minimum(ys + 1 + dy * (step + 1), height + 1)
            x = np.minimum(xs + 1 + dx * (step + 1), width + 1)
            going &= pad[ch, y, x] == values
        inside = np.isfinite(lo) & np.isfinite(hi) & (run == 0)
        logl = np.log(np.maximum(np.where(inside, lo, 1.0), _EPS))
        logh = np.log(np.maximum(np.where(inside, hi, 1.0), _EPS))
        denom = logl - 2.0 * logc + logh
        ok = inside & (denom < -_EPS)
        shift = np.where(ok, 0.5 * (logl - logh) / np.where(ok, denom, -1.0), 0.0)
        shift = np.where(run > 0, run / 2.0, np.clip(shift, -0.5, 0.5))
        if dx:
            fx = fx + shift
        else:
            fy = fy + shift

    out = np.stack([fx, fy, values.astype(np.float64)], axis=1).astype(np.float32)
    order = np.argsort(-out[:, 2], kind="stable")
    out, ch = out[order], ch[order]
    return [out[ch == c] for c in range(channels)]


def find_peaks(heatmap: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """Local maxima of an (H, W) map above `threshold`: an (N, 3) float32 array of x, y, value,
    highest value first.

    A peak is a pixel greater than its 3×3 neighbours that come before it in raster order and
    at least equal to those after it (pixels outside the map count as −∞), so a plateau of equal
    values gives one peak (exactly one when the plateau is convex), placed in the middle of the
    plateau's run of equal pixels to the right and downwards. A single-pixel peak is refined per
    axis by the parabola through the logs of its two neighbours (exact for a Gaussian).
    Pixel (row i, column j) has its centre at (x = j, y = i).
    """
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2:
        raise LabelError(f"find_peaks takes an (H, W) map, got shape {heatmap.shape}")
    return _peaks_of(heatmap[None], threshold)[0]
