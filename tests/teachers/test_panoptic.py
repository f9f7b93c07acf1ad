"""Panoptic teachers: Mask2Former (tiny, offline) end to end, the label-index → COCO-panoptic id
mapping, and Detectron2's output conversion and missing-package error (no detectron2 needed)."""

from __future__ import annotations

import json
import pickle
import sys
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from distill.config import TeacherConfig
from distill.labels.groups import VOID, GroupTable
from teachers.base import PanopticResult, TeacherError
from teachers.registry import create_teacher

m2f = pytest.importorskip("teachers.mask2former")
d2 = pytest.importorskip("teachers.detectron2")

REFERENCE = Path(__file__).parent / "reference" / "mask2former.json"
TABLE = GroupTable.load()
VALID_IDS = {c.id for c in TABLE.categories}


def tiny_config(**kwargs: Any) -> TeacherConfig:
    return TeacherConfig(backend="mask2former", variant="tiny", input_size=64, device="cpu",
                         **kwargs)


@pytest.fixture(scope="module")
def tiny_teacher() -> Any:
    return create_teacher("panoptic", tiny_config())


def assert_consistent(result: PanopticResult, shape: tuple[int, ...]) -> None:
    """Class map at `shape`, uint8, known ids only; segments agree with the map."""
    assert result.class_map.shape == shape[:2]
    assert result.class_map.dtype == np.uint8
    assert set(np.unique(result.class_map).tolist()) <= VALID_IDS | {VOID}
    for cat in {s.category_id for s in result.segments}:
        assert cat in VALID_IDS
        area = sum(s.area for s in result.segments if s.category_id == cat)
        assert area == int((result.class_map == cat).sum())
        assert all(s.isthing == TABLE.by_id[cat].isthing
                   for s in result.segments if s.category_id == cat)
    assert all(0.0 <= s.score <= 1.0 and s.area > 0 for s in result.segments)


# -- Mask2Former ----------------------------------------------------------------------------------


def test_tiny_mask2former_labels_mixed_batch_at_original_sizes(
    tiny_teacher: Any, mixed_batch: list[np.ndarray]
) -> None:
    results = tiny_teacher.predict(mixed_batch)
    assert len(results) == len(mixed_batch)
    for result, image in zip(results, mixed_batch, strict=True):
        assert_consistent(result, image.shape)
    assert sum(len(r.segments) for r in results) > 0  # the checks above did check something
    prov = tiny_teacher.provenance
    assert (prov.backend, prov.variant, prov.weights_sha256) == ("mask2former", "tiny", {})
    assert prov.input_size == {"shortest_edge": 64, "longest_edge": 107}


def test_tiny_mask2former_is_deterministic(
    tiny_teacher: Any, mixed_batch: list[np.ndarray]
) -> None:
    other = create_teacher("panoptic", tiny_config(batch_size=2))  # also: a batch split in two
    for a, b in zip(tiny_teacher.predict(mixed_batch), other.predict(mixed_batch), strict=True):
        np.testing.assert_array_equal(a.class_map, b.class_map)
        assert a.segments == b.segments


