"""The trainer's edges: shards with no rows, an epoch with no batch, bad rows read in DataLoader
workers (skipped and counted; a damaged shard stops in one line), checkpoints caught at every
step of a publish resume from the newest whole copy, --verify-shards, and a resume right after
kill -9 while DataLoader workers ran."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load, save
from typer.testing import CliRunner

from distill.cli import app
from distill.config import load_config
from distill.errors import ConfigError, DistillError, ShardError, TrainingDiverged
from distill.runfolder import StudentRun
from distill.storage import Location, remove_tree
from distill.student import sizing
from distill.student.checkpoint import CHECKPOINT_ID, checkpoint_bytes, load_checkpoint
from distill.student.data import ShardStream
from distill.student.sources import check_streams, verify_shards
from distill.student.train import TrainOptions, train_student
from tests.conftest import upload_folder

TINY = ["student.input_size=64", "train.num_workers=0", "train.batch_size=4"]
SHARD0, SHARD1, SHARD2 = (f"val2017-0000{i}.parquet" for i in range(3))  # 3, 3, 1 rows


def _config(*overrides: str):
    return load_config("demo", overrides=[*TINY, *overrides])


def _sets(*overrides: str) -> list[str]:
    return [arg for o in [*TINY, *overrides] for arg in ("--set", o)]


def _cli(*args: str):
    return CliRunner().invoke(app, ["run", "train-student", "--preset", "demo", "--device", "cpu",
                                    *args])


def _error_lines(output: str) -> list[str]:
    assert "Traceback" not in output and "Original" not in output, output
    return [line for line in output.splitlines() if line.startswith("error:")]


def _copy_shards(labelled_coco7, tmp_path: Path, *names: str) -> Path:
    """The fixture's shards (or some of them), copied: tests corrupt only their copies."""
    folder = tmp_path / "shards"
    folder.mkdir()
    for name in names or (SHARD0, SHARD1, SHARD2):
        shutil.copy(labelled_coco7[1] / "shards" / name, folder / name)
    return folder


def _break_pngs(path: Path, rows: list[int], column: str = "depth_png") -> None:
    """Garbage bytes in one PNG column of some rows; the shard stays valid Parquet."""
    table = pq.read_table(path)
    i = table.schema.get_field_index(column)
    values = table.column(i).to_pylist()
    for r in rows:
        values[r] = b"not a png at all"
    field = table.schema.field(i)
    pq.write_table(table.set_column(i, field, pa.array(values, field.type)), path)


# ---------------------------------------------------------------------------------------------
# 1. Nothing to train on


