"""`distill run train-student --ray-workers N`: the same training loop under Ray Train.

`TorchTrainer` starts N workers (DDP over gloo on CPU, NCCL on GPUs); each streams its own
share of the shards' row groups (`ShardStream` with its rank and the world size), and every
epoch rank 0 reports the epoch's checkpoint to Ray Train. Shards and the run folder may be local
paths or URIs (s3://…); they travel to the workers as strings, so local paths must be visible at
the same path on every node.

The driver owns the run folder: it checks it is new, empty or a student run, marks it, holds
its writer lock for the whole job and repairs an interrupted checkpoint before the workers start
(`Session.owns_run=False` on the workers). It also refuses, before any worker starts, what would
train on nothing (shards with no rows, fewer row groups than workers: `check_streams`) and, with
`--verify-shards`, shards that differ from their label run's manifest (`verify_shards`), and
`--shards` of several label runs without `--allow-mixed`. It chooses the vocabulary once
(`distill.student.sources`: a rebuilt one is built here, not on every worker), keeps it as the
run's `vocab.parquet` and hands the workers that file. Rank 0 writes the run's files as a local
run does (`distill.student.train`).

Ray Train keeps its own copies of the reported checkpoints under `OUT/ray/<name>/` when OUT is a
local folder; a worker group Ray restarts after a failure resumes from the newest one through
`ray.train.get_checkpoint()`. `--resume` of a later job starts from `OUT/checkpoints/last`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from distill.config import Config, config_to_dict
from distill.errors import DistillError
from distill.runfolder import StudentRun
from distill.storage import Location
from distill.student.checkpoint import recover_checkpoints, resume_point
from distill.student.curves import check_trackers
from distill.student.data import ShardSpec, ShardStream
from distill.student.sources import check_streams, training_vocabulary, verify_shards
from distill.student.train import Session, TrainOptions, train_student
from pipelines.cluster import ray_session

__all__ = ["train_on_ray"]

logger = logging.getLogger(__name__)

RUN_NAME = "train-student"


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    from distill.config import load_config_dict

    config = load_config_dict(loop_config["config"])
    options = TrainOptions(**loop_config["options"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    scratch = Path(tempfile.mkdtemp(prefix="distill-ray-"))

    def report(metrics: dict[str, Any], folder: Location) -> None:
        flat = {"epoch": metrics["epoch"], "loss": metrics["train"].get("loss")}
        if rank != 0:
            ray.train.report(flat)
            return
        if folder.is_local:
            ray.train.report(flat, checkpoint=ray.train.Checkpoint.from_directory(folder.path))
            return
        # Ray Train takes a checkpoint from a local folder: a copy of the object-store one.
        local = scratch / f"report-{metrics['epoch']}"
        local.mkdir()
        for file in (StudentRun.model_file(folder), StudentRun.state_file(folder)):
            (local / file.name).write_bytes(file.read_bytes())
        try:
            ray.train.report(flat, checkpoint=ray.train.Checkpoint.from_directory(str(local)))
        finally:
            shutil.rmtree(local, ignore_errors=True)

    restore: str | Path | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # Ray restarted this job or its workers: its newest checkpoint
        with checkpoint.as_directory() as d:
            shutil.copytree(d, scratch / "ckpt")
        restore = scratch / "ckpt"
    elif loop_config["resume_dir"]:  # --resume of an earlier job on this run folder
        restore = loop_config["resume_dir"]
    session = Session(rank=rank, world_size=world, device=ray.train.torch.get_device(),
                      wrap=ray.train.torch.prepare_model, report=report, restore_from=restore,
                      owns_run=False)  # the driver holds the run's lock
    try:
        train_student(config, options, session, workers=loop_config["dataloader_workers"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _spec(spec: ShardSpec | None) -> str | list[str] | None:
    """Shards or a folder as what travels to the workers: absolute paths or URIs."""
    if spec is None:
        return None
    if isinstance(spec, (str, os.PathLike, Location)):
        return str(Location(spec))
    return [str(Location(s)) for s in spec]


def train_on_ray(config: Config, options: TrainOptions, num_workers: int,
                 gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
                 address: str | None = None, dataloader_workers: int = 0) -> dict[str, Any]:
    """Train with `num_workers` Ray Train workers; returns the final reported metrics."""
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    run = StudentRun(options.out)
    run.check_target()
    check_trackers(config.train.trackers)  # rank 0's worker writes the curves
    if options.verify_shards:  # here, once; not on every worker
        verify_shards([options.shards, *([options.val_shards] if options.val_shards else [])],
                      progress=options.progress)
    footers: dict[str, Any] = {"size": config.student.input_size, "config": config.train,
                               "world_size": num_workers}
    check_streams(ShardStream(options.shards, **footers),
                  ShardStream(options.val_shards, train=False, **footers)
                  if options.val_shards else None)
    chosen = training_vocabulary(config, options)  # refuses mixed label runs; once, here
    opts = {"shards": _spec(options.shards), "out": str(run.root),
            "val_shards": _spec(options.val_shards),
            "vocab": str(run.vocab) if chosen.vocab is not None else None,
            "allow_mixed": options.allow_mixed,
            "resume": False, "device": "auto", "progress": False}
    with run.lock(), contextlib.ExitStack() as cleanup:
        recover_checkpoints(run)
        resume_dir = None
        found = resume_point(run)
        if options.resume:
            if found is None:
                raise DistillError(f"--resume: no checkpoint in {run.checkpoint('last')}")
            resume_dir = str(found)
        elif found is not None:
            raise DistillError(f"{run} already has a checkpoint; pass --resume to continue it or "
                               "choose another --out")
        if run.root.is_local:
            storage = run.root.as_path() / "ray"
        else:
            # Ray Train's own checkpoint copies stay on this machine (a temp folder, removed
            # afterwards): the run's checkpoints are on the object store, and --resume starts
            # from those. Use a local OUT to have Ray Train's copies kept beside them.
            storage = Path(tempfile.mkdtemp(prefix="distill-ray-train-"))
            cleanup.callback(shutil.rmtree, storage, True)
        with ray_session(config.ray, address):
            # claimed once Ray is joined: a first run that cannot join leaves nothing (the lock
            # removes itself and the folder it made from a folder that is no run)
            run.mark()
            chosen.save(run.vocab)  # what the workers read as --vocab
            trainer = TorchTrainer(
                _worker_loop,
                train_loop_config={"config": config_to_dict(config), "options": opts,
                                   "dataloader_workers": dataloader_workers,
                                   "resume_dir": resume_dir},
                scaling_config=ScalingConfig(
                    num_workers=num_workers, use_gpu=gpus_per_worker > 0,
                    resources_per_worker={"CPU": cpus_per_worker,
                                          **({"GPU": gpus_per_worker} if gpus_per_worker else {})}),
                run_config=RunConfig(name=RUN_NAME, storage_path=str(storage),
                                     checkpoint_config=CheckpointConfig(num_to_keep=2),
                                     failure_config=FailureConfig(max_failures=2)),
            )
            try:
                result = trainer.fit()
            except Exception as exc:
                raise DistillError(f"Ray Train run failed: {exc}") from exc
    return dict(result.metrics or {})
