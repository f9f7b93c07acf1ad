"""Fixtures for teacher tests: a mixed-size batch of real photos."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def mixed_batch() -> list[np.ndarray]:
    """Three RGB uint8 images of different sizes and aspect ratios, from real photos."""
    skdata = pytest.importorskip("skimage.data")
    cat = skdata.chelsea()  # 300 x 451
    coffee = skdata.coffee()  # 400 x 600
    return [
        np.ascontiguousarray(cat),
        np.ascontiguousarray(coffee[50:147, 100:230]),  # 97 x 130
        np.ascontiguousarray(cat[100:164, 20:220]),  # 64 x 200, wide
    ]
