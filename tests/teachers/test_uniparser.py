"""The uniparser parts teacher: upstream parity slice, end to end on a photo, the contract's
maps from per-person parsings, checkpoint key mapping and bad checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.config import TeacherConfig
from teachers.base import PartsResult, TeacherError
from teachers.runtime import padded_size, seeded
from teachers.uniparser import (
    MEAN,
    STD,
    TEST_CFG,
    UniParser,
    arch_of_checkpoint,
    map_upstream_keys,
    parse_single,
    to_parts_result,
)
from teachers.uniparser_net import ARCHS, UniParserNet

SLICE = Path(__file__).parent / "reference" / "uniparser_tiny_slice.npz"


def _config(**kw: object) -> TeacherConfig:
    opts = {"backend": "uniparser", "variant": "tiny", "device": "cpu", "dtype": "float32",
            "batch_size": 2, **kw}
    return TeacherConfig(**opts)  # type: ignore[arg-type]


def test_tiny_matches_upstream_reference_slice():
    """Frozen outputs of upstream's `Repparsing_Head.forward(eval=True)` and `get_parsing_single`
    and mmdet's `FPN` (run once in the parity folder, docs/PARITY.md) on the seeded tiny
    weights: the center heatmap, both feature spaces, the instance and category confidences,
    the center scores and every person's parsing."""
    ref = np.load(SLICE)
    image = torch.from_numpy(ref["image"]).permute(2, 0, 1).float()  # 64 x 64: no resize
    h, w = image.shape[1:]
    x = torch.zeros(1, 3, *padded_size(h, w, 32))
    x[0, :, :h, :w] = (image - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    with seeded():
        net = UniParserNet(ARCHS["tiny"]).eval()
    with torch.no_grad():
        out = net(x)
        parsings, scores, ins_conf, sem_conf = parse_single(
            out.center[0], out.instance[0], out.semantic[0], net.head.seg_kernels, (h, w),
            tuple(ref["ori"]), TEST_CFG["cihp"])
    np.testing.assert_allclose(out.center[0].numpy(), ref["center"], atol=1e-5)
    np.testing.assert_allclose(out.instance[0, :, ::3, ::3].numpy(), ref["instance"], atol=1e-5)
    np.testing.assert_allclose(out.semantic[0, :, ::3, ::3].numpy(), ref["semantic"], atol=1e-5)
    np.testing.assert_allclose(ins_conf[:, ::2, ::2].numpy(), ref["ins_conf"], atol=1e-5)
    np.testing.assert_allclose(sem_conf[:, ::2, ::2].numpy(), ref["sem_conf"], atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), ref["scores"], atol=1e-6)
    assert len(scores) > 1
    np.testing.assert_array_equal(parsings.numpy(), ref["parsings"])


