"""teachers.resize: OpenCV's uint8 bilinear resize, bit for bit, against cv2 outputs recorded
in reference/resize.json (cv2 itself is not a dependency)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from teachers.resize import resize_bilinear_uint8

REFERENCE = json.loads((Path(__file__).parent / "reference" / "resize.json").read_text())


def _image(name: str) -> np.ndarray:
    img = getattr(pytest.importorskip("skimage.data"), name)()
    return np.stack([img] * 3, axis=-1) if img.ndim == 2 else img


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"{c['image']}-{c['size']}")
def test_resize_equals_cv2(case):
    img = torch.from_numpy(_image(case["image"])).permute(2, 0, 1).contiguous()
    out = resize_bilinear_uint8(img, tuple(case["size"])).permute(1, 2, 0).contiguous().numpy()
    assert out.dtype == np.uint8 and list(out.shape[:2]) == case["size"]
    assert out[:3, :3, 0].tolist() == case["top_left_3x3_channel0"]
    assert hashlib.sha256(out.tobytes()).hexdigest() == case["sha256"]


def test_float_resize_is_not_cv2():
    """Why the module exists: a float bilinear resize rounded to uint8 misses cv2's result."""
    case = REFERENCE["cases"][0]
    img = torch.from_numpy(_image(case["image"])).permute(2, 0, 1)[None].float()
    out = F.interpolate(img, size=tuple(case["size"]), mode="bilinear", align_corners=False)
    out = out.round()[0].to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    assert hashlib.sha256(out.tobytes()).hexdigest() != case["sha256"]


def test_resize_same_size_and_bad_input():
    img = torch.arange(24, dtype=torch.uint8).view(2, 3, 4)
    assert resize_bilinear_uint8(img, (3, 4)) is img
    with pytest.raises(ValueError, match="uint8"):
        resize_bilinear_uint8(img.float(), (2, 2))
