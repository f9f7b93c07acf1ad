"""`distill.student.predict.refine_depth` as it was before issue 31.5 made it batch and cut its
per-step operations (distill main at 82c4942), frozen here so `test_refine.py` can check that
the fast refinement gives the same depth within 1e-5. Test-only: nothing in distill imports it;
do not edit it to follow the refinement (that would defeat the check)."""

# ruff: noqa

from __future__ import annotations

import torch
import torch.nn.functional as F

_EDGE_CAP = 0.02
_MIN_NZ = 0.05


def refine_depth(depth: torch.Tensor, normals: torch.Tensor, *, iterations: int = 35,
                 alpha: float = 0.01, far: float = 0.1, gradient_scale: float = 255.0,
                 edge_cap: float = _EDGE_CAP) -> torch.Tensor:
    """Pull a depth map towards the surface its predicted normals describe (paper §3.2).

    `depth` (B, 1, H, W) relative inverse depth in [0, 1] (near = 1); `normals` (B, 3, H, W)
    in the label convention of `distill.labels.normals` (n ∝ (−s·∂D/∂x, −s·∂D/∂y, 1) with s =
    `gradient_scale` per pixel of this map). Each of `iterations` steps measures the depth's
    gradients G, compares them with the gradients the normals ask for (the paper's Δ, taken in
    gradient space: Δ = G(N) − G(D)) and moves the depth by α along the divergence of Δ — a
    gradient step on Σ‖Δ‖², which changes the gradients the paper's Δ measures. Far pixels
    (depth < `far`) are masked out: neither updated nor pulled on. Differences steeper than
    `edge_cap` are depth edges the normals cannot express and pull with at most that much.
    """
    if depth.ndim != 4 or depth.shape[1] != 1 or normals.shape[1] != 3:
        raise ValueError(f"refine_depth wants (B, 1, H, W) depth and (B, 3, H, W) normals, got "
                         f"{tuple(depth.shape)} and {tuple(normals.shape)}")
    d = depth.float().clone()
    n = F.normalize(normals.float(), dim=1)
    nz = n[:, 2:3].clamp(min=_MIN_NZ)
    want_x = -n[:, 0:1] / (nz * gradient_scale)  # the slopes the normals describe
    want_y = -n[:, 1:2] / (nz * gradient_scale)
    # Forward differences live between pixel p and p + 1: the wanted slope there is the mean.
    want_x = (want_x[..., :, 1:] + want_x[..., :, :-1]) / 2
    want_y = (want_y[..., 1:, :] + want_y[..., :-1, :]) / 2
    near = d >= far
    edge_x = (near[..., :, 1:] & near[..., :, :-1]).float()
    edge_y = (near[..., 1:, :] & near[..., :-1, :]).float()
    for _ in range(iterations):
        delta_x = ((d[..., :, 1:] - d[..., :, :-1]) - want_x).clamp(-edge_cap, edge_cap) * edge_x
        delta_y = ((d[..., 1:, :] - d[..., :-1, :]) - want_y).clamp(-edge_cap, edge_cap) * edge_y
        # ∂/∂d of ½Σ Δ²: each difference pushes its right/lower pixel by −Δ and left/upper by +Δ.
        step = torch.zeros_like(d)
        step[..., :, 1:] += delta_x
        step[..., :, :-1] -= delta_x
        step[..., 1:, :] += delta_y
        step[..., :-1, :] -= delta_y
        d = torch.where(near, d - alpha * step, d)
    return d.clamp(0.0, 1.0)
