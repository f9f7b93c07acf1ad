"""The poseur pose teacher: upstream parity slice, top-down end to end, checkpoint key mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distill.config import TeacherConfig
from teachers.base import PoseResult, TeacherError
from teachers.poseur import Poseur, map_upstream_keys
from teachers.poseur_net import ARCHS, PoseurNet
from teachers.runtime import seeded

SLICE = Path(__file__).parent / "reference" / "poseur_tiny_slice.npz"


def _config(**kw: object) -> TeacherConfig:
    opts = {"backend": "poseur", "variant": "tiny", "device": "cpu", "dtype": "float32",
            "batch_size": 4, **kw}
    return TeacherConfig(**opts)  # type: ignore[arg-type]


def test_tiny_matches_upstream_reference_slice():
    """Frozen outputs of upstream's PoseurHead/PoseurTransformer/EMSDA code (run once in the
    parity folder, docs/PARITY.md) on the seeded tiny weights: the proposal, every decoder
    layer's coordinates and sigma, and the joint scores."""
    ref = np.load(SLICE)
    with seeded():
        net = PoseurNet(ARCHS["tiny"]).eval()
    with torch.no_grad():
        out = net(torch.from_numpy(ref["input"]))
    np.testing.assert_allclose(out.proposal.numpy(), ref["proposal"], atol=1e-5)
    np.testing.assert_allclose(out.proposal_sigma.numpy(), ref["proposal_sigma"], atol=1e-5)
    np.testing.assert_allclose(out.coords.numpy(), ref["coords"], atol=1e-5)
    np.testing.assert_allclose(out.sigma.numpy(), ref["sigma"], atol=1e-5)
    np.testing.assert_allclose(out.scores.numpy(), ref["scores"], atol=1e-5)


@pytest.fixture(scope="module")
def teacher() -> Poseur:
    return Poseur(_config())


def test_given_boxes_and_whole_image(teacher):
    skdata = pytest.importorskip("skimage.data")
    photo = np.ascontiguousarray(skdata.astronaut()[::4, ::4])  # 128 x 128
    boxes = [np.array([[30, 5, 100, 125], [0, 0, 40, 60]], np.float32), None,
             np.zeros((0, 4), np.float32)]
    results = teacher.predict([photo, photo, photo], boxes=boxes,
                              box_sources=[["gt", "panoptic"], [], []])
    assert all(isinstance(r, PoseResult) for r in results)
    given, whole, empty = results
    assert [p.box_source for p in given.persons] == ["gt", "panoptic"]
    np.testing.assert_array_equal(given.persons[1].box, [0, 0, 40, 60])
    assert [p.box_source for p in whole.persons] == ["image"]
    np.testing.assert_array_equal(whole.persons[0].box, [0, 0, 128, 128])
    assert empty.persons == []
    for p in given.persons + whole.persons:
        assert p.keypoints.shape == (17, 3) and p.keypoints.dtype == np.float32
        assert 0 <= p.score <= 1 and (p.keypoints[:, 2] >= 0).all() and (p.keypoints[:, 2] <= 1).all()
    # keypoints are mapped back into the padded crop around their own box
    x0, y0, x1, y1 = given.persons[0].box
    kp = given.persons[0].keypoints
    pad = 0.5 * max(x1 - x0, (y1 - y0) * 0.75) * 1.25
    assert (kp[:, 0] > x0 - pad).all() and (kp[:, 0] < x1 + pad).all()
    # boxes=None: every image is one whole-image person
    alone = teacher.predict([photo])
    np.testing.assert_allclose(alone[0].persons[0].keypoints, whole.persons[0].keypoints, atol=1e-4)
    assert teacher.provenance.variant == "tiny" and teacher.provenance.extra["flip_test"] is True


