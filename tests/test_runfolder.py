"""The run-folder owner: what distill may write into and delete, shard discovery, and the
single-writer lock (fcntl locally, a conditional-write lease on S3)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distill.errors import DistillError, RunLocked, StorageError
from distill.runfolder import (
    LabelRun,
    StudentRun,
    find_label_run,
    parse_shard_name,
    resolve_shards,
    shard_name,
)
from distill.storage import Location, atomic_write_bytes
from distill.writelock import writer_active
from pipelines.generate_labels import RunOptions, generate_labels
from tests.conftest import label_config, s3_keys, upload_folder


def _lease(uri: str) -> dict:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    body = boto3.client("s3").get_object(Bucket=bucket, Key=f"{prefix}/.lease.json")["Body"]
    return json.loads(body.read())


def _put_lease(uri: str, **fields: object) -> None:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/.lease.json",
                                  Body=json.dumps(fields).encode())


# ---------------------------------------------------------------------------------------------
# Locations


def test_locations_parse_paths_and_uris(tmp_path):
    assert Location("s3://b/run/").path == "b/run"
    assert str(Location("s3://b/run") / "shards" / "x.parquet") == "s3://b/run/shards/x.parquet"
    assert str(Location(str(tmp_path / "x")).parent) == str(tmp_path)
    assert Location(f"file://{tmp_path}/a") == Location(tmp_path / "a")
    assert str(Location(__import__("pathlib").Path("s3://b/k"))) == "s3://b/k"  # Path-mangled
    assert Location("s3://b/run/shards").parent == Location("s3://b/run")
    with pytest.raises(StorageError, match="unknown scheme"):
        Location("ftp://host/x")
    with pytest.raises(StorageError, match="names no bucket"):
        Location("s3:///x")


def test_atomic_writes_on_s3_leave_only_the_final_object(s3_bucket):
    target = f"{s3_bucket}/run/manifest.json"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert Location(target).read_bytes() == b"two"
    assert s3_keys(s3_bucket) == ["run/manifest.json"]


# ---------------------------------------------------------------------------------------------
# Ownership and discovery


def test_out_on_a_folder_that_is_not_a_run_is_refused_and_left_alone(tmp_path, synthetic_coco):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.toml").write_text("my own config")
    proc = subprocess.run(
        [sys.executable, "-m", "distill.cli", "run", "generate-labels", "--preset", "demo",
         "--set", f"data.root={synthetic_coco}", "--out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "is not a distill label run folder" in proc.stderr and "config.toml" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (out / "config.toml").read_text() == "my own config"
    assert sorted(p.name for p in out.iterdir()) == ["config.toml"]


def test_a_failed_first_run_leaves_no_folder(tmp_path):
    out = tmp_path / "new"
    proc = subprocess.run(
        [sys.executable, "-m", "distill.cli", "run", "generate-labels", "--preset", "demo",
         "--set", f"data.root={tmp_path / 'nowhere'}", "--out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert not out.exists()


@pytest.mark.slow
def test_new_run_removes_only_what_the_run_recorded(tmp_path, ray_address, labelled_coco7):
    root, labelled, _ = labelled_coco7
    out = tmp_path / "run"
    shutil.copytree(labelled, out)
    pq.write_table(pa.table({"x": [1]}), out / "shards" / "notes.parquet")
    (out / "README.md").write_text("mine")
    old = sorted(p.name for p in (out / "shards").glob("val2017-*.parquet"))
    # the new run may label differently: one cheap teacher (what is cleared is the point)
    generate_labels(label_config(root, *[f"teachers.{role}.enabled=false"
                                         for role in ("panoptic", "text", "caption")]),
                    RunOptions(out=out, new_run=True, limit=1, live=False))
    assert pq.read_table(out / "shards" / "notes.parquet").column("x").to_pylist() == [1]
    assert (out / "README.md").read_text() == "mine"
    now = sorted(p.name for p in (out / "shards").glob("val2017-*.parquet"))
    assert now == ["val2017-00000.parquet"] and len(old) == 3  # the old run's others are gone
    assert pq.read_table(out / "shards" / now[0]).num_rows == 1  # and shard 0 is the new one
    # every command that takes shards sees the run's shards, not the user's file
    for spec in (out, out / "shards"):
        assert [s.name for s in resolve_shards(spec)] == now
    assert find_label_run(out / "shards" / now[0]).root == Location(out)


def test_commit_records_are_the_runs_own_files_and_only_those(tmp_path):
    """A killed run's commit records (and their temps) are cleared with the run; a file of the
    user's in manifest.d/ that no planned shard names is left alone."""
    run = LabelRun(tmp_path)
    planned = ["val2017-00000.parquet", "val2017-00001.parquet"]
    for f in (run.commit_record(planned[0]), run.records / ".val2017-00001.json.tmp-1-0a1b2c3d",
              run.records / "notes.json"):
        atomic_write_bytes(f, b"{}")
    assert [f.name for f in run.commit_records(planned)] == ["val2017-00000.json"]
    assert run.remove_stale_temps(planned) == 1
    assert run.clear(planned) == 1
    assert [f.name for f in run.records.iterdir()] == ["notes.json"]


