"""The CLI killed with SIGKILL at several points of a run, then re-run, ends with the same rows
as an uninterrupted run: no loss, no duplicates, no partial file under a final name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from distill.manifest import read_manifest
from pipelines.generate_labels import RunOptions, generate_labels
from tests.conftest import assert_same_sample, label_config, make_coco7, shard_rows

pytestmark = pytest.mark.slow


def _committed(out: Path) -> int:
    try:
        doc = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return -1  # no manifest yet
    return sum(1 for s in doc["shards"] if s["sha256"])


def _run_until(cmd: list[str], out: Path, point: int | None, timeout: float = 240) -> int:
    """Start the CLI; SIGKILL it as soon as `point` shards are committed (-1: as soon as the
    plan is written). Returns the exit code (-9 when killed)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if point is not None and _committed(out) >= point:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"CLI failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    return proc.returncode


def _check_final_names(out: Path) -> None:
    """Whatever is under a final name is whole: the manifest parses, every shard's footer reads
    and the manifest's checksums of committed shards hold."""
    if (out / "manifest.json").exists():
        read_manifest(out / "manifest.json")
    for path in (out / "shards").glob("*.parquet") if (out / "shards").exists() else []:
        assert pq.ParquetFile(path).metadata.num_rows >= 0  # raises on a torn file


def test_sigkill_at_several_points_then_resume_equals_an_uninterrupted_run(tmp_path,
                                                                          ray_address):
    root = make_coco7(tmp_path / "coco")
    sets = [f"data.root={root}", "teachers.text.input_size=160", "shards.shard_size=2"]
    reference = tmp_path / "reference"
    generate_labels(label_config(root, "shards.shard_size=2"),
                    RunOptions(out=reference, live=False))

    out = tmp_path / "crashed"
    cmd = [sys.executable, "-m", "distill.cli", "run", "generate-labels", "--preset", "demo",
           "--out", str(out), "--address", str(ray_address), "--no-live"]
    for s in [*sets, "teachers.depth.batch_size=2"]:
        cmd += ["--set", s]
    killed = []
    for point in (-1, 1, 3):  # after planning; after the first shard; after the third
        code = _run_until(cmd, out, point)
        killed.append(code == -signal.SIGKILL)
        _check_final_names(out)
    assert sum(killed) >= 2, f"the run finished before most kill points: {killed}"
    assert _run_until(cmd, out, None) == 0

    manifest = read_manifest(out / "manifest.json")
    assert all(e.sha256 and e.rows == len(e.image_ids) for e in manifest.shards)
    assert not list((out / "shards").glob(".*")) and not list(out.glob(".*.tmp-*"))
    got, want = shard_rows(out), shard_rows(reference)
    assert sorted(got) == sorted(want)  # same ids: no loss, no duplicates (shard_rows checks)
    for image_id, sample in want.items():
        assert_same_sample(got[image_id], sample)
