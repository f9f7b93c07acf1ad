"""Connecting to Ray: an embedded local instance by default, or a cluster with `--address`.

The same command works on both. A local instance gets this machine's resources (or
`ray.num_cpus` / `ray.num_gpus`), binds its services to 127.0.0.1 and runs no dashboard (the
raylet still starts its per-node agents; Ray has no switch for them). It is always a new private
instance: never the cluster that Ray's temp folder names (`ray_current_cluster`, stale or
live), a `ray start` head on this machine, or an exported `RAY_ADDRESS` (warned about; only
`--address auto` honours it, as Ray does). With `--address auto` (a cluster this machine is part
of), `host:port` or `ray://head:10001` (Ray Client) the run joins and prints what it joined; an
address where nothing answers fails in seconds with one line. With Ray Client the project's
packages ship with the job (`runtime_env.py_modules`), so worker nodes need the dependencies
installed, not this checkout. If Ray is already initialised (a notebook, the test session),
that connection is used and left open. Nothing of a local instance outlives its driver (see
`pipelines.watchdog`).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config import RayConfig
from distill.errors import DistillError
from pipelines.console import native_lines_dropped
from pipelines.watchdog import (
    _claim_session,
    _ray_temp_root,
    _start_watchdog,
    _stop_watchdog,
    _watchdogs,
    reap_dead_sessions,
)

__all__ = ["ClusterInfo", "cluster_memory", "cluster_resources", "first_line", "loopback_only",
           "ray_logs", "ray_session", "start_local_ray", "unwrap_error"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterInfo:
    address: str  # "local" for an embedded instance
    cpus: float
    gpus: float
    nodes: int
    logs: str = ""  # Ray's log folder on this machine (the driver's session), "" if unknown
    memory: float = 0.0  # bytes of Ray's `memory` resource in the cluster; 0 = unknown


def ray_logs() -> str:
    """The `logs/` folder of the session this driver is connected to, on this machine."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    with suppress(AttributeError, OSError, TypeError):
        if node is not None:
            return os.path.join(node.get_session_dir_path(), "logs")
    return ""


def cluster_memory() -> float:
    """Bytes of the `memory` resource Ray schedules actors against, cluster-wide."""
    import ray

    return float(ray.cluster_resources().get("memory", 0.0))


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
    """An embedded Ray on this machine, reachable only from it (no dashboard), and a watchdog
    that removes what is left of it once this process is gone (`_watch`). Processes of an
    earlier distill session whose owner died are removed first (`reap_dead_sessions`)."""
    import ray

    loopback_only()
    temp_root = _ray_temp_root(kwargs.get("_temp_dir"))
    reap_dead_sessions(temp_root)
    watchdog = _start_watchdog(temp_root)
    try:
        with _keep_sigterm():
            # address="local": always a new private instance. Without it ray.init() joins
            # whatever cluster Ray's (world-writable) temp folder names, stale or a stranger's.
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                     _node_ip_address="127.0.0.1", include_dashboard=False,
                     dashboard_host="127.0.0.1", **kwargs)
    except BaseException:
        _stop_watchdog(watchdog)  # it removes whatever the failed start left running
        raise
    node = ray._private.worker._global_node
    session = node.get_session_dir_path() if node is not None else ""
    _claim_session(session)
    if watchdog is not None and session:
        with suppress(OSError, ValueError):
            assert watchdog.stdin is not None
            watchdog.stdin.write(f"{session}\n".encode())
            watchdog.stdin.flush()


