"""The student on any filesystem: training from s3:// shards into an s3:// run folder, exact
resume there, checkpoints that appear atomically (and are repaired after a crash), one shard
discovery rule for train-student and evaluate, and a run folder that is not distill's refused."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from distill.cli import app
from distill.config import load_config
from distill.errors import DistillError
from distill.runfolder import StudentRun
from distill.storage import Location
from distill.student.checkpoint import (
    checkpoint_bytes,
    load_checkpoint,
    recover_checkpoints,
    save_checkpoint,
)
from distill.student.predict import find_checkpoint, load_student
from distill.student.train import TrainOptions, train_student
from tests.conftest import s3_keys, upload_folder

TINY = ["student.input_size=64", "train.num_workers=0", "train.batch_size=4"]


def _config(*overrides: str):
    return load_config("demo", overrides=[*TINY, *overrides])


def _sets(*overrides: str) -> list[str]:
    return [arg for o in [*TINY, *overrides] for arg in ("--set", o)]


def _metrics(out: str | Path) -> list[dict]:
    return [json.loads(line) for line in StudentRun(out).metrics.read_text().splitlines()]


def _student_files(*checkpoints: str) -> list[str]:
    files = ["config.toml", "metrics.jsonl", "run.json", "summary.json", "vocab.parquet"]
    files += [f"checkpoints/{c}/{f}" for c in checkpoints
              for f in ("model.safetensors", "state.pt")]
    return sorted(files)


def _run_files(out: str) -> list[str]:
    """The run's keys, TensorBoard's event files (named by time and host) as one name."""
    return sorted({"tensorboard/events" if k.startswith("tensorboard/events.out.tfevents.")
                   else k for k in s3_keys(out)})


@pytest.fixture(scope="module")
def labels_on_s3(labelled_coco7, s3_server, tmp_path_factory):
    """The labelled coco7 run folder uploaded to its own bucket: its s3:// URI."""
    import secrets

    import boto3

    bucket = f"t-labels-{secrets.token_hex(4)}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return upload_folder(labelled_coco7[1], f"s3://{bucket}/coco7")


@pytest.mark.slow
def test_train_student_and_evaluate_from_s3_into_s3(labels_on_s3, s3_bucket, tmp_path):
    out = f"{s3_bucket}/student"
    runner = CliRunner()
    res = runner.invoke(app, ["run", "train-student", "--preset", "demo", "--shards",
                              labels_on_s3, "--out", out, "--epochs", "1", "--device", "cpu",
                              *_sets()])
    assert res.exit_code == 0, res.output
    # Every run file on the object store, none left under a temp name, the lease released.
    assert _run_files(out) == sorted([*_student_files("best", "last"), "tensorboard/events"])
    assert [m["epoch"] for m in _metrics(out)] == [0]
    # TensorBoard's event file was written locally and uploaded whole: it reads back.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event,) = [k for k in s3_keys(out) if k.startswith("tensorboard/")]
    local = tmp_path / "tensorboard"
    local.mkdir()
    (local / Path(event).name).write_bytes(Location(f"{out}/{event}").read_bytes())
    curves = EventAccumulator(str(local))
    curves.Reload()
    (loss,) = curves.Scalars("train/loss")
    assert loss.step == _metrics(out)[0]["step"]
    assert loss.value == pytest.approx(_metrics(out)[0]["train"]["loss"], rel=1e-6)

    # predict's loader and evaluate read the run straight from s3 (config, vocab, checkpoint).
    student = load_student(out)
    assert student.checkpoint == Location(f"{out}/checkpoints/best")
    assert student.vocab is not None and student.config.student.input_size == 64
    res = runner.invoke(app, ["run", "evaluate", "--checkpoint", out, "--shards",
                              f"{labels_on_s3}/shards", "--device", "cpu", "--no-pose"])
    assert res.exit_code == 0, res.output
    doc = json.loads(StudentRun(out).evaluation.read_text())
    assert doc["rows"] == 7 and doc["checkpoint"] == f"{out}/checkpoints/best"
    assert _run_files(out) == sorted([*_student_files("best", "last"), "evaluation.json",
                                      "tensorboard/events"])