def test_resolve_shards_takes_folders_globs_files_and_lists(tmp_path, labelled_coco7):
    run = labelled_coco7[1]
    shards = sorted((run / "shards").glob("*.parquet"))
    names = [p.name for p in shards]
    assert [s.name for s in resolve_shards(run)] == names
    assert [s.name for s in resolve_shards(str(run / "shards" / "*-0000[01].parquet"))] == \
        names[:2]
    assert [s.name for s in resolve_shards([shards[2], shards[0]])] == [names[2], names[0]]
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(shards[0], loose / "a.parquet")
    assert [s.name for s in resolve_shards(loose)] == ["a.parquet"]
    with pytest.raises(DistillError, match="does not exist"):
        resolve_shards(tmp_path / "missing")
    with pytest.raises(DistillError, match="no shard matches"):
        resolve_shards(str(tmp_path / "*.parquet"))


def student_run_folder(root, trained_on: list | None = None):
    """What train-student leaves: run.json, config.toml, metrics.jsonl, vocab.parquet and
    checkpoints/last (contents stand-ins: only the layout matters here)."""
    from distill.runfolder import StudentRun

    run = StudentRun(root)
    root.mkdir(parents=True)
    run.mark()
    (root / "config.toml").write_text("# the student's\n")
    (root / "metrics.jsonl").write_text('{"epoch": 1}\n')
    pq.write_table(pa.table({"word": ["cat"], "count": [3]}), root / "vocab.parquet")
    (root / "checkpoints" / "last").mkdir(parents=True)
    (root / "checkpoints" / "last" / "model.safetensors").write_bytes(b"weights")
    if trained_on:
        run.record_training_shards([{"path": str(p), "name": p.name, "fingerprint": "f"}
                                    for p in trained_on])
    return run


def test_a_student_run_or_a_runs_own_tables_are_not_shards(tmp_path):
    """Every command that takes shards says what a train-student run folder (or its
    checkpoints, or a run's vocab.parquet / quarantine.parquet) is, and what it takes."""
    takes = "pass a generate-labels run folder, its shards/ folder, a glob or .parquet shards"
    labels = tmp_path / "labels" / "shards"
    student = student_run_folder(tmp_path / "student", [labels / shard_name("val2017", 0)])
    with pytest.raises(DistillError) as caught:
        resolve_shards(student.root)
    assert str(caught.value) == (
        f"{student.root} is a train-student run folder (checkpoints/, metrics.jsonl, "
        f"vocab.parquet), not labels; it was trained on the shards in {labels}: {takes}")
    with pytest.raises(DistillError, match="is a checkpoint of the train-student run"):
        resolve_shards(student.root / "checkpoints" / "last")
    with pytest.raises(DistillError, match="holds the checkpoints of the train-student run"):
        resolve_shards(student.root / "checkpoints")
    with pytest.raises(DistillError, match=r"is a run's vocabulary \(vocab.parquet\), not a "
                       "label shard"):
        resolve_shards(student.root / "vocab.parquet")
    # a plain folder's vocab.parquet or quarantine.parquet is not one of its shards either
    loose = tmp_path / "loose"
    loose.mkdir()
    for name in ("vocab.parquet", "quarantine.parquet"):
        shutil.copy(student.root / "vocab.parquet", loose / name)
    with pytest.raises(DistillError, match=rf"no \*\.parquet shards in {loose}: {takes}"):
        resolve_shards(loose)
    shutil.copy(student.root / "vocab.parquet", loose / "mine.parquet")
    assert [s.name for s in resolve_shards(loose)] == ["mine.parquet"]


def test_resolve_shards_on_s3(s3_bucket, labelled_coco7):
    uri = upload_folder(labelled_coco7[1], f"{s3_bucket}/run")
    want = [p.name for p in sorted((labelled_coco7[1] / "shards").glob("*.parquet"))]
    assert [s.name for s in resolve_shards(uri)] == want
    assert [s.name for s in resolve_shards(f"{uri}/shards/*.parquet")] == want
    assert find_label_run(f"{uri}/shards").root == Location(uri)


# ---------------------------------------------------------------------------------------------
# One writer


def test_local_lock_refuses_a_second_writer(tmp_path):
    run = LabelRun(tmp_path / "run")
    with run.lock():
        code = ("import sys; from distill.runfolder import LabelRun\n"
                "try:\n    LabelRun(sys.argv[1]).lock().__enter__()\n"
                "except Exception as e:\n    print(type(e).__name__); sys.exit(3)\n")
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 3 and "RunLocked" in proc.stdout
    assert not (tmp_path / "run").exists()  # nothing but the lock was written: removed


def test_a_completed_run_leaves_no_lock_file(labelled_coco7, tmp_path):
    _, out, _ = labelled_coco7
    assert (out / "manifest.json").is_file() and not (out / ".lock").exists()
    run = StudentRun(tmp_path / "student")
    with run.lock():
        assert (tmp_path / "student" / ".lock").is_file()
        run.mark()
    assert sorted(p.name for p in (tmp_path / "student").iterdir()) == ["run.json"]


