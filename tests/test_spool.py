"""The local spool of S3 uploads (`distill.spool`): a writer killed with SIGKILL mid-upload
leaves its spool folder (a whole shard at real scale); the next distill process that uploads
(the resume) removes it, never a live writer's, and every writer removes its own at exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parents[1]

# Spools a shard's bytes, says so, and waits (for stdin to close) before the upload.
WRITER = """
import sys
from distill.storage import atomic_output
with atomic_output(sys.argv[1]) as out:
    out.stream.write(b"x" * 4096)
    print("spooling", flush=True)
    sys.stdin.read()
"""
UPLOAD = "import sys; from distill.storage import atomic_write_bytes as w; w(sys.argv[1], b'y')"


def test_a_killed_writers_spool_is_removed_by_the_next_upload_and_a_live_ones_is_kept(
        tmp_path, s3_bucket):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}

    def writer(key: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", WRITER, f"{s3_bucket}/{key}"], cwd=ROOT,
                                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "spooling\n"
        return proc

    killed, live = writer("run/shards/a.parquet"), writer("run/shards/b.parquet")
    spools = {p.name: [f.name for f in p.iterdir()] for p in tmp.glob("distill-spool-*")}
    assert len(spools) == 2, spools
    assert all(len(files) == 1 and files[0].startswith("distill-upload-")
               for files in spools.values()), spools
    killed.kill()
    killed.wait()
    subprocess.run([sys.executable, "-c", UPLOAD, f"{s3_bucket}/run/config.toml"], cwd=ROOT,
                   env=env, check=True, timeout=120)  # the resume
    assert [p.name.split("-")[2] for p in tmp.glob("distill-spool-*")] == [str(live.pid)]
    assert live.stdin is not None
    live.stdin.close()  # the live writer uploads, then exits
    assert live.wait(timeout=120) == 0
    assert list(tmp.iterdir()) == []  # each writer's own spool went at its exit
    bucket = s3_bucket.removeprefix("s3://")
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == ["run/config.toml", "run/shards/b.parquet"]