def test_shards_with_no_rows_are_refused_before_anything_is_written(labelled_coco7, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    table = pq.read_table(labelled_coco7[1] / "shards" / SHARD0)
    for name in ("a.parquet", "b.parquet"):  # valid shards, the distill schema, 0 rows
        pq.write_table(table.slice(0, 0), folder / name)
    out = tmp_path / "run"
    with pytest.raises(DistillError, match=r"--shards: a\.parquet, b\.parquet in .*empty hold 0"):
        train_student(_config("train.epochs=1"),
                      TrainOptions(shards=folder, out=out, progress=False))
    assert not out.exists()
    # Validation shards with no rows would give a nan validation loss: refused the same way.
    with pytest.raises(DistillError, match=r"--val-shards: a\.parquet .*0 rows"):
        train_student(_config("train.epochs=1"),
                      TrainOptions(shards=labelled_coco7[1], val_shards=folder / "a.parquet",
                                   out=out, progress=False))
    assert not out.exists()
    res = _cli("--shards", str(folder / "a.parquet"), "--out", str(out), *_sets())
    assert res.exit_code == 2, res.output
    assert _error_lines(res.output) == [
        f"error: --shards: a.parquet in {folder} holds 0 rows, nothing to train on; label some "
        "images first, or pass other shards"]
    assert not out.exists()


def test_more_ranks_than_row_groups_is_refused(labelled_coco7, tmp_path):
    cfg = _config().train
    shards = labelled_coco7[1] / "shards"  # 3 shards of one row group each
    check_streams(ShardStream(shards, 64, config=cfg, world_size=3), None)
    with pytest.raises(DistillError, match=r"3 non-empty row group.*4 training workers.*1 would "
                                           r"get no rows.*at most 3 workers"):
        check_streams(ShardStream(shards, 64, config=cfg, world_size=4), None)
    # Under Ray Train the driver refuses it before starting any worker (or Ray itself).
    from pipelines.train_student import train_on_ray

    out = tmp_path / "run"
    with pytest.raises(DistillError, match=r"too few for 4 training workers"):
        train_on_ray(_config(), TrainOptions(shards=shards, out=out), num_workers=4)
    assert not out.exists()


def test_an_epoch_without_a_batch_writes_no_checkpoint(labelled_coco7, tmp_path):
    shards = _copy_shards(labelled_coco7, tmp_path, SHARD2)  # one row, image 20
    _break_pngs(shards / SHARD2, [0])  # one bad row is skipped: the epoch has nothing left
    out = tmp_path / "run"
    with pytest.raises(DistillError, match=r"epoch 0 trained on no batch: all 1 row\(s\) it read "
                                           f"from {SHARD2} .* were bad"):
        train_student(_config("train.epochs=1"),
                      TrainOptions(shards=shards, out=out, progress=False))
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    assert not (out / "summary.json").exists()


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_anything_is_written(
        labelled_coco7, tmp_path, monkeypatch):
    """Issue 26: an absurd train.batch_size grew until the kernel killed the run (exit 137)."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       4096 kB\nMemAvailable:   2048 kB\n")
    monkeypatch.setattr(sizing, "MEMINFO", meminfo)
    monkeypatch.setattr(sizing, "CGROUP", tmp_path / "no-cgroup")
    out = tmp_path / "run"
    # 4 examples of 64 px (0.2 MiB each) and their float copy: 3.7 MiB, in 2 MiB
    with pytest.raises(ConfigError, match=r"^train\.batch_size = 4 needs at least 0\.0 GiB \(1 "
                       r"batch\(es\) of 4 64-px examples held at once, 0\.2 MiB each, and the "
                       r"step's float32 copy\) but this machine has 0\.0 GiB available; lower "
                       r"train\.batch_size"):
        train_student(_config("train.epochs=1"),
                      TrainOptions(shards=labelled_coco7[1], out=out, progress=False))
    assert not out.exists()
    # Batches hold a rank's rows at most: 65536 over 7 rows is a batch of 7 (2 MiB more).
    meminfo.write_text(f"MemAvailable: {8 * 1024} kB\n")
    config = _config("train.batch_size=65536")
    sizing.check_batch_memory(config, 7, 0, torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"3 batch\(es\) of 7 "):
        sizing.check_batch_memory(config, 7, 1, torch.device("cpu"))
    # On a GPU the step's float copy is the device's: 7 x 44+3 channels x 64 x 64 x 4 bytes.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**20, 80 * 2**30))
    with pytest.raises(ConfigError, match=r"0\.0 GiB \(the step's float32 copy of 7 examples\) "
                                          r"but cuda has 0\.0 GiB available"):
        sizing.check_batch_memory(config, 7, 0, torch.device("cuda"))


def test_available_memory_is_the_lesser_of_the_machine_and_its_cgroup(tmp_path, monkeypatch):
    meminfo, cgroup = tmp_path / "meminfo", tmp_path / "cgroup"
    cgroup.mkdir()
    meminfo.write_text("MemTotal: 8192 kB\nMemAvailable: 4096 kB\n")
    monkeypatch.setattr(sizing, "MEMINFO", meminfo)
    monkeypatch.setattr(sizing, "CGROUP", cgroup)
    assert sizing.available_memory() == 4096 * 1024  # no cgroup files: the machine's
    (cgroup / "memory.max").write_text("max\n")
    assert sizing.available_memory() == 4096 * 1024
    (cgroup / "memory.max").write_text(f"{3 * 2**20}\n")
    assert sizing.available_memory() == 3 * 2**20


def test_a_loss_that_stops_being_finite_stops_training_and_writes_no_checkpoint(labelled_coco7,
                                                                               tmp_path):
    """Issue 26: a learning rate that made the loss nan trained on, exited 0 and wrote a
    `best`. At 10 (the highest train.lr_start allows) the first Adam step wrecks the weights
    and the second step's loss is nan."""
    shards = _copy_shards(labelled_coco7, tmp_path)  # 7 rows
    out = tmp_path / "run"
    res = _cli("--shards", str(shards), "--out", str(out), "--epochs", "1",
               *_sets("train.lr_start=10", "train.batch_size=2"))  # 3 steps an epoch
    assert res.exit_code == 2, res.output
    assert _error_lines(res.output) == [
        "error: training diverged at epoch 0: training loss nan at step 2 of 3; nothing was "
        "written for this epoch; lower train.lr_start (now 10)"]
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


def test_weights_that_are_not_finite_are_never_checkpointed():
    """A finite loss can still leave nan weights (an overflowing gradient in the last step of
    an epoch): the checkpoint is refused, not written."""
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.bias[1] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"^1 weight tensor\(s\) are not finite \(bias\)"):
        checkpoint_bytes(model, {"epoch": 0})


