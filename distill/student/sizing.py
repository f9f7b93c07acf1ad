"""Fitting training batches to the machine: the bytes a batch takes, against the memory there is.

Estimated (a floor, so that only what cannot fit whatever the model is refused): one example
as the loader yields it — the image and the 44 target channels as uint8 at the student's input
size, the token vectors as float32 — times the batches held at once (the DataLoader's two
prefetched per worker process, and the one in the step), plus the step's float32 copy of the
image and targets (`to_unit`), in host memory on a CPU and in the GPU's on CUDA. The model's
own activations are not counted. A 256-px example is 2.9 MiB: the paper's batch of 30 with 2
workers holds 0.43 GiB in batches and 0.34 GiB more in the step.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch

from distill.config import Config
from distill.errors import ConfigError
from distill.student import layout
from distill.student.targets import present_keys

__all__ = ["available_memory", "check_batch_memory", "example_bytes"]

logger = logging.getLogger(__name__)

PREFETCH = 2  # torch DataLoader's prefetch_factor: batches each worker process holds ready
MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")  # cgroup v2: a container's own limit (memory.max)


def available_memory() -> int | None:
    """Bytes this process can still take: Linux's MemAvailable, or the container's cgroup
    limit where that is less; `os.sysconf` elsewhere; None when neither says."""
    have: int | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                have = int(line.split()[1]) * 1024
    if have is None:
        with contextlib.suppress(ValueError, OSError, AttributeError):  # (no sysconf names)
            have = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    # A container's limit, whole: what it uses now includes page cache the kernel reclaims,
    # which MemAvailable counts as available and memory.current does not tell apart.
    with contextlib.suppress(OSError, ValueError):  # no cgroup v2 memory controller here
        limit = (CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            have = int(limit) if have is None else min(have, int(limit))
    return have


def example_bytes(config: Config) -> int:
    """Bytes of one training example as the loader yields it (`distill.student.data`)."""
    s = config.student
    return ((3 + layout.channels()) * s.input_size ** 2 + s.num_tokens * s.token_dim * 4
            + len(present_keys()) + 8)


def check_batch_memory(config: Config, rows: int, workers: int, device: torch.device) -> None:
    """Refuse, before anything is allocated or written, a `train.batch_size` whose batches
    (of `rows` examples at most: a rank's rows this epoch) cannot fit in memory (module
    docstring). One `ConfigError` naming the setting, what it needs and what there is."""
    batch = min(config.train.batch_size, max(rows, 1))
    in_flight = PREFETCH * workers + 1
    floats = batch * (3 + layout.channels()) * config.student.input_size ** 2 * 4
    host = batch * example_bytes(config) * in_flight + (floats if device.type == "cpu" else 0)
    what = (f"{in_flight} batch(es) of {batch} {config.student.input_size}-px examples held "
            f"at once, {example_bytes(config) / 2**20:.1f} MiB each"
            + (", and the step's float32 copy" if device.type == "cpu" else ""))
    _refuse_over(config, host, available_memory(), what, "this machine has")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        _refuse_over(config, floats, free, f"the step's float32 copy of {batch} examples",
                     f"{device} has")


def _refuse_over(config: Config, need: int, have: int | None, what: str, where: str) -> None:
    logger.debug("training batches need %d bytes (%s); %s %s available", need, what, where,
                 have)
    if have is not None and need > have:
        raise ConfigError(
            f"train.batch_size = {config.train.batch_size} needs at least "
            f"{need / 2**30:.1f} GiB ({what}) but {where} {have / 2**30:.1f} GiB available; "
            "lower train.batch_size (or train.num_workers, student.input_size)")
