"""Depth Anything V2 teacher: the original repo's resize rule and position-embedding
interpolation, size-grouped batching, output at the original size, deterministic tiny variant,
reference output slices, the pretrained path and its errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import DepthAnythingForDepthEstimation
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

from distill.config import TeacherConfig
from distill.labels.depth import encode_depth16
from teachers.base import DepthResult, TeacherError
from teachers.depth_anything_v2 import (
    DepthAnythingV2Teacher,
    UpstreamPosEmbeddings,
    dav2_input_size,
    interpolate_pos_encoding,
    large_config,
    tiny_config,
)
from teachers.runtime import batches_by_size, seeded

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
REFERENCE = Path(__file__).parent / "reference" / "depth_anything_v2.json"


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


# --- position embeddings: the original dinov2.py rule, not transformers' size= resize ----------

def _stored_pos_embed(dim: int = 8, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(1, 1 + 37 * 37, dim) embeddings as a 518-pixel DINOv2 stores them, CLS first."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(1, 1 + 37 * 37, dim, generator=gen).to(dtype)


def _original_formula(pos: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Upstream `DinoVisionTransformer.interpolate_pos_encoding` written out: bicubic by
    scale_factor (rows + 0.1) / 37 on the height axis, (cols + 0.1) / 37 on the width axis."""
    rows, cols = height // 14, width // 14
    grid = pos[:, 1:].float().reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    out = F.interpolate(grid, scale_factor=((rows + 0.1) / 37, (cols + 0.1) / 37),
                        mode="bicubic", antialias=False)
    assert out.shape[-2:] == (rows, cols)
    return torch.cat([pos[:, :1].float(), out.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)],
                     dim=1).to(pos.dtype)


