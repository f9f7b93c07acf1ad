"""Joint heatmaps, limb PAFs and the letterbox geometry."""

import json

import numpy as np
import pytest

from distill.labels.keypoints import LIMBS, NUM_JOINTS, render_heatmaps, render_pafs
from distill.labels.letterbox import Letterbox


def _person(**joints):
    kp = np.zeros((1, NUM_JOINTS, 3), np.float32)
    for j, (x, y) in joints.items():
        kp[0, int(j[1:])] = (x, y, 2)
    return kp


@pytest.mark.parametrize("x,y", [(10.0, 20.0), (10.3, 19.6), (33.49, 7.51), (0.2, 0.4), (63.4, 47.2)])
@pytest.mark.parametrize("size", [23, 6])
def test_heatmap_peaks_at_the_keypoint_pixel(x, y, size):
    hm = render_heatmaps(_person(j0=(x, y)), 48, 64, size=size)
    assert hm.shape == (NUM_JOINTS, 48, 64) and hm.dtype == np.float32
    row, col = np.unravel_index(np.argmax(hm[0]), hm[0].shape)
    assert (row, col) == (round(y), round(x))
    assert 0.5 < hm[0].max() <= 1.0 and not hm[1:].any()
    # The window is size×size: nothing farther than size/2 from the keypoint.
    rr, cc = np.nonzero(hm[0])
    assert np.abs(cc - x).max() <= size / 2 and np.abs(rr - y).max() <= size / 2


def test_heatmap_skips_unlabelled_joints_and_takes_the_max_over_people():
    kp = np.zeros((2, NUM_JOINTS, 3), np.float32)
    kp[0, 0] = (5, 5, 2)
    kp[1, 0] = (6, 5, 1)  # occluded but labelled: drawn
    kp[1, 1] = (20, 20, 0)  # unlabelled: not drawn
    hm = render_heatmaps(kp, 32, 32, size=6)
    assert hm[0, 5, 5] == pytest.approx(1.0) and hm[0, 5, 6] == pytest.approx(1.0)
    assert not hm[1].any()


@pytest.mark.parametrize("width", [6, 2, 3.5])
def test_paf_is_nonzero_only_within_its_width_of_the_limb(width):
    a, b = (8.0, 10.0), (40.0, 30.0)  # left shoulder → left elbow = limb 0
    kp = _person(j5=a, j7=b)
    pafs = render_pafs(kp, 48, 64, line_width=width)
    assert pafs.shape == (len(LIMBS), 48, 64)
    assert not pafs[1:].any()  # only limb 0 has both joints
    y, x = np.mgrid[0:48, 0:64].astype(np.float64)
    ab = np.subtract(b, a)
    t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / (ab @ ab), 0, 1)
    dist = np.hypot(x - a[0] - t * ab[0], y - a[1] - t * ab[1])
    on = pafs[0] > 0
    assert dist[on].max() <= width / 2 + 1e-6
    assert on[dist <= width / 2 - 1e-6].all()  # and the whole band is drawn
    assert set(np.unique(pafs[0])) == {0.0, 1.0}


def test_heatmaps_peak_at_real_coco_keypoints(coco_mini):
    doc = json.loads((coco_mini / "annotations" / "person_keypoints_val2017.json").read_text())
    sizes = {i["id"]: (i["height"], i["width"]) for i in doc["images"]}
    checked = 0
    for ann in doc["annotations"]:
        if ann["num_keypoints"] < 5 or ann["iscrowd"]:
            continue
        kp = np.asarray(ann["keypoints"], np.float32).reshape(1, NUM_JOINTS, 3)
        h, w = sizes[ann["image_id"]]
        hm = render_heatmaps(kp, h, w, size=6)
        for j in np.nonzero(kp[0, :, 2] > 0)[0]:
            x, y = kp[0, j, :2]
            r, c = np.unravel_index(np.argmax(hm[j]), hm[j].shape)
            assert (r, c) == (round(float(y)), round(float(x)))
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("src", [(640, 427), (427, 640), (100, 60), (256, 256), (33, 257)])
def test_letterbox_geometry_keeps_aspect_and_centres(src):
    lb = Letterbox.fit(*src, 256)
    assert max(lb.new_w, lb.new_h) == 256
    assert abs(lb.new_w / lb.new_h - src[0] / src[1]) < 2 / min(lb.new_w, lb.new_h) + 0.02
    assert lb.pad_x in ((256 - lb.new_w) // 2,) and lb.pad_y == (256 - lb.new_h) // 2
    pts = np.array([[0, 0], [src[0] - 1, src[1] - 1], [12.3, 7.7]], np.float32)
    assert np.allclose(lb.inverse_points(lb.points(pts)), pts, atol=1e-3)


@pytest.mark.parametrize("src", [(640, 427), (100, 60), (300, 451)])
def test_letterboxed_keypoint_lands_on_the_pixel_it_marked(src):
    w, h = src
    rng = np.random.default_rng(7)
    lb = Letterbox.fit(w, h, 256)
    for _ in range(20):
        # Mark a block big enough to survive a shrink, keypoint at its centre pixel.
        half = max(2, int(np.ceil(1.5 / min(lb.sx, lb.sy))))
        x = int(rng.integers(half, w - half))
        y = int(rng.integers(half, h - half))
        labels = np.zeros((h, w), np.uint8)
        labels[y - half : y + half + 1, x - half : x + half + 1] = 9
        image = np.zeros((h, w, 3), np.uint8)
        image[y - half : y + half + 1, x - half : x + half + 1] = 255
        kx, ky = lb.keypoints(np.array([[[x, y, 2]]], np.float32))[0, 0, :2]
        col, row = round(float(kx)), round(float(ky))
        assert lb.label_map(labels)[row, col] == 9
        assert lb.image(image)[row, col].min() >= 200
        # the letterboxed block's centre of mass is where the keypoint went
        rr, cc = np.nonzero(lb.label_map(labels) == 9)
        assert abs(cc.mean() - kx) <= 0.5 and abs(rr.mean() - ky) <= 0.5


def test_letterbox_maps_every_raster_kind_with_black_padding():
    lb = Letterbox.fit(64, 32, 16)
    img = np.full((32, 64, 3), 200, np.uint8)
    out = lb.image(img)
    assert out.shape == (16, 16, 3) and (lb.new_w, lb.new_h, lb.pad_y) == (16, 8, 4)
    assert (out[:4] == 0).all() and (out[12:] == 0).all() and (out[4:12] == 200).all()
    depth = lb.float_map(np.full((32, 64), 3.5, np.float32))
    assert depth.dtype == np.float32 and np.allclose(depth[4:12], 3.5) and not depth[:4].any()
    bits = lb.label_map(np.full((32, 64), 1 << 10, np.uint16))
    assert bits.dtype == np.uint16 and set(np.unique(bits)) == {0, 1 << 10}
    normals = lb.label_map(np.zeros((32, 64, 3), np.uint8))
    assert normals.shape == (16, 16, 3)
    kp = lb.keypoints(np.array([[[10, 5, 2], [0, 0, 0]]], np.float32))
    assert kp[0, 1].tolist() == [0, 0, 0] and kp[0, 0, 2] == 2
