"""Depth Anything V2 teacher: the original repo's resize rule, size-grouped batching, output at
the original size, deterministic tiny variant, the pretrained path and its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import DepthAnythingForDepthEstimation

from distill.config import TeacherConfig
from teachers.base import DepthResult, TeacherError
from teachers.depth_anything_v2 import (
    DepthAnythingV2Teacher,
    dav2_input_size,
    large_config,
    tiny_config,
)
from teachers.runtime import batches_by_size, seeded

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _teacher(**overrides: Any) -> DepthAnythingV2Teacher:
    opts: dict[str, Any] = {"variant": "tiny", "device": "cpu", "dtype": "float32",
                            "input_size": 56, "batch_size": 8, **overrides}
    return DepthAnythingV2Teacher(TeacherConfig(backend="depth-anything-v2", **opts))


def _record_inputs(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every tensor the network is called with, via a forward pre-hook."""
    seen: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append((kwargs["pixel_values"] if "pixel_values" in kwargs else args[0]).clone())

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


@pytest.mark.parametrize(
    ("hw", "target", "expected"),
    [
        ((427, 640), 518, (518, 770)),  # landscape COCO image: 776.3 rounds down to 770
        ((640, 427), 518, (770, 518)),  # portrait
        ((300, 451), 518, (518, 784)),  # 778.8 rounds up to 784
        ((518, 518), 518, (518, 518)),
        ((10, 10), 518, (518, 518)),  # tiny images are scaled up
        ((1000, 2000), 518, (518, 1036)),  # large images are scaled down
        ((64, 200), 56, (56, 168)),  # 175 / 14 = 12.5: half to even (np.round), like the original
        ((100, 100), 60, (70, 70)),  # 56 < 60: the original's ceil to the next multiple
    ],
)
def test_input_size_rule_matches_the_original(hw, target, expected):
    assert dav2_input_size(*hw, target=target) == expected


@pytest.mark.parametrize("target", [56, 60, 518])
def test_input_size_rule_properties(target):
    rng = np.random.default_rng(0)
    for h, w in rng.integers(1, 3000, size=(200, 2)):
        nh, nw = dav2_input_size(int(h), int(w), target=target)
        assert nh % 14 == 0 and nw % 14 == 0
        assert min(nh, nw) >= target  # lower bound on the short side
        scale = max(target / h, target / w)  # aspect ratio kept up to the rounding
        assert abs(nh - scale * h) < 14 and abs(nw - scale * w) < 14


def test_input_size_rule_rejects_empty_images():
    with pytest.raises(ValueError, match="positive"):
        dav2_input_size(0, 640)


def test_batches_by_size_keep_order_and_respect_batch_size():
    sizes = [(56, 84), (56, 70), (56, 84), (56, 84), (56, 70)]
    assert batches_by_size(sizes, 8) == [[0, 2, 3], [1, 4]]
    assert batches_by_size(sizes, 2) == [[0, 2], [3], [1, 4]]
    assert batches_by_size([], 4) == []


def test_coco_sized_image_enters_the_network_at_518x770():
    coffee = pytest.importorskip("skimage.data").coffee()
    image = np.asarray(Image.fromarray(coffee).resize((640, 427), Image.BICUBIC))
    teacher = _teacher(input_size=0)  # 0 = the DAv2 default, 518
    seen = _record_inputs(teacher.model)
    (result,) = teacher.predict([image])
    assert [tuple(x.shape) for x in seen] == [(1, 3, 518, 770)]
    assert seen[0].dtype == torch.float32
    assert isinstance(result, DepthResult)
    assert result.depth.shape == (427, 640) and result.depth.dtype == np.float32
    assert np.isfinite(result.depth).all() and result.depth.std() > 0
    assert teacher.provenance.input_size["short_side_min"] == 518


