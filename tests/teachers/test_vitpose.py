"""The vitpose backend (issue 28): boxes in, one person per box out, keypoints mapped back
through transformers' crop affine to original pixels (a hand-computed case), sources as given."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distill.config import TeacherConfig
from teachers.base import TeacherError
from teachers.registry import create_teacher


@pytest.fixture(scope="module")
def teacher():
    return create_teacher("pose", TeacherConfig(backend="vitpose", variant="tiny", checkpoint="",
                                                device="cpu", dtype="float32", batch_size=2))


def _peaked(rows: int, cols: int, r: int, c: int, height: float) -> torch.Tensor:
    """17 heatmaps with one symmetric Gaussian bump at (r, c) (DARK leaves it in place)."""
    yy, xx = np.mgrid[:rows, :cols]
    bump = height * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / 2.0)
    return torch.from_numpy(np.repeat(bump[None, None], 17, axis=1).astype(np.float32))


def test_a_heatmap_peak_maps_back_to_original_pixels(teacher, monkeypatch):
    """Box (0, 0)-(120, 160): width/height 0.75 is the crop's 48/64, so the padded box is
    1.25 × (120, 160) = (150, 200) around (60, 80). transformers' unbiased mapping of heatmap
    pixel (col 6, row 8) on a 12 × 16 heatmap: x = 6 · 150 / 11 + 60 − 75 = 66.82,
    y = 8 · 200 / 15 + 80 − 100 = 86.67; the score is the peak, 0.9."""
    heat = _peaked(16, 12, r=8, c=6, height=0.9)
    monkeypatch.setattr(teacher, "model", lambda pixel_values: SimpleNamespace(
        heatmaps=heat.expand(len(pixel_values), -1, -1, -1)))
    image = np.zeros((200, 300, 3), np.uint8)
    (result,) = teacher.predict([image], boxes=[np.array([[0, 0, 120, 160]], np.float32)],
                                box_sources=[["panoptic"]])
    (person,) = result.persons
    np.testing.assert_allclose(person.keypoints[:, 0], 6 * 150 / 11 - 15, atol=1e-3)
    np.testing.assert_allclose(person.keypoints[:, 1], 8 * 200 / 15 - 20, atol=1e-3)
    np.testing.assert_allclose(person.keypoints[:, 2], 0.9, atol=1e-6)
    assert person.score == pytest.approx(0.9, abs=1e-6)
    assert person.box_source == "panoptic" and person.box.tolist() == [0, 0, 120, 160]


def test_boxes_give_one_person_each_and_no_boxes_the_whole_image(teacher):
    a, b = np.full((90, 120, 3), 80, np.uint8), np.full((50, 70, 3), 160, np.uint8)
    boxes = [np.array([[5, 5, 60, 80], [40, 10, 110, 85]], np.float32), np.zeros((0, 4))]
    first, second = teacher.predict([a, b], boxes=boxes)
    assert [p.box_source for p in first.persons] == ["gt", "gt"] and second.persons == []
    for person in first.persons:
        assert person.score == pytest.approx(float(person.keypoints[:, 2].mean()))
    whole = teacher.predict([a, b])
    assert [[p.box_source for p in r.persons] for r in whole] == [["image"], ["image"]]
    assert whole[1].persons[0].box.tolist() == [0, 0, 70, 50]
    # An image alone or in a batch: its people do not depend on the other images.
    (alone,) = teacher.predict([a], boxes=boxes[:1])
    for p, q in zip(alone.persons, first.persons, strict=True):
        assert np.array_equal(p.keypoints, q.keypoints)


def test_malformed_boxes_are_one_line():
    from teachers.vitpose import check_boxes

    image = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(TeacherError, match="boxes of image 0 must be an"):
        check_boxes([image], [np.zeros((2, 3))], None)
    with pytest.raises(TeacherError, match="2 boxes but 1 box sources"):
        check_boxes([image], [np.zeros((2, 4))], [["gt"]])


def test_pretrained_without_weights_says_what_to_pass(tmp_path):
    config = TeacherConfig(backend="vitpose", checkpoint=str(tmp_path / "nothing"),
                           device="cpu")
    with pytest.raises(TeacherError, match=r"cannot load ViTPose weights.*no such local folder"):
        create_teacher("pose", config)
