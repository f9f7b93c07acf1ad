"""Nothing of a local Ray outlives its driver: the watchdog `pipelines.cluster` starts beside a
local Ray, and the reaping of what an earlier session whose driver died left running.

Ray kills its GCS and raylet when the driver dies, but the raylet's agents (DashboardAgent,
RuntimeEnvAgent) then spend up to 60 s trying to report to the dead GCS, and a worker can
linger too. A watchdog (a small process of its own, in its own session so that Ctrl-C does
not reach it) waits until the driver closes a pipe or dies, then kills every process of that
session. A session folder distill started holds `distill-owner.json` (pid and start time of
its driver); the next local start kills what is left of sessions whose owner is gone, in case
the watchdog itself was killed. Linux (/proc) only; elsewhere nothing is done.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

__all__ = ["reap_dead_sessions", "session_processes"]

logger = logging.getLogger(__name__)

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
            [sys.executable, "-c", "import pipelines.watchdog as c; c._watch()", temp_root],
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
