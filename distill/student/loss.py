"""What the student's training minimises and how fast (paper §3.6).

Loss: Σ g_i · MSE_i over the six image modalities and the tokens, with the paper's gains
(`train.loss_gains`), each MSE over the samples that have that label. The learning rate falls
linearly from `lr_start` to `lr_end` over `lr_decay_epochs` epochs, then stays (`lr_schedule`:
a `torch.optim.lr_scheduler.LambdaLR` stepped per epoch, restored from a checkpoint's state).
"""

from __future__ import annotations

from typing import Any

import torch

from distill.config import TrainConfig
from distill.errors import DistillError
from distill.student import layout
from distill.student.metrics import to_unit
from distill.student.targets import present_keys

__all__ = ["compute_loss", "learning_rate", "lr_schedule"]


def learning_rate(epoch: int, cfg: TrainConfig) -> float:
    """Linear decay from lr_start to lr_end over lr_decay_epochs, then flat (paper §3.6)."""
    t = min(1.0, epoch / max(1, cfg.lr_decay_epochs))
    return cfg.lr_start + (cfg.lr_end - cfg.lr_start) * t


def lr_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, start_epoch: int = 0,
                state: dict[str, Any] | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-epoch schedule as a `torch.optim.lr_scheduler.LambdaLR`, stepped once after
    every epoch. Its base rate is 1 (the optimiser is made with `lr=1.0`), so the rate of epoch
    e is exactly `learning_rate(e, cfg)`. Made after a checkpoint is restored: `start_epoch` is
    the epoch about to run and `state` the restored `state.pt`, whose `scheduler` entry (absent
    in a distill older than the schedule) is loaded; the rate is always that of the current
    config, as a resume with `--set train.lr_…` always had."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", 1.0)  # a restored optimiser has it, unless it is older
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: learning_rate(epoch, cfg), last_epoch=start_epoch - 1)
    if state is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
        if scheduler.last_epoch != start_epoch:
            raise DistillError(f"state.pt: the learning-rate schedule is at epoch "
                               f"{scheduler.last_epoch}, the checkpoint at {start_epoch - 1}")
    return scheduler


def compute_loss(outputs: dict[str, torch.Tensor], target: torch.Tensor, tokens: torch.Tensor,
                 present: torch.Tensor, cfg: TrainConfig) -> tuple[torch.Tensor,
                                                                  dict[str, torch.Tensor]]:
    """Σ g_i · MSE_i; each modality's MSE over the samples that have its label. `target` is the
    uint8 batch, `present` (B, len(present_keys())) bool."""
    maps = outputs["maps"].float()
    truth = to_unit(target)
    gains = cfg.loss_gains
    total = maps.new_zeros(())
    parts: dict[str, torch.Tensor] = {}  # detached, left on the device
    keys = present_keys()
    for name, channels in layout.modalities().items():
        have = present[:, keys.index(name)]
        if not bool(have.any()):
            continue
        mse = torch.mean((maps[have, channels] - truth[have, channels]) ** 2)
        total = total + getattr(gains, name, layout.modality_gain(name)) * mse
        parts[name] = mse.detach()
    have = present[:, keys.index("tokens")]
    if bool(have.any()):
        mse = torch.mean((outputs["tokens"].float()[have] - tokens[have]) ** 2)
        total = total + gains.tokens * mse
        parts["tokens"] = mse.detach()
    return total, parts
