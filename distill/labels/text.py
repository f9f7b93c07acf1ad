"""Text regions (a text detector's polygons) and the text mask rasterised from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from distill.errors import LabelError

__all__ = ["TextRegion", "rasterize_polygons"]


@dataclass
class TextRegion:
    """One detected text polygon, as a text teacher returns it and a shard stores it."""

    points: np.ndarray  # (N, 2) float32 x, y
    score: float


def rasterize_polygons(
    polygons: list[np.ndarray], height: int, width: int
) -> np.ndarray:
    """Fill polygons of (N, 2) float (x, y) pixel coordinates into an (H, W) bool mask.

    Pixel (i, j) is covered when its centre (x = j, y = i) lies inside a polygon (or on its
    outline). Polygons with fewer than 3 points are skipped; coordinates may fall outside the
    image (they are clipped by the raster).
    """
    if height <= 0 or width <= 0:
        raise LabelError(f"mask size must be positive, got {width}x{height}")
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(pts) < 3:
            continue
        if not np.isfinite(pts).all():
            raise LabelError("text polygon has non-finite coordinates")
        draw.polygon([(float(x), float(y)) for x, y in pts], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)
