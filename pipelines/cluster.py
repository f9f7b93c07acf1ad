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
"Nothing of a local Ray outlives its driver" below).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config import RayConfig
from distill.errors import DistillError
from pipelines.console import native_lines_dropped

__all__ = ["ClusterInfo", "cluster_memory", "cluster_resources", "first_line", "loopback_only",
           "ray_logs", "ray_session", "reap_dead_sessions", "session_processes",
           "start_local_ray", "unwrap_error"]

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


# ---------------------------------------------------------------------------------------------
# Nothing of a local Ray outlives its driver
#
# Ray kills its GCS and raylet when the driver dies, but the raylet's agents (DashboardAgent,
# RuntimeEnvAgent) then spend up to 60 s trying to report to the dead GCS, and a worker can
# linger too. A watchdog (a small process of its own, in its own session so that Ctrl-C does
# not reach it) waits until the driver closes a pipe or dies, then kills every process of that
# session. A session folder distill started holds `distill-owner.json` (pid and start time of
# its driver); the next local start kills what is left of sessions whose owner is gone, in case
# the watchdog itself was killed. Linux (/proc) only; elsewhere nothing is done.

_OWNER_FILE = "distill-owner.json"
_watchdogs: list[subprocess.Popen[bytes]] = []


def _ray_temp_root(temp_dir: str | None) -> str:
    if temp_dir:
        return temp_dir
    try:
        from ray._common.utils import get_default_ray_temp_dir

        return str(get_default_ray_temp_dir())
    except (ImportError, AttributeError):
        return os.path.join(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir(), "ray")


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (tells a live process from a reused pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _claim_session(session: str) -> None:
    start = _start_time(os.getpid())
    if start is None or not session:
        return
    with suppress(OSError):
        Path(session, _OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "start": start}))


def session_processes(session: str, spare: tuple[int, ...] = ()) -> list[int]:
    """Ray processes of one session on this machine: Ray's programs (its binaries, Python,
    `ray::` titles) whose command line names the session folder or that hold a file in it
    (agents and workers rewrite their command line). Never this process, nor `spare` (the
    driver, which holds its own log files there)."""
    if not os.path.isdir("/proc") or not session:
        return []
    real = os.path.realpath(session)  # open files are named by their real path
    inside = real + os.sep
    names = {os.path.abspath(session).encode(), real.encode()}
    spec = importlib.util.find_spec("ray")
    ray_dir = os.path.dirname(spec.origin) + os.sep if spec and spec.origin else "\0"
    skip, found = {os.getpid(), *spare}, []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        prog = argv[0].decode(errors="replace")
        if not (prog.startswith("ray::") or prog.startswith(ray_dir)
                or os.path.basename(prog).startswith("python")):
            continue
        if any(n in a for n in names for a in argv) or _holds_file_in(entry.path, inside):
            found.append(int(entry.name))
    return found


def _holds_file_in(proc: str, inside: str) -> bool:
    try:
        fds = os.listdir(os.path.join(proc, "fd"))
    except OSError:
        return False
    for fd in fds:
        with suppress(OSError):
            if os.readlink(os.path.join(proc, "fd", fd)).startswith(inside):
                return True
    return False


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def reap_dead_sessions(temp_root: str) -> int:
    """Kill what is left of local sessions distill started whose driver is gone; returns how
    many processes were killed."""
    killed = 0
    owners = {os.path.realpath(f) for f in  # `session_latest` is a link to one of them
              glob.glob(os.path.join(glob.escape(temp_root), "session_*", _OWNER_FILE))}
    for owner in sorted(owners):
        try:
            if os.stat(owner).st_uid != os.getuid():  # only sessions this user started
                continue
            doc = json.loads(Path(owner).read_text())
            if _start_time(int(doc["pid"])) == doc["start"]:
                continue  # its driver still runs
        except (OSError, ValueError, KeyError, TypeError):
            continue
        pids = session_processes(os.path.dirname(owner))
        _kill(pids)
        killed += len(pids)
        with suppress(OSError):
            os.unlink(owner)
    if killed:
        logger.info("killed %d process(es) left by an earlier distill Ray session", killed)
    return killed


def _start_watchdog(temp_root: str) -> subprocess.Popen[bytes] | None:
    if not os.path.isdir("/proc"):
        return None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import pipelines.cluster as c; c._watch()", temp_root],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env=env)
    except OSError as exc:
        logger.debug("no Ray watchdog: %s", exc)
        return None
    _watchdogs.append(proc)
    return proc


def _stop_watchdog(proc: subprocess.Popen[bytes] | None) -> None:
    """Close its pipe: it kills whatever of the session is still running, then exits."""
    if proc is None:
        return
    with suppress(OSError, ValueError):
        assert proc.stdin is not None
        proc.stdin.close()
    with suppress(ValueError):
        _watchdogs.remove(proc)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with suppress(OSError, IndexError, ValueError):
                stat = Path(entry.path, "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _session_started(session: str) -> float:
    """When Ray named the session folder (`session_2026-12-01_23-26-48_332513_PID`)."""
    import datetime

    stamp = os.path.basename(session)[len("session_"):].rsplit("_", 1)[0]
    try:
        return datetime.datetime.strptime(stamp, "%Y-%m-%d_%H-%M-%S_%f").timestamp()
    except ValueError:
        return 0.0


def _watch() -> None:
    """The watchdog: `python -c '…_watch()' TEMP_ROOT`, the session folder on stdin."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    temp_root, owner, started = sys.argv[1], os.getppid(), time.time()
    fd, got = sys.stdin.fileno(), b""
    while os.getppid() == owner:  # until the driver closes the pipe, or dies
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            got += chunk
    sessions = [s for s in got.decode(errors="replace").splitlines() if s.strip()]
    if not sessions:  # the start itself failed or was interrupted: the folders Ray made for us
        sessions = [s for s in glob.glob(os.path.join(glob.escape(temp_root),
                                                      f"session_*_{owner}"))
                    if _session_started(s) >= started - 1]
    # The driver, and while it lives (it shut Ray down and closed the pipe) its own children:
    # a process it forked holds its open files in the session folder but is not Ray's.
    spare = (owner, *(_children(owner) if os.getppid() == owner else ()))
    for delay in (0.0, 1.0, 2.0):  # again a little later: a worker that was being started
        time.sleep(delay)
        for session in sessions:
            _kill(session_processes(session, spare=spare))
    for session in sessions:
        with suppress(OSError):
            os.unlink(os.path.join(session, _OWNER_FILE))


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
