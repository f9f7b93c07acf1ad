"""Training the Y-MAP-Net student from label shards (DESIGN.md §6; paper §3.6).

One loop serves a single process and every Ray Train worker: a `Session` says which rank this
is, how many there are, where the model lives and how checkpoints are saved and found.

Loss: Σ g_i · MSE_i over the six image modalities and the tokens, with the paper's gains, each
MSE over the samples that have that label. Adam; the learning rate falls linearly from
`lr_start` to `lr_end` over `lr_decay_epochs` epochs, then stays. Early stopping after
`patience` epochs without a better validation (else training) loss. Each epoch logs the loss,
HDM@{0.1,0.3,0.5,0.8} and MSE per modality and the cosine similarity per token position.

Checkpoints (`OUT/checkpoints/last`, `OUT/checkpoints/best`): `model.safetensors` and
`state.pt` (epoch, step, optimiser, scheduler, torch RNG, best loss, patience count), written
every epoch and on Ctrl-C; `state.pt` holds only tensors and plain values, loaded with
`weights_only=True`. Resuming restores all of it, so k epochs + resume + (N−k) epochs give the
same weights as N epochs straight.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from distill.config import Config, TrainConfig, dump_toml
from distill.errors import ConfigError, DistillError
from distill.labels.tokens import Vocabulary
from distill.storage import atomic_write_bytes
from distill.student import layout
from distill.student.data import ShardStream
from distill.student.metrics import HDM_THRESHOLDS, Meter, hdm, measure, to_unit
from distill.student.model import build_student
from distill.student.targets import PRESENT_KEYS

__all__ = [
    "HDM_THRESHOLDS",
    "Session",
    "TrainOptions",
    "compute_loss",
    "find_vocabulary",
    "hdm",
    "learning_rate",
    "train_student",
]

logger = logging.getLogger(__name__)

@dataclass
class TrainOptions:
    shards: Path  # a folder of label shards (or one shard file)
    out: Path  # the training run folder
    val_shards: Path | None = None
    vocab: Path | None = None  # default: vocab.parquet beside the shards folder
    resume: bool = False
    device: str = "auto"
    progress: bool = True


@dataclass
class Session:
    """Where this copy of the loop runs. The local default is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m
    # Called with (epoch metrics, folder holding the epoch's checkpoint) on every rank.
    report: Callable[[dict[str, Any], Path], None] | None = None
    # A folder with a checkpoint to resume from, if any.
    restore_from: Path | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def vocabulary_path(options: TrainOptions) -> Path | None:
    """`--vocab`, else `vocab.parquet` of the labelling run (beside its shards folder)."""
    candidates = [options.vocab] if options.vocab else [
        options.shards.parent / "vocab.parquet", options.shards / "vocab.parquet"]
    for path in candidates:
        if path is not None and path.is_file():
            return path
    if options.vocab:
        raise DistillError(f"vocabulary {options.vocab} does not exist")
    return None


def find_vocabulary(options: TrainOptions) -> Vocabulary | None:
    """The vocabulary the token targets come from, or None without one."""
    from distill.labels.tokens import read_vocabulary

    path = vocabulary_path(options)
    return read_vocabulary(path) if path is not None else None


def learning_rate(epoch: int, cfg: TrainConfig) -> float:
    """Linear decay from lr_start to lr_end over lr_decay_epochs, then flat (paper §3.6)."""
    t = min(1.0, epoch / max(1, cfg.lr_decay_epochs))
    return cfg.lr_start + (cfg.lr_end - cfg.lr_start) * t


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.mixed_precision == "off":
        return None
    if cfg.mixed_precision == "fp16":
        return torch.float16
    if cfg.mixed_precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def compute_loss(outputs: dict[str, torch.Tensor], target: torch.Tensor, tokens: torch.Tensor,
                 present: torch.Tensor, cfg: TrainConfig) -> tuple[torch.Tensor,
                                                                  dict[str, torch.Tensor]]:
    """Σ g_i · MSE_i; each modality's MSE over the samples that have its label. `target` is the
    uint8 batch, `present` (B, len(PRESENT_KEYS)) bool."""
    maps = outputs["maps"].float()
    truth = to_unit(target)
    gains = cfg.loss_gains
    total = maps.new_zeros(())
    parts: dict[str, torch.Tensor] = {}  # detached, left on the device
    for name, channels in layout.MODALITIES.items():
        have = present[:, PRESENT_KEYS.index(name)]
        if not bool(have.any()):
            continue
        mse = torch.mean((maps[have, channels] - truth[have, channels]) ** 2)
        total = total + getattr(gains, name) * mse
        parts[name] = mse.detach()
    have = present[:, PRESENT_KEYS.index("tokens")]
    if bool(have.any()):
        mse = torch.mean((outputs["tokens"].float()[have] - tokens[have]) ** 2)
        total = total + gains.tokens * mse
        parts["tokens"] = mse.detach()
    return total, parts