class _CraftedMask2Former:
    """Stands in for the network: per image, queries 0/1/2 claim the left/middle/right third of
    the VALID (unpadded) input as label indices 0/80/132, query 3 claims the padding as label 1;
    the other queries predict "no object"."""

    labels = (0, 80, 132, 1)

    def __call__(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> SimpleNamespace:
        b, _, hp, wp = pixel_values.shape
        class_logits = torch.full((b, 6, 134), -10.0)
        class_logits[:, :, 133] = 10.0
        masks = torch.full((b, 6, hp, wp), -10.0)
        for i in range(b):
            vh, vw = int(pixel_mask[i].any(1).sum()), int(pixel_mask[i].any(0).sum())
            cuts = [0, vw // 3, 2 * vw // 3, vw]
            for q, label in enumerate(self.labels):
                class_logits[i, q, 133], class_logits[i, q, label] = -10.0, 10.0
                if q < 3:
                    masks[i, q, :vh, cuts[q] : cuts[q + 1]] = 10.0
            masks[i, 3] = 10.0
            masks[i, 3, :vh, :vw] = -10.0
        # the real model predicts masks at 1/4 of the padded input
        return SimpleNamespace(class_queries_logits=class_logits,
                               masks_queries_logits=masks[:, :, ::4, ::4].contiguous())


def test_label_indices_map_to_category_ids_by_id(
    tiny_teacher: Any, mixed_batch: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiny_teacher, "model", _CraftedMask2Former())
    for result, image in zip(tiny_teacher.predict(mixed_batch), mixed_batch, strict=True):
        assert_consistent(result, image.shape)
        w = image.shape[1]
        margin = w // 10  # 1/4-resolution masks and bilinear resizing blur the cuts
        cm = result.class_map
        assert (cm[:, : w // 3 - margin] == 1).all()  # index 0 → person
        assert (cm[:, w // 3 + margin : 2 * w // 3 - margin] == 92).all()  # index 80 → banner
        assert (cm[:, 2 * w // 3 + margin :] == 200).all()  # index 132 → rug-merged
        assert 2 not in cm  # the query on the padding (bicycle) was cropped away
        kinds = {(s.category_id, s.isthing) for s in result.segments}
        assert kinds == {(1, True), (92, False), (200, False)}


def test_merge_fuses_stuff_but_not_things_and_drops_hidden_queries() -> None:
    is_thing = [c.isthing for c in m2f.coco_panoptic_categories()]
    probs = torch.zeros(5, 4, 8)
    probs[0, :, :2] = probs[1, :, 2:4] = 0.9  # two persons (thing, index 0)
    probs[2, :, 4:6] = probs[3, :, 6:] = 0.9  # two sky queries (stuff, index 119)
    probs[4, :, :4] = 0.6  # a weaker query hidden under the persons
    scores = torch.tensor([0.95, 0.9, 0.85, 0.99, 0.9])
    labels = torch.tensor([0, 0, 119, 119, 3])
    seg, segments = m2f.merge_segments(scores, labels, probs, is_thing)
    assert segments == [(0, pytest.approx(0.95)), (0, pytest.approx(0.9)),
                        (119, pytest.approx(0.99))]
    expected = torch.tensor([1, 1, 2, 2, 3, 3, 3, 3], dtype=torch.int32).expand(4, 8)
    assert torch.equal(seg, expected)
    result = m2f.to_panoptic_result(seg.numpy(), segments, m2f.coco_panoptic_categories())
    assert [(s.category_id, s.isthing, s.area) for s in result.segments] == [
        (1, True, 8), (1, True, 8), (187, False, 16)]


def test_merge_drops_a_query_that_keeps_too_little_of_its_mask() -> None:
    is_thing = [c.isthing for c in m2f.coco_panoptic_categories()]
    probs = torch.zeros(2, 1, 8)
    probs[0, :, :4] = 0.9  # loses column 3 to the stronger query: keeps 3/4 < 0.8
    probs[1, :, 3:] = 0.9
    seg, segments = m2f.merge_segments(torch.tensor([0.9, 0.95]), torch.tensor([0, 2]),
                                       probs, is_thing)
    assert segments == [(2, pytest.approx(0.95))]
    assert seg.tolist() == [[0, 0, 0, 1, 1, 1, 1, 1]]  # the dropped query's pixels are void


def test_select_queries_keeps_confident_objects_only() -> None:
    logits = torch.full((3, 134), -10.0)
    logits[0, 5] = 10.0  # confident object
    logits[1, 133] = 10.0  # confident "no object"
    logits[2, 5] = logits[2, 6] = 10.0  # two-way tie: 0.5 < 0.8
    index, scores, labels = m2f.select_queries(logits)
    assert index.tolist() == [0] and labels.tolist() == [5] and scores[0] > 0.99


# (H, W, shortest, max) → detectron2 `ResizeShortestEdge.get_output_shape`, worked by hand:
# 480 × 640: 640 · 800 / 480 = 1066.7 → 1067; 100 × 1000: 800 × 8000 capped, 800 · 1333 / 8000 =
# 133.3 → 133; 64 × 200 at 64 / 107: 64 × 200 capped, 64 · 107 / 200 = 34.2 → 34.
SHORTEST_EDGE_CASES = [
    ((480, 640, 800, 1333), (800, 1067)),
    ((640, 480, 800, 1333), (1067, 800)),
    ((300, 451, 800, 1333), (800, 1203)),
    ((333, 500, 800, 1333), (800, 1201)),
    ((427, 640, 800, 1333), (800, 1199)),
    ((1000, 1000, 800, 1333), (800, 800)),
    ((100, 1000, 800, 1333), (133, 1333)),
    ((1, 3, 800, 1333), (444, 1333)),
    ((64, 200, 64, 107), (34, 107)),
    ((97, 130, 64, 107), (64, 86)),
]


@pytest.mark.parametrize(("args", "expected"), SHORTEST_EDGE_CASES)
def test_shortest_edge_size_rounds_as_detectron2(
    args: tuple[int, int, int, int], expected: tuple[int, int]
) -> None:
    from teachers import runtime

    assert runtime.shortest_edge_size(*args) == expected


def test_longest_edge_cap_scales_with_the_shortest_edge() -> None:
    from teachers import runtime

    assert (runtime.TEST_MIN_SIZE, runtime.TEST_MAX_SIZE) == (800, 1333)
    assert [runtime.max_size_for(n) for n in (800, 64, 96, 1000)] == [1333, 107, 160, 1666]


def test_mask2former_resize_is_pil_bilinear_on_uint8_then_upstream_normalisation() -> None:
    from PIL import Image

    skdata = pytest.importorskip("skimage.data")
    image = np.ascontiguousarray(skdata.chelsea())  # 300 × 451
    resized = m2f.resize_shortest_edge(image, 800, 1333)
    # detectron2's ResizeTransform.apply_image on uint8: PIL resize to (new_w, new_h), BILINEAR
    expected = np.asarray(Image.fromarray(image).resize((1203, 800), Image.BILINEAR))
    assert resized.dtype == np.uint8
    np.testing.assert_array_equal(resized, expected)
    mean, std = torch.tensor(m2f.PIXEL_MEAN), torch.tensor(m2f.PIXEL_STD)
    x = m2f.preprocess(image, 800, 1333, mean, std)
    assert x.shape == (3, 800, 1203) and x.dtype == torch.float32
    for c in range(3):  # MaskFormer.forward: (x - pixel_mean) / pixel_std, float32
        chan = torch.from_numpy(expected[..., c].copy()).float()
        torch.testing.assert_close(x[c], (chan - m2f.PIXEL_MEAN[c]) / m2f.PIXEL_STD[c],
                                   rtol=0, atol=0)


def test_mask2former_network_input_is_upstream_test_size(
    mixed_batch: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher: Any = create_teacher("panoptic", TeacherConfig(
        backend="mask2former", variant="tiny", input_size=800, device="cpu"))
    seen: list[tuple[int, ...]] = []
    crafted = _CraftedMask2Former()

    def spy(pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> SimpleNamespace:
        seen.append(tuple(pixel_values.shape))
        valid = (int(pixel_mask[0].any(1).sum()), int(pixel_mask[0].any(0).sum()))
        seen.append(valid)
        return crafted(pixel_values, pixel_mask)

    monkeypatch.setattr(teacher, "model", spy)
    coco_like = np.zeros((480, 640, 3), np.uint8)
    results = teacher.predict([coco_like, mixed_batch[0]])
    # 480 × 640 → 800 × 1067, padded to 800 × 1088; 300 × 451 → 800 × 1203, padded to 800 × 1216
    assert seen == [(1, 3, 800, 1088), (800, 1067), (1, 3, 800, 1216), (800, 1203)]
    assert [r.class_map.shape for r in results] == [(480, 640), (300, 451)]


def test_tiny_mask2former_matches_reference_slices(tiny_teacher: Any) -> None:
    """Raw logits and final class map of the tiny variant on skimage images, against the values
    stored from the parity run, where upstream Mask2Former on the same weights gave the
    'upstream' numbers (report m2f.md)."""
    skdata = pytest.importorskip("skimage.data")
    ref = json.loads(REFERENCE.read_text())
    tol = ref["tolerance"]
    seen: dict[str, Any] = {}

    def hook(_m: Any, _a: Any, kwargs: dict[str, Any], out: Any) -> None:
        seen.update(x=kwargs["pixel_values"], out=out)

    handle = tiny_teacher.model.register_forward_hook(hook, with_kwargs=True)
    try:
        for name, want in ref["images"].items():
            image = np.ascontiguousarray(getattr(skdata, name)())
            [result] = tiny_teacher.predict([image])
            cls = seen["out"].class_queries_logits[0].double()
            masks = seen["out"].masks_queries_logits[0].double()
            assert list(seen["x"].shape[-2:]) == want["net_input"]
            assert list(masks.shape) == want["mask_logits_shape"]
            for got, key in ((cls[:3, :3], "class_logits_q0_2_c0_2"),
                             (cls[:3, 133], "no_object_logits_q0_2"),
                             (masks[0, :3, :3], "mask_logits_q0_top_left_3x3")):
                for expected in (want[key], want["upstream"][key]):
                    np.testing.assert_allclose(got.numpy(), expected, rtol=0,
                                               atol=tol["logits_atol"], err_msg=f"{name} {key}")
            cats, counts = np.unique(result.class_map, return_counts=True)
            got_counts = dict(zip(cats.tolist(), counts.tolist(), strict=True))
            slack = tol["class_map_count_frac"] * result.class_map.size
            for expected in (want["class_map_pixel_counts"],
                             want["upstream"]["class_map_pixel_counts"]):
                assert sorted(got_counts) == sorted(int(c) for c in expected), name
                for cat, n in expected.items():
                    assert abs(got_counts[int(cat)] - n) <= slack, (name, cat)
    finally:
        handle.remove()


def test_pretrained_mask2former_from_local_folder(
    tmp_path: Path, tiny_teacher: Any, mixed_batch: list[np.ndarray]
) -> None:
    from transformers import Mask2FormerImageProcessor

    tiny_teacher.model.save_pretrained(tmp_path)
    Mask2FormerImageProcessor().save_pretrained(tmp_path)  # ImageNet mean/std = upstream's / 255
    default = create_teacher("panoptic", TeacherConfig(
        backend="mask2former", checkpoint=str(tmp_path), device="cpu"))
    assert default.provenance.input_size == {"shortest_edge": 800, "longest_edge": 1333}
    assert default.provenance.extra["pixel_mean"] == list(m2f.PIXEL_MEAN)
    assert default.provenance.extra["pixel_std"] == list(m2f.PIXEL_STD)
    loaded = create_teacher("panoptic", TeacherConfig(
        backend="mask2former", checkpoint=str(tmp_path), device="cpu", input_size=64))
    assert "model.safetensors" in loaded.provenance.weights_sha256
    assert loaded.provenance.input_size == {"shortest_edge": 64, "longest_edge": 107}
    for a, b in zip(loaded.predict(mixed_batch[1:]), tiny_teacher.predict(mixed_batch[1:]),
                    strict=True):
        np.testing.assert_array_equal(a.class_map, b.class_map)
    resized = create_teacher("panoptic", TeacherConfig(
        backend="mask2former", checkpoint=str(tmp_path), device="cpu", input_size=96))
    assert resized.provenance.input_size == {"shortest_edge": 96, "longest_edge": 160}
    [result] = resized.predict(mixed_batch[2:])
    assert_consistent(result, mixed_batch[2].shape)


def test_mask2former_rejects_a_checkpoint_without_133_labels(tmp_path: Path) -> None:
    from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

    config = m2f.tiny_config()
    config.id2label = {i: f"class{i}" for i in range(19)}  # e.g. Cityscapes
    config.label2id = {v: k for k, v in config.id2label.items()}
    Mask2FormerForUniversalSegmentation(config).save_pretrained(tmp_path)
    Mask2FormerImageProcessor().save_pretrained(tmp_path)
    with pytest.raises(TeacherError, match="133"):
        create_teacher("panoptic", TeacherConfig(
            backend="mask2former", checkpoint=str(tmp_path), device="cpu"))


def test_full_size_random_config_is_swin_large_coco_panoptic() -> None:
    from transformers import Mask2FormerForUniversalSegmentation

    config = m2f.swin_large_coco_panoptic_config()
    swin = config.backbone_config
    assert (config.num_queries, config.num_labels, swin.embed_dim, swin.window_size) == (
        200, 133, 192, 12)
    with torch.device("meta"):
        model = Mask2FormerForUniversalSegmentation(config)
    n = sum(p.numel() for p in model.parameters())
    assert 214e6 < n < 217e6  # Mask2Former Swin-L: 216M parameters in the paper's tables


@pytest.mark.slow
def test_random_mask2former_runs_full_size(mixed_batch: list[np.ndarray]) -> None:
    teacher = create_teacher("panoptic", TeacherConfig(
        backend="mask2former", variant="random", device="cpu", batch_size=1))
    assert teacher.provenance.input_size == {"shortest_edge": 800, "longest_edge": 1333}
    [result] = teacher.predict(mixed_batch[1:2])
    assert_consistent(result, mixed_batch[1].shape)


# -- Detectron2 -----------------------------------------------------------------------------------


def detectron2_like_output() -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A 480 × 640 `panoptic_seg` as Panoptic FPN returns it: things first (with score and
    instance_id), then stuff (with area, no score); id 0 = void; one id without info."""
    seg = np.zeros((480, 640), np.int32)
    seg[100:300, 50:200] = 1  # person
    seg[120:260, 300:420] = 2  # dog
    seg[300:400, 400:600] = 3  # a second person
    seg[:80, :] = 4  # sky
    seg[400:, :] = 5  # grass
    seg[90:100, 600:] = 6  # a segment id detectron2 gave no info for: stays void
    info: list[dict[str, Any]] = [
        {"id": 1, "isthing": True, "score": 0.98, "category_id": 0, "instance_id": 0},
        {"id": 2, "isthing": True, "score": 0.91, "category_id": 16, "instance_id": 3},
        {"id": 3, "isthing": True, "score": 0.72, "category_id": 0, "instance_id": 1},
        {"id": 4, "isthing": False, "category_id": 40, "area": 51200},
        {"id": 5, "isthing": False, "category_id": 46, "area": 51200},
    ]
    return seg, info


def test_detectron2_output_maps_contiguous_ids_back_to_coco_panoptic() -> None:
    thing_ids, stuff_ids = TABLE.thing_ids(), TABLE.stuff_ids()
    assert stuff_ids[40 - 1] == 187 and stuff_ids[46 - 1] == 193  # sky-other-merged, grass-merged
    seg, info = detectron2_like_output()
    result = d2.convert_panoptic_output(seg, info, thing_ids, stuff_ids)
    assert_consistent(result, seg.shape)
    expected = np.full(seg.shape, VOID, np.uint8)
    for sid, cat in {1: 1, 2: 18, 3: 1, 4: 187, 5: 193}.items():
        expected[seg == sid] = cat
    np.testing.assert_array_equal(result.class_map, expected)
    assert [(s.category_id, s.isthing, s.area) for s in result.segments] == [
        (1, True, 30000), (18, True, 16800), (1, True, 20000),
        (187, False, 51200), (193, False, 51200)]
    assert [s.score for s in result.segments] == [0.98, 0.91, 0.72, 1.0, 1.0]


def test_detectron2_edge_ids_and_foreign_categories() -> None:
    thing_ids, stuff_ids = TABLE.thing_ids(), TABLE.stuff_ids()
    seg = np.array([[1, 2], [3, 0]], np.int32)
    info = [{"id": 1, "isthing": True, "score": 0.5, "category_id": 79},
            {"id": 2, "isthing": False, "category_id": 1},
            {"id": 3, "isthing": False, "category_id": 53}]
    result = d2.convert_panoptic_output(seg, info, thing_ids, stuff_ids)
    # toothbrush (last thing), banner (first stuff), rug-merged (last stuff), void
    np.testing.assert_array_equal(result.class_map, [[90, 92], [200, VOID]])
    for bad in ({"id": 1, "isthing": False, "category_id": 0},  # the merged "things" class
                {"id": 1, "isthing": True, "score": 0.9, "category_id": 80}):
        with pytest.raises(TeacherError, match="contiguous"):
            d2.convert_panoptic_output(seg, [bad], thing_ids, stuff_ids)


def test_detectron2_missing_package_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "detectron2", None)  # import fails even where installed
    config = TeacherConfig(backend="detectron2", checkpoint=d2.ZOO_CONFIG)
    with pytest.raises(TeacherError) as err:
        create_teacher("panoptic", config)
    message = str(err.value)
    assert "detectron2 is not installed" in message
    assert "pip install 'setuptools<81' fvcore iopath omegaconf" in message
    assert "--no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'" in message
    assert "mask2former" in message and "teachers.panoptic.backend=mask2former" in message


def test_detectron2_pickled_weights_load_without_running_code(tmp_path: Path) -> None:
    weights = OrderedDict(w=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.ones(2))
    for protocol in (2, 5):
        path = tmp_path / f"zoo{protocol}.pkl"
        path.write_bytes(pickle.dumps({"model": weights, "__author__": "Detectron2 Model Zoo"},
                                      protocol=protocol))
        state = d2.load_pickled_weights(path)
        assert torch.equal(state["w"], torch.arange(6.0).reshape(2, 3)) and state["b"].shape == (2,)

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("pwned",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"w": Exploit()}}))
    with pytest.raises(TeacherError, match="not allowed"):
        d2.load_pickled_weights(evil)


def test_detectron2_weights_must_cover_the_model(tmp_path: Path) -> None:
    conv = torch.nn.Conv2d(3, 4, 1)
    model = torch.nn.Sequential(conv, torch.nn.BatchNorm2d(4))
    weights = {k: v.numpy() + 1.0 for k, v in model.state_dict().items()}
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": weights, "__author__": "Detectron2 Model Zoo"}))
    d2._load_weights(model, path)
    assert torch.equal(conv.weight, torch.from_numpy(weights["0.weight"]))
    del weights["1.weight"]
    path.write_bytes(pickle.dumps({"model": weights, "__author__": "Detectron2 Model Zoo"}))
    with pytest.raises(TeacherError, match="lacks 1"):
        d2._load_weights(model, path)
