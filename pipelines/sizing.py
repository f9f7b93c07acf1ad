"""Fitting the teacher pools to a Ray cluster: CPUs per actor and per CPU task, the memory
each actor reserves, how much of the object store the graph may fill, and checks that the GPUs
and memory the pools ask for exist."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from distill.config import Config
from distill.errors import ConfigError
from pipelines.cluster import ClusterInfo

__all__ = ["AUTO_THREADS", "BLOCKS_IN_FLIGHT", "IMAGE_BYTES", "FusedWorkers", "actor_cpus", "actor_memory",
           "check_gpus", "choose_layout", "fused_workers", "object_store_budget", "task_cpus"]

logger = logging.getLogger(__name__)

# The object store budget of the graph (`object_store_budget`): blocks in flight per worker
# slot, and the bytes an image takes between stages at most (a 640×640 COCO image decoded,
# 1.2 MB, its encoded bytes and its teachers' full-resolution outputs).
BLOCKS_IN_FLIGHT = 4
IMAGE_BYTES = 4 * 2**20


def actor_cpus(config: Config, roles: list[str], cluster: ClusterInfo) -> dict[str, float]:
    """CPUs per teacher actor. On a cluster too small for every pool at its configured CPUs
    (a laptop, CI), all are scaled down together to half the cluster, leaving the rest to the
    decode/post-process tasks: otherwise Ray would wait forever for CPUs no node has.

    Scaled shares are rounded down to a power-of-two fraction (1/2, 1/4, ...). Shares like 0.75
    fragment nodes: two of them leave 0.5 free on a 2-CPU node, and a 1-CPU task then fits on
    no node even though the cluster as a whole has CPUs free."""
    teachers = config.teachers.roles()
    want = {r: teachers[r].num_cpus for r in roles}
    total = sum(want[r] * teachers[r].concurrency for r in roles)
    room = min(cluster.cpus - 1.0, cluster.cpus / 2) if cluster.cpus > 2 else cluster.cpus / 2
    if total <= room or total == 0:
        return want
    scale = room / total
    out = {r: 2.0 ** math.floor(math.log2(want[r] * scale)) for r in roles}
    logger.info("teacher pools want %g CPUs, the cluster has %g: each actor gets %s CPUs so "
                   "that every stage fits", total, cluster.cpus,
                   ", ".join(f"{r} {c:g}" for r, c in out.items()))
    return out


def task_cpus(config: Config, roles: list[str], cpus: dict[str, float]) -> float:
    """CPUs per decode / post-process task: 1, unless the actor shares were scaled down to fit a
    small cluster. Then the smallest share: scaled actors can leave every node a fraction of a
    CPU free (1-CPU nodes each holding two 0.25 actors), where a 1-CPU task would wait forever;
    power-of-two shares leave free room in multiples of the smallest one, so such a task fits
    wherever anything is free."""
    teachers = config.teachers.roles()
    scaled = [c for r, c in cpus.items() if r in roles and c < teachers[r].num_cpus]
    return min([1.0, *scaled])


def check_gpus(config: Config, roles: list[str], cluster: ClusterInfo) -> None:
    teachers = config.teachers.roles()
    need = sum(teachers[r].num_gpus * teachers[r].concurrency for r in roles)
    if need > cluster.gpus + 1e-9:
        msg = (f"the teacher pools need {need:g} GPUs (num_gpus x concurrency) but the cluster "
               f"has {cluster.gpus:g}; lower teachers.<role>.num_gpus / concurrency (fractions "
               "share a GPU), or join a cluster with GPUs via --address")
        _short_of(cluster, msg, "them")


def actor_memory(config: Config, roles: list[str], cluster: ClusterInfo) -> dict[str, int]:
    """Bytes each teacher actor reserves with Ray (`memory=`): `teachers.<role>.memory_gb`, the
    figure Ray Data's memory warning recommends for that pool (in Ray's log); 0 reserves
    nothing. Pools that together reserve more than the cluster's memory would wait forever:
    a local run fails before starting, a cluster run warns (an autoscaler may add nodes)."""
    teachers = config.teachers.roles()
    out = {r: int(teachers[r].memory_gb * 2**30) for r in roles}
    need = sum(out[r] * teachers[r].concurrency for r in roles)
    if need and cluster.memory and need > cluster.memory:
        msg = (f"the teacher pools reserve {need / 2**30:.1f} GiB (memory_gb x concurrency) but "
               f"Ray's memory resource is {cluster.memory / 2**30:.1f} GiB; lower "
               "teachers.<role>.memory_gb / concurrency, or join a bigger cluster via --address")
        _short_of(cluster, msg, "nodes")
    return out


def _short_of(cluster: ClusterInfo, msg: str, what: str) -> None:
    """A local Ray cannot grow: refuse to start. A joined cluster may autoscale: warn."""
    if cluster.address in ("local", "existing"):
        raise ConfigError(msg)
    logger.warning("%s (waiting for an autoscaler to add %s)", msg, what)


def choose_layout(config: Config, roles: list[str]) -> str:
    """`fused` (one actor kind runs decode, every teacher and post-processing) or `pools` (an
    actor pool per teacher between decode and post-process tasks), from `ray.layout`.

    `auto` fuses when no enabled teacher asks for a GPU. CPU teachers in separate pools only
    compete for the same cores, while each pool costs a process that imports torch and holds a
    model, and every image crosses the object store once per stage; one process per core
    running the whole chain is what a user's loop does, times the cores (bench `baseline`).
    GPU teachers keep their own pools: each gets its share of a device, its batch size and
    its number of actors, and the CPU stages around them run beside it."""
    layout = config.ray.layout
    if layout != "auto":
        return layout
    teachers = config.teachers.roles()
    return "pools" if any(teachers[r].num_gpus > 0 for r in roles) else "fused"


# Block slots per fused process by default on one machine. Two threads label as fast as two
# processes on the tiny preset (bench/RESULTS.md, issue 16) at the memory of one set of models;
# more threads contend for the GIL in the Python between torch kernels, so a 16-core box runs
# 8 processes of 2 threads, not one of 16.
AUTO_THREADS = 2


@dataclass(frozen=True)
class FusedWorkers:
    """The processes of the fused layout: how many, and what each one holds."""

    count: int  # worker processes
    cpus: float  # CPUs each reserves: threads × slot_cpus
    gpus: float
    memory: int  # bytes reserved with Ray (every teacher's `memory_gb`, summed)
    threads: int = 1  # block slots per process: threads sharing its one copy of the models
    slot_cpus: float = 1.0  # CPUs (and torch threads) per slot

    @property
    def slots(self) -> int:
        return self.count * self.threads


def fused_workers(config: Config, roles: list[str], cluster: ClusterInfo) -> FusedWorkers:
    """One block slot per `ray.worker_cpus` CPUs of the cluster (default 1: one torch thread
    each, which tiny and CPU-sized models use better than one process with many threads), or
    `ray.workers` when set. Slots share worker processes, `ray.worker_threads` per process
    (threads: torch releases the GIL in its kernels, so they run side by side on one copy of
    the models — the memory of one set of teachers instead of one per CPU); by default
    `AUTO_THREADS` slots share a process on a local machine and a multi-node cluster's get one
    process each, since a process must fit on one node. Forced onto GPU teachers (`ray.layout = "fused"`),
    a worker is one slot that takes the largest `num_gpus` any of them asks, and there are no
    more workers than the GPUs hold."""
    teachers = config.teachers.roles()
    slot = float(config.ray.worker_cpus)
    gpus = max(teachers[r].num_gpus for r in roles)
    slots = config.ray.workers or max(1, int(cluster.cpus // slot))
    if gpus > 0:
        slots = min(slots, max(1, int(cluster.gpus // gpus + 1e-9)))
        if gpus > cluster.gpus + 1e-9:
            _short_of(cluster, f"a fused worker needs {gpus:g} GPUs (the largest "
                      f"teachers.<role>.num_gpus) but the cluster has {cluster.gpus:g}", "them")
    if slot > cluster.cpus:
        _short_of(cluster, f"ray.worker_cpus = {slot:g} but the cluster has {cluster.cpus:g} "
                  "CPUs", "nodes")
    threads = config.ray.worker_threads or (min(AUTO_THREADS, slots) if cluster.nodes <= 1
                                            else 1)
    threads = 1 if gpus > 0 else max(1, min(threads, slots))
    count = max(1, slots // threads)
    memory = sum(int(teachers[r].memory_gb * 2**30) for r in roles)
    if memory and cluster.memory and memory * count > cluster.memory:
        count = max(1, int(cluster.memory // memory))
        logger.info("fused workers reserve %.1f GiB each: %d fit in Ray's memory resource",
                    memory / 2**30, count)
    return FusedWorkers(count, threads * slot, gpus, memory, threads, slot)


def object_store_budget(config: Config, roles: list[str], cluster: ClusterInfo,
                        block: int) -> int:
    """Bytes of the object store the graph's blocks may hold at once (Ray Data's
    `resource_limits.object_store_memory`, the pools layout; the fused one holds `DEPTH`
    blocks per worker, `graph._Fused`): `BLOCKS_IN_FLIGHT` blocks of `block` images per
    worker slot (each teacher actor and each CPU). Without it Ray Data lets the fast stages
    run ahead of the slowest one until half the object store (30% of RAM) is full of their
    outputs: memory that grows with the number of images up to gigabytes, and the driver, which
    reads the finished blocks from wherever the store put them, maps ever more of it. This
    window keeps every stage busy and the store's footprint fixed, whatever the number of
    images; the driver maps at most the window."""
    teachers = config.teachers.roles()
    slots = sum(teachers[r].concurrency for r in roles) + max(1.0, cluster.cpus)
    return int(BLOCKS_IN_FLIGHT * block * IMAGE_BYTES * slots)
