"""`distill run train-student --num-workers N`: the same training loop under Ray Train.

`TorchTrainer` starts N workers (DDP over gloo on CPU, NCCL on GPUs); each streams its own
share of the shards' row groups (`ShardStream` with its rank and the world size), and every
epoch rank 0 reports the epoch's checkpoint to Ray Train. Ray Train keeps them under
`OUT/ray/<name>/`; a job started again with the same run folder (or a worker group Ray restarts
after a failure) resumes from the newest one through `ray.train.get_checkpoint()`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from distill.config import Config, config_to_dict
from distill.errors import DistillError
from distill.student.train import Session, TrainOptions, train_student
from pipelines.cluster import ray_session

__all__ = ["train_on_ray"]

logger = logging.getLogger(__name__)

RUN_NAME = "train-student"


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import shutil

    import ray.train
    import ray.train.torch

    from distill.config import load_config_dict

    config = load_config_dict(loop_config["config"])
    options = TrainOptions(**loop_config["options"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    def report(metrics: dict[str, Any], folder: Path) -> None:
        flat = {"epoch": metrics["epoch"], "loss": metrics["train"].get("loss")}
        if rank == 0:
            ray.train.report(flat, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))
        else:
            ray.train.report(flat)

    restore: Path | None = None
    checkpoint = ray.train.get_checkpoint()
    scratch = Path(tempfile.mkdtemp(prefix="distill-restore-"))
    if checkpoint is not None:  # Ray restarted this job or its workers: its newest checkpoint
        with checkpoint.as_directory() as d:
            shutil.copytree(d, scratch / "ckpt")
        restore = scratch / "ckpt"
    elif loop_config["resume_dir"]:  # --resume of an earlier job on this run folder
        restore = Path(loop_config["resume_dir"])
    session = Session(rank=rank, world_size=world, device=ray.train.torch.get_device(),
                      wrap=ray.train.torch.prepare_model, report=report, restore_from=restore)
    try:
        train_student(config, options, session, workers=loop_config["dataloader_workers"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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

    out = options.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage = out / "ray"
    # Paths travel to workers as absolute strings; they must be visible at the same path.
    opts = {"shards": options.shards.resolve(), "out": out,
            "val_shards": options.val_shards.resolve() if options.val_shards else None,
            "vocab": options.vocab.resolve() if options.vocab else None,
            "resume": False, "device": "auto", "progress": False}
    resume_dir = None
    if options.resume:
        last = out / "checkpoints" / "last"
        if not last.is_dir():
            raise DistillError(f"--resume: no checkpoint in {last}")
        resume_dir = str(last)
    with ray_session(config.ray, address):
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
