"""The object store window of the generate-labels graph (`pipelines.sizing.object_store_budget`):
a fixed number of blocks per worker slot, whatever the number of images (issue 16: without it
Ray Data let the fast stages fill half the object store and the driver's RSS grew with the
number of images)."""

from __future__ import annotations

from distill.config import load_config
from pipelines.cluster import ClusterInfo
from pipelines.sizing import BLOCKS_IN_FLIGHT, IMAGE_BYTES, object_store_budget

ROLES = ["depth", "panoptic", "text", "caption"]


def test_the_budget_is_blocks_in_flight_per_worker_slot():
    config = load_config("demo")  # one actor per teacher
    small = object_store_budget(config, ROLES, ClusterInfo("local", 2, 0, 1), block=8)
    assert small == BLOCKS_IN_FLIGHT * 8 * IMAGE_BYTES * (4 + 2)
    assert small < 1 << 30  # 768 MiB on a 2-CPU laptop, not half its object store
    big = object_store_budget(config, ROLES, ClusterInfo("ray://x", 64, 16, 8), block=8)
    assert big == BLOCKS_IN_FLIGHT * 8 * IMAGE_BYTES * (4 + 64)  # grows with the cluster only
    wide = load_config("demo", overrides=["teachers.depth.concurrency=3"])
    assert object_store_budget(wide, ["depth"], ClusterInfo("local", 2, 0, 1), block=4) == \
        BLOCKS_IN_FLIGHT * 4 * IMAGE_BYTES * (3 + 2)
