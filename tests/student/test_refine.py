"""Depth refinement (paper §3.2) after issue 31.5: the batched, fewer-operation refinement gives
today's depth (the frozen `old_refine`) within 1e-5, one call for a batch equals one call per
image, and on a CPU it runs on one intra-op thread per megapixel (split over threads, its ~400
small operations stalled 70× on a busy machine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.config import load_config
from distill.labels.letterbox import Letterbox
from distill.labels.normals import normals_from_unit
from distill.storage import Location
from distill.student import layout, predict
from distill.student.model import build_student
from distill.student.predict import LoadedStudent, Predictor, refine_depth
from tests.student.old_refine import refine_depth as old_refine_depth

SIZE = 256


def _scene(b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real-looking maps: a tilted plane with a bump, a far strip, the normals of a slightly
    different surface (so refinement moves the depth), plus noise in image 1 on."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    depths, normals = [], []
    for i in range(b):
        r2 = (xx - SIZE / 2 - 10 * i) ** 2 + (yy - SIZE / 2) ** 2
        d = 0.3 + 0.001 * xx + 0.0005 * yy + np.sqrt(np.maximum(80.0**2 - r2, 0)) / 80 * 0.2
        n = normals_from_unit((d * 0.9 + 0.002 * np.sin(xx / 7)).astype(np.float32))
        d = d + rng.normal(0, 0.002 * i, d.shape)
        d[:, SIZE - 30:] = 0.03  # far: masked out
        depths.append(d.astype(np.float32))
        normals.append(n.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(depths)[:, None]), torch.from_numpy(np.stack(normals))


def _random(b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, SIZE, SIZE, generator=g), torch.randn(b, 3, SIZE, SIZE, generator=g)


@pytest.mark.parametrize("maps", [_scene, _random])
def test_refinement_matches_the_frozen_refinement(maps):
    depth, normals = maps(3, 0)
    scales = [255.0, 255.0 * 0.4, 255.0 * 2.5]
    for i, s in enumerate(scales):
        ref = old_refine_depth(depth[i:i + 1], normals[i:i + 1], gradient_scale=s)
        got = refine_depth(depth[i:i + 1], normals[i:i + 1], gradient_scale=s)
        assert (ref - depth[i:i + 1]).abs().max() > 1e-3  # refinement does move the depth
        assert torch.allclose(got, ref, rtol=0, atol=1e-5), (got - ref).abs().max()
    # one call for the batch, a scale per image, equals a call per image
    batched = refine_depth(depth, normals, gradient_scale=torch.tensor(scales).view(-1, 1, 1, 1))
    single = torch.cat([refine_depth(depth[i:i + 1], normals[i:i + 1], gradient_scale=s)
                        for i, s in enumerate(scales)])
    assert torch.allclose(batched, single, rtol=0, atol=1e-6)


def test_far_pixels_stay_put_and_inputs_are_untouched():
    depth, normals = _scene(2, 1)
    before = depth.clone()
    refined = refine_depth(depth, normals)
    assert torch.equal(depth, before)
    far = depth < 0.1
    assert torch.equal(refined[far], depth[far])


def test_predictor_refines_a_batch_in_one_call_on_one_cpu_thread(monkeypatch):
    config = load_config("demo", overrides=[f"student.input_size={SIZE}"])
    student = LoadedStudent(build_student(config.student, 0), config, None, Location("."), 0)
    predictor = Predictor(student)
    depth, normals = _scene(2, 2)
    maps = torch.rand(2, layout.CHANNELS, SIZE, SIZE)
    maps[:, layout.DEPTH], maps[:, layout.NORMALS] = depth, (normals + 1) / 2
    boxes = [Letterbox.fit(640, 480, SIZE), Letterbox.fit(200, 100, SIZE)]
    s = config.predict
    expected = torch.cat([old_refine_depth(
        depth[i:i + 1], maps[i:i + 1, layout.NORMALS] * 2 - 1,
        iterations=s.refine_iterations, alpha=s.refine_alpha, far=s.refine_far,
        gradient_scale=config.labels.normals_gradient_scale * lb.scale)
        for i, lb in enumerate(boxes)])

    calls: list[tuple[int, int]] = []
    real = predict.refine_depth

    def spy(depth: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        calls.append((depth.shape[0], torch.get_num_threads()))
        return real(depth, *args, **kwargs)

    # the thread count refinement runs with, seen from inside (torch.sub is its first step op)
    threads: list[int] = []
    real_sub = torch.sub

    def sub(*args, **kwargs):
        threads.append(torch.get_num_threads())
        return real_sub(*args, **kwargs)

    monkeypatch.setattr(predict, "refine_depth", spy)
    monkeypatch.setattr(torch, "sub", sub)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = predictor.refine_batch(maps, boxes)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(previous)
    assert [n for n, _ in calls] == [2]  # the whole batch, once
    assert threads and set(threads) == {1}  # 2 × 256² pixels: one thread
    assert torch.allclose(got, expected, rtol=0, atol=1e-5)
