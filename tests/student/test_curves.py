"""Training curves where researchers look: TensorBoard event files that hold exactly the
figures of metrics.jsonl and continue across a resume; trackers that are not installed are
refused before anything is written."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distill.config import load_config
from distill.errors import DistillError
from distill.student.curves import figures, mlflow_name
from distill.student.train import TrainOptions, train_student


def _config(*overrides: str):
    return load_config("demo", overrides=[
        "student.input_size=64", "train.num_workers=0", "train.batch_size=4", *overrides])


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep them all
    curves.Reload()
    return {tag: [(e.step, e.value) for e in curves.Scalars(tag)]
            for tag in curves.Tags()["scalars"]}


def test_figures_are_the_numbers_of_a_metrics_line_flattened():
    line = {"epoch": 3, "step": 12, "lr": 2e-4, "seconds": 1.5, "best": 0.5, "stale": 0,
            "train": {"loss": 0.7, "hdm@0.1/joints": 0.25}, "val": {},
            "skipped_rows": {"train": 1, "val": 0}}
    assert figures(line) == {"epoch": 3.0, "lr": 2e-4, "seconds": 1.5, "best": 0.5,
                             "stale": 0.0, "train/loss": 0.7, "train/hdm@0.1/joints": 0.25,
                             "skipped_rows/train": 1.0, "skipped_rows/val": 0.0}
    assert mlflow_name("train/hdm@0.1/joints") == "train/hdm_0.1_joints"
    assert mlflow_name("train/loss") == "train/loss" and mlflow_name("lr") == "lr"


@pytest.mark.slow
def test_tensorboard_holds_the_figures_of_metrics_jsonl_and_a_resume_continues_them(
        labelled_coco7, tmp_path):
    shards = labelled_coco7[1] / "shards"
    out = tmp_path / "run"
    train_student(_config("train.epochs=2"),
                  TrainOptions(shards=shards, val_shards=shards, out=out, progress=False))
    train_student(_config("train.epochs=3"),
                  TrainOptions(shards=shards, val_shards=shards, out=out, resume=True,
                               progress=False))
    log = _metrics(out)
    assert [m["epoch"] for m in log] == [0, 1, 2]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one per run
    scalars = _scalars(out / "tensorboard")
    # Every figure of every epoch, at the step the epoch ended on, once (float32 in the file).
    expected: dict[str, list[tuple[int, float]]] = {}
    for m in log:
        for tag, value in figures(m).items():
            expected.setdefault(tag, []).append((m["step"], float(np.float32(value))))
    batches = scalars.pop("train/batch_loss")
    assert scalars == expected
    assert {"val/loss", "train/loss/joints", "train/hdm@0.1/joints", "lr",
            "skipped_rows/train", "skipped_rows/val"} <= scalars.keys()
    assert [lr for _, lr in scalars["lr"]] == [float(np.float32(m["lr"])) for m in log]
    # One loss per training batch, steps 1..last, none doubled by the resume.
    assert [s for s, _ in batches] == list(range(1, log[-1]["step"] + 1))
    assert all(np.isfinite(v) and v > 0 for _, v in batches)


@pytest.mark.slow
def test_a_resume_drops_the_curves_an_interrupted_run_logged_past_its_checkpoint(
        labelled_coco7, tmp_path):
    """A run that logged an epoch and died before its checkpoint: TensorBoard's purge at the
    resumed step keeps one point per step, the redone epoch's."""
    import shutil

    shards = labelled_coco7[1] / "shards"
    out = tmp_path / "run"
    train_student(_config("train.epochs=1"), TrainOptions(shards=shards, out=out,
                                                          progress=False))
    kept = tmp_path / "epoch0"
    shutil.copytree(out / "checkpoints", kept)
    train_student(_config("train.epochs=2"), TrainOptions(shards=shards, out=out, resume=True,
                                                          progress=False))
    shutil.rmtree(out / "checkpoints")  # as if epoch 1's checkpoint never made it
    shutil.copytree(kept, out / "checkpoints")
    train_student(_config("train.epochs=2"), TrainOptions(shards=shards, out=out, resume=True,
                                                          progress=False))
    log = _metrics(out)
    scalars = _scalars(out / "tensorboard")
    assert [s for s, _ in scalars["train/loss"]] == [m["step"] for m in log]
    assert [v for _, v in scalars["train/loss"]] == \
        [float(np.float32(m["train"]["loss"])) for m in log]
    assert [s for s, _ in scalars["train/batch_loss"]] == list(range(1, log[-1]["step"] + 1))


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_tracker_that_is_not_installed_is_refused_before_anything_is_written(
        tracker, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == tracker else real(name, *a))
    out = tmp_path / "run"
    with pytest.raises(DistillError, match=f"pip install {tracker}"):
        train_student(_config(f'train.trackers=["tensorboard", "{tracker}"]'),
                      TrainOptions(shards=tmp_path / "none", out=out, progress=False))
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_the_cli_says_so_in_one_line_with_exit_code_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "run", "train-student",
                           "--preset", "demo", "--shards", str(tmp_path), "--out",
                           str(tmp_path / "run"), "--set", 'train.trackers=["wandb"]'],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "pip install wandb" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow not installed")
def test_mlflow_logs_the_same_figures_into_one_run_across_a_resume(labelled_coco7, tmp_path,
                                                                   monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: a file store, offline
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "curves-test")
    shards = labelled_coco7[1] / "shards"
    out = tmp_path / "run"
    trackers = 'train.trackers=["mlflow"]'
    train_student(_config("train.epochs=1", trackers), TrainOptions(shards=shards, out=out,
                                                                    progress=False))
    train_student(_config("train.epochs=2", trackers),
                  TrainOptions(shards=shards, out=out, resume=True, progress=False))
    assert not (out / "tensorboard").exists()  # only what was asked for
    run_id = json.loads((out / "trackers.json").read_text())["mlflow"]
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("curves-test").experiment_id])
    assert run.info.run_id == run_id and run.data.params["train.epochs"] == "1"
    log = _metrics(out)
    tags = set(figures(log[0]))
    assert {"train/loss", "train/loss/joints", "train/hdm@0.1/joints", "lr",
            "skipped_rows/train"} <= tags
    for tag in tags:  # every figure of every epoch, at its step, once
        history = sorted((m.step, m.value)
                         for m in client.get_metric_history(run_id, mlflow_name(tag)))
        assert history == [(m["step"], figures(m)[tag]) for m in log], tag
    steps = sorted(m.step for m in client.get_metric_history(run_id, "train/batch_loss"))
    assert steps == list(range(1, log[-1]["step"] + 1))


def test_a_tracker_failing_mid_run_is_warned_about_once_and_training_goes_on(tmp_path,
                                                                           caplog):
    from types import SimpleNamespace

    from distill.runfolder import StudentRun
    from distill.student.curves import Curves

    calls = []

    def broken() -> None:
        calls.append(1)
        raise ConnectionError("tracking server gone\nsecond line")

    curves = Curves([], StudentRun(tmp_path / "run"), 0, {})
    curves.mlflow = SimpleNamespace(MlflowClient=broken)
    line = {"epoch": 0, "step": 3, "train": {"loss": 1.0}}
    with caplog.at_level("WARNING", logger="distill.student.curves"):
        curves.epoch(line)
        curves.epoch({**line, "epoch": 1, "step": 6})
    assert len(calls) == 2  # tried every epoch
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "mlflow did not take epoch 0 (ConnectionError: tracking server gone)" in warning
    curves.mlflow = None
    curves.close()
