"""Planning reads the dataset's records a fixed number of times, however many shards the plan
has: an index over every record built per shard (O(images × shards): hours at a million
images) is caught here by counting passes, not by timing."""

from __future__ import annotations

from pathlib import Path

import pytest

import pipelines.plan as plan_module
from distill.coco import Dataset
from pipelines.plan import RunOptions, plan_run
from tests.conftest import label_config, make_coco7


class _CountingList(list):  # type: ignore[type-arg]
    """A list that counts the passes made over it."""

    passes = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        type(self).passes += 1
        return super().__iter__()


def _passes(monkeypatch: pytest.MonkeyPatch, root: Path, out: Path, shard_size: int,
            **options: object) -> int:
    """Passes over the records and problems of one dry plan with shards of `shard_size`."""
    opened = plan_module.open_dataset

    class Counting(_CountingList):
        passes = 0

    def counted(*args: object, **kwargs: object) -> Dataset:
        dataset = opened(*args, **kwargs)
        dataset.records, dataset.problems = Counting(dataset.records), Counting(dataset.problems)
        return dataset

    monkeypatch.setattr(plan_module, "open_dataset", counted)
    config = label_config(root, f"shards.shard_size={shard_size}")
    plan = plan_run(config, RunOptions(out=out, dry_run=True, **options))
    assert sum(len(j.items) for j in plan.jobs) == len(plan.manifest.planned_ids())
    return Counting.passes


def test_a_plan_passes_over_the_records_as_often_for_7_shards_as_for_1(tmp_path, monkeypatch):
    root = make_coco7(tmp_path / "coco")
    one = _passes(monkeypatch, root, tmp_path / "one", 7)
    seven = _passes(monkeypatch, root, tmp_path / "seven", 1)
    assert seven == one


def test_a_grown_plan_passes_over_the_records_as_often_for_7_shards_as_for_1(
        tmp_path, monkeypatch):
    root = make_coco7(tmp_path / "coco")
    counts = []
    for shard_size in (7, 1):
        out = tmp_path / f"run{shard_size}"
        plan_run(label_config(root, f"shards.shard_size={shard_size}"),
                 RunOptions(out=out, limit=2))  # a planned run of 2 images, then grown dry
        counts.append(_passes(monkeypatch, root, out, shard_size))
    assert counts[0] == counts[1]