def _rows_per_rank(stream: ShardStream) -> list[int]:
    """Rows each rank reads this epoch (from the footers' row-group sizes)."""
    rows = [0] * stream.world_size
    for k, (f, g) in enumerate(stream.units()):
        rows[k % stream.world_size] += stream.group_rows[f][g]
    return rows


def _train_steps(stream: ShardStream, batch_size: int) -> int:
    """Batches every rank trains on this epoch: the smallest rank's full batches (at least one),
    so data-parallel ranks step together although row groups differ in size."""
    least = min(_rows_per_rank(stream))
    return 0 if least == 0 else max(1, least // batch_size)


def _loader(stream: ShardStream, batch_size: int, workers: int) -> DataLoader[Any]:
    return DataLoader(stream, batch_size=batch_size, num_workers=workers,
                      persistent_workers=False, pin_memory=False)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _save_checkpoint(folder: Path, model: torch.nn.Module, state: dict[str, Any]) -> None:
    """`model.safetensors` + `state.pt` into `folder`, replacing it only once both are written."""
    from safetensors.torch import save_file

    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in _unwrap(model).state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    torch.save(state, tmp / "state.pt")
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights (safetensors) and training state (weights-only torch.load) of a checkpoint."""
    from safetensors.torch import load_file

    model_file, state_file = folder / "model.safetensors", folder / "state.pt"
    if not model_file.is_file() or not state_file.is_file():
        raise DistillError(f"{folder} is not a student checkpoint (needs model.safetensors and "
                           "state.pt)")
    return load_file(str(model_file)), torch.load(state_file, map_location="cpu",
                                                  weights_only=True)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


# ---------------------------------------------------------------------------------------------
# The loop


def _run_epoch(model: torch.nn.Module, loader: DataLoader[Any], steps: int, cfg: TrainConfig,
               device: torch.device, optimizer: torch.optim.Optimizer | None,
               on_step: Callable[[int, torch.Tensor], None] | None = None) -> dict[str, float]:
    """One pass: trains when `optimizer` is given, else evaluates. Returns mean metrics."""
    meter = Meter()
    amp = _autocast_dtype(cfg, device)
    model.train(optimizer is not None)
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        image = to_unit(batch["image"].to(device, non_blocking=True))
        target = batch["target"].to(device, non_blocking=True)
        tokens = batch["tokens"].to(device, non_blocking=True)
        present = batch["present"].to(device)
        with torch.set_grad_enabled(optimizer is not None), \
                torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            outputs = model(image)
            loss, parts = compute_loss(outputs, target, tokens, present, cfg)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        n = image.shape[0]
        meter.add("loss", loss, n)
        for name, value in parts.items():
            meter.add(f"loss/{name}", value, n)
        measure(meter, outputs, target, tokens, present)
        if on_step is not None:
            on_step(n, loss.detach())
    return meter.means()


def train_student(config: Config, options: TrainOptions, session: Session | None = None,
                  workers: int | None = None) -> dict[str, Any]:
    """Train (or resume) the student; returns the last epoch's metrics and where things are."""
    session = session or Session(device=resolve_device(options.device))
    cfg = config.train
    vocab = find_vocabulary(options)
    token_dim = vocab.dim if vocab is not None else config.student.token_dim
    if vocab is not None and vocab.dim != config.student.token_dim:
        raise ConfigError(
            f"student.token_dim = {config.student.token_dim} but {options.shards.parent} has "
            f"a {vocab.dim}-d vocabulary (labels.glove); set --set student.token_dim="
            f"{vocab.dim}")
    size = config.student.input_size
    common: dict[str, Any] = {"size": size, "vocab": vocab, "config": cfg, "rank": session.rank,
              "world_size": session.world_size, "max_tokens": config.student.num_tokens,
              "token_dim": token_dim}
    train_stream = ShardStream(options.shards, train=True, **common)
    val_stream = ShardStream(options.val_shards, train=False, **common) \
        if options.val_shards else None
    workers = cfg.num_workers if workers is None else workers

    torch.manual_seed(cfg.seed)
    model: torch.nn.Module = build_student(config.student, len(vocab.words) if vocab else 0,
                                           session.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate(0, cfg))
    start_epoch, step, best, stale = 0, 0, math.inf, 0
    out = options.out
    if session.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.toml").write_text(dump_toml(config))
        vocab_file = vocabulary_path(options)
        if vocab_file is not None:  # predict and evaluate decode tokens with the same words
            atomic_write_bytes(out / "vocab.parquet", vocab_file.read_bytes())
    restore = session.restore_from
    if restore is None and not options.resume and (out / "checkpoints" / "last").is_dir():
        raise DistillError(f"{out} already has a checkpoint; pass --resume to continue it or "
                           "choose another --out")
    if restore is None and options.resume and (out / "checkpoints" / "last").is_dir():
        restore = out / "checkpoints" / "last"
    if options.resume and restore is None:
        raise DistillError(f"--resume: no checkpoint in {out / 'checkpoints' / 'last'}")
    if restore is not None:
        weights, state = load_checkpoint(restore)
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
        best, stale = float(state["best"]), int(state["stale"])
        logger.info("resumed from %s at epoch %d", restore, start_epoch)
    model = session.wrap(model)

    log_path = out / "metrics.jsonl"
    last: dict[str, Any] = {}
    samples_per_epoch = min(min(_rows_per_rank(train_stream)),
                            _train_steps(train_stream, cfg.batch_size) * cfg.batch_size)
    progress = _Progress(cfg.epochs - start_epoch, samples_per_epoch * session.world_size,
                         enabled=options.progress and session.is_main)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(epoch, cfg)
            train_stream.set_epoch(epoch)
            steps = _train_steps(train_stream, cfg.batch_size)
            started = time.monotonic()
            train_metrics = _run_epoch(
                model, _loader(train_stream, cfg.batch_size, workers), steps, cfg,
                session.device, optimizer,
                on_step=lambda n, loss: progress.step(n * session.world_size, loss))
            step += steps
            val_metrics: dict[str, float] = {}
            if val_stream is not None:
                val_stream.set_epoch(epoch)
                rows = _rows_per_rank(val_stream)[session.rank]
                val_metrics = _run_epoch(  # every row of this rank; no gradient sync needed
                    _unwrap(model), _loader(val_stream, cfg.batch_size, workers),
                    math.ceil(rows / cfg.batch_size), cfg, session.device, None)
            judged = val_metrics.get("loss", train_metrics.get("loss", math.inf))
            improved = judged < best
            best, stale = (judged, 0) if improved else (best, stale + 1)
            last = {"epoch": epoch, "step": step, "lr": learning_rate(epoch, cfg),
                    "seconds": round(time.monotonic() - started, 3),
                    "train": train_metrics, "val": val_metrics, "best": best, "stale": stale}
            state = {"epoch": epoch, "step": step, "optimizer": optimizer.state_dict(),
                     "torch_rng": torch.get_rng_state(), "best": best, "stale": stale}
            if session.is_main:
                _save_checkpoint(out / "checkpoints" / "last", model, state)
                if improved:
                    _save_checkpoint(out / "checkpoints" / "best", model, state)
                with log_path.open("a") as fh:
                    fh.write(json.dumps(last) + "\n")
                progress.epoch_done(last)
            if session.report is not None:
                session.report(last, out / "checkpoints" / "last")
            if stale >= cfg.patience:
                logger.warning("early stop at epoch %d: no better loss for %d epochs", epoch,
                               stale)
                break
    except KeyboardInterrupt:
        logger.warning("interrupted; the last completed epoch's checkpoint is in %s",
                       out / "checkpoints" / "last")
        raise
    finally:
        progress.close()
    if session.is_main:
        atomic_write_bytes(out / "summary.json", json.dumps(last, indent=1).encode())
    return last


class _Progress:
    """A rich progress bar over all remaining epochs: samples/s, loss, ETA."""

    def __init__(self, epochs: int, samples_per_epoch: int, enabled: bool) -> None:
        self.bar: Any = None
        if not enabled or epochs <= 0:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]} samples/s  loss {task.fields[loss]}"),
                            TimeRemainingColumn())
        self.bar.start()
        self.task = self.bar.add_task("train-student", total=epochs * samples_per_epoch,
                                      rate="-", loss="-")
        self.started = time.monotonic()
        self.shown = 0.0
        self.done = 0

    def step(self, n: int, loss: torch.Tensor) -> None:
        if self.bar is None:
            return
        self.done += n
        now = time.monotonic()
        if now - self.shown < 0.5:  # reading the loss waits for the device: twice a second
            self.bar.update(self.task, advance=n)
            return
        self.shown = now
        rate = self.done / max(1e-9, now - self.started)
        self.bar.update(self.task, advance=n, rate=f"{rate:.1f}", loss=f"{float(loss):.4f}")

    def epoch_done(self, metrics: dict[str, Any]) -> None:
        hdm_joints = metrics["train"].get("hdm@0.1/joints")
        line = f"epoch {metrics['epoch']}: loss {metrics['train'].get('loss', math.nan):.4f}"
        if hdm_joints is not None:
            line += f"  HDM@0.1 joints {hdm_joints:.3f}"
        if metrics["val"]:
            line += f"  val loss {metrics['val']['loss']:.4f}"
        if self.bar is not None:
            self.bar.console.print(line)
        else:
            logger.info(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
