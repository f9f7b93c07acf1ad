"""Staggered-alignment self-distillation (SASD; Fan et al., IEEE TMM 2024, §III-A/B), adapted to
Y-MAP-Net (`train.self_distill`; the adaptation and its reasons are in docs/DECISIONS.md).

Once `warmup_epochs` epochs have trained at the base resolution, every training step also runs
the same weights on the batch upsampled 2× (bilinear). Each level of that pass is twice the size
of the base pass's level of the same index, so the 2× pass's decoder level l+1 has the size of
the base pass's level l, and the loss gains

* the 2× pass's own task loss (`compute_loss`) against the targets scaled up 2× (bilinear: the
  paper's GT' = GT × 2, a Gaussian of twice the width, as the input's people are twice as big),
* γ · Σ_l MSE(A_l(P_l), sg(P'_{l+1})): the staggered alignment, the base pass's decoder output
  at level l (through a 1×1 adapter A_l where its width differs from the 2× level's) against
  the 2× pass's, which is the teacher and gets no gradient from it.

Y-MAP-Net's bridge is dense over the bottom map, so the 2× pass needs one level more to reach
the bridge's size: the paper's auxiliary level (P_6, "pruned inference"): one encoder and one
decoder block below the student's bottom, used by the 2× pass only. It and the adapters live
here (`AuxLevels`), not in the student: a checkpoint's `model.safetensors` holds exactly the
weights of a student trained without SASD; the auxiliary weights and their optimiser are
training state (`state.pt`, key `self_distill`), so a resume is exact and an export never sees
them. They are made from their own seeded generator: the student's initialisation and the
global RNG stream are those of a run without SASD, so the warm-up epochs are bit-identical.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.config import SelfDistillConfig, TrainConfig
from distill.errors import ConfigError
from distill.student.loss import compute_loss
from distill.student.model import PRESET_WIDTHS, YMapNet, _glorot, _ResidualBlock, unwrap

__all__ = ["AuxLevels", "SelfDistill", "aligned_levels", "high_res_pass"]

logger = logging.getLogger(__name__)

SCALE = 2  # the 2× pass (the paper's only factor: P'_{l+1} ↔ P_l needs exactly 2)


def aligned_levels(cfg: SelfDistillConfig, levels: int) -> list[int]:
    """The base pass's decoder levels aligned: `cfg.levels`, or all of them when empty."""
    chosen = sorted(set(cfg.levels)) if cfg.levels else list(range(levels))
    bad = [lv for lv in chosen if not 0 <= lv < levels]
    if bad:
        raise ConfigError(f"train.self_distill.levels = {cfg.levels}: level {bad[0]} is not a "
                          f"decoder level of this student; allowed: 0..{levels - 1} "
                          "(student.levels - 1)")
    return chosen


class AuxLevels(nn.Module):
    """What only training uses: the auxiliary level under the student's bottom (an encoder
    block after 2×2 pooling, a decoder block over the bridge's output and that level's skip,
    both as wide as the bottom) and the 1×1 adapters from a base level's width to the width of
    the 2× level it is aligned with (none where they are equal)."""

    def __init__(self, net: YMapNet, levels: list[int]) -> None:
        super().__init__()
        widths = PRESET_WIDTHS[net.config.preset]
        depth = net.config.levels
        bottom = widths.filters(depth - 1)
        self.encoder = _ResidualBlock(bottom, bottom)
        self.decoder = _ResidualBlock(2 * bottom, bottom)
        self.adapters = nn.ModuleDict({
            str(lv): nn.Conv2d(widths.filters(lv), widths.filters(min(lv + 1, depth - 1)), 1)
            for lv in levels if widths.filters(lv) != widths.filters(min(lv + 1, depth - 1))})
        self.apply(_glorot)

    def adapt(self, level: int, features: torch.Tensor) -> torch.Tensor:
        key = str(level)
        return self.adapters[key](features) if key in self.adapters else features


