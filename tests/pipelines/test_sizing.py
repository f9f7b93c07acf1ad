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


def test_auto_fuses_cpu_teachers_and_keeps_pools_for_gpu_ones():
    from pipelines.sizing import choose_layout

    assert choose_layout(load_config("demo"), ROLES) == "fused"
    gpu = load_config("demo", overrides=["teachers.text.num_gpus=1"])
    assert choose_layout(gpu, ROLES) == "pools"
    assert choose_layout(gpu, ["depth"]) == "fused"  # only the roles that run count
    forced = load_config("demo", overrides=["ray.layout=pools"])
    assert choose_layout(forced, ROLES) == "pools"


def test_a_fused_worker_per_cpu_unless_told_or_short_of_memory():
    import pytest

    from distill.errors import ConfigError
    from pipelines.sizing import fused_workers

    config = load_config("demo")
    two = fused_workers(config, ROLES, ClusterInfo("local", 2, 0, 1))
    assert (two.count, two.cpus, two.gpus, two.memory) == (2, 1.0, 0.0, 0)
    assert fused_workers(config, ROLES, ClusterInfo("ray://x", 64, 0, 8)).count == 64
    halves = load_config("demo", overrides=["ray.worker_cpus=2"])
    assert fused_workers(halves, ROLES, ClusterInfo("local", 5, 0, 1)).count == 2
    one = load_config("demo", overrides=["ray.workers=1"])
    assert fused_workers(one, ROLES, ClusterInfo("local", 16, 0, 1)).count == 1
    # every teacher's memory_gb is reserved by each worker: no more workers than fit
    big = load_config("demo", overrides=["teachers.depth.memory_gb=3",
                                         "teachers.caption.memory_gb=1"])
    w = fused_workers(big, ROLES, ClusterInfo("local", 8, 0, 1, memory=10 * 2**30))
    assert (w.count, w.memory) == (2, 4 * 2**30)
    # forced onto GPU teachers: a worker takes the largest share, as many as the GPUs hold
    gpu = load_config("demo", overrides=["ray.layout=fused", "teachers.text.num_gpus=0.5"])
    assert fused_workers(gpu, ROLES, ClusterInfo("local", 16, 2, 1)).count == 4
    with pytest.raises(ConfigError, match="worker_cpus"):
        fused_workers(halves, ROLES, ClusterInfo("local", 1, 0, 1))


def test_the_layout_settings_are_checked():
    import pytest

    from distill.errors import ConfigError

    for bad, match in [("ray.layout=ring", "auto, fused or pools"), ("ray.workers=-1", ">= 0"),
                       ("ray.worker_cpus=0", "> 0")]:
        with pytest.raises(ConfigError, match=match):
            load_config("demo", overrides=[bad])
