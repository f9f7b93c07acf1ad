"""Connecting to Ray: an embedded local instance by default, or a cluster with `--address`.

The same command works on both. A local instance gets this machine's resources (or
`ray.num_cpus` / `ray.num_gpus`), binds its services to 127.0.0.1 and runs no dashboard. With
`--address auto` (a cluster this machine is part of) or `ray://head:10001` (Ray Client), the
project's packages ship with the job (`runtime_env.py_modules`), so worker nodes need the
dependencies installed, not this checkout. If Ray is already initialised (a notebook, the test
session), that connection is used and left open.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from distill.config import RayConfig
from distill.errors import DistillError

__all__ = ["ClusterInfo", "cluster_resources", "loopback_only", "ray_session", "start_local_ray",
           "unwrap_error"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterInfo:
    address: str  # "local" for an embedded instance
    cpus: float
    gpus: float
    nodes: int


def cluster_resources() -> tuple[float, float, int]:
    """(CPUs, GPUs, alive nodes) of the connected cluster."""
    import ray

    res = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0)), nodes


def _project_modules() -> list[Any]:
    import distill
    import pipelines
    import teachers

    return [distill, teachers, pipelines]


def loopback_only() -> None:
    """Make a local Ray bind every service to 127.0.0.1 and advertise that address.

    Ray binds its gRPC servers to the node IP, and picks the machine's outward IP unless told
    it is a single-machine instance; this is the switch Ray itself uses on macOS and Windows.
    It must hold before Ray starts (the env var reaches the raylet and workers too)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # when Ray was imported before the env var
    except (ImportError, AttributeError):  # a future Ray without it: the env var still applies
        pass


def start_local_ray(num_cpus: int | None = None, num_gpus: int | None = None,
                    **kwargs: Any) -> None:
    """An embedded Ray on this machine, reachable only from it (no dashboard)."""
    import ray

    loopback_only()
    # address="local": always a new private instance. Without it ray.init() joins whatever
    # cluster Ray's (world-writable) temp folder names, a stale or a stranger's one.
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, _node_ip_address="127.0.0.1",
             include_dashboard=False, dashboard_host="127.0.0.1", **kwargs)


@contextmanager
def ray_session(config: RayConfig, address: str | None = None,
                verbose: bool = False) -> Iterator[ClusterInfo]:
    """Connect to (or start) Ray for the duration of a run."""
    import ray

    if ray.is_initialized():
        cpus, gpus, nodes = cluster_resources()
        yield ClusterInfo("existing", cpus, gpus, nodes)
        return
    address = address or config.address or os.environ.get("RAY_ADDRESS") or ""
    if not verbose:  # a warning on every start that token auth is on: it is, as it should be
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR)
    common: dict[str, Any] = {
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.WARNING,
    }
    try:
        if address:
            runtime_env = {"py_modules": _project_modules()} if address.startswith("ray://") \
                else None
            ray.init(address=address, runtime_env=runtime_env, include_dashboard=False,
                     **common)
        else:
            start_local_ray(config.num_cpus or None,
                            None if config.num_gpus < 0 else config.num_gpus, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local Ray instance"
        raise DistillError(f"cannot start or join Ray at {where}: {exc}") from exc
    try:
        cpus, gpus, nodes = cluster_resources()
        logger.info("Ray at %s: %d node(s), %g CPUs, %g GPUs", address or "local", nodes, cpus,
                    gpus)
        yield ClusterInfo(address or "local", cpus, gpus, nodes)
    finally:
        ray.shutdown()


_OUR_ERROR = re.compile(r"(?:distill|teachers|pipelines)(?:\.\w+)*\.(\w+(?:Error|Mismatch)): (.+)")


def unwrap_error(exc: BaseException) -> DistillError | None:
    """The project's own error inside a Ray error chain (e.g. a teacher that cannot load).
    Ray keeps the original exception for task errors; for an actor that died in `__init__` only
    its traceback text survives, so the last line naming one of our errors is used."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, DistillError):
            return cur
        stack += [getattr(cur, "cause", None), cur.__cause__, cur.__context__]
    found = _OUR_ERROR.findall(str(exc))
    return DistillError(found[-1][1].strip()) if found else None