def _transformers_default(pos: torch.Tensor, height: int, width: int) -> torch.Tensor:
    embeddings = Dinov2Embeddings(tiny_config().backbone_config)
    embeddings.position_embeddings = torch.nn.Parameter(pos)
    tokens = torch.zeros(1, 1 + (height // 14) * (width // 14), pos.shape[-1])
    return Dinov2Embeddings.interpolate_pos_encoding(embeddings, tokens, height, width).detach()


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("hw", [(518, 770), (770, 518)])  # 37x55 and 55x37 patch grids
def test_pos_encoding_is_the_original_formula_on_a_37x55_grid(hw):
    pos = _stored_pos_embed()
    n = (hw[0] // 14) * (hw[1] // 14)
    ours = interpolate_pos_encoding(pos, n, *hw)
    assert ours.shape == (1, 1 + n, 8)
    assert torch.equal(ours, _original_formula(pos, *hw))  # the same op: bit for bit
    # transformers resizes to size=(37, 55): other sampling points, several % apart.
    assert _rel_l2(_transformers_default(pos, *hw), ours) > 0.04


def test_pos_encoding_keeps_rows_and_columns_apart():
    # A ramp along the height axis stays a ramp along the height axis on a 37x55 grid (the
    # original's `w`/`h` names are swapped, its axes are not).
    rows = torch.arange(37.0)[:, None, None].expand(37, 37, 1).reshape(1, 37 * 37, 1)
    pos = torch.cat([torch.zeros(1, 1, 1), rows], dim=1)
    out = interpolate_pos_encoding(pos, 37 * 55, 518, 770)[0, 1:, 0].reshape(37, 55)
    assert torch.allclose(out, out[:, :1].expand(37, 55))  # constant along each row
    assert bool((out[1:, 0] > out[:-1, 0]).all())  # increasing down the columns


def test_pos_encoding_on_square_grids():
    pos = _stored_pos_embed()
    # The native 37x37 grid: both return the stored embeddings themselves (no resize).
    assert interpolate_pos_encoding(pos, 37 * 37, 518, 518) is pos
    assert torch.equal(_transformers_default(pos, 518, 518), pos)
    # Any other square grid is resized, and there the two rules differ like on 37x55.
    ours = interpolate_pos_encoding(pos, 16, 56, 56)
    assert torch.equal(ours, _original_formula(pos, 56, 56))
    assert _rel_l2(_transformers_default(pos, 56, 56), ours) > 0.04


def test_pos_encoding_interpolates_in_float32_and_returns_the_model_dtype():
    pos = _stored_pos_embed(dtype=torch.bfloat16)
    ours = interpolate_pos_encoding(pos, 37 * 55, 518, 770)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, _original_formula(pos, 518, 770))


@pytest.mark.parametrize("variant", ["tiny", "random", "pretrained"])
def test_every_variant_embeds_positions_by_the_original_rule(variant, tmp_path, monkeypatch):
    overrides: dict[str, Any] = {"variant": variant}
    if variant == "random":  # the same build path at a CPU-friendly size
        monkeypatch.setattr("teachers.depth_anything_v2.large_config", tiny_config)
    if variant == "pretrained":
        with seeded():
            DepthAnythingForDepthEstimation(tiny_config()).save_pretrained(tmp_path)
        overrides["checkpoint"] = str(tmp_path)
    teacher = _teacher(**overrides)
    embeddings = teacher.model.backbone.embeddings
    assert isinstance(embeddings, UpstreamPosEmbeddings)
    pixels = torch.randn(1, 3, 518, 770, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = embeddings(pixels)
        patches = embeddings.patch_embeddings(pixels)
        tokens = torch.cat([embeddings.cls_token, patches], dim=1)
        expected = tokens + _original_formula(embeddings.position_embeddings, 518, 770)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert "0.1" in teacher.provenance.input_size["pos_embed"]


# --- reference slices (tiny variant, fixed seed; parity run against the original code) --------

def test_tiny_variant_reproduces_the_reference_slices():
    """Our tiny teacher on skimage's chelsea at 518 against stored slices; the same weights in
    the original Depth-Anything-V2 code gave the `*_upstream` values (issue 15 parity run)."""
    skdata = pytest.importorskip("skimage.data")
    ref = json.loads(REFERENCE.read_text())
    tol = ref["tolerance"]
    image = skdata.chelsea()
    teacher = _teacher(input_size=0)
    seen = _record_inputs(teacher.model)
    outputs: list[np.ndarray] = []
    teacher.model.register_forward_hook(
        lambda _m, _a, out: outputs.append(out.predicted_depth[0].float().numpy().copy()))
    (result,) = teacher.predict([image])
    assert [list(x.shape[-2:]) for x in seen] == [ref["input_shape"]]
    (raw,) = outputs
    y, x = ref["raw_peak_at"]
    close = {"rtol": tol["raw_rtol"], "atol": tol["raw_atol"]}
    for ours, key in ((raw[:3, :3], "raw_corner_3x3"), (raw[y:y + 3, x:x + 3], "raw_peak_3x3")):
        np.testing.assert_allclose(ours, ref[key], **close)
        np.testing.assert_allclose(ours, ref[key + "_upstream"], **close)
    np.testing.assert_allclose(raw.sum(dtype=np.float64), ref["raw_sum"], rtol=tol["summary_rtol"])
    np.testing.assert_allclose(raw.max(), ref["raw_max"], rtol=tol["summary_rtol"])

    depth = result.depth
    assert list(depth.shape) == ref["final_shape"]
    summary = {"final_mean": depth.mean(dtype=np.float64), "final_std": depth.std(dtype=np.float64),
               "final_max": depth.max(), "final_nonzero_fraction": (depth > 0).mean()}
    for key, value in summary.items():
        np.testing.assert_allclose(value, ref[key], rtol=tol["summary_rtol"], err_msg=key)
    for key in ("final_mean", "final_max"):
        np.testing.assert_allclose(summary[key], ref[key + "_upstream"], rtol=tol["summary_rtol"])
    d16, lo, hi = encode_depth16(depth)
    np.testing.assert_allclose([lo, hi], [ref["depth16_min"], ref["depth16_max"]],
                               rtol=tol["summary_rtol"])
    assert abs(d16.mean() - ref["depth16_mean_level"]) <= tol["depth16_mean_level_atol"]
