"""The student's training augmentation (paper §3.5): pan & zoom, brightness/contrast, noise,
burned pixels and noise replacement, each with its own independent chance (`AugmentConfig`).

Geometry is one affine, x' = s·x + tx, y' = s·y + ty in the pixel-centre convention of
`distill.labels.letterbox` (pixel (row i, column j) has its centre at (x = j, y = i)). It is
applied alike to the letterboxed image, every dense target and the keypoints, so a keypoint stays
on its pixel; heatmaps are rendered afterwards from the moved keypoints. All randomness comes
from the `np.random.Generator` passed in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from distill.config import AugmentConfig

__all__ = [
    "MAX_PAN",
    "MAX_TRIES",
    "NOISE_STD_MAX",
    "Affine",
    "augment_pixels",
    "inside",
    "sample_pan_zoom",
    "warp",
]

logger = logging.getLogger(__name__)

# The paper gives no pan range; a shift of up to 20% of the output side in x and y, on top of
# the zoom, can push joints out of the frame, which the ≥30% visible-joints rule then bounds.
MAX_PAN = 0.20
MAX_TRIES = 8  # pan & zoom draws before falling back to the identity
NOISE_STD_MAX = 12.0  # Gaussian noise σ is drawn in [2, 12] 8-bit levels (the paper gives none)
_NOISE_STD_MIN = 2.0


@dataclass(frozen=True)
class Affine:
    """Scale about the origin, then translate: x' = scale·x + tx, y' = scale·y + ty."""

    scale: float = 1.0
    tx: float = 0.0
    ty: float = 0.0

    @classmethod
    def zoom_pan(cls, size: int, zoom: float, dx: float, dy: float) -> Affine:
        """Zoom by `zoom` about the centre of a `size`×`size` canvas, then shift by (dx, dy)."""
        c = (size - 1) / 2.0
        return cls(zoom, c - zoom * c + dx, c - zoom * c + dy)

    def points(self, xy: np.ndarray) -> np.ndarray:
        """Map (..., 2) points."""
        xy = np.asarray(xy, np.float32)
        out = xy.copy()
        out[..., 0] = xy[..., 0] * self.scale + self.tx
        out[..., 1] = xy[..., 1] * self.scale + self.ty
        return out

    def keypoints(self, keypoints: np.ndarray, size: int) -> np.ndarray:
        """Map (people, joints, 3) keypoints; a labelled joint that leaves the `size`×`size`
        frame becomes unlabelled (0, 0, 0), as unlabelled joints already are."""
        kp = np.asarray(keypoints, np.float32).copy()
        if kp.size == 0:
            return kp
        moved = self.points(kp[..., :2])
        keep = (kp[..., 2] > 0) & inside(moved, size)
        kp[..., :2] = np.where(keep[..., None], moved, 0.0)
        kp[..., 2] = np.where(keep, kp[..., 2], 0.0)
        return kp


def inside(xy: np.ndarray, size: int) -> np.ndarray:
    """Whether (..., 2) points fall on a pixel of a `size`×`size` frame."""
    x, y = xy[..., 0], xy[..., 1]
    return (x >= -0.5) & (x < size - 0.5) & (y >= -0.5) & (y < size - 0.5)


def sample_pan_zoom(
    keypoints: np.ndarray, size: int, cfg: AugmentConfig, rng: np.random.Generator
) -> Affine | None:
    """With chance `cfg.pan_zoom`, a random zoom in [1, max_zoom] and pan that keeps at least
    `cfg.min_visible_joints` of the labelled joints inside the frame; None for no geometry.

    A draw that keeps too few joints is redrawn, up to `MAX_TRIES` times, then the identity is
    used (returned as None)."""
    if rng.random() >= cfg.pan_zoom:
        return None
    kp = np.asarray(keypoints, np.float32).reshape(-1, 3)
    joints = kp[(kp[:, 2] > 0) & inside(kp[:, :2], size), :2]
    for _ in range(MAX_TRIES):
        zoom = float(rng.uniform(1.0, cfg.max_zoom))
        dx, dy = (float(v) for v in rng.uniform(-MAX_PAN * size, MAX_PAN * size, 2))
        affine = Affine.zoom_pan(size, zoom, dx, dy)
        if len(joints) == 0:
            return affine
        kept = int(inside(affine.points(joints), size).sum())
        if kept >= cfg.min_visible_joints * len(joints):
            return affine
    logger.debug("pan & zoom kept too few joints in %d tries; using the identity", MAX_TRIES)
    return None


def _taps(n: int, scale: float, shift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source coordinates of the `n` output pixels along one axis: (floor index, weight of the
    next index, nearest index)."""
    src = (np.arange(n, dtype=np.float64) - shift) / scale
    lo = np.floor(src)
    return lo.astype(np.int64), (src - lo).astype(np.float32), np.floor(src + 0.5).astype(np.int64)


