"""generate-labels with the data root and the run folder on an S3-compatible store (moto's server
on 127.0.0.1): shards read back with plain pyarrow, SIGKILL + resume equal to a local run with no
temp objects left, one writer per run, `--new-run` leaving a user's objects alone, and no
credential in any log at -vv."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest

from distill.manifest import read_manifest
from distill.runfolder import LabelRun, resolve_shards
from distill.shards import decode_row
from distill.storage import Location
from pipelines.cluster import ray_logs
from pipelines.generate_labels import RunOptions, generate_labels
from tests.conftest import (
    assert_same_sample,
    committed_shards,
    label_config,
    make_coco7,
    run_until,
    s3_keys,
    shard_rows,
    upload_folder,
)

pytestmark = pytest.mark.slow

SETS = ["teachers.text.input_size=160", "shards.shard_size=3", "teachers.depth.batch_size=2"]


def _s3_rows(out: str) -> dict[int, object]:
    """Every sample of a run on S3, read with nothing but pyarrow (+ distill's row decoder)."""
    samples = {}
    for shard in resolve_shards(out):
        table = pq.read_table(str(shard))  # plain pyarrow on the URI
        for row in table.to_pylist():
            assert row["image_id"] not in samples
            samples[row["image_id"]] = decode_row(row)
    return samples


def _cli(root: str, out: str, address: str, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "distill.cli", "run", "generate-labels", "--preset", "demo",
           "--out", out, "--address", address, "--no-live", "--set", f"data.root={root}", *extra]
    for s in SETS:
        cmd += ["--set", s]
    return cmd


def _no_temps(out: str) -> None:
    keys = s3_keys(out)
    assert not [k for k in keys if "/." in f"/{k}"], keys  # no temp objects, no lease
    bucket, _, prefix = out.removeprefix("s3://").partition("/")
    uploads = boto3.client("s3").list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    assert not uploads.get("Uploads"), uploads


def test_sigkill_on_s3_then_resume_equals_a_local_run(tmp_path, s3_bucket, ray_address,
                                                       labelled_coco7):
    local_root, local_out, _ = labelled_coco7
    root = upload_folder(local_root, f"{s3_bucket}/coco")
    out = f"{s3_bucket}/runs/val"
    cmd = _cli(root, out, str(ray_address))
    killed = []
    for point in (-1, 1):  # after planning; after the first shard (more: test_crash_resume)
        code = run_until(cmd, out, point)
        killed.append(code == -signal.SIGKILL)
        if committed_shards(out) >= 0:
            read_manifest(f"{out}/manifest.json")  # whole, whenever it is there
        for shard in LabelRun(out).shards.files("*.parquet"):
            assert pq.ParquetFile(shard.open_input()).metadata.num_rows >= 0  # never torn
    assert killed[1], f"the run finished before the kill after a shard: {killed}"
    assert run_until(cmd, out, None) == 0
    manifest = read_manifest(f"{out}/manifest.json")
    assert all(e.sha256 and e.rows == len(e.image_ids) for e in manifest.shards)
    _no_temps(out)
    got, want = _s3_rows(out), shard_rows(local_out)
    assert sorted(got) == sorted(want)
    for image_id, sample in want.items():
        assert_same_sample(got[image_id], sample)
    assert {k for k in s3_keys(out) if "/" not in k} >= {
        "manifest.json", "quarantine.parquet", "vocab.parquet", "summary.json", "config.toml"}
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    for key in ("manifest.json", "summary.json", "config.toml"):
        assert secret not in Location(f"{out}/{key}").read_text()


def test_a_second_writer_on_an_s3_run_is_refused(s3_bucket, ray_address, labelled_coco7):
    root = upload_folder(labelled_coco7[0], f"{s3_bucket}/coco")
    out = f"{s3_bucket}/run"
    with LabelRun(out).lock():  # this process holds the write lease
        proc = subprocess.run(_cli(root, out, str(ray_address)), capture_output=True,
                              text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "holds the write lease" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert ".lease.json" not in s3_keys(out)  # released on exit


def test_new_run_on_s3_leaves_a_users_objects_alone(s3_bucket, ray_address, labelled_coco7):
    local_root, local_out, _ = labelled_coco7
    root = upload_folder(local_root, f"{s3_bucket}/coco")
    out = upload_folder(local_out, f"{s3_bucket}/run")  # a finished run, copied to S3
    client = boto3.client("s3")
    bucket = s3_bucket.removeprefix("s3://")
    client.put_object(Bucket=bucket, Key="run/shards/notes.parquet", Body=b"mine")
    client.put_object(Bucket=bucket, Key="run/README.txt", Body=b"my notes")
    before = {s.name for s in LabelRun(out).committed_shards()}
    cfg = label_config(root, "shards.shard_size=3")
    result = generate_labels(cfg, RunOptions(out=out, new_run=True, limit=2, live=False))
    keys = s3_keys(out)
    assert "shards/notes.parquet" in keys and "README.txt" in keys
    assert client.get_object(Bucket=bucket, Key="run/shards/notes.parquet")["Body"].read() == \
        b"mine"
    now = {s.name for s in LabelRun(out).committed_shards()}
    assert now == {"val2017-00000.parquet"} and len(before) == 3
    assert not [k for k in keys if k.startswith("shards/") and k.removeprefix("shards/")
                in before - now]  # the old run's other shards are gone
    assert result.summary["images"]["written"] == 2


SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def test_no_credential_reaches_the_console_the_run_folder_or_rays_logs(tmp_path, s3_bucket,
                                                                      ray_address):
    """-vv, as a bug report asks for, on a run whose data and run folder are on S3: a canary
    value in every AWS credential variable of the CLI's environment (moto takes any) appears
    neither on its stdout or stderr, nor in any object of the run folder, nor in the logs the
    driver writes into Ray's session folder."""
    root = upload_folder(make_coco7(tmp_path / "coco"), f"{s3_bucket}/coco")
    out = f"{s3_bucket}/run"
    canaries = {name: f"Canary{name.title().replace('_', '')}{secrets.token_hex(8)}"
                for name in SECRETS}
    cmd = _cli(root, out, str(ray_address))
    cmd.insert(cmd.index("run"), "-vv")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **canaries})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Found credentials in environment variables" in proc.stderr  # the canaries were used
    texts = {"stdout": proc.stdout, "stderr": proc.stderr}
    for key in s3_keys(out):
        texts[f"{out}/{key}"] = Location(f"{out}/{key}").read_bytes().decode("latin-1")
    logs = Path(ray_logs())
    assert logs.is_dir()
    for path in logs.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("latin-1")
    leaks = {name: [where for where, text in texts.items() if value in text]
             for name, value in canaries.items()}
    assert not any(leaks.values()), leaks
