"""16-bit depth and Sobel normals (DESIGN.md §4)."""

import numpy as np
import pytest

from distill.errors import LabelError
from distill.images import decode_png, encode_png
from distill.labels.depth import decode_depth16, encode_depth16
from distill.labels.normals import decode_normals8, encode_normals8, sobel_normals


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (-3.5, 120.25), (1e3, 1e3 + 1e-2)])
def test_depth16_round_trip_error_is_within_one_level(lo, hi):
    rng = np.random.default_rng(1)
    d = rng.uniform(lo, hi, (57, 83))
    d[0, 0], d[-1, -1] = lo, hi  # make the range exact
    d16, dmin, dmax = encode_depth16(d)
    assert d16.dtype == np.uint16 and (dmin, dmax) == pytest.approx((lo, hi))
    assert d16.min() == 0 and d16.max() == 65535
    back = decode_depth16(decode_png(encode_png(d16)), dmin, dmax)  # through the PNG too
    err = np.abs(back.astype(np.float64) - d).max()
    assert err <= (hi - lo) / 65535 * 0.5 + np.spacing(np.float32(hi)) * 2


def test_depth16_constant_and_bad_maps():
    d16, lo, hi = encode_depth16(np.full((4, 5), 7.0))
    assert not d16.any() and lo == hi == 7.0
    assert np.allclose(decode_depth16(d16, lo, hi), 7.0)
    with pytest.raises(LabelError, match="non-finite"):
        encode_depth16(np.array([[1.0, np.nan], [0.0, 2.0]]))


def test_normals_of_a_tilted_plane_are_constant_and_analytic():
    h, w, a, b = 40, 60, 0.7, -0.3
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    depth = a * x + b * y + 5.0
    scale = 1.0 / (depth.max() - depth.min())  # undo the [0, 1] normalisation
    n = sobel_normals(depth, gradient_scale=1.0 / scale)
    expected = np.array([-a, -b, 1.0]) / np.linalg.norm([-a, -b, 1.0])
    assert np.abs(n - expected).max() < 1e-4  # border pixels included


def test_normals_of_a_sphere_point_outward():
    h = w = 101
    r = 40.0
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    dx, dy = x - 50, y - 50
    inside = dx**2 + dy**2 < (r - 3) ** 2
    z = np.sqrt(np.clip(r**2 - dx**2 - dy**2, 0, None))  # nearer at the centre
    n = sobel_normals(z, gradient_scale=z.max() - z.min())
    radial = np.stack([dx, dy, z], -1)
    radial /= np.linalg.norm(radial, axis=-1, keepdims=True)
    cos = (n * radial).sum(-1)[inside]
    assert cos.min() > 0.99
    # x component follows the image x axis: right half points right.
    assert (n[50, 60:85, 0] > 0).all() and (n[50, 15:40, 0] < 0).all()


def test_normals_encoding_round_trip():
    n = sobel_normals(np.random.default_rng(0).random((16, 16)))
    assert np.allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
    rgb = encode_normals8(n)
    assert rgb.dtype == np.uint8 and rgb.shape == (16, 16, 3)
    assert np.abs(decode_normals8(rgb) - n).max() <= 1 / 255 + 1e-6
