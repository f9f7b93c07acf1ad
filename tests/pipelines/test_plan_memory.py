"""What a planning driver holds per image: a plan of a million images must fit in a couple of
GB, so neither the parsed annotation files (~5× their size as Python objects) nor every
record's people, captions and `Item` may be held at once. Measured by tracemalloc (what Python
allocates, not the process's RSS, not time), as the growth between a split and one twice its
size, so the interpreter's and the modules' own memory cancel out."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import pytest

import distill.jsonstream
from pipelines.plan import RunOptions, plan_run
from tests.conftest import label_config, write_coco

PEAK_PER_IMAGE = 3000  # bytes; json.loads of the files alone was ~10 kB an image here
HELD_PER_IMAGE = 2000  # bytes held by the finished plan; records and Items were ~5 kB


def _split(root: Path, n: int) -> Path:
    """A COCO split of `n` images (empty files: planning never decodes one), each with two
    people (keypoints, box, a segmentation polygon) and five captions, as COCO's files have."""
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480,
               "write": False} for i in range(1, n + 1)]
    persons = [{"id": 2 * i + k, "image_id": i, "category_id": 1, "iscrowd": 0,
                "keypoints": [float(100 + j + k) for j in range(51)], "num_keypoints": 17,
                "bbox": [10.5 + k, 20.25, 100.0, 200.0], "area": 12345.6,
                "segmentation": [[float(j) for j in range(40)]]}
               for i in range(1, n + 1) for k in range(2)]
    captions = [{"id": 5 * i + k, "image_id": i,
                 "caption": f"A person number {k} standing next to a red bus in a street {i}."}
                for i in range(1, n + 1) for k in range(5)]
    write_coco(root, "val2017", images, persons, captions)
    for img in images:
        (root / "val2017" / img["file_name"]).touch()
    return root


def _planned(tmp_path: Path, n: int) -> tuple[int, int]:
    """(peak, held) bytes that Python allocated planning a dry run of an `n`-image split."""
    root = _split(tmp_path / f"coco{n}", n)
    config = label_config(root, "shards.shard_size=4")
    gc.collect()
    tracemalloc.start()
    try:
        plan = plan_run(config, RunOptions(out=tmp_path / f"run{n}", dry_run=True))
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plan.images_to_process == n
    return peak, held


def test_planning_memory_per_image_is_the_records_own_size(tmp_path, monkeypatch):
    monkeypatch.setattr(distill.jsonstream, "CHUNK", 1 << 16)  # the files span many chunks
    small, large = _planned(tmp_path, 1500), _planned(tmp_path, 3000)
    peak = (large[0] - small[0]) / 1500
    held = (large[1] - small[1]) / 1500
    assert peak < PEAK_PER_IMAGE, f"planning peaks at {peak:.0f} bytes an image"
    assert held < HELD_PER_IMAGE, f"a plan holds {held:.0f} bytes an image"


@pytest.mark.parametrize("shard_size", [4])
def test_a_jobs_items_are_made_when_asked_for_and_match_its_count(tmp_path, shard_size):
    root = _split(tmp_path / "coco", 10)
    plan = plan_run(label_config(root, f"shards.shard_size={shard_size}"),
                    RunOptions(out=tmp_path / "run", dry_run=True))
    assert all(job._items is None for job in plan.jobs)  # nothing made while planning
    job = plan.jobs[1]
    assert [it.image_id for it in job.items] == [5, 6, 7, 8] and job.count == 4
    assert job.items is job.items  # made once
    record = job.items[0].record
    assert record is not None and len(record.persons) == 2 and len(record.captions) == 5
    assert record.persons[1].bbox == (11.5, 20.25, 100.0, 200.0)
    assert record.captions[4] == "A person number 4 standing next to a red bus in a street 5."
