"""The student's metrics (DESIGN.md §6; the paper's Table 2): HDM at T = 0.1, 0.3, 0.5, 0.8 and
MSE per image modality, cosine similarity per token position. Training logs them every epoch and
`distill run evaluate` reports them; both call `measure`, so the numbers mean the same thing.
"""

from __future__ import annotations

from typing import Any

import torch

from distill.student import layout
from distill.student.targets import present_keys

__all__ = ["HDM_THRESHOLDS", "Meter", "hdm", "measure", "measure_part_groups", "part_group_report",
           "to_unit"]

HDM_THRESHOLDS = (0.1, 0.3, 0.5, 0.8)


def to_unit(target: torch.Tensor) -> torch.Tensor:
    """uint8 targets → [-1, 1] floats, on whatever device they are (DESIGN §6)."""
    return target.float() / 127.5 - 1.0


def hdm(pred: torch.Tensor, truth: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fraction of values with |y_true − y_pred| ≤ T on [0, 1]-scaled maps (paper Table 2)."""
    return ((pred - truth).abs() / 2.0 <= threshold).float().mean()


class Meter:
    """Sums of per-batch metrics, averaged at the end of an epoch. Values may be tensors on the
    device: they are summed there and read back once, not once per step (no per-step syncs)."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: float | torch.Tensor, n: int = 1) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().float()
        self.sums[name] = self.sums.get(name, 0.0) + value * n
        self.counts[name] = self.counts.get(name, 0) + n

    def means(self) -> dict[str, float]:
        return {k: float(self.sums[k]) / self.counts[k] for k in sorted(self.sums)}


def measure_part_groups(meter: Meter, pred: torch.Tensor, truth: torch.Tensor) -> None:
    """Per body-part group (`distill.labels.parts.PART_GROUPS`, the opt-in `parts` channels of
    images that have them, [-1, 1]): HDM at each threshold (`hdm@T/parts:<group>`) and the IoU
    of the student's part (unit map > 0.5) with the teacher's (`iou/parts:<group>`), averaged
    over the images where either has that part."""
    from distill.labels.parts import PART_GROUPS

    for g, group in enumerate(PART_GROUPS):
        p, t = pred[:, g], truth[:, g]
        for th in HDM_THRESHOLDS:
            meter.add(f"hdm@{th}/parts:{group}", hdm(p, t, th), len(p))
        mine, theirs = (p > 0).flatten(1), (t > 0).flatten(1)
        union = (mine | theirs).sum(1)
        seen = union > 0
        k = int(seen.sum())
        if k:
            iou = (mine & theirs).sum(1)[seen].float() / union[seen].float()
            meter.add(f"iou/parts:{group}", iou.mean(), k)


def part_group_report(metrics: dict[str, float]) -> dict[str, dict[str, float | None]] | None:
    """`measure_part_groups`' figures per group, for `evaluate`'s report; None for a student
    without part channels."""
    from distill.labels.parts import PART_GROUPS

    if "parts" not in layout.modalities():
        return None
    return {group: {**{f"hdm@{t}": metrics.get(f"hdm@{t}/parts:{group}") for t in HDM_THRESHOLDS},
                    "iou": metrics.get(f"iou/parts:{group}")} for group in PART_GROUPS}


@torch.no_grad()
def measure(meter: Meter, outputs: dict[str, torch.Tensor], target: torch.Tensor,
             tokens: torch.Tensor, present: torch.Tensor) -> None:
    maps, truth = outputs["maps"].float(), to_unit(target)
    keys = present_keys()
    for name, channels in layout.modalities().items():
        have = present[:, keys.index(name)]
        n = int(have.sum())
        if n == 0:
            continue
        p, t = maps[have, channels], truth[have, channels]
        for th in HDM_THRESHOLDS:
            meter.add(f"hdm@{th}/{name}", hdm(p, t, th), n)
        meter.add(f"mse/{name}", torch.mean((p - t) ** 2), n)
        if name == "parts":
            measure_part_groups(meter, p, t)
    have = present[:, keys.index("tokens")]
    if bool(have.any()):
        p, t = outputs["tokens"].float()[have], tokens[have]
        nonzero = t.abs().sum(-1) > 0  # positions with a word
        cos = torch.nn.functional.cosine_similarity(p, t, dim=-1)
        for i in range(t.shape[1]):
            k = int(nonzero[:, i].sum())
            if k:
                meter.add(f"token_cosine/{i + 1}", cos[nonzero[:, i], i].mean(), k)
