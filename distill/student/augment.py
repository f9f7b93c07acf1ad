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
    "Resampler",
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


def _take2(array: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """array[rows][:, cols] as two 1-D takes (several times faster than a 2-D fancy index)."""
    return array.take(rows, axis=0).take(cols, axis=1)


class Resampler:
    """`warp` under one affine on one h×w canvas, with its taps computed once for every map of
    a sample. Separable: the affine has no rotation, so each tap is a row index × a column
    index, gathered with two 1-D takes, and each bilinear weight is an outer product. The
    arithmetic is `warp`'s original per-pixel formula, in the same order, so results are
    bit-identical to it (tests/student/test_loader_identical.py)."""

    def __init__(self, affine: Affine, h: int, w: int) -> None:
        self.shape = (h, w)
        r0, ry, rn = _taps(h, affine.scale, affine.ty)
        c0, cx, cn = _taps(w, affine.scale, affine.tx)
        # (clamped index, valid) for taps 0 and 1 of each axis, and for the nearest tap.
        self._rows = [self._axis(r0 + d, h) for d in (0, 1)]
        self._cols = [self._axis(c0 + d, w) for d in (0, 1)]
        self.nearest_rows = self._axis(rn, h)
        self.nearest_cols = self._axis(cn, w)
        wy, wx = (1.0 - ry, ry), (1.0 - cx, cx)
        # wy ⊗ wx with out-of-range taps 0: (wy·ok_y)(wx·ok_x) is (wy·wx)·ok bit for bit.
        self._weights = [
            np.multiply.outer(wy[dy] * self._rows[dy][1], wx[dx] * self._cols[dx][1])
            for dy in (0, 1) for dx in (0, 1)]
        self._masked: tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray] | None = None

    @staticmethod
    def _axis(index: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        return np.clip(index, 0, n - 1), (index >= 0) & (index < n)

    def _check(self, array: np.ndarray) -> None:
        if array.shape[:2] != self.shape:
            raise ValueError(f"a {array.shape} map on a resampler of {self.shape}")

    def nearest(self, array: np.ndarray) -> np.ndarray:
        """`warp(array, affine, "nearest")`."""
        self._check(array)
        (rows, rok), (cols, cok) = self.nearest_rows, self.nearest_cols
        out = _take2(array, rows, cols)
        out[~rok] = 0
        out[:, ~cok] = 0
        return out

    def _taps_of(self, array: np.ndarray) -> list[np.ndarray]:
        """The 4 bilinear taps of an (H, W) or (C, H, W) map, in `_weights` order: columns
        gathered first (2 element-wise gathers of the whole map), then rows (4 row copies),
        fewer element-wise gathers than rows first."""
        axis = array.ndim - 2
        by_cols = [array.take(cols, axis=axis + 1) for cols, _ in self._cols]
        return [picked.take(rows, axis=axis) for rows, _ in self._rows for picked in by_cols]

    def _mask_weights(self, mask: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], np.ndarray,
                                                       np.ndarray]:
        """(mask, weights, 1/den's safe divisor, unlabelled) of a source mask, computed once
        per mask."""
        if self._masked is not None and self._masked[0] is mask:
            return self._masked
        m = mask.astype(np.float32)
        weights = [w * mv for w, mv in zip(self._weights, self._taps_of(m), strict=True)]
        den = np.zeros(self.shape, np.float32)
        for weight in weights:
            den += weight
        (rows, rok), (cols, cok) = self.nearest_rows, self.nearest_cols
        labelled = (_take2(m, rows, cols) > 0) & (rok[:, None] & cok[None, :]) & (den > 0)
        safe = np.where(den > 0, den, np.float32(1.0))
        self._masked = (mask, weights, safe, ~labelled)
        return self._masked

    def bilinear(self, array: np.ndarray, mask: np.ndarray | None = None, *,
                 channels_first: bool = False) -> np.ndarray:
        """`warp(array, affine, "bilinear", mask)`. `channels_first`: `array` is (C, H, W) and
        so is the result, the faster layout (every step runs along whole rows; a channels-last
        map is warped through a transposed view of it, then transposed back)."""
        if array.ndim == 3 and not channels_first:
            planes = self.bilinear(array.transpose(2, 0, 1), mask, channels_first=True)
            return np.ascontiguousarray(planes.transpose(1, 2, 0))
        if array.shape[-2:] != self.shape:
            raise ValueError(f"a {array.shape} map on a resampler of {self.shape}")
        if mask is None:
            weights, safe, unlabelled = self._weights, None, None
        else:
            _, weights, safe, unlabelled = self._mask_weights(mask)
        # sum of value·weight over the taps in float32, in `warp`'s order; the same elementwise
        # operations as the original formula, done in place.
        num: np.ndarray | None = None
        for vals, weight in zip(self._taps_of(array), weights, strict=True):
            if num is None:
                num = np.multiply(vals, weight, dtype=np.float32)
            else:
                num += np.multiply(vals, weight, dtype=np.float32)
        assert num is not None
        # without a mask, taps outside the source count as 0 (black padding)
        if safe is not None and unlabelled is not None:
            np.divide(num, safe, out=num)
            num[..., unlabelled] = 0.0
        if np.issubdtype(array.dtype, np.integer):
            info = np.iinfo(array.dtype)
            np.rint(num, out=num)
            np.clip(num, info.min, info.max, out=num)
        return num.astype(array.dtype, copy=False)


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
    normals never fade into the padding). Integer arrays are rounded back to their dtype.
    Several maps under one affine: one `Resampler`, which shares the taps."""
    resampler = Resampler(affine, *array.shape[:2])
    if mode == "nearest":
        return resampler.nearest(array)
    return resampler.bilinear(array, mask)


def augment_pixels(
    image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator, has_person: bool, *,
    channels_first: bool = False,
) -> tuple[np.ndarray, bool]:
    """The photometric augmentations of an (H, W, 3) uint8 image, each with its own chance.
    `channels_first`: the image is (3, H, W), and so is the result: the same draws in the same
    order and the same pixels, transposed.

    Returns the new image and whether it was replaced by noise (then its targets no longer
    describe it; the caller decides what they become)."""
    # Channels-last views of a channels-first image: the draws (noise, burned pixels, the
    # replacement) keep their (H, W, 3) shapes, so the RNG stream is that of the (H, W, 3) form.
    hwc = image.transpose(1, 2, 0) if channels_first else image
    shape = hwc.shape
    # float64 only once colour or noise touch the pixels, in place: the values of the plain
    # `out = (out - mean) * contrast + mean + brightness; out = out + noise` form, bit for bit.
    out: np.ndarray | None = None  # float64, in `image`'s layout
    if rng.random() < cfg.color:
        # Contrast about the channel mean and a brightness shift, each up to ±color_max_change:
        # one pair for all channels, or (with chance color_per_channel) one pair per channel.
        channels = 3 if rng.random() < cfg.color_per_channel else 1
        contrast = 1.0 + rng.uniform(-cfg.color_max_change, cfg.color_max_change, channels)
        brightness = 255.0 * rng.uniform(-cfg.color_max_change, cfg.color_max_change, channels)
        # The float64 mean of integers is their exact sum over the count, in any order.
        sums = image.reshape(shape[-1], -1).sum(axis=1, dtype=np.int64) if channels_first \
            else image.reshape(-1, shape[-1]).sum(axis=0, dtype=np.int64)
        mean = sums.astype(np.float64) / (shape[0] * shape[1])
        if channels_first:  # per-channel values along the leading axis
            mean, contrast, brightness = (v.reshape(-1, 1, 1)
                                          for v in (mean, contrast, brightness))
        out = image.astype(np.float64)
        out -= mean
        out *= contrast
        out += mean
        out += brightness
    if rng.random() < cfg.noise:
        std = rng.uniform(_NOISE_STD_MIN, NOISE_STD_MAX)
        noise = rng.normal(0.0, std, shape)
        if out is None:
            out = image.astype(np.float64)
        out += noise.transpose(2, 0, 1) if channels_first else noise
    pixels = image.copy() if out is None else out  # no colour or noise: still whole levels
    if rng.random() < cfg.burned_pixels and cfg.max_burned_pixels > 0:
        n = int(rng.integers(1, cfg.max_burned_pixels + 1))
        flat = rng.choice(shape[0] * shape[1], size=n, replace=False)
        burned = np.unravel_index(flat, shape[:2])
        if channels_first:
            pixels[:, burned[0], burned[1]] = 255  # saturated in every channel
        else:
            pixels[burned] = 255
    replaced = not has_person and rng.random() < cfg.replace_with_noise
    if replaced:
        noise_image = rng.integers(0, 256, shape, dtype=np.uint8)
        return (np.ascontiguousarray(noise_image.transpose(2, 0, 1)) if channels_first
                else noise_image), True
    if out is None:
        return pixels, False
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8), False