# ---------------------------------------------------------------------------------------------
# 3. Bad rows in DataLoader workers


@pytest.mark.slow
def test_a_bad_row_in_a_worker_is_skipped_logged_once_and_counted(labelled_coco7, tmp_path,
                                                                  caplog):
    shards = _copy_shards(labelled_coco7, tmp_path)
    _break_pngs(shards / SHARD1, [1])  # image 9
    out = tmp_path / "run"
    # batch_size 1: every row of the epoch is read; two DataLoader worker processes read them.
    with caplog.at_level(logging.WARNING, logger="distill.student"):
        last = train_student(_config("train.epochs=1", "train.batch_size=1"),
                             TrainOptions(shards=shards, out=out, progress=False), workers=2)
    warnings = [r.getMessage() for r in caplog.records if "bad row" in r.getMessage()]
    assert warnings == [
        f"skipped a bad row: shard {shards / SHARD1}, row group 0: image 9 cannot be made into "
        "an example: column depth_png (16 bytes): not a PNG Pillow can read"]
    assert last["skipped_rows"] == {"train": 1, "val": 0}
    assert json.loads((out / "summary.json").read_text())["skipped_rows"]["train"] == 1
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert logged["skipped_rows"] == {"train": 1, "val": 0} and logged["train"]["loss"] > 0
    assert load_checkpoint(out / "checkpoints" / "last")[1]["epoch"] == 0


@pytest.mark.slow
def test_a_damaged_shard_read_in_workers_stops_in_one_line(labelled_coco7, tmp_path):
    shards = _copy_shards(labelled_coco7, tmp_path)
    _break_pngs(shards / SHARD1, [0, 2], column="normals_png")  # 2 of its 3 rows
    out = tmp_path / "run"
    res = _cli("--shards", str(shards), "--out", str(out), "--epochs", "1",
               *_sets("train.num_workers=2", "train.batch_size=1"))
    assert res.exit_code == 2, res.output
    [line] = _error_lines(res.output)
    assert line.startswith(f"error: shard {shards / SHARD1}, row group 0: 2 of its 3 rows "
                           "cannot be made into examples, so the shard looks damaged (the "
                           "latest, image "), line
    assert line.endswith(": column normals_png (16 bytes): not a PNG Pillow can read); re-label "
                         "it, or leave it out of --shards"), line
    assert not (out / "checkpoints").exists()


def test_the_stream_yields_records_for_bad_rows_and_raises_naming_the_row(labelled_coco7,
                                                                        tmp_path):
    shards = _copy_shards(labelled_coco7, tmp_path, SHARD1)
    _break_pngs(shards / SHARD1, [1])
    stream = ShardStream(shards, 32, config=_config().train, train=False, bad_rows="skip")
    items = list(stream)
    assert [int(i["image_id"]) for i in items if "image" in i] == [7, 12]
    assert [i["skipped"] for i in items if "skipped" in i] == [
        f"shard {shards / SHARD1}, row group 0: image 9 cannot be made into an example: column "
        "depth_png (16 bytes): not a PNG Pillow can read"]
    # The default, for evaluate: the same message, raised.
    with pytest.raises(ShardError, match=r"row group 0: image 9 .* column depth_png"):
        list(ShardStream(shards, 32, config=_config().train, train=False))


# ---------------------------------------------------------------------------------------------
# 2. A checkpoint caught at any step of its publication


@pytest.fixture(scope="module")
def one_epoch(labelled_coco7, tmp_path_factory) -> Path:
    """A run folder after one real epoch (its checkpoint is epoch 0)."""
    out = tmp_path_factory.mktemp("one-epoch") / "run"
    train_student(_config("train.epochs=1"),
                  TrainOptions(shards=labelled_coco7[1], out=out, progress=False))
    return out


def _newer(folder: Location) -> tuple[bytes, bytes]:
    """A whole checkpoint one epoch on from the one in `folder` (the same weights, a new id)."""
    weights = load(StudentRun.model_file(folder).read_bytes())
    state = torch.load(io.BytesIO(StudentRun.state_file(folder).read_bytes()),
                       weights_only=True)
    token = secrets.token_hex(8)
    buffer = io.BytesIO()
    scheduler = dict(state["scheduler"])  # a real next epoch has stepped its lr schedule too
    scheduler["last_epoch"] += 1
    scheduler["_step_count"] = scheduler.get("_step_count", 0) + 1
    torch.save({**state, "epoch": state["epoch"] + 1, "step": state["step"] + 1,
                "scheduler": scheduler, "checkpoint": token}, buffer)
    return save(weights, metadata={CHECKPOINT_ID: token}), buffer.getvalue()