def test_a_lock_file_distill_did_not_make_is_never_removed(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text("somebody else's\n")
    run = StudentRun(tmp_path / "run")
    with run.lock():
        run.mark()
    assert (tmp_path / "run" / ".lock").read_text() == "somebody else's\n"
    with LabelRun(tmp_path / "new").lock():  # made here, then replaced: the new one stays
        (tmp_path / "new" / ".lock").unlink()
        (tmp_path / "new" / ".lock").write_text("another writer's\n")
    assert (tmp_path / "new" / ".lock").read_text() == "another writer's\n"


def test_a_forked_child_does_not_keep_the_lock_after_the_writer_dies(tmp_path):
    """A process forked while the lock is held (a DataLoader worker) shares the lock's open
    file description; were it to keep its copy, the run would stay locked after the writer was
    killed, until the orphan exited. Its copy is dropped at fork: the moment the writer is
    reaped, the run is free, while the child still lives."""
    code = ("import multiprocessing as mp, sys, time\n"
            "from distill.runfolder import StudentRun\n"
            "with StudentRun(sys.argv[1]).lock():\n"
            "    child = mp.get_context('fork').Process(target=time.sleep, args=(300,))\n"
            "    child.start()\n"
            "    print(child.pid, flush=True)\n"
            "    time.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")],
                            stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        child = int(proc.stdout.readline())  # the marker: the child is running
        assert writer_active(Location(tmp_path / "run"))
        proc.kill()  # SIGKILL: the writer never unlocks
        proc.wait(timeout=60)
        os.kill(child, 0)  # the orphan still runs (it sleeps for minutes)...
        assert not writer_active(Location(tmp_path / "run"))  # ...and holds no lock
        with StudentRun(tmp_path / "run").lock():
            pass
    finally:
        proc.kill()
        proc.wait(timeout=60)
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


def test_s3_lease_is_exclusive_renewed_and_released(s3_bucket, monkeypatch):
    monkeypatch.setenv("DISTILL_LEASE_SECONDS", "0.6")
    uri = f"{s3_bucket}/run"
    with LabelRun(uri).lock() as lease:
        first = _lease(uri)
        with pytest.raises(RunLocked, match="holds the write lease"), LabelRun(uri).lock():
            pass
        deadline = time.monotonic() + 60  # renewed while the run lives (every TTL/3)
        while _lease(uri)["renewed"] == first["renewed"] and time.monotonic() < deadline:
            time.sleep(0.05)  # the interval of a poll for the renewal
        assert _lease(uri)["renewed"] > first["renewed"]
        lease.check()
    assert ".lease.json" not in s3_keys(s3_bucket)


def test_s3_lease_of_a_dead_or_expired_writer_is_taken_over(s3_bucket):
    uri = f"{s3_bucket}/run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _put_lease(uri, token="x", host=socket.gethostname(), pid=dead.pid,
               renewed=time.time(), expires=time.time() + 3600)
    with LabelRun(uri).lock():  # the holder's process is gone: taken at once
        assert _lease(uri)["pid"] == os.getpid()
    _put_lease(uri, token="y", host="elsewhere", pid=1, renewed=time.time(),
               expires=time.time() + 3600)
    with pytest.raises(RunLocked, match="host elsewhere"), LabelRun(uri).lock():
        pass
    _put_lease(uri, token="z", host="elsewhere", pid=1, renewed=0, expires=time.time() - 1)
    with LabelRun(uri).lock():  # expired: taken over
        assert _lease(uri)["host"] == socket.gethostname()


def test_a_writer_that_loses_its_lease_stops_before_committing(s3_bucket):
    """A writer paused past its lease (SIGSTOP) learns at its next commit that another writer
    took the run over — not at its renew thread's next turn, which may come after the commit.
    The default lease (60 s) is never renewed by the thread during this test."""
    uri = f"{s3_bucket}/run"
    with LabelRun(uri).lock() as lease:
        lease.check()
        _put_lease(uri, token="thief", host="elsewhere", pid=1, renewed=time.time(),
                   expires=time.time() + 3600)  # another writer took it over
        with pytest.raises(RunLocked, match="lost the write lease"):
            lease.check()
        assert not lease.holds()  # lost for good
    assert _lease(uri)["token"] == "thief"  # not deleted by the loser


def test_writing_a_run_to_a_store_without_a_lease_is_refused():
    with pytest.raises(DistillError, match="which it implements for s3"), \
            LabelRun("gs://bucket/run").lock():
        pass


def test_shard_names_carry_the_index_only_and_older_names_still_parse():
    assert shard_name("train2017", 42) == "train2017-00042.parquet"
    assert shard_name("train2017", 123456) == "train2017-123456.parquet"
    assert parse_shard_name("train2017-00042.parquet") == ("train2017", 42, None)
    assert parse_shard_name("s3://b/run/shards/train2017-00042-of-00119.parquet") == \
        ("train2017", 42, 119)
    assert parse_shard_name("my-split-00003.parquet") == ("my-split", 3, None)
    with pytest.raises(DistillError):
        parse_shard_name("train2017.parquet")
    with pytest.raises(ValueError):
        shard_name("x", -1)
