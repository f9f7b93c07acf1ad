"""The CLI killed with SIGKILL at several points of a run, then re-run, ends with the same rows
as an uninterrupted run: no loss, no duplicates, no partial file under a final name."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from distill.manifest import read_manifest
from pipelines.generate_labels import RunOptions, generate_labels
from tests.conftest import (
    LABEL_SETS,
    label_config,
    run_until,
    shard_rows,
    write_coco,
)

pytestmark = pytest.mark.slow


def _check_final_names(out: Path) -> None:
    """Whatever is under a final name is whole: the manifest parses, every shard's footer reads
    and the manifest's checksums of committed shards hold."""
    if (out / "manifest.json").exists():
        read_manifest(out / "manifest.json")
    for path in (out / "shards").glob("*.parquet") if (out / "shards").exists() else []:
        assert pq.ParquetFile(path).metadata.num_rows >= 0  # raises on a torn file


def _same_size_coco(root: Path, n: int = 15) -> Path:
    """`n` images of one size: the depth teacher batches them together, so a batch that mixed
    images of two shards would show in the labels (its output depends on batch neighbours)."""
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48}
              for i in range(1, n + 1)]
    captions = [{"id": 100 + i, "image_id": i, "caption": "a dog on a red sofa"}
                for i in range(1, n + 1)]
    return write_coco(root, "val2017", images, [], captions)


def _raw_rows(out: Path) -> dict[int, dict]:
    """Every row of a run as stored: column values exactly as pyarrow reads them."""
    rows: dict[int, dict] = {}
    for path in sorted((out / "shards").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            assert row["image_id"] not in rows
            rows[row["image_id"]] = row
    return rows


# On top of label_config's. Depth and panoptic only: they batch images (depth's output depends
# on its batch neighbours), which is what a resume must not mix up; text and captions are per
# image, and their columns across a kill and resume are checked byte for byte by
# tests/pipelines/test_object_store.py. Six CLI runs load two teachers instead of four.
SETS = ["shards.shard_size=3", "teachers.depth.batch_size=2", "teachers.text.enabled=false",
        "teachers.caption.enabled=false"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ray_address) -> tuple[Path, Path]:
    """`_same_size_coco` labelled once, uninterrupted, by the teachers SETS leaves on: (dataset
    root, run folder). Both tests compare against it; they must not modify it."""
    root = _same_size_coco(tmp_path_factory.mktemp("same-size") / "coco")
    out = tmp_path_factory.mktemp("reference") / "out"
    generate_labels(label_config(root, *SETS), RunOptions(out=out, live=False))
    return root, out


def test_sigkill_at_five_points_then_resume_is_byte_identical(tmp_path, ray_address,
                                                              reference):
    root, reference = reference
    out = tmp_path / "crashed"
    cmd = [sys.executable, "-m", "distill.cli", "run", "generate-labels", "--preset", "demo",
           "--out", str(out), "--address", str(ray_address), "--no-live"]
    for s in [f"data.root={root}", *LABEL_SETS, *SETS]:  # what label_config sets
        cmd += ["--set", s]
    killed = []
    for point in (-1, 1, 2, 3, 4):  # after planning, then after each of the first 4 shards
        code = run_until(cmd, out, point)
        killed.append(code == -signal.SIGKILL)
        _check_final_names(out)
    assert sum(killed[1:]) >= 2, f"too few kills after committed shards: {killed}"
    assert run_until(cmd, out, None) == 0

    manifest = read_manifest(out / "manifest.json")
    assert all(e.sha256 and e.rows == len(e.image_ids) for e in manifest.shards)
    assert not list((out / "shards").glob(".*")) and not list(out.glob(".*.tmp-*"))
    got, want = _raw_rows(out), _raw_rows(reference)
    assert sorted(got) == sorted(want) == list(range(1, 16))
    for image_id, row in want.items():
        for column, value in row.items():  # every label column, byte for byte
            assert got[image_id][column] == value, (image_id, column)
    # the same bytes make the same files: every shard equals the uninterrupted run's
    ref = read_manifest(reference / "manifest.json")
    assert [e.sha256 for e in manifest.shards] == [e.sha256 for e in ref.shards]


def test_a_changed_batch_size_moves_depth_by_at_most_one_level(tmp_path, ray_address,
                                                               reference):
    """README, Resume: batch sizes may change between a crash and its resume; the labels then
    move by at most one depth16 level (float rounding in batched attention), nothing else."""
    root, reference = reference
    out = tmp_path / "batch1"
    # The reference ran depth in batches of 2 (and panoptic in batches of 3, its shards' size);
    # this run takes one image at a time. Depth is the teacher whose batched attention rounds
    # differently (panoptic is checked byte for byte across resumes above).
    generate_labels(label_config(root, *SETS, "teachers.depth.batch_size=1",
                                 "teachers.panoptic.batch_size=1"),
                    RunOptions(out=out, live=False))
    one, batched = shard_rows(out), shard_rows(reference)
    assert sorted(one) == sorted(batched) == list(range(1, 16))
    for image_id, a in one.items():
        b = batched[image_id]
        step = np.abs(a.depth16.astype(np.int64) - b.depth16.astype(np.int64)).max()
        assert step <= 1, (image_id, step)
        assert np.array_equal(a.panoptic, b.panoptic)
