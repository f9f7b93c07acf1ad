"""Training curves beside `metrics.jsonl`: TensorBoard, and W&B or MLflow when asked for.

`train.trackers` (a list; default `["tensorboard"]`, `[]` for none; `--set
train.trackers='["tensorboard", "mlflow"]'`) names where train-student sends the figures that
`metrics.jsonl` holds. Every tracker gets the same ones, from the same dictionary: each epoch's
numbers flattened to tags — `train/loss`, `train/loss/joints`, `train/hdm@0.1/joints`,
`val/…`, `lr`, `skipped_rows/train`, `skipped_rows/val`, `best`, `stale`, `seconds`, `epoch` —
at the global optimiser step the epoch ended on (`step` in `metrics.jsonl`), and every batch's
training loss as `train/batch_loss` at its own step (rank 0's batch in a data-parallel run; the
losses are read from the device once per epoch, not once per step). Only rank 0 writes.

- **tensorboard** (`torch.utils.tensorboard`): event files in `OUT/tensorboard/`
  (`tensorboard --logdir OUT/tensorboard`). A resume adds a new event file there that starts
  with a purge at the step it resumes from, so TensorBoard drops what the interrupted run logged
  past its last checkpoint and the curves continue without doubled points. TensorBoard's writer
  appends to a local file, which an object store cannot do: for an `s3://…` (any URI) `--out`
  the event file is written in a local temporary folder and uploaded whole to
  `OUT/tensorboard/` after every epoch (a few kB per epoch of scalars).
- **mlflow** (`pip install mlflow`, or `mlflow-skinny`): one MLflow run per student run, in the experiment
  `MLFLOW_EXPERIMENT_NAME` (default `distill`) at `MLFLOW_TRACKING_URI` (MLflow's own default
  otherwise: `./mlruns`; a `file:` URI works offline). Its run id is kept in `OUT/trackers.json`,
  so a resume logs into the same MLflow run. MLflow metric names cannot hold `@`, nor be a
  prefix folder of another name: there `train/hdm@0.1/joints` is `train/hdm_0.1_joints` and
  `train/loss/joints` is `train/loss_joints` (`mlflow_name`).
- **wandb** (`pip install wandb`): one W&B run per student run in `WANDB_PROJECT` (default
  `distill`), resumed by the id kept in `OUT/trackers.json`; `WANDB_MODE=offline` works without
  a network.

A tracker that is asked for but not installed is refused before anything is written (exit code
2, one line), as is one that cannot start (a bad tracking URI). MLflow or W&B failing later, in
the middle of a run (a tracking server gone), is logged once and training goes on:
`metrics.jsonl` is the record.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import torch

from distill.errors import DistillError
from distill.runfolder import StudentRun
from distill.storage import atomic_write_bytes

TRACKERS = ("tensorboard", "wandb", "mlflow")
# What each tracker needs imported, and what to install.
_NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
          "mlflow": ("mlflow", "mlflow")}

__all__ = ["TRACKERS", "Curves", "check_trackers", "figures", "mlflow_name"]

logger = logging.getLogger(__name__)


def check_trackers(names: Sequence[str]) -> None:
    """Refuse an unknown tracker, or one whose package is not installed."""
    for name in names:
        if name not in _NEEDS:
            raise DistillError(f"train.trackers: unknown tracker {name!r}; choose from "
                               f"{', '.join(TRACKERS)}")
        module, package = _NEEDS[name]
        if importlib.util.find_spec(module) is None:
            raise DistillError(f"train.trackers names {name!r} but the {package!r} package is "
                               f"not installed: pip install {package}, or drop it from "
                               "train.trackers")


def figures(metrics: dict[str, Any]) -> dict[str, float]:
    """One epoch's entry of `metrics.jsonl` as flat tags → numbers (the module docstring)."""
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}/{key}" if prefix else str(key), inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix] = float(value)

    walk("", {k: v for k, v in metrics.items() if k != "step"})
    return out