def test_input_is_imagenet_normalised_rgb():
    # Bicubic weights sum to one, so a flat colour must arrive as exactly (c/255 - mean) / std.
    colour = np.array([200, 100, 50], np.uint8)
    teacher = _teacher()
    seen = _record_inputs(teacher.model)
    teacher.predict([np.broadcast_to(colour, (30, 40, 3)).copy()])
    (x,) = seen
    assert tuple(x.shape) == (1, 3, 56, 70)
    expected = (colour / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(x[0].mean(dim=(1, 2)).numpy(), expected, atol=1e-5)
    assert float((x[0] - torch.tensor(expected, dtype=torch.float32)[:, None, None]).abs()
                 .max()) < 1e-4


def test_mixed_batch_gives_original_sizes_and_is_deterministic(mixed_batch):
    first = _teacher().predict(mixed_batch)
    second = _teacher().predict(mixed_batch)
    assert len(first) == len(mixed_batch)
    for a, b, image in zip(first, second, mixed_batch, strict=True):
        assert a.depth.shape == image.shape[:2] and a.depth.dtype == np.float32
        assert np.isfinite(a.depth).all() and (a.depth >= 0).all()  # ReLU head: relative depth
        np.testing.assert_array_equal(a.depth, b.depth)
    # The output depends on the picture: the two crops of the cat do not map to the same depth.
    assert not np.allclose(first[0].depth.mean(), first[2].depth.mean())


def test_same_size_images_share_one_forward_and_keep_their_order(mixed_batch):
    cat, small, wide = mixed_batch  # network sizes at 56: (56, 84), (56, 70), (56, 168)
    crop = np.ascontiguousarray(cat[50:250, 100:400])  # 200 x 300 -> (56, 84), like cat
    images = [cat, small, crop, wide]
    teacher = _teacher()
    seen = _record_inputs(teacher.model)
    batched = teacher.predict(images)
    assert [tuple(x.shape) for x in seen] == [(2, 3, 56, 84), (1, 3, 56, 70), (1, 3, 56, 168)]
    singles = [teacher.predict([image])[0] for image in images]
    for b, s in zip(batched, singles, strict=True):
        np.testing.assert_allclose(b.depth, s.depth, rtol=1e-4, atol=1e-6)

    one_at_a_time = _teacher(batch_size=1)
    seen_one = _record_inputs(one_at_a_time.model)
    one_at_a_time.predict(images)
    assert [x.shape[0] for x in seen_one] == [1, 1, 1, 1]


def test_empty_batch_and_bad_images():
    teacher = _teacher()
    assert teacher.predict([]) == []
    with pytest.raises(TeacherError, match="RGB uint8"):
        teacher.predict([np.zeros((8, 8), np.uint8)])


def test_pretrained_loads_a_local_folder(tmp_path, mixed_batch):
    with seeded():
        DepthAnythingForDepthEstimation(tiny_config()).save_pretrained(tmp_path)
    loaded = _teacher(variant="pretrained", checkpoint=str(tmp_path))
    tiny = _teacher()
    for a, b in zip(loaded.predict(mixed_batch), tiny.predict(mixed_batch), strict=True):
        np.testing.assert_array_equal(a.depth, b.depth)
    prov = loaded.provenance
    assert prov.variant == "pretrained" and prov.checkpoint == str(tmp_path)
    assert set(prov.weights_sha256) == {"model.safetensors"}
    assert len(prov.weights_sha256["model.safetensors"]) == 64
    assert tiny.provenance.weights_sha256 == {}


def test_metric_checkpoint_is_refused(tmp_path):
    config = tiny_config()
    config.depth_estimation_type = "metric"
    DepthAnythingForDepthEstimation(config).save_pretrained(tmp_path)
    with pytest.raises(TeacherError, match="metric depth model"):
        _teacher(variant="pretrained", checkpoint=str(tmp_path))


@pytest.mark.parametrize("kind", ["missing folder", "weights file", "uncached hub id"])
def test_missing_weights_say_what_to_pass(kind, tmp_path, monkeypatch):
    if kind == "missing folder":
        checkpoint = str(tmp_path / "no" / "such" / "folder")
    elif kind == "weights file":
        checkpoint = str(tmp_path / "depth_anything_v2_vitl.pth")
        Path(checkpoint).write_bytes(b"")
    else:
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # no retries
        checkpoint = "depth-anything/Depth-Anything-V2-Large-hf"
    with pytest.raises(TeacherError) as info:
        _teacher(variant="pretrained", checkpoint=checkpoint)
    message = str(info.value)
    assert checkpoint in message and "hub id" in message and "local folder" in message
    assert "variant='tiny'" in message


def test_random_variant_is_the_335m_large_architecture():
    with torch.device("meta"):  # count without allocating 1.3 GB
        model = DepthAnythingForDepthEstimation(large_config())
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e6, 1) == 335.3  # DAv2-L as published (ViT-L/14 + DPT head)
    assert model.config.backbone_config.out_indices == [5, 12, 18, 24]
