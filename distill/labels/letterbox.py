"""Letterboxing (paper §3.5): resize keeping the aspect ratio, pad with black, centred.

One `Letterbox` maps an image, its label maps and its keypoints with the same geometry. Pixel
(row i, column j) has its centre at (x = j, y = i), as COCO keypoints do; a point maps as
x' = (x + 0.5) · sx − 0.5 + pad_x, so a keypoint lands on the pixel its image pixel lands on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from distill.errors import LabelError

__all__ = ["Letterbox"]


@dataclass(frozen=True)
class Letterbox:
    """The geometry of one letterbox from (src_w, src_h) to (dst_w, dst_h)."""

    src_w: int
    src_h: int
    dst_w: int
    dst_h: int

    def __post_init__(self) -> None:
        if min(self.src_w, self.src_h, self.dst_w, self.dst_h) <= 0:
            raise LabelError(
                f"letterbox sizes must be positive: {self.src_w}x{self.src_h} → "
                f"{self.dst_w}x{self.dst_h}"
            )

    @classmethod
    def fit(cls, src_w: int, src_h: int, size: int) -> Letterbox:
        """Letterbox into a `size`×`size` square."""
        return cls(src_w, src_h, size, size)

    @property
    def scale(self) -> float:
        return min(self.dst_w / self.src_w, self.dst_h / self.src_h)

    @property
    def new_w(self) -> int:
        return max(1, min(self.dst_w, round(self.src_w * self.scale)))

    @property
    def new_h(self) -> int:
        return max(1, min(self.dst_h, round(self.src_h * self.scale)))

    @property
    def pad_x(self) -> int:
        return (self.dst_w - self.new_w) // 2

    @property
    def pad_y(self) -> int:
        return (self.dst_h - self.new_h) // 2

    @property
    def sx(self) -> float:
        return self.new_w / self.src_w

    @property
    def sy(self) -> float:
        return self.new_h / self.src_h

    # --- points -----------------------------------------------------------------------------

    def points(self, xy: np.ndarray) -> np.ndarray:
        """Map (..., 2) source (x, y) to destination coordinates."""
        xy = np.asarray(xy, dtype=np.float32)
        out = xy.copy()
        out[..., 0] = (xy[..., 0] + 0.5) * self.sx - 0.5 + self.pad_x
        out[..., 1] = (xy[..., 1] + 0.5) * self.sy - 0.5 + self.pad_y
        return out

    def inverse_points(self, xy: np.ndarray) -> np.ndarray:
        """Map (..., 2) destination (x, y) back to source coordinates."""
        xy = np.asarray(xy, dtype=np.float32)
        out = xy.copy()
        out[..., 0] = (xy[..., 0] - self.pad_x + 0.5) / self.sx - 0.5
        out[..., 1] = (xy[..., 1] - self.pad_y + 0.5) / self.sy - 0.5
        return out

    def keypoints(self, keypoints: np.ndarray) -> np.ndarray:
        """Map (people, joints, 3) COCO keypoints; visibility is kept, unlabelled stay (0, 0, 0)."""
        kp = np.asarray(keypoints, dtype=np.float32).copy()
        if kp.size == 0:
            return kp
        labelled = kp[..., 2] > 0
        kp[..., :2] = np.where(labelled[..., None], self.points(kp[..., :2]), 0.0)
        return kp

    # --- rasters ----------------------------------------------------------------------------

    def _check(self, array: np.ndarray) -> None:
        if array.shape[:2] != (self.src_h, self.src_w):
            raise LabelError(
                f"array of shape {array.shape} does not match the letterbox source "
                f"{self.src_w}x{self.src_h}"
            )

    def _canvas(self, array: np.ndarray, resized: np.ndarray, fill: float | int) -> np.ndarray:
        out = np.full((self.dst_h, self.dst_w, *array.shape[2:]), fill, dtype=array.dtype)
        out[self.pad_y : self.pad_y + self.new_h, self.pad_x : self.pad_x + self.new_w] = resized
        return out

    def image(self, rgb: np.ndarray) -> np.ndarray:
        """Bilinear (antialiased when shrinking) resize of an (H, W, 3) uint8 image, black pad."""
        self._check(rgb)
        if rgb.dtype != np.uint8:
            raise LabelError(f"letterbox.image takes uint8 RGB, got {rgb.dtype}")
        return self._rgb_canvas(rgb)

    def _rgb_canvas(self, rgb: np.ndarray) -> np.ndarray:
        return self._pil_canvas(Image.fromarray(rgb), 0)

    def pil_image(self, img: Image.Image, fill: float = 0) -> np.ndarray:
        """`image` (an RGB image) or `float_map` (a mode "F" one) of a Pillow image of the
        source, e.g. a PNG just decoded: no round trip through numpy, the same pixels."""
        if img.size != (self.src_w, self.src_h):
            raise LabelError(f"an image of {img.size} does not match the letterbox source "
                             f"{self.src_w}x{self.src_h}")
        return self._pil_canvas(img, fill)

    def _pil_canvas(self, img: Image.Image, fill: float) -> np.ndarray:
        resized = np.asarray(img.resize((self.new_w, self.new_h), Image.Resampling.BILINEAR))
        out = np.full((self.dst_h, self.dst_w, *resized.shape[2:]), fill, dtype=resized.dtype)
        out[self.pad_y : self.pad_y + self.new_h, self.pad_x : self.pad_x + self.new_w] = resized
        return out

    def image_scaled(self, rgb: np.ndarray) -> np.ndarray:
        """`image` of the source decoded at a reduced scale (a JPEG's DCT-scaled decode): the
        same content box, resized from the smaller array. Pixel centres line up because a
        1/k-scale pixel covers k×k source pixels."""
        h, w = rgb.shape[:2]
        if (h, w) == (self.src_h, self.src_w):
            return self.image(rgb)
        if rgb.dtype != np.uint8 or abs(w / self.src_w - h / self.src_h) > 2.0 / min(w, h):
            raise LabelError(f"a {w}x{h} uint8 image is not a reduced {self.src_w}x{self.src_h} "
                             "source")
        return self._rgb_canvas(rgb)

    def float_map(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Bilinear resize of an (H, W) float map (e.g. depth)."""
        self._check(values)
        return self.pil_image(Image.fromarray(values.astype(np.float32)), fill)

    def label_map(self, labels: np.ndarray, fill: int = 0) -> np.ndarray:
        """Nearest-neighbour resize of an (H, W) or (H, W, C) map of any dtype (class ids, bit
        masks): every output pixel takes the source pixel its centre falls in."""
        self._check(labels)
        rows, cols = self.label_indices()
        inner = labels[rows[self.pad_y : self.pad_y + self.new_h, None],
                       cols[None, self.pad_x : self.pad_x + self.new_w]]
        return self._canvas(labels, inner, fill)

    def label_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """The nearest-neighbour taps of `label_map`: for each destination row and column the
        source row or column it takes, −1 in the padding. Composing these with another
        nearest resampling is exact, so a label map can go to its final geometry in one gather
        (`distill.student.targets`)."""
        rows = np.full(self.dst_h, -1, np.int64)
        cols = np.full(self.dst_w, -1, np.int64)
        rows[self.pad_y : self.pad_y + self.new_h] = np.minimum(
            ((np.arange(self.new_h) + 0.5) / self.sy).astype(np.int64), self.src_h - 1)
        cols[self.pad_x : self.pad_x + self.new_w] = np.minimum(
            ((np.arange(self.new_w) + 0.5) / self.sx).astype(np.int64), self.src_w - 1)
        return rows, cols