class Curves:
    """The trackers of one train-student process (rank 0). `batch` is called with every
    training batch's detached loss, `epoch` with each epoch's `metrics.jsonl` entry."""

    def __init__(self, names: Sequence[str], run: StudentRun, start_step: int,
                 config: dict[str, Any]) -> None:
        check_trackers(names)
        self.run = run
        self.names = list(dict.fromkeys(names))
        self.losses: list[torch.Tensor] = []
        self.step = start_step  # the global step of the last batch logged
        self.tb: Any = None
        self.local: str | None = None  # a temporary folder for a remote run's event files
        self.mlflow: Any = None
        self.wandb: Any = None
        self.failed: set[str] = set()  # trackers that failed to log once (warned)
        try:
            self._start(config)
        except DistillError:
            raise
        except Exception as exc:  # each tracker raises its own (bad URI, unknown run id, …)
            self.close()
            raise DistillError(f"train.trackers: cannot start {', '.join(self.names)}: "
                               f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc

    def _start(self, config: dict[str, Any]) -> None:
        run, start_step = self.run, self.step  # step: the resumed run's, 0 on a first start
        ids = self._ids()
        if "tensorboard" in self.names:
            from torch.utils.tensorboard import SummaryWriter

            folder = run.tensorboard
            if folder.is_local:
                os.makedirs(folder.path, exist_ok=True)
                logdir = folder.path
            else:
                self.local = logdir = tempfile.mkdtemp(prefix="distill-tensorboard-")
            # purge_step: drop what an interrupted run logged past the checkpoint resumed from
            self.tb = SummaryWriter(logdir, purge_step=start_step + 1 if start_step > 0 else None)
        if "mlflow" in self.names:
            import mlflow

            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "distill"))
            known = ids.get("mlflow")  # the MLflow run of this run's first start
            active = mlflow.start_run(run_id=known, run_name=None if known else run.root.name)
            self.mlflow = mlflow
            ids["mlflow"] = active.info.run_id
            if known is None:
                mlflow.log_params(_flat_params(config))
        if "wandb" in self.names:
            import wandb

            ids.setdefault("wandb", wandb.util.generate_id())
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "distill"),
                                    id=ids["wandb"], resume="allow", config=config,
                                    name=run.root.name)
        if {"mlflow", "wandb"} & set(self.names):
            atomic_write_bytes(run.trackers, json.dumps(ids, indent=1).encode())

    def _ids(self) -> dict[str, str]:
        if not self.run.trackers.is_file():
            return {}
        try:
            doc = json.loads(self.run.trackers.read_bytes())
        except ValueError:
            return {}
        return {k: v for k, v in doc.items() if isinstance(v, str)} if isinstance(doc, dict) \
            else {}

    def batch(self, loss: torch.Tensor) -> None:
        self.losses.append(loss.detach().float().reshape(()))

    def epoch(self, metrics: dict[str, Any]) -> None:
        """Log the batches since the last epoch and this epoch's figures (at its last step)."""
        losses = torch.stack(self.losses).tolist() if self.losses else []
        self.losses = []
        first = self.step + 1
        self.step = int(metrics["step"])
        numbers = figures(metrics)
        step = self.step
        if self.tb is not None:
            for k, value in enumerate(losses):
                self.tb.add_scalar("train/batch_loss", value, first + k)
            for tag, value in numbers.items():
                self.tb.add_scalar(tag, value, step)
            self.tb.flush()
            self._upload()
        for name, send in (("mlflow", self._mlflow), ("wandb", self._wandb)):
            if getattr(self, name) is None:
                continue
            try:
                send(losses, first, numbers, step)
            except Exception as exc:  # a tracking server down must not end a long training
                if name not in self.failed:
                    self.failed.add(name)
                    logger.warning("train.trackers: %s did not take epoch %s (%s: %s); "
                                   "training goes on, metrics.jsonl has every epoch", name,
                                   metrics.get("epoch"), type(exc).__name__,
                                   str(exc).splitlines()[0] if str(exc) else "")

    def _mlflow(self, losses: list[float], first: int, numbers: dict[str, float],
                step: int) -> None:
        from mlflow.entities import Metric

        stamp = _millis()
        batch = [Metric("train/batch_loss", v, stamp, first + k) for k, v in enumerate(losses)]
        batch += [Metric(mlflow_name(tag), v, stamp, step) for tag, v in numbers.items()]
        client = self.mlflow.MlflowClient()
        run_id = self.mlflow.active_run().info.run_id
        for n in range(0, len(batch), 1000):  # MLflow's batch limit
            client.log_batch(run_id, metrics=batch[n:n + 1000])

    def _wandb(self, losses: list[float], first: int, numbers: dict[str, float],
               step: int) -> None:
        for k, value in enumerate(losses):
            self.wandb.log({"train/batch_loss": value}, step=first + k)
        self.wandb.log(numbers, step=step)

    def _upload(self) -> None:
        """A remote run: every local event file, whole, to `OUT/tensorboard/`."""
        if self.local is None:
            return
        for name in sorted(os.listdir(self.local)):
            with open(os.path.join(self.local, name), "rb") as fh:
                atomic_write_bytes(self.run.tensorboard / name, fh.read())

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self._upload()
            self.tb = None
        if self.local is not None:
            shutil.rmtree(self.local, ignore_errors=True)
            self.local = None
        if self.mlflow is not None:
            self.mlflow.end_run()
            self.mlflow = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def mlflow_name(tag: str) -> str:
    """A tag as MLflow can store it: no `@`, and no tag that is also a folder of another
    (`train/loss` beside `train/loss/joints`): `/` only after the section."""
    section, sep, rest = tag.replace("@", "_").partition("/")
    return f"{section}{sep}{rest.replace('/', '_')}"


def _millis() -> int:
    import time

    return int(time.time() * 1000)


def _flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:500]  # MLflow's limit on a parameter value
    return out