@contextmanager
def ray_session(config: RayConfig, address: str | None = None,
                verbose: bool = False) -> Iterator[ClusterInfo]:
    """Connect to (or start) Ray for the duration of a run.

    Without an address (argument or `ray.address`) this is always a new private instance;
    `RAY_ADDRESS` in the environment is not joined (it is named in a warning): only
    `--address auto` honours it, as Ray does. A joined cluster is named on stderr in one line:
    address, nodes, CPUs, GPUs."""
    import ray

    if ray.is_initialized():
        cpus, gpus, nodes = cluster_resources()
        yield ClusterInfo("existing", cpus, gpus, nodes, ray_logs(), cluster_memory())
        return
    address = address or config.address or ""
    exported = os.environ.get("RAY_ADDRESS", "")
    if exported and not address:
        logger.warning("RAY_ADDRESS=%s is set but not used: without --address distill starts a "
                       "private local Ray; pass --address auto to join that cluster", exported)
    if not verbose:  # a warning on every start that token auth is on: it is, as it should be
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR)
    common: dict[str, Any] = {
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.WARNING,
    }
    where = ""
    others = list(_watchdogs)
    try:
        if address:
            where = _join(address, common)
        else:
            start_local_ray(config.num_cpus or None,
                            None if config.num_gpus < 0 else config.num_gpus, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        target = where or address or "a local Ray instance"
        raise DistillError(f"cannot start or join Ray at {target}: {first_line(exc)}") from exc
    try:
        # Ray's native lines (the driver's C++ core worker) stay in its log file, not here
        with native_lines_dropped(not verbose):
            try:
                cpus, gpus, nodes = cluster_resources()
                summary = f"{nodes} node(s), {cpus:g} CPUs, {gpus:g} GPUs"
                if address:
                    print(f"Ray: joined the cluster at {where}: {summary}", file=sys.stderr,
                          flush=True)
                else:
                    logger.info("Ray: a private local instance at %s: %s",
                                ray.get_runtime_context().gcs_address, summary)
                yield ClusterInfo(address or "local", cpus, gpus, nodes, ray_logs(),
                                  cluster_memory())
            finally:
                with _keep_sigterm():
                    ray.shutdown()
    finally:
        for watchdog in [w for w in _watchdogs if w not in others]:  # the one of this start
            _stop_watchdog(watchdog)


# ---------------------------------------------------------------------------------------------
# Joining a cluster: fail in seconds, with one line, when nothing answers


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _join(address: str, common: dict[str, Any]) -> str:
    """`ray.init` on a cluster; returns where it is (`host:port`, and how `auto` found it).
    A closed port or a service that is not Ray fails at once, before Ray's own retries (20
    attempts of up to 40 s each); Ray's connection attempts are cut to 10 (about 10 s when a
    GCS answers but refuses) unless `RAY_gcs_server_port_wait_time_s` says otherwise."""
    import ray

    where = _resolve(address)
    _probe(where)
    runtime_env = {"py_modules": _project_modules()} if address.startswith("ray://") else None
    key = "RAY_gcs_server_port_wait_time_s"
    unset = key not in os.environ
    if unset:
        os.environ[key] = "10"
    try:
        with _keep_sigterm():
            ray.init(address=address, runtime_env=runtime_env, include_dashboard=False,
                     **common)
    except ConnectionError as exc:
        hint = ""
        if not os.environ.get("RAY_AUTH_MODE") and address != "auto":
            hint = ("; if the cluster uses token authentication, export RAY_AUTH_MODE=token "
                    "(the token comes from RAY_AUTH_TOKEN or ~/.ray/auth_token)")
        raise DistillError(f"cannot join Ray at {where}: {first_line(exc)}{hint}") from exc
    finally:
        if unset:
            os.environ.pop(key, None)
    return where


def _resolve(address: str) -> str:
    """`host:port` of the cluster `address` names, and for `auto` where that was found."""
    if address.startswith("ray://"):
        return address
    from ray._private import services
    from ray._private.utils import get_ray_address_file

    quiet = logging.getLogger(services.__name__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "found several Ray instances": ray.init says it once more
    try:
        found = services.canonicalize_bootstrap_address_or_die(address)
    except (ConnectionError, ValueError) as exc:
        raise DistillError(f"--address {address}: {first_line(exc)}") from exc
    finally:
        quiet.setLevel(level)
    if address != "auto":  # Ray itself turns 127.0.0.1 into this machine's address
        return found if found == address else f"{found} (--address {address})"
    if os.environ.get("RAY_ADDRESS"):
        return f"{found} (--address auto: RAY_ADDRESS)"
    # Ray's order: RAY_ADDRESS, then the one GCS running here if there is exactly one, else
    # the cluster its temp folder names (`ray_current_cluster`, written by `ray start`)
    file = get_ray_address_file(None)
    with suppress(OSError, ValueError):
        if services.canonicalize_bootstrap_address(Path(file).read_text().strip()) == found:
            return f"{found} (--address auto: {file})"
    return f"{found} (--address auto: the one Ray running on this machine)"


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _probe(where: str, timeout: float = 5.0) -> None:
    """Something answers gRPC (HTTP/2: the GCS, or a Ray Client server) at `where`, or a
    one-line DistillError saying what."""
    hostport = where.split(" ", 1)[0].removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            if os.environ.get("RAY_USE_TLS", "0") not in ("", "0"):
                return  # a TLS handshake comes first: leave the check to Ray
            sock.sendall(_HTTP2_PREFACE)
            head = sock.recv(9)
    except (OSError, ValueError) as exc:
        cause = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise DistillError(f"cannot join Ray at {where}: {cause}; is a Ray head running there "
                           "(`ray start --head` prints its address)?") from exc
    if len(head) < 9 or head[3] != 0x04:  # a gRPC server answers with a SETTINGS frame
        raise DistillError(f"cannot join Ray at {where}: something listens there, but it is "
                           "not a Ray cluster (no gRPC answer)")


@contextmanager
def _keep_sigterm() -> Iterator[None]:
    """Around `ray.init` and `ray.shutdown`: init sets its own SIGTERM handler (sys.exit) and
    its C++ core a failure-signal handler that prints a C stack dump on SIGTERM, and shutdown
    uninstalls that one by setting SIGTERM back to the default action, under Python's feet —
    a SIGTERM after it killed the driver (exit -15) instead of stopping it. So this driver's
    core installs no failure-signal handler (Ray's own switch, `ray_constants`; its workers
    keep theirs), and afterwards SIGTERM goes to the handler the program had (the CLI's,
    which stops like Ctrl-C) or else to Ray's Python one — never to the dump or the default."""
    try:
        from ray._private import ray_constants

        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True  # read when the core starts
    except ImportError:  # a future Ray without it: the handler is restored below all the same
        pass
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    except SystemExit as exc:  # SIGTERM while Ray was starting: Ray's handler ran
        if exc.code == signal.SIGTERM and callable(before):
            before(signal.SIGTERM, None)
        raise
    finally:
        handler = before if callable(before) else signal.getsignal(signal.SIGTERM)
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)


# every DistillError is declared in distill.errors: its traceback line reads `distill.errors.Name: …`
_OUR_ERROR = re.compile(r"distill\.errors\.(\w+): (.+)")


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
    if not found:
        return None
    name, message = found[-1]
    return _error_class(name)(message.strip())


def _error_class(name: str) -> type[DistillError]:
    """The DistillError subclass of that name (so callers can still tell them apart), else
    DistillError itself."""
    todo: list[type[DistillError]] = [DistillError]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            return cls
        todo += cls.__subclasses__()
    return DistillError