def _upstream_names(net: PoseurNet) -> dict[str, torch.Tensor]:
    """`net`'s state dict under upstream mmpose names (the inverse of map_upstream_keys),
    plus the training-only RLE flow that loading drops."""
    t = "keypoint_head.transformer."
    out = {"keypoint_head.enc_flow.s.0.weight": torch.zeros(2)}
    for key, value in net.state_dict().items():
        parts = key.split(".")
        if key.startswith("backbone."):
            continue  # mobilenet renames are checked separately below
        if key.startswith("neck.norms."):
            name = f"neck.convs.{parts[2]}.gn.{parts[3]}"
        elif key.startswith("neck.convs."):
            name = f"neck.convs.{parts[2]}.conv.{parts[3]}"
        elif parts[0] in ("fc_coord", "fc_sigma"):
            name = f"{t}{parts[0]}.linear.{parts[1]}"
        elif parts[0] in ("level_embeds", "pos_trans", "pos_trans_norm"):
            name = t + key
        elif parts[0] == "joint_embed":
            name = t + "pos_embed.weight"
        elif parts[0] == "layers":
            i, sub, rest = parts[1], parts[2], ".".join(parts[3:])
            base = f"{t}decoder.layers.{i}."
            if sub == "self_attn":
                name = f"{base}attentions.0.attn.{rest}"
            elif sub == "cross_attn":
                name = f"{base}attentions.1.{rest}" + (".weight" if "value_proj" in rest else "")
            elif sub == "ffn":
                name = f"{base}ffns.0.layers." + ("0.0." if parts[3] == "0" else "1.") + parts[-1]
            else:
                name = f"{base}norms.{int(sub[-1]) - 1}.{rest}"
        elif parts[0] == "sigma_branches" and parts[2] == "2":  # Linear_with_norm(norm=False)
            name = f"keypoint_head.fc_sigma_branches.{parts[1]}.2.linear.{parts[3]}"
        else:
            name = "keypoint_head.fc_" + key
        out[name] = value
    return out


def test_key_mapping_from_upstream_names(tmp_path):
    with seeded(3):
        net = PoseurNet(ARCHS["tiny"])
    upstream = _upstream_names(net)
    mapped = map_upstream_keys(upstream, "mobilenetv2")
    own = {k: v for k, v in net.state_dict().items() if not k.startswith("backbone.")}
    assert mapped.keys() == own.keys()
    assert all(torch.equal(mapped[k], own[k]) for k in own)
    # mmpose MobileNetV2 (ConvModule conv/bn) → torchvision features
    names = map_upstream_keys({
        "backbone.conv1.conv.weight": torch.zeros(1), "backbone.conv1.bn.running_mean": torch.zeros(1),
        "backbone.layer1.0.conv.0.conv.weight": torch.zeros(1),
        "backbone.layer1.0.conv.1.bn.weight": torch.zeros(1),
        "backbone.layer2.1.conv.0.bn.bias": torch.zeros(1),
        "backbone.layer2.1.conv.2.conv.weight": torch.zeros(1),
        "backbone.layer7.0.conv.2.bn.weight": torch.zeros(1),
        "backbone.conv2.conv.weight": torch.zeros(1)}, "mobilenetv2")
    assert list(names) == [
        "backbone.features.0.0.weight", "backbone.features.0.1.running_mean",
        "backbone.features.1.conv.0.0.weight", "backbone.features.1.conv.2.weight",
        "backbone.features.3.conv.0.1.bias", "backbone.features.3.conv.2.weight",
        "backbone.features.17.conv.3.weight", "backbone.features.18.0.weight"]
    # every torchvision MobileNetV2 key is reached from upstream-style names
    full = PoseurNet(ARCHS["tiny"]).state_dict()
    assert all(k in full for k in names)


def test_upstream_checkpoint_loads(tmp_path):
    """A full upstream-named checkpoint (mmcv's {"state_dict": ...} wrapper) loads through the
    teacher and gives the model it was made from."""
    with seeded(5):
        net = PoseurNet(ARCHS["resnet50"])
    state = _upstream_names(net)
    state.update({k: v for k, v in net.state_dict().items() if k.startswith("backbone.")})
    path = tmp_path / "poseur_res50.pth"
    torch.save({"meta": {}, "state_dict": state}, path)
    teacher = Poseur(_config(variant="pretrained", checkpoint=str(path)))
    assert teacher.arch.backbone == "resnet50" and teacher.arch.num_layers == 6
    loaded = teacher.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())
    assert list(teacher.provenance.weights_sha256) == ["poseur_res50.pth"]


def test_bad_checkpoint_is_one_clear_error(tmp_path):
    with seeded(5):
        net = PoseurNet(ARCHS["tiny"])
    state = dict(net.state_dict())
    state.pop("fc_coord.weight")
    state["keypoint_head.something_else"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(TeacherError) as err:
        Poseur(_config(variant="pretrained", checkpoint=str(path)))
    msg = str(err.value)
    assert "\n" not in msg and "missing: fc_coord.weight" in msg
    assert "unexpected: keypoint_head.something_else" in msg
    junk = tmp_path / "junk.pth"
    torch.save({"a.weight": torch.zeros(1)}, junk)
    with pytest.raises(TeacherError, match="is not a Poseur checkpoint"):
        Poseur(_config(variant="pretrained", checkpoint=str(junk)))
    with pytest.raises(TeacherError, match="is not a file"):
        Poseur(_config(variant="pretrained", checkpoint=str(tmp_path / "nope.pth")))
