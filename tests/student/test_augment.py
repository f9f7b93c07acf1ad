"""Augmentation (paper §3.5): geometry moves image, dense targets and keypoints together; zoom
and the visible-joints rule hold over many seeds; the photometric parts do what they say."""

import numpy as np
import pytest

from distill.coco import Person
from distill.config import AugmentConfig
from distill.images import encode_png
from distill.shards import Sample
from distill.student import layout
from distill.student.augment import Affine, augment_pixels, inside, sample_pan_zoom, warp
from distill.student.targets import build_example

SIZE = 64
ONLY_GEOMETRY = AugmentConfig(pan_zoom=1.0, color=0.0, noise=0.0, burned_pixels=0.0,
                              replace_with_noise=0.0)
NOTHING = AugmentConfig(pan_zoom=0.0, color=0.0, noise=0.0, burned_pixels=0.0,
                        replace_with_noise=0.0)


def marker_sample(x: int, y: int, w: int = 48, h: int = 36) -> Sample:
    """A black PNG with a white 3×3 block centred on (x, y), a text mask on the same block,
    and a person whose left wrist is at (x, y)."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[y - 1 : y + 2, x - 1 : x + 2] = 255
    text = np.zeros((h, w), bool)
    text[y - 1 : y + 2, x - 1 : x + 2] = True
    kp = np.zeros((17, 3), np.float32)
    kp[9] = (x, y, 2)
    return Sample(image_id=1, file_name="m.png", split="t", width=w, height=h,
                  image=encode_png(rgb), text_mask=text,
                  persons=[Person(kp, (0.0, 0.0, float(w), float(h)), 1.0, False, 1)])


def _centroid(channel: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(channel == channel.max())
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("seed", range(12))
def test_geometry_keeps_keypoints_on_their_pixels(seed):
    sample = marker_sample(22, 17)
    plain = build_example(sample, SIZE, None, 8, (7.0, 2.0), None, None)
    ex = build_example(sample, SIZE, None, 8, (7.0, 2.0), np.random.default_rng(seed),
                       ONLY_GEOMETRY)
    rng = np.random.default_rng(seed)
    affine = sample_pan_zoom(plain.keypoints, SIZE, ONLY_GEOMETRY, rng)
    assert affine is not None and affine.scale > 1.0 + 1e-6
    # The keypoint moved by exactly the drawn affine ...
    expected = affine.points(plain.keypoints[0, 9, :2])
    assert ex.keypoints[0, 9, 2] == 2
    np.testing.assert_allclose(ex.keypoints[0, 9, :2], expected, atol=1e-4)
    # ... and the heatmap rendered afterwards peaks on it,
    peak = np.unravel_index(np.argmax(ex.target[9]), ex.target[9].shape)
    assert abs(peak[1] - expected[0]) <= 1 and abs(peak[0] - expected[1]) <= 1
    # while the image's marker and the text mask's marker moved to the same place.
    assert np.abs(_centroid(ex.image[0]) - expected).max() <= 1.0
    assert np.abs(_centroid(ex.target[layout.TEXT][0]) - expected).max() <= 1.0
    # An unmoved example has its marker where the letterboxed keypoint says.
    assert np.abs(_centroid(plain.image[0]) - plain.keypoints[0, 9, :2]).max() <= 0.5


def test_warp_matches_the_affine_for_points_and_pixels():
    a = Affine.zoom_pan(SIZE, 1.1, 5.0, -3.0)
    grid = np.zeros((SIZE, SIZE), np.uint8)
    grid[40, 12] = 1
    out = warp(grid, a, "nearest")
    y, x = np.argwhere(out == 1).mean(axis=0)
    px, py = a.points(np.array([12.0, 40.0]))
    assert abs(x - px) <= 0.6 and abs(y - py) <= 0.6
    # The identity leaves any map untouched, bilinear or nearest.
    vals = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    assert np.array_equal(warp(vals, Affine(), "bilinear"), vals)
    assert np.array_equal(warp(vals, Affine(), "nearest"), vals)


def test_keypoints_leaving_the_frame_become_unlabelled():
    kp = np.zeros((1, 17, 3), np.float32)
    kp[0, 0] = (60.0, 10.0, 2)
    kp[0, 1] = (10.0, 10.0, 1)
    moved = Affine(1.0, 10.0, 0.0).keypoints(kp, SIZE)
    assert moved[0, 0].tolist() == [0.0, 0.0, 0.0]
    assert moved[0, 1].tolist() == [20.0, 10.0, 1.0]
    assert moved[0, 2].tolist() == [0.0, 0.0, 0.0]  # unlabelled stays unlabelled


def test_zoom_is_capped_and_enough_joints_stay_inside_over_many_seeds():
    rng0 = np.random.default_rng(123)
    kp = np.zeros((2, 17, 3), np.float32)
    kp[..., :2] = rng0.uniform(0, SIZE - 1, (2, 17, 2))  # joints all over, many near the edges
    kp[..., 2] = 2
    kp[1, :5, 2] = 0
    joints = kp[kp[..., 2] > 0][:, :2]
    cfg = AugmentConfig(pan_zoom=1.0)
    zooms = []
    for seed in range(400):
        affine = sample_pan_zoom(kp, SIZE, cfg, np.random.default_rng(seed))
        assert affine is not None  # a 30% keep is always reachable here
        assert 1.0 <= affine.scale <= cfg.max_zoom
        assert inside(affine.points(joints), SIZE).sum() >= 0.3 * len(joints)
        zooms.append(affine.scale)
    assert max(zooms) > 1.09  # the whole range is used, up to 110%


def test_pan_zoom_falls_back_to_identity_and_fires_at_its_rate():
    kp = np.zeros((1, 17, 3), np.float32)
    kp[0, 0] = (0, 0, 2)
    kp[0, 1] = (SIZE - 1, SIZE - 1, 2)  # opposite corners: no zoom > 1 keeps both
    strict = AugmentConfig(pan_zoom=1.0, min_visible_joints=1.0)
    assert all(sample_pan_zoom(kp, SIZE, strict, np.random.default_rng(s)) is None
               for s in range(50))
    cfg = AugmentConfig()  # the paper's 45%
    fired = sum(sample_pan_zoom(kp[:0], SIZE, cfg, np.random.default_rng(s)) is not None
                for s in range(2000))
    assert 0.40 < fired / 2000 < 0.50


def test_burned_pixels_and_colour_stay_within_their_limits():
    image = np.full((SIZE, SIZE, 3), 100, np.uint8)
    burn = AugmentConfig(pan_zoom=0.0, color=0.0, noise=0.0, burned_pixels=1.0,
                         replace_with_noise=0.0)
    for seed in range(30):
        out, replaced = augment_pixels(image, burn, np.random.default_rng(seed), True)
        changed = np.any(out != image, axis=2)
        assert not replaced and 1 <= changed.sum() <= 10
        assert (out[changed] == 255).all()
    colour = AugmentConfig(pan_zoom=0.0, color=1.0, noise=0.0, burned_pixels=0.0,
                           replace_with_noise=0.0)
    ramp = np.tile(np.arange(64, 192, 2, dtype=np.uint8)[None, :, None], (SIZE, 1, 3))
    for seed in range(30):
        out, _ = augment_pixels(ramp, colour, np.random.default_rng(seed), True)
        diff = out.astype(float) - ramp
        # contrast ±20% of (x − mean) ≤ 13 levels here, brightness ±20% of 255 = 51
        assert np.abs(diff).max() <= 0.2 * 255 + 0.2 * 64 + 1
        assert np.abs(diff).max() > 0


def test_noise_replacement_only_without_a_person():
    image = np.zeros((8, 8, 3), np.uint8)
    cfg = AugmentConfig(pan_zoom=0.0, color=0.0, noise=0.0, burned_pixels=0.0,
                        replace_with_noise=1.0)
    out, replaced = augment_pixels(image, cfg, np.random.default_rng(0), has_person=True)
    assert not replaced and not out.any()
    out, replaced = augment_pixels(image, cfg, np.random.default_rng(0), has_person=False)
    assert replaced and out.std() > 30


def test_augmentation_is_deterministic_given_the_seed():
    sample = marker_sample(20, 15)
    cfg = AugmentConfig(pan_zoom=1.0, noise=1.0, burned_pixels=1.0, color=1.0)
    a = build_example(sample, SIZE, None, 8, (23.0, 6.0), np.random.default_rng(7), cfg)
    b = build_example(sample, SIZE, None, 8, (23.0, 6.0), np.random.default_rng(7), cfg)
    c = build_example(sample, SIZE, None, 8, (23.0, 6.0), np.random.default_rng(8), cfg)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.target, b.target)
    assert not np.array_equal(a.image, c.image)
    none = build_example(sample, SIZE, None, 8, (23.0, 6.0), np.random.default_rng(7), NOTHING)
    plain = build_example(sample, SIZE, None, 8, (23.0, 6.0), None, None)
    assert np.array_equal(none.image, plain.image) and np.array_equal(none.target, plain.target)