def _put(folder: Location, pair: tuple[bytes, bytes], files: str = "both") -> None:
    if files in ("both", "model"):
        StudentRun.model_file(folder).write_bytes(pair[0])
    if files in ("both", "state"):
        StudentRun.state_file(folder).write_bytes(pair[1])


def _move(src: Location, dst: Location) -> None:
    if src.is_local:
        os.replace(src.path, dst.path)
        return
    for file in (StudentRun.model_file, StudentRun.state_file):
        file(dst).write_bytes(file(src).read_bytes())
        file(src).delete()


def _crash_state(run: StudentRun, state: str) -> int:
    """Leave `checkpoints/` as a publish interrupted at `state` would; returns the epoch of the
    newest whole checkpoint there (the one --resume must continue)."""
    last, staged, old = (run.checkpoint("last"), run.staged_checkpoint("last"),
                         run.retired_checkpoint("last"))
    b = _newer(last)  # epoch 1; `last` holds epoch 0
    if state == "staged whole, final not swapped yet":
        _put(staged, b)
        return 1
    if state == "staged whole, old moved aside, final missing":
        _put(staged, b)
        _move(last, old)
        return 1
    if state == "only the old copy, final missing":
        _move(last, old)
        return 0
    if state == "staged partial, old moved aside, final missing":
        _put(staged, b, "model")
        _move(last, old)
        return 0
    if state == "staged partial":
        _put(staged, b, "model")
        return 0
    if state == "published, old not removed yet":
        _move(last, old)
        last.mkdir()
        _put(last, b)
        return 1
    if state == "staged whole, weights copied, state not yet":  # object stores copy files
        _put(staged, b)
        _put(last, b, "model")
        return 1
    if state == "staged whole, first publish, final missing":
        _put(staged, b)
        remove_tree(last)
        return 1
    if state == "best published, last not yet (first epoch)":
        remove_tree(last)  # `best` holds the same epoch 0 (it is published first)
        return 0
    raise AssertionError(state)


LOCAL_STATES = [
    "staged whole, final not swapped yet",
    "staged whole, old moved aside, final missing",
    "only the old copy, final missing",
    "staged partial, old moved aside, final missing",
    "staged partial",
    "published, old not removed yet",
    "best published, last not yet (first epoch)",
]
S3_STATES = [
    "staged whole, final not swapped yet",
    "staged whole, weights copied, state not yet",
    "staged whole, first publish, final missing",
    "staged partial",
    "best published, last not yet (first epoch)",
]


def _resume_after(run: StudentRun, shards: object, state: str, caplog) -> None:
    newest = _crash_state(run, state)
    folder = "best" if state.startswith("best") else "last"
    with caplog.at_level(logging.INFO, logger="distill.student.train"):
        # train.epochs = newest + 1: the resume itself is all there is to do
        last = train_student(_config(f"train.epochs={newest + 1}"),
                             TrainOptions(shards=shards, out=run.root, resume=True,
                                          progress=False))
    assert f"resumed from {run.checkpoint(folder)} at epoch {newest + 1}" in caplog.messages
    assert last["epoch"] == 0  # the fixture's one logged epoch, kept
    assert load_checkpoint(run.checkpoint(folder))[1]["epoch"] == newest
    for leftover in (run.staged_checkpoint("last"), run.retired_checkpoint("last")):
        assert not leftover.exists(), leftover


@pytest.mark.parametrize("state", LOCAL_STATES)
def test_resume_after_a_publish_interrupted_locally(one_epoch, labelled_coco7, tmp_path, state,
                                                   caplog):
    shutil.copytree(one_epoch, tmp_path / "run")
    _resume_after(StudentRun(tmp_path / "run"), labelled_coco7[1], state, caplog)


@pytest.mark.parametrize("state", S3_STATES)
def test_resume_after_a_publish_interrupted_on_s3(one_epoch, labelled_coco7, s3_bucket, state,
                                                  caplog):
    out = upload_folder(one_epoch, f"{s3_bucket}/run")
    _resume_after(StudentRun(out), labelled_coco7[1], state, caplog)


# ---------------------------------------------------------------------------------------------
# 4. --verify-shards


