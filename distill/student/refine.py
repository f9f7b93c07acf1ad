"""Iterative depth refinement from the predicted normals (paper §3.2): an inference extra of
the student, run by `distill.student.predict.Predictor` on the student's device."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

__all__ = ["refine_depth"]

# Gradients steeper than this (unit depth per pixel) are depth edges the normals cannot
# express; their pull is capped so 35 iterations do not smear an occlusion boundary.
_EDGE_CAP = 0.02
_MIN_NZ = 0.05  # normals this close to the image plane would ask for unbounded slopes
# Refinement is ~400 small elementwise operations; on a CPU each one split over threads pays a
# barrier, and on a busy machine one thread's lost time slice stalls all of them (a 256² map
# took 70× longer on 2 threads than on 1, measured). Below this many pixels per thread the
# split costs more than it gains.
_PIXELS_PER_THREAD = 1 << 20


@contextmanager
def _intra_op_threads(depth: torch.Tensor) -> Iterator[None]:
    """Torch's intra-op threads limited, while refining `depth` on a CPU, to one per
    `_PIXELS_PER_THREAD` of its pixels (restored after)."""
    before = torch.get_num_threads()
    wanted = max(1, min(before, depth.numel() // _PIXELS_PER_THREAD))
    if depth.device.type != "cpu" or wanted == before:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def refine_depth(depth: torch.Tensor, normals: torch.Tensor, *, iterations: int = 35,
                 alpha: float = 0.01, far: float = 0.1,
                 gradient_scale: float | torch.Tensor = 255.0,
                 edge_cap: float = _EDGE_CAP) -> torch.Tensor:
    """Pull a depth map towards the surface its predicted normals describe (paper §3.2).

    `depth` (B, 1, H, W) relative inverse depth in [0, 1] (near = 1); `normals` (B, 3, H, W)
    in the label convention of `distill.labels.normals` (n ∝ (−s·∂D/∂x, −s·∂D/∂y, 1) with s =
    `gradient_scale` per pixel of this map: a number, or one per image as a (B, 1, 1, 1)
    tensor). Each of `iterations` steps measures the depth's gradients G, compares them with
    the gradients the normals ask for (the paper's Δ, taken in gradient space: Δ = G(N) − G(D))
    and moves the depth by α along the divergence of Δ — a gradient step on Σ‖Δ‖², which
    changes the gradients the paper's Δ measures. Far pixels (depth < `far`) are masked out:
    neither updated nor pulled on. Differences steeper than `edge_cap` are depth edges the
    normals cannot express and pull with at most that much.

    The whole batch moves at once, on the tensors' device, ten whole-map tensor operations per
    step into preallocated buffers; on a CPU they run on at most one thread per
    `_PIXELS_PER_THREAD` pixels (`_intra_op_threads`).
    """
    if depth.ndim != 4 or depth.shape[1] != 1 or normals.shape[1] != 3:
        raise ValueError(f"refine_depth wants (B, 1, H, W) depth and (B, 3, H, W) normals, got "
                         f"{tuple(depth.shape)} and {tuple(normals.shape)}")
    with _intra_op_threads(depth):
        d = depth.float().clone()
        n = F.normalize(normals.float(), dim=1)
        nz = n[:, 2:3].clamp(min=_MIN_NZ) * gradient_scale
        # The slopes the normals describe. Forward differences live between pixel p and p + 1:
        # the wanted slope there is the mean.
        want_x, want_y = -n[:, 0:1] / nz, -n[:, 1:2] / nz
        want_x = (want_x[..., :, 1:] + want_x[..., :, :-1]) / 2
        want_y = (want_y[..., 1:, :] + want_y[..., :-1, :]) / 2
        # Far pixels neither pull nor move: a difference with a far end is clamped to [0, 0],
        # so every step leaves a far pixel (all its differences zero) where it is.
        near = d >= far
        cap_x = (near[..., :, 1:] & near[..., :, :-1]).float() * edge_cap
        cap_y = (near[..., 1:, :] & near[..., :-1, :]).float() * edge_cap
        low_x, low_y = -cap_x, -cap_y
        delta_x, delta_y = torch.empty_like(cap_x), torch.empty_like(cap_y)
        for _ in range(iterations):
            # Δ per difference, from the depth before this step's moves
            torch.sub(d[..., :, 1:], d[..., :, :-1], out=delta_x)
            torch.clamp(delta_x.sub_(want_x), low_x, cap_x, out=delta_x)
            torch.sub(d[..., 1:, :], d[..., :-1, :], out=delta_y)
            torch.clamp(delta_y.sub_(want_y), low_y, cap_y, out=delta_y)
            # −α ∂/∂d of ½Σ Δ²: each difference moves its right/lower pixel by −αΔ and its
            # left/upper one by +αΔ.
            d[..., :, 1:].sub_(delta_x, alpha=alpha)
            d[..., :, :-1].add_(delta_x, alpha=alpha)
            d[..., 1:, :].sub_(delta_y, alpha=alpha)
            d[..., :-1, :].add_(delta_y, alpha=alpha)
        return d.clamp_(0.0, 1.0)
