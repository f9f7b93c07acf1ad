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


def test_a_fused_slot_per_cpu_in_one_process_per_machine():
    import pytest

    from distill.errors import ConfigError
    from pipelines.sizing import fused_workers

    config = load_config("demo")
    # a local machine: a thread (block slot, one torch thread) per CPU, two per process
    two = fused_workers(config, ROLES, ClusterInfo("local", 2, 0, 1))
    assert (two.count, two.threads, two.slot_cpus, two.cpus, two.gpus, two.memory) == (
        1, 2, 1.0, 2.0, 0.0, 0)
    assert two.slots == 2
    # a multi-node cluster: a process per slot (a process must fit on one node)
    wide = fused_workers(config, ROLES, ClusterInfo("ray://x", 64, 0, 8))
    assert (wide.count, wide.threads, wide.slots) == (64, 1, 64)
    halves = load_config("demo", overrides=["ray.worker_cpus=2"])
    h = fused_workers(halves, ROLES, ClusterInfo("local", 5, 0, 1))
    assert (h.count, h.threads, h.slot_cpus, h.cpus) == (1, 2, 2.0, 4.0)
    one = load_config("demo", overrides=["ray.workers=1"])
    assert fused_workers(one, ROLES, ClusterInfo("local", 16, 0, 1)).slots == 1
    eight = fused_workers(config, ROLES, ClusterInfo("local", 16, 0, 1))
    assert (eight.count, eight.threads) == (8, 2)
    apart = load_config("demo", overrides=["ray.worker_threads=1"])
    a = fused_workers(apart, ROLES, ClusterInfo("local", 4, 0, 1))
    assert (a.count, a.threads) == (4, 1)
    fours = load_config("demo", overrides=["ray.worker_threads=4"])
    f = fused_workers(fours, ROLES, ClusterInfo("local", 8, 0, 1))
    assert (f.count, f.threads, f.cpus) == (2, 4, 4.0)
    # every teacher's memory_gb is reserved by each process: no more processes than fit
    big = load_config("demo", overrides=["teachers.depth.memory_gb=3",
                                         "teachers.caption.memory_gb=1"])
    w = fused_workers(big, ROLES, ClusterInfo("ray://x", 8, 0, 4, memory=10 * 2**30))
    assert (w.count, w.memory) == (2, 4 * 2**30)
    assert fused_workers(big, ROLES, ClusterInfo("local", 8, 0, 1, memory=10 * 2**30)).slots == 4
    # forced onto GPU teachers: a worker takes the largest share, as many as the GPUs hold
    gpu = load_config("demo", overrides=["ray.layout=fused", "teachers.text.num_gpus=0.5"])
    g = fused_workers(gpu, ROLES, ClusterInfo("local", 16, 2, 1))
    assert (g.count, g.threads) == (4, 1)
    with pytest.raises(ConfigError, match="worker_cpus"):
        fused_workers(halves, ROLES, ClusterInfo("local", 1, 0, 1))


def test_the_layout_settings_are_checked():
    import pytest

    from distill.errors import ConfigError

    for bad, match in [("ray.layout=ring", "auto, fused or pools"),
                       ("ray.workers=-1", r"ray\.workers = -1 is out of range"),
                       ("ray.worker_cpus=0", "> 0"), ("ray.worker_threads=-1", "out of range")]:
        with pytest.raises(ConfigError, match=match):
            load_config("demo", overrides=[bad])
