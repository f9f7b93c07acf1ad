"""Training the Y-MAP-Net student from label shards (DESIGN.md §6; paper §3.6).

One loop serves a single process and every Ray Train worker: a `Session` says which rank this
is, how many there are, where the model lives and how checkpoints are saved and found.

Loss: Σ g_i · MSE_i over the modalities and the tokens, Adam, the learning rate falling
linearly per epoch (`distill.student.loss`). Early stopping after `patience` epochs without a
better validation (else training) loss. Each epoch logs the loss,
HDM@{0.1,0.3,0.5,0.8} and MSE per modality and the cosine similarity per token position.

Run folder (`distill.runfolder.StudentRun`; `--out` is a local path or a URI such as
`s3://bucket/student`): `run.json` (the mark that makes it a student run), `config.toml`,
`vocab.parquet` (the words of the token targets, for predict and evaluate: the label run's, or
one rebuilt from the shards' tokens; `distill.student.sources`), `metrics.jsonl`,
`summary.json`, `checkpoints/{last,best}/`, and the training curves of `train.trackers`
(`tensorboard/`, `trackers.json`; `distill.student.curves`). distill writes only into a new or empty folder or
a student run (one made by an older distill — `config.toml` beside `checkpoints/`, no `run.json`
— resumes too), and one writer at a time (`StudentRun.lock()`: `flock` locally, a lease on S3).
Every file goes through `distill.storage.atomic_write_bytes`. `metrics.jsonl` is rewritten whole
each epoch (object stores cannot append; the same code on every filesystem), before that epoch's
checkpoints; a resume keeps the lines of the epochs before the one it starts at.

Checkpoints (`distill.student.checkpoint`: written atomically, repaired after a crash, found by
`--resume`): `model.safetensors` and `state.pt` (epoch, step, optimiser, learning-rate scheduler,
torch RNG, best loss, patience count), written every epoch. Resuming restores all of it, so k
epochs + resume + (N−k) epochs give the same weights as N epochs straight.

Refused with a `DistillError` (exit code 2 from the CLI, one line) before anything is written:
`--shards` of several label runs without `--allow-mixed` (`distill.student.sources`), shards
with no rows in all (`--shards` or `--val-shards`), a data-parallel run with a rank that
would get no rows (fewer row groups than ranks), and, with `--verify-shards`
(`TrainOptions.verify_shards`), a shard whose sha256 is not the one its label run's manifest
records, a shard no manifest records as committed, and a shard in no label run, which cannot be
verified (`verify_shards`, which reads only the manifests before hashing, then hashes every
shard behind a progress bar and names all that differ; it and `check_streams` are in
`distill.student.sources`). Refused before that epoch's metrics and
checkpoint are written, which would be `nan`: an epoch that trained on no batch (every row it
read was bad) or validated on no row. Refused before anything is allocated: a `train.batch_size`
whose batches cannot fit in this machine's memory (`distill.student.sizing`). Stopped with one
line (`TrainingDiverged`) and nothing written for that epoch: a loss that is not finite (checked
each step, before the optimiser steps on it) or weights that are not (checked before a
checkpoint is written), a learning rate too high for the data.

Bad rows: the streams skip a row that cannot be made into an example (`ShardStream` with
`bad_rows="skip"`; see `distill.student.data`). A researcher expects a run over 118k images to
survive one corrupt row, so it is skipped, not fatal — but never silently: each skipped row is
logged once (shard, row group, image id and what is wrong, one line), and every epoch's entry in
`metrics.jsonl` and `summary.json` counts them (`skipped_rows`: train, val). A shard where most
rows fail is damaged, not unlucky: more than half of a row group failing stops the run with one
line naming the shard and the row group (raised in this process, not a DataLoader worker's
wrapped traceback).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from distill.config import Config, TrainConfig, config_to_dict, dump_toml
from distill.errors import DistillError, ShardError, TrainingDiverged
from distill.progress import Progress
from distill.runfolder import StudentRun, resolve_shards
from distill.shards import shard_identity
from distill.storage import Location, atomic_write_bytes
from distill.student.checkpoint import (
    checkpoint_bytes,
    load_checkpoint,
    recover_checkpoints,
    resume_point,
    save_checkpoint,
)
from distill.student.curves import Curves, check_trackers
from distill.student.data import ShardSpec, ShardStream, collate
from distill.student.epochlines import epoch_line, training_notes
from distill.student.loss import compute_loss, lr_schedule
from distill.student.metrics import Meter, measure, to_unit
from distill.student.model import build_student, unwrap
from distill.student.self_distill import SelfDistill
from distill.student.sizing import check_batch_memory
from distill.student.sources import check_streams, shown_shards, training_vocabulary, verify_shards
from distill.writelock import Lease

__all__ = ["Session", "TrainOptions", "resolve_device", "train_student"]

logger = logging.getLogger(__name__)

PathSpec = str | os.PathLike[str] | Location


@dataclass
class TrainOptions:
    shards: ShardSpec  # a label run folder, its shards folder, a glob, shard files; paths or URIs
    out: PathSpec  # the training run folder (a path or a URI)
    val_shards: ShardSpec | None = None
    vocab: PathSpec | None = None  # default: the label run's (distill.student.sources)
    resume: bool = False
    device: str = "auto"
    progress: bool = True
    # Check every shard's sha256 against its label run's manifest before training.
    verify_shards: bool = False
    # Train on shards of several label runs (refused otherwise; distill.student.sources).
    allow_mixed: bool = False
    # Told each epoch's line and the notes before the first (distill.student.epochlines);
    # None: printed above the progress bar, or logged at INFO
    say: Callable[[str], None] | None = None


@dataclass
class Session:
    """Where this copy of the loop runs. The local default is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m
    # Called with (epoch metrics, the epoch's checkpoint folder) on every rank.
    report: Callable[[dict[str, Any], Location], None] | None = None
    # A folder with a checkpoint to resume from, if any.
    restore_from: PathSpec | None = None
    # Rank 0 takes the run's writer lock and repairs interrupted checkpoints; False where another
    # process holds the lock for it (the Ray Train driver).
    owns_run: bool = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.mixed_precision == "off":
        return None
    if cfg.mixed_precision == "fp16":
        return torch.float16
    if cfg.mixed_precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _train_steps(stream: ShardStream, batch_size: int) -> int:
    """Batches every rank trains on this epoch: the smallest rank's full batches (at least one),
    so data-parallel ranks step together although row groups differ in size."""
    least = min(stream.rows_per_rank())
    return 0 if least == 0 else max(1, least // batch_size)


def _loader(stream: ShardStream, batch_size: int, workers: int) -> DataLoader[Any]:
    return DataLoader(stream, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                      persistent_workers=False, pin_memory=False)


# ---------------------------------------------------------------------------------------------
# The loop


def _run_epoch(model: torch.nn.Module, loader: DataLoader[Any], steps: int, cfg: TrainConfig,
               device: torch.device, optimizer: torch.optim.Optimizer | None,
               on_step: Callable[[int, torch.Tensor], None] | None = None,
               warned: set[str] | None = None,
               distributed: bool = False,
               sasd: SelfDistill | None = None) -> tuple[dict[str, float], int]:
    """One pass: trains when `optimizer` is given, else evaluates. Returns mean metrics (empty
    when no batch had an example) and the number of rows skipped as bad. The first error a
    stream reports is raised here, in this process; each skipped row is logged once per
    `warned` (the messages already logged)."""
    meter = Meter()
    amp = _autocast_dtype(cfg, device)
    model.train(optimizer is not None)
    warned = set() if warned is None else warned
    skipped = 0
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        if batch["errors"]:
            raise ShardError(batch["errors"][0])
        for message in batch["skipped"]:
            if message not in warned:
                warned.add(message)
                logger.warning("skipped a bad row: %s", message)
        skipped += len(batch["skipped"])
        if "image" not in batch:  # every row of this batch was bad
            if distributed:  # the other ranks wait for this one's gradients: stop them all
                raise ShardError(
                    f"a whole batch of rows was bad ({'; '.join(batch['skipped'][:2])}); a "
                    "data-parallel step cannot skip it on one worker alone")
            continue
        image = to_unit(batch["image"].to(device, non_blocking=True))
        target = batch["target"].to(device, non_blocking=True)
        tokens = batch["tokens"].to(device, non_blocking=True)
        present = batch["present"].to(device)
        with torch.set_grad_enabled(optimizer is not None), \
                torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            outputs = model(image)
            loss, parts = compute_loss(outputs, target, tokens, present, cfg)
            extra = sasd.extra_loss(image, target, tokens, present, cfg, parts) \
                if sasd is not None and optimizer is not None else None
            if extra is not None:  # self-distillation's 2× pass (train.self_distill)
                loss = loss + extra
        if not bool(loss.detach().isfinite()):  # (compute_loss waits for the device already)
            raise TrainingDiverged(f"{'training' if optimizer else 'validation'} loss "
                                   f"{float(loss.detach())} at step {step + 1} of {steps}")
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            if sasd is not None:
                sasd.zero_grad()
            loss.backward()
            optimizer.step()
            if sasd is not None:
                sasd.step()
        n = image.shape[0]
        meter.add("loss", loss, n)
        for name, value in parts.items():
            meter.add(f"loss/{name}", value, n)
        measure(meter, outputs, target, tokens, present)
        if on_step is not None:
            on_step(n, loss.detach())
    return meter.means(), skipped


def train_student(config: Config, options: TrainOptions, session: Session | None = None,
                  workers: int | None = None) -> dict[str, Any]:
    """Train (or resume) the student; returns the last epoch's metrics and where things are."""
    session = session or Session(device=resolve_device(options.device))
    run = StudentRun(options.out)
    if not (session.is_main and session.owns_run):
        return _train(config, options, session, workers, run, None)
    run.check_target()  # before anything is written: refuses a folder distill did not make
    check_trackers(config.train.trackers)
    if options.verify_shards:
        verify_shards([options.shards, *([options.val_shards] if options.val_shards else [])],
                      progress=options.progress)
    with run.lock() as lease:
        return _train(config, options, session, workers, run, lease)


def _train(config: Config, options: TrainOptions, session: Session, workers: int | None,
           run: StudentRun, lease: Lease | None) -> dict[str, Any]:
    cfg = config.train
    chosen = training_vocabulary(config, options)  # refuses shards of mixed label runs
    vocab = chosen.vocab
    token_dim = vocab.dim if vocab is not None else config.student.token_dim
    size = config.student.input_size
    common: dict[str, Any] = {"size": size, "vocab": vocab, "config": cfg, "rank": session.rank,
              "world_size": session.world_size, "max_tokens": config.student.num_tokens,
              "token_dim": token_dim}
    train_stream = ShardStream(options.shards, train=True, bad_rows="skip", **common)
    val_stream = ShardStream(options.val_shards, train=False, bad_rows="skip", **common) \
        if options.val_shards else None
    check_streams(train_stream, val_stream)  # before anything is written
    workers = cfg.num_workers if workers is None else workers
    check_batch_memory(config, max(train_stream.rows_per_rank()), workers, session.device)

    torch.manual_seed(cfg.seed)
    model: torch.nn.Module = build_student(config.student, len(vocab.words) if vocab else 0,
                                           session.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)  # the rate is lr_schedule's
    start_epoch, step, best, stale = 0, 0, math.inf, 0
    state: dict[str, Any] | None = None
    if lease is not None:
        recover_checkpoints(run)
    last_folder = run.checkpoint("last")
    found = resume_point(run)
    restore = Location(session.restore_from) if session.restore_from is not None else None
    if restore is None and not options.resume and found is not None and session.owns_run:
        # (a Ray Train worker group restarted before its first report starts over instead)
        raise DistillError(f"{run} already has a checkpoint; pass --resume to continue it or "
                           "choose another --out")
    if restore is None and options.resume:
        restore = found
    if options.resume and restore is None:
        raise DistillError(f"--resume: no checkpoint in {last_folder}")
    if restore is not None:
        weights, state = load_checkpoint(restore)
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
        best, stale = float(state["best"]), int(state["stale"])
        logger.info("resumed from %s at epoch %d", restore, start_epoch)
    scheduler = lr_schedule(optimizer, cfg, start_epoch, state)
    sasd = SelfDistill(cfg.self_distill, model, session.device, cfg.seed,
                       (state or {}).get("self_distill")) if cfg.self_distill.enabled else None
    history: list[dict[str, Any]] = []
    if session.is_main:
        run.mark()
        # evaluate warns when it scores the student on these
        run.record_training_shards([shard_identity(p) for p in resolve_shards(options.shards)])
        atomic_write_bytes(run.config, dump_toml(config).encode())
        chosen.save(run.vocab)  # predict and evaluate decode tokens with the same words
        history = _read_metrics(run, start_epoch)
    model = session.wrap(model)

    def commit(target: Location, data: bytes) -> None:
        if lease is not None:
            lease.check()
        atomic_write_bytes(target, data)

    last: dict[str, Any] = {}
    warned: set[str] = set()  # bad rows already logged: each once per run, counted every epoch
    distributed = session.world_size > 1
    samples_per_epoch = min(min(train_stream.rows_per_rank()),
                            _train_steps(train_stream, cfg.batch_size) * cfg.batch_size)
    curves = Curves(cfg.trackers, run, step, config_to_dict(config)) \
        if session.is_main and start_epoch < cfg.epochs else None

    def on_step(n: int, loss: torch.Tensor) -> None:
        progress.step(n * session.world_size, loss)
        if curves is not None:
            curves.batch(loss)

    progress = _Progress(cfg.epochs - start_epoch, samples_per_epoch * session.world_size,
                         enabled=options.progress and session.is_main, say=options.say)
    if session.is_main and start_epoch < cfg.epochs:
        for note in training_notes(validated=val_stream is not None,
                                   images=sum(train_stream.rows_per_rank()),
                                   per_epoch=samples_per_epoch * session.world_size,
                                   batch_size=cfg.batch_size):
            progress.say(note)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            lr = float(optimizer.param_groups[0]["lr"])  # learning_rate(epoch, cfg)
            train_stream.set_epoch(epoch)
            steps = _train_steps(train_stream, cfg.batch_size)
            if steps == 0:  # check_streams ruled this out; a guard, not a nan checkpoint
                raise DistillError(f"epoch {epoch}: no rows for rank {session.rank}")
            started = time.monotonic()
            if sasd is not None:
                sasd.begin_epoch(epoch, lr)
            train_metrics, skipped = _run_epoch(
                model, _loader(train_stream, cfg.batch_size, workers), steps, cfg,
                session.device, optimizer,
                on_step=on_step,
                warned=warned, distributed=distributed, sasd=sasd)
            if "loss" not in train_metrics:
                raise DistillError(
                    f"epoch {epoch} trained on no batch: all {skipped} row(s) it read from "
                    f"{shown_shards(train_stream.paths)} were bad (logged above); nothing was written "
                    "for this epoch")
            step += steps
            val_metrics: dict[str, float] = {}
            val_skipped = 0
            if val_stream is not None:
                val_stream.set_epoch(epoch)
                rows = val_stream.rows_per_rank()[session.rank]
                val_metrics, val_skipped = _run_epoch(  # every row of this rank; no grad sync
                    unwrap(model), _loader(val_stream, cfg.batch_size, workers),
                    math.ceil(rows / cfg.batch_size), cfg, session.device, None, warned=warned)
                if "loss" not in val_metrics:
                    raise DistillError(
                        f"epoch {epoch} validated on no row: all {val_skipped} row(s) read from "
                        f"{shown_shards(val_stream.paths)} were bad (logged above); nothing was "
                        "written for this epoch")
            skipped, val_skipped = _all_ranks(session, skipped, val_skipped)
            judged = val_metrics.get("loss", train_metrics.get("loss", math.inf))
            improved = judged < best
            best, stale = (judged, 0) if improved else (best, stale + 1)
            scheduler.step()  # the rate of the next epoch
            last = {"epoch": epoch, "step": step, "lr": lr,
                    "seconds": round(time.monotonic() - started, 3),
                    "train": train_metrics, "val": val_metrics, "best": best, "stale": stale,
                    "skipped_rows": {"train": skipped, "val": val_skipped}}
            state = {"epoch": epoch, "step": step, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                     "best": best, "stale": stale}
            if sasd is not None:  # training-only weights: state.pt, never model.safetensors
                state["self_distill"] = sasd.state_dict()
            if session.is_main:
                model_bytes, state_bytes = checkpoint_bytes(model, state)  # (checks them)
                # metrics, then best, then last: a crash in between redoes this epoch
                history.append(last)
                commit(run.metrics, "".join(json.dumps(m) + "\n" for m in history).encode())
                if curves is not None:
                    curves.epoch(last)
                for which in ("best", "last") if improved else ("last",):
                    if lease is not None:
                        lease.check()
                    save_checkpoint(run, which, model_bytes, state_bytes)
                progress.epoch_done(last)
            if session.report is not None:
                session.report(last, last_folder)
            if stale >= cfg.patience:
                logger.warning("early stop at epoch %d: no better loss for %d epochs", epoch,
                               stale)
                break
    except KeyboardInterrupt:
        logger.warning("interrupted; the last completed epoch's checkpoint is in %s",
                       last_folder)
        raise
    except TrainingDiverged as exc:
        raise TrainingDiverged(
            f"training diverged at epoch {epoch}: {exc}; nothing was written for this epoch; "
            f"lower train.lr_start (now {cfg.lr_start:g})") from None
    finally:
        progress.close()
        if curves is not None:
            curves.close()
    if not last and history:  # resumed at or past train.epochs: nothing ran, nothing changed
        return history[-1]
    if session.is_main:
        commit(run.summary, json.dumps(last, indent=1).encode())
    return last


def _all_ranks(session: Session, *counts: int) -> list[int]:
    """Counts summed over the ranks of a data-parallel run (as they are, in one process)."""
    if session.world_size == 1 or not (torch.distributed.is_available() and
                                       torch.distributed.is_initialized()):
        return list(counts)
    total = torch.tensor(counts, dtype=torch.int64, device=session.device)
    torch.distributed.all_reduce(total)
    return [int(c) for c in total.tolist()]


def _read_metrics(run: StudentRun, before_epoch: int) -> list[dict[str, Any]]:
    """The logged epochs a resume keeps (those before the epoch it starts at)."""
    if before_epoch <= 0 or not run.metrics.is_file():
        return []
    kept = []
    for line in run.metrics.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and int(entry.get("epoch", before_epoch)) < before_epoch:
                kept.append(entry)
    return kept


class _Progress:
    """The bar over all remaining epochs (`distill.progress`): samples/s, loss, ETA."""

    def __init__(self, epochs: int, samples_per_epoch: int, enabled: bool,
                 say: Callable[[str], None] | None = None) -> None:
        self.bar = Progress("train-student", max(0, epochs) * samples_per_epoch, "samples",
                            enabled=enabled and epochs > 0, fields=("loss",)).__enter__()
        self.shown = 0.0
        self.said = say

    def step(self, n: int, loss: torch.Tensor) -> None:
        now = time.monotonic()
        # reading the loss waits for the device: twice a second at most
        if not self.bar.enabled or now - self.shown < 0.5:
            self.bar.advance(n)
            return
        self.shown = now
        self.bar.advance(n, loss=f"{float(loss):.4f}")

    def epoch_done(self, metrics: dict[str, Any]) -> None:
        self.say(epoch_line(metrics))

    def say(self, line: str) -> None:
        if self.said is not None:  # (the CLI's echo: a live bar shows it above itself)
            self.said(line)
        elif not self.bar.note(line):
            logger.info(line)

    def close(self) -> None:
        self.bar.close()