def _gather(array: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """array[rows, cols] on a grid, with out-of-range taps clamped; and which taps were valid."""
    h, w = array.shape[:2]
    ok = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    vals = array[np.clip(rows, 0, h - 1)[:, None], np.clip(cols, 0, w - 1)[None, :]]
    return vals, ok


def warp(
    array: np.ndarray,
    affine: Affine,
    mode: Literal["bilinear", "nearest"] = "bilinear",
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Resample an (H, W) or (H, W, C) map under `affine` onto the same canvas; what falls
    outside the source becomes 0, the letterbox padding value.

    `nearest` takes the source pixel an output centre falls in (class ids, bit masks).
    `bilinear` interpolates; with a `mask` of labelled source pixels it blends only labelled
    neighbours, and output pixels whose nearest source pixel is unlabelled become 0 (so depth or
    normals never fade into the padding). Integer arrays are rounded back to their dtype."""
    h, w = array.shape[:2]
    r0, ry, rn = _taps(h, affine.scale, affine.ty)
    c0, cx, cn = _taps(w, affine.scale, affine.tx)
    if mode == "nearest":
        vals, ok = _gather(array, rn, cn)
        ok_b = ok.reshape(ok.shape + (1,) * (array.ndim - 2))
        return np.where(ok_b, vals, np.zeros((), array.dtype)).astype(array.dtype)
    m = np.ones((h, w), np.float32) if mask is None else mask.astype(np.float32)
    num = np.zeros(array.shape, np.float32)
    den = np.zeros((h, w), np.float32)
    wy = (1.0 - ry, ry)
    wx = (1.0 - cx, cx)
    for dy in (0, 1):
        for dx in (0, 1):
            vals, ok = _gather(array, r0 + dy, c0 + dx)
            mv, _ = _gather(m, r0 + dy, c0 + dx)
            weight = wy[dy][:, None] * wx[dx][None, :] * ok * mv
            den += weight
            num += vals.astype(np.float32) * weight.reshape(weight.shape + (1,) * (array.ndim - 2))
    if mask is None:
        out = num  # taps outside the source count as 0: the image fades into black padding
    else:
        nearest, ok = _gather(m, rn, cn)
        labelled = (nearest > 0) & ok & (den > 0)
        safe = np.where(den > 0, den, 1.0).reshape(den.shape + (1,) * (array.ndim - 2))
        out = np.where(labelled.reshape(safe.shape), num / safe, 0.0)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(array.dtype)
    return out.astype(array.dtype)


def augment_pixels(
    image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator, has_person: bool
) -> tuple[np.ndarray, bool]:
    """The photometric augmentations of an (H, W, 3) uint8 image, each with its own chance.

    Returns the new image and whether it was replaced by noise (then its targets no longer
    describe it; the caller decides what they become)."""
    out = image.astype(np.float64)
    if rng.random() < cfg.color:
        # Contrast about the channel mean and a brightness shift, each up to ±color_max_change:
        # one pair for all channels, or (with chance color_per_channel) one pair per channel.
        channels = 3 if rng.random() < cfg.color_per_channel else 1
        contrast = 1.0 + rng.uniform(-cfg.color_max_change, cfg.color_max_change, channels)
        brightness = 255.0 * rng.uniform(-cfg.color_max_change, cfg.color_max_change, channels)
        mean = out.mean(axis=(0, 1))
        out = (out - mean) * contrast + mean + brightness
    if rng.random() < cfg.noise:
        out = out + rng.normal(0.0, rng.uniform(_NOISE_STD_MIN, NOISE_STD_MAX), out.shape)
    if rng.random() < cfg.burned_pixels and cfg.max_burned_pixels > 0:
        n = int(rng.integers(1, cfg.max_burned_pixels + 1))
        flat = rng.choice(out.shape[0] * out.shape[1], size=n, replace=False)
        out[np.unravel_index(flat, out.shape[:2])] = 255.0  # saturated in every channel
    replaced = not has_person and rng.random() < cfg.replace_with_noise
    if replaced:
        return rng.integers(0, 256, image.shape, dtype=np.uint8), True
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), False