def test_tiny_end_to_end_on_a_photo():
    skdata = pytest.importorskip("skimage.data")
    photo = np.ascontiguousarray(skdata.astronaut()[::2, ::3])  # 256 x 171
    teacher = UniParser(_config())
    result, = teacher.predict([photo])
    assert isinstance(result, PartsResult)
    assert result.part_map.shape == result.instance_map.shape == photo.shape[:2]
    assert result.part_map.dtype == result.instance_map.dtype == np.uint8
    assert result.part_map.max() < 20 and len(result.persons) > 0
    assert ((result.part_map > 0) == (result.instance_map > 0)).all()
    assert sorted(np.unique(result.instance_map[result.instance_map > 0]).tolist()) == \
        list(range(1, len(result.persons) + 1))
    scores = [p.score for p in result.persons]
    assert scores == sorted(scores, reverse=True) and 0 <= min(scores) <= max(scores) <= 1
    for k, person in enumerate(result.persons, start=1):
        ys, xs = np.nonzero(result.instance_map == k)
        assert person.box.dtype == np.float32
        np.testing.assert_array_equal(person.box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    prov = teacher.provenance
    assert prov.variant == "tiny" and prov.extra["label_set"] == "cihp"
    assert "no UniParser weights are published" in prov.extra["weights"]


def test_overlapping_people_go_to_the_higher_score_and_empty_ones_are_dropped():
    parsings = np.zeros((3, 4, 6), np.int64)  # upstream's order: ascending score
    parsings[0, :, :4] = 2  # score 0.3, under person 1 on the left
    parsings[1, :, 2:] = 5  # score 0.9
    scores = np.array([0.3, 0.9, 0.5], np.float32)  # person 2 parsed nothing
    result = to_parts_result(parsings, scores)
    assert [p.score for p in result.persons] == pytest.approx([0.9, 0.3])
    np.testing.assert_array_equal(result.instance_map[0], [2, 2, 1, 1, 1, 1])
    np.testing.assert_array_equal(result.part_map[0], [2, 2, 5, 5, 5, 5])
    np.testing.assert_array_equal(result.persons[0].box, [2, 0, 6, 4])
    np.testing.assert_array_equal(result.persons[1].box, [0, 0, 2, 4])
    empty = to_parts_result(np.zeros((0, 4, 6), np.int64), np.zeros(0, np.float32))
    assert empty.persons == [] and not empty.part_map.any()


def _upstream_names(net: UniParserNet) -> dict[str, torch.Tensor]:
    """`net`'s state dict under upstream mmdet names (the inverse of map_upstream_keys)."""
    out = {}
    for key, value in net.state_dict().items():
        key = re.sub(r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.", r"neck.\1.\2.conv.", key)
        out[re.sub(r"^head\.", "mask_head.", key)] = value.clone()
    return out


def test_key_mapping_from_upstream_names():
    with seeded():
        net = UniParserNet(ARCHS["tiny"])
    upstream = _upstream_names(net)
    assert "mask_head.center_convs.0.gn.weight" in upstream
    assert "neck.lateral_convs.0.conv.weight" in upstream
    assert "backbone.layer2.0.conv2.conv_offset.weight" in upstream
    mapped = map_upstream_keys(upstream)
    assert mapped.keys() == net.state_dict().keys()
    arch = arch_of_checkpoint(upstream)
    assert arch == ARCHS["tiny"]
    full = {k: torch.zeros(v.shape) for k, v in UniParserNet(ARCHS["r101-mhp"]).state_dict().items()}
    assert arch_of_checkpoint(full) == ARCHS["r101-mhp"]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_upstream_checkpoint_loads(tmp_path, suffix):
    skdata = pytest.importorskip("skimage.data")
    photo = np.ascontiguousarray(skdata.chelsea()[::3, ::3])
    with seeded():
        net = UniParserNet(ARCHS["tiny"])
    state = _upstream_names(net)
    path = tmp_path / f"uniparser{suffix}"
    if suffix == ".pth":
        torch.save({"meta": {"epoch": 75}, "state_dict": state}, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    loaded = UniParser(_config(variant="pretrained", checkpoint=str(path), input_size=64))
    assert loaded.provenance.weights_sha256 and loaded.provenance.extra["label_set"] == "cihp"
    ours, = UniParser(_config()).predict([photo])
    theirs, = loaded.predict([photo])
    np.testing.assert_array_equal(ours.part_map, theirs.part_map)
    np.testing.assert_array_equal(ours.instance_map, theirs.instance_map)


def test_bad_checkpoint_is_one_clear_error(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(TeacherError, match="is not a UniParser checkpoint"):
        UniParser(_config(variant="pretrained", checkpoint=str(other)))
    with seeded():
        state = _upstream_names(UniParserNet(ARCHS["tiny"]))
    state["mask_head.extra_branch.weight"] = torch.zeros(3)
    del state["neck.fpn_convs.3.conv.bias"]
    odd = tmp_path / "odd.pth"
    torch.save(state, odd)
    with pytest.raises(TeacherError) as info:
        UniParser(_config(variant="pretrained", checkpoint=str(odd)))
    message = str(info.value)
    assert "\n" not in message and "does not map onto UniParser" in message
    assert "missing: neck.fpn_convs.3.bias" in message
    assert "unexpected: head.extra_branch.weight" in message
    with pytest.raises(TeacherError, match="is not a file"):
        UniParser(_config(variant="pretrained", checkpoint=str(tmp_path / "absent.pth")))
    with pytest.raises(TeacherError, match="names an upstream config: r50, r101"):
        UniParser(_config(variant="random", checkpoint="r152"))