@pytest.mark.slow
def test_resume_on_s3_gives_the_same_weights_as_training_straight(labels_on_s3, s3_bucket):
    straight, split = f"{s3_bucket}/straight", f"{s3_bucket}/split"
    train_student(_config("train.epochs=2"),
                  TrainOptions(shards=labels_on_s3, out=straight, progress=False))
    train_student(_config("train.epochs=1"),
                  TrainOptions(shards=labels_on_s3, out=split, progress=False))
    train_student(_config("train.epochs=2"),
                  TrainOptions(shards=labels_on_s3, out=split, resume=True, progress=False))
    a, state_a = load_checkpoint(f"{straight}/checkpoints/last")
    b, state_b = load_checkpoint(f"{split}/checkpoints/last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert state_a["epoch"] == state_b["epoch"] == 1 and state_a["step"] == state_b["step"]
    assert [m["epoch"] for m in _metrics(split)] == [0, 1]
    assert not [k for k in s3_keys(split) if "tmp" in k or k.startswith(".")]
    with pytest.raises(DistillError, match="--resume"):
        train_student(_config("train.epochs=2"),
                      TrainOptions(shards=labels_on_s3, out=split, progress=False))


def _mixed(root: str) -> None:
    """Checkpoints A (published), then B and C interrupted at each step of the protocol."""
    run = StudentRun(root)
    model = torch.nn.Linear(3, 2)
    ckpt = {}
    for name in "ABC":
        with torch.no_grad():
            model.weight.fill_(ord(name))
        ckpt[name] = checkpoint_bytes(model, {"epoch": ord(name), "step": 0})
    last, staged = run.checkpoint("last"), run.staged_checkpoint("last")

    save_checkpoint(run, "last", *ckpt["A"])
    assert load_checkpoint(last)[1]["epoch"] == ord("A")
    assert not staged.exists()

    # B staged whole, then killed half-way through publishing it.
    run.model_file(staged).write_bytes(ckpt["B"][0])
    run.state_file(staged).write_bytes(ckpt["B"][1])
    if last.is_local:  # the folder swap stopped after moving the old folder aside
        os.replace(last.path, run.retired_checkpoint("last").path)
        with pytest.raises(DistillError, match="not a student checkpoint"):
            load_checkpoint(last)
    else:  # the weights were copied, the state not yet: a mixed pair is refused
        run.model_file(last).write_bytes(ckpt["B"][0])
        with pytest.raises(DistillError, match="different saves"):
            load_checkpoint(last)
    recover_checkpoints(run)  # rolls forward: B is the newer whole checkpoint
    weights, state = load_checkpoint(last)
    assert state["epoch"] == ord("B") and float(weights["weight"][0, 0]) == ord("B")
    assert not staged.exists() and not run.retired_checkpoint("last").exists()

    # C killed while being staged (its state never written): dropped, B stays.
    run.model_file(staged).write_bytes(ckpt["C"][0])
    recover_checkpoints(run)
    assert load_checkpoint(last)[1]["epoch"] == ord("B") and not staged.exists()


def test_a_checkpoint_appears_atomically_and_is_repaired_locally(tmp_path):
    _mixed(str(tmp_path / "run"))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last"]


def test_a_checkpoint_appears_atomically_and_is_repaired_on_s3(s3_bucket):
    _mixed(f"{s3_bucket}/run")
    assert s3_keys(f"{s3_bucket}/run") == ["checkpoints/last/model.safetensors",
                                           "checkpoints/last/state.pt"]


@pytest.mark.slow
def test_cli_takes_the_label_run_folder_and_ignores_a_users_parquet(labelled_coco7, tmp_path):
    labels = tmp_path / "labels"
    shutil.copytree(labelled_coco7[1], labels)
    notes = labels / "shards" / "notes.parquet"  # a user's own file: not a shard of the run
    pq.write_table(pa.table({"note": ["keep me"]}), notes)
    out = tmp_path / "student"
    runner = CliRunner()
    res = runner.invoke(app, ["run", "train-student", "--preset", "demo", "--shards",
                              str(labels), "--out", str(out), "--epochs", "1", "--device", "cpu",
                              *_sets()])
    assert res.exit_code == 0, res.output
    assert (out / "vocab.parquet").read_bytes() == (labels / "vocab.parquet").read_bytes()
    res = runner.invoke(app, ["run", "evaluate", "--checkpoint", str(out), "--shards",
                              str(labels), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "evaluation.json").read_text())["rows"] == 7
    assert pq.read_table(notes).to_pylist() == [{"note": "keep me"}]

    # A run folder made before run.json existed (config.toml + checkpoints/) still resumes.
    (out / "run.json").unlink()
    res = runner.invoke(app, ["run", "train-student", "--preset", "demo", "--shards",
                              str(labels / "shards"), "--out", str(out), "--epochs", "2",
                              "--resume", "--device", "cpu", *_sets()])
    assert res.exit_code == 0, res.output
    assert [m["epoch"] for m in _metrics(out)] == [0, 1] and (out / "run.json").is_file()
    assert find_checkpoint(out / "checkpoints" / "last" / "model.safetensors") == \
        Location(out / "checkpoints" / "last")
    assert not list((out / "checkpoints").glob(".*"))  # no staged or retired folders left


def test_out_on_a_folder_distill_did_not_make_is_refused(tmp_path, s3_bucket):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("do not touch")
    runner = CliRunner()
    for out in (str(mine), f"{s3_bucket}/mine"):
        if out.startswith("s3://"):
            Location(f"{out}/thesis.txt").write_bytes(b"do not touch")
        res = runner.invoke(app, ["run", "train-student", "--preset", "demo", "--shards",
                                  str(tmp_path / "nowhere"), "--out", out, "--epochs", "1"])
        assert res.exit_code == 2, res.output
        assert "not a distill student run folder" in res.output and "thesis.txt" in res.output
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.txt"]
    assert (mine / "thesis.txt").read_text() == "do not touch"
    assert s3_keys(f"{s3_bucket}/mine") == ["thesis.txt"]