def high_res_pass(net: YMapNet, aux: AuxLevels,
                  x2: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The student's weights on a 2× input, through the auxiliary level: its outputs (maps at
    2× the input size) and its decoder features, index l+1 the size of the base pass's level l
    (index `student.levels` is the auxiliary level's)."""
    skips = net.encode(x2)
    skips.append(aux.encoder(net.pool(skips[-1])))
    h, code = net.bridge(skips[-1])
    bottom = aux.decoder(torch.cat([h, skips[-1]], dim=1))
    features: list[torch.Tensor] = []
    hooks = [block.register_forward_hook(lambda _m, _i, out: features.append(out))
             for block in net.decoder]
    try:
        h = net.decode(bottom, skips[:-1], from_below=True)
    finally:
        for hook in hooks:
            hook.remove()
    features.reverse()  # the decoder runs from the bottom up
    return net.outputs(h, code), [*features, bottom]


class SelfDistill:
    """The training loop's side of SASD: captures the base pass's decoder features, adds the 2×
    pass's loss, and steps the auxiliary weights. `extra_loss` is a no-op (None) during the
    warm-up, in validation, and when disabled."""

    def __init__(self, cfg: SelfDistillConfig, model: torch.nn.Module, device: torch.device,
                 seed: int, state: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        net = unwrap(model)
        if not isinstance(net, YMapNet):
            raise TypeError(f"self-distillation needs the Y-MAP-Net student, got {type(net)}")
        self.net = net
        self.levels = aligned_levels(cfg, net.config.levels)
        with torch.random.fork_rng(devices=[]):  # the global stream stays a plain run's
            torch.manual_seed(seed)
            aux = AuxLevels(net, self.levels)
        self.aux = aux.to(device)
        self.optimizer = torch.optim.Adam(self.aux.parameters(), lr=1.0)
        if state is not None:
            self.aux.load_state_dict(state["aux"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.active = False
        self._in_2x = False  # the 2× pass runs the same blocks: not captured as the base's
        self._base: dict[int, torch.Tensor] = {}
        for level in self.levels:
            net.decoder[level].register_forward_hook(self._capture(level))

    def _capture(self, level: int) -> Any:
        def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            if self.active and not self._in_2x and module.training and torch.is_grad_enabled():
                self._base[level] = output
        return hook

    def begin_epoch(self, epoch: int, lr: float) -> None:
        """SASD runs from epoch `warmup_epochs` on, at the student's learning rate."""
        self.active = self.cfg.enabled and epoch >= self.cfg.warmup_epochs
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.active and epoch == self.cfg.warmup_epochs:
            logger.info("self-distillation starts at epoch %d (2x pass, levels %s, gamma %g)",
                        epoch, self.levels, self.cfg.gamma)

    def extra_loss(self, image: torch.Tensor, target: torch.Tensor, tokens: torch.Tensor,
                   present: torch.Tensor, train: TrainConfig,
                   parts: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The 2× pass's task loss + γ · the staggered alignment, after the base pass; its
        parts go into `parts` ("sasd_2x", "sasd_align")."""
        base, self._base = self._base, {}
        if not self.active or not base:
            return None
        x2 = F.interpolate(image, scale_factor=SCALE, mode="bilinear", align_corners=False)
        self._in_2x = True
        try:
            out2, features = high_res_pass(self.net, self.aux, x2)
        finally:
            self._in_2x = False
        # the targets' uint8 units scaled up as floats (compute_loss maps them to [-1, 1])
        target2 = F.interpolate(target.float(), scale_factor=SCALE, mode="bilinear",
                                align_corners=False)
        task, _ = compute_loss(out2, target2, tokens, present, train)
        align = task.new_zeros(())
        for level in self.levels:
            student = self.aux.adapt(level, base[level]).float()
            align = align + torch.mean((student - features[level + 1].detach().float()) ** 2)
        parts["sasd_2x"] = task.detach()
        parts["sasd_align"] = align.detach()
        return task + self.cfg.gamma * align

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """Steps the auxiliary weights; in a data-parallel run their gradients are averaged
        over the ranks first (the student's are, by DistributedDataParallel)."""
        if not self.active:
            return
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for p in self.aux.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"aux": {k: v.detach().cpu() for k, v in self.aux.state_dict().items()},
                "optimizer": self.optimizer.state_dict()}
