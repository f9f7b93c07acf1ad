"""Surface normals from depth by Sobel gradients (paper §3.2).

Gradient scale: depth is first normalised to [0, 1] by its min and max, then the Sobel response
is divided by 8 (so a plane d = a·x gives exactly gx = a) and multiplied by `gradient_scale`
(config `labels.normals_gradient_scale`, default 255): slopes are measured in 8-bit depth levels
per pixel, what a Sobel over Depth Anything V2's own 8-bit PNG output measures. Because DAv2's
output is relative inverse depth (larger = nearer), a surface bulging towards the camera has
normals pointing outward: n = (-gx, -gy, 1) / (‖(-gx, -gy, 1)‖ + ε), x to the right, y down.
"""

from __future__ import annotations

import numpy as np

from distill.errors import LabelError
from distill.labels.depth import normalize_depth

__all__ = [
    "decode_normals8",
    "encode_normals8",
    "normals_from_unit",
    "sobel_gradients",
    "sobel_normals",
]

EPS = 1e-6


def sobel_gradients(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel x/y derivatives per pixel (response / 8), exact for planes up to the border.

    The border is padded by linear extrapolation (2·edge − next), so a plane's gradient is the
    same at the border as inside instead of halving there as replicate padding would.
    """
    if depth.ndim != 2 or min(depth.shape) < 2:
        raise LabelError(f"depth must be a 2-D map of at least 2x2, got shape {depth.shape}")
    d = depth.astype(np.float32, copy=False)
    p = np.empty((d.shape[0] + 2, d.shape[1] + 2), np.float32)
    p[1:-1, 1:-1] = d
    p[0, 1:-1] = 2 * d[0] - d[1]
    p[-1, 1:-1] = 2 * d[-1] - d[-2]
    p[:, 0] = 2 * p[:, 1] - p[:, 2]
    p[:, -1] = 2 * p[:, -2] - p[:, -3]
    # Separable Sobel: smooth [1 2 1] across, difference [-1 0 1] along.
    dx = p[:, 2:] - p[:, :-2]
    gx = (dx[:-2] + 2 * dx[1:-1] + dx[2:]) / 8.0
    dy = p[2:, :] - p[:-2, :]
    gy = (dy[:, :-2] + 2 * dy[:, 1:-1] + dy[:, 2:]) / 8.0
    return gx, gy


def sobel_normals(depth: np.ndarray, gradient_scale: float = 255.0) -> np.ndarray:
    """Unit normals (H, W, 3) float32 in [-1, 1] from a relative inverse depth map."""
    return normals_from_unit(normalize_depth(depth)[0], gradient_scale)


def normals_from_unit(unit: np.ndarray, gradient_scale: float = 255.0) -> np.ndarray:
    """`sobel_normals` of a depth map already normalised to [0, 1] by `normalize_depth`."""
    gx, gy = sobel_gradients(unit)
    n = np.stack([-gx * gradient_scale, -gy * gradient_scale, np.ones_like(gx)], axis=-1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True) + EPS
    return n.astype(np.float32)


def encode_normals8(normals: np.ndarray) -> np.ndarray:
    """(n + 1) / 2 · 255 as uint8 RGB."""
    return np.rint((np.clip(normals, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def decode_normals8(rgb: np.ndarray) -> np.ndarray:
    """Invert `encode_normals8` (to within 1/255)."""
    return rgb.astype(np.float32) / 127.5 - 1.0