def test_verify_shards_accepts_a_run_and_names_what_differs(labelled_coco7, tmp_path, caplog):
    labels = tmp_path / "labels"
    shutil.copytree(labelled_coco7[1], labels)
    with caplog.at_level(logging.INFO, logger="distill.student.sources"):
        verify_shards([labels, labels / "shards" / SHARD2], progress=False)
    assert sum("matches" in m for m in caplog.messages) == 3

    flipped = labels / "shards" / SHARD1  # the same size, other bytes: only the hash tells
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    cut = labels / "shards" / SHARD2
    cut.write_bytes(cut.read_bytes()[:-10])
    with pytest.raises(DistillError) as err:
        verify_shards([labels], progress=True)
    text = str(err.value)
    assert text.startswith("--verify-shards: 2 of 3 shard(s) differ from their label run's "
                           "manifest") and "\n" not in text
    assert f"{flipped} has sha256 " in text and f"the manifest of {labels} recorded" in text
    assert f"{cut} is " in text and SHARD0 not in text

    # A file beside the run's shards is not in its manifest; a loose shard has no manifest.
    shutil.copy(labelled_coco7[1] / "shards" / SHARD0, labels / "shards" / "extra.parquet")
    loose = tmp_path / "loose" / SHARD0
    loose.parent.mkdir()
    shutil.copy(labelled_coco7[1] / "shards" / SHARD0, loose)
    with pytest.raises(DistillError, match=r"cannot verify 2 of 5 shard\(s\): "
                                           rf".*extra\.parquet is not a committed shard of "
                                           rf".*manifest\.json; {loose} is in no label run"):
        verify_shards([str(labels / "shards" / "*.parquet"), loose], progress=False)


def test_cli_verify_shards_refuses_before_training(labelled_coco7, tmp_path):
    labels = tmp_path / "labels"
    shutil.copytree(labelled_coco7[1], labels)
    bad = labels / "shards" / SHARD0
    bad.write_bytes(bad.read_bytes()[:-1] + b"\0")
    out = tmp_path / "run"
    res = _cli("--shards", str(labels), "--out", str(out), "--verify-shards", *_sets())
    assert res.exit_code == 2, res.output
    [line] = _error_lines(res.output)
    assert line.startswith("error: --verify-shards: 1 of 3 shard(s) differ") and str(bad) in line
    assert not out.exists()
    loose = tmp_path / SHARD2
    shutil.copy(labels / "shards" / SHARD2, loose)
    res = _cli("--shards", str(labels / "shards" / SHARD1), "--val-shards", str(loose), "--out",
               str(out), "--verify-shards", *_sets())
    assert res.exit_code == 2, res.output
    assert _error_lines(res.output) == [
        f"error: --verify-shards: cannot verify 1 of 2 shard(s): {loose} is in no label run "
        "folder (no manifest.json above it), so no checksum was recorded for it"]
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# 4. A killed trainer's DataLoader workers do not keep the run locked


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # the fields after the command name, which may hold spaces: state, ppid, ...
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_resume_right_after_kill_9_is_not_refused_by_orphaned_workers(labelled_coco7, tmp_path):
    """SIGKILL the trainer while its DataLoader workers run: an immediate --resume trains (the
    orphans, which notice their parent's death only every few seconds, hold no lock)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "distill.cli", "run", "train-student", "--preset", "demo",
           "--device", "cpu", "--shards", str(labelled_coco7[1]), "--out", str(out),
           "--epochs", "1000", *_sets("train.num_workers=1", "train.batch_size=1")]
    with (tmp_path / "stderr").open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    workers: list[int] = []
    try:
        state = out / "checkpoints" / "last" / "state.pt"
        # The markers: epoch 0's checkpoint is written, and a later epoch's worker forked.
        deadline = time.monotonic() + 600  # a safety net, not a timing assumption
        while proc.poll() is None and time.monotonic() < deadline and \
                not (state.is_file() and (workers := _children(proc.pid))):
            time.sleep(0.05)
        assert workers and proc.poll() is None, (tmp_path / "stderr").read_text()[-3000:]
        proc.kill()  # the trainer only; its worker lives on until it notices
        proc.wait(timeout=60)
        res = _cli("--shards", str(labelled_coco7[1]), "--out", str(out), "--resume",
                   "--epochs", "2", *_sets("train.batch_size=1"))
        assert res.exit_code == 0, res.output  # not "another distill run is writing"
        assert load_checkpoint(out / "checkpoints" / "last")[1]["epoch"] == 1
    finally:
        proc.kill()
        proc.wait(timeout=60)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

