"""What train-student says as it trains: one line per epoch (training loss, HDM@0.1 of the
joints, validation loss, bad rows skipped) and, once before the first epoch, what a user would
otherwise not know — that without validation shards `best` is chosen on training loss, and how
many of the training images an epoch sees (full batches only). The loop calls these; the CLI
prints what they return."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["epoch_line", "training_notes"]


def epoch_line(metrics: dict[str, Any]) -> str:
    """`epoch 3: loss 0.4123  HDM@0.1 joints 0.412  val loss 0.5011` for one epoch's metrics."""
    hdm_joints = metrics["train"].get("hdm@0.1/joints")
    line = f"epoch {metrics['epoch']}: loss {metrics['train'].get('loss', math.nan):.4f}"
    if hdm_joints is not None:
        line += f"  HDM@0.1 joints {hdm_joints:.3f}"
    if metrics.get("val"):
        line += f"  val loss {metrics['val']['loss']:.4f}"
    bad = sum(metrics.get("skipped_rows", {}).values())
    if bad:
        line += f"  ({bad} bad row(s) skipped, see the log)"
    return line


def training_notes(*, validated: bool, images: int, per_epoch: int, batch_size: int) -> list[str]:
    """The lines said once before training: how `best` is chosen without validation shards,
    and the images an epoch leaves out (`images` in the shards, `per_epoch` trained on, all
    ranks together)."""
    notes = []
    if not validated:
        notes.append("no --val-shards: the best checkpoint (and early stopping) is judged on "
                     "the training loss")
    if per_epoch < images:
        notes.append(f"each epoch trains on {per_epoch} of the {images} images: full batches of "
                     f"{batch_size} only, a different {images - per_epoch} left out each epoch "
                     "(train.batch_size)")
    return notes
