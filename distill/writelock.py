"""The single writer of a run folder (`distill.runfolder`): a lock on local disk, a lease on an
object store.

One writer per run. On a local disk the lock is `fcntl.flock` on `RUN/.lock` (released by the
kernel when the writer dies; the file is removed at the end of the run that made it). It is the writer's alone: a process forked while it is held (a
DataLoader worker) gets its copy of the descriptor pointed at /dev/null at once
(`os.register_at_fork`), so an orphaned child never keeps a killed writer's run locked. Object
stores have no locks, so the writer holds a *lease*: `RUN/.lease.json`, created with a
conditional write (S3 `If-None-Match: *`, which a second creator loses with 412), renewed every
TTL/3 with `If-Match` on its own ETag, and deleted on exit. A writer that dies stops renewing:
the next run takes the lease over once it has expired (TTL, default 60 s,
`DISTILL_LEASE_SECONDS`), or at once when the holder was a process on the same host that no
longer exists. A writer confirms its lease with the store (a conditional renewal) before each
commit, so one that was paused past its lease (SIGSTOP) and taken over stops there, and from
then on touches nothing under the run: no commit, no undo of a failed first run, no clean-up,
not the lease object. Clock skew between writers shortens or lengthens the wait but never lets
two writers commit: the takeover itself is conditional on the ETag it read.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from distill.errors import DistillError, RunLocked, StorageError
from distill.storage import Location, s3_client

__all__ = ["LEASE", "LOCK", "Lease", "lease_seconds", "local_lock", "object_lease", "writer_active"]

logger = logging.getLogger(__name__)

LOCK = ".lock"  # a local run's lock file
LEASE = ".lease.json"  # an object-store run's lease object


@dataclass
class Lease:
    """The writer's hold on a run folder; `check()` before every commit. Once lost, a lease
    stays lost: the writer touches nothing under the run any more (no commit, no undo of a
    failed first run, no clean-up), and leaves the lease object to its new holder."""

    where: str
    release_fn: Any = None
    lost: str = ""
    pid: int = field(default_factory=os.getpid)  # the writer's
    confirm_fn: Any = None  # asks the store whether we still hold it (S3); None: a local flock

    def holds(self) -> bool:
        """Whether this writer still holds the run, confirmed with the store now (on S3 one
        conditional renewal: a writer paused past its lease learns here that it was taken
        over, not at its renew thread's next turn)."""
        if not self.lost and self.confirm_fn is not None:
            self.confirm_fn()
        return not self.lost

    def check(self) -> None:
        if not self.holds():
            raise RunLocked(f"lost the write lease on {self.where}: {self.lost}; stopped before "
                            "committing more. Re-run the same command to resume")

    def release(self) -> None:
        if self.release_fn is not None:
            fn, self.release_fn = self.release_fn, None
            fn()


def local_lock(root: Location) -> Lease:
    """Hold `root`'s lock file (`LOCK`), made if missing. A lock file this call created is
    removed again on release, if it is still the same file (inode): never a `.lock` that was
    there before, nor one another writer made since. So that removing it is safe, a writer that
    locked a file somebody removed meanwhile locks the new one instead."""
    path = root.as_path()
    for _ in range(100):  # another writer removing its lock file between our open and flock
        try:
            path.mkdir(parents=True, exist_ok=True)
            try:
                fh = (path / LOCK).open("x+")
                created = True
            except FileExistsError:
                fh = (path / LOCK).open("a+")
                created = False
        except OSError as exc:
            raise StorageError(_cannot_write(root, exc)) from exc
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            fh.close()
            raise RunLocked(f"another distill run is writing to {root}; wait for it or use "
                            "another --out") from exc
        if _same_file(fh, path / LOCK):
            break
        fh.close()  # locked a file its writer removed on release: lock the one there now
    else:
        raise RunLocked(f"could not hold the lock file {path / LOCK}: it keeps being replaced")

    _HELD_LOCKS.add(fh.fileno())

    def release() -> None:
        _HELD_LOCKS.discard(fh.fileno())
        if created and _same_file(fh, path / LOCK):  # ours alone: removed while still held
            with contextlib.suppress(OSError):
                (path / LOCK).unlink()
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()

    return Lease(str(root), release)


def _same_file(fh: Any, path: Any) -> bool:
    """Whether the open file `fh` is the file at `path` now (device and inode)."""
    try:
        held, there = os.fstat(fh.fileno()), os.stat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


# The descriptors of the local locks this process holds. A flock belongs to the open file
# description, which fork shares: a forked child (a DataLoader worker) would hold the run
# locked after the writer was killed, until it exited (a worker notices its parent's death only
# every 5 s). O_CLOEXEC does not help, a fork does not exec.
_HELD_LOCKS: set[int] = set()


def _drop_inherited_locks() -> None:
    """In a forked child: point its copies of the held lock descriptors at /dev/null. Replaced,
    not closed, so the child's inherited file objects still close (and unlock) harmlessly and
    never a descriptor number reused for another file."""
    if not _HELD_LOCKS:
        return
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    for fd in _HELD_LOCKS:
        os.dup2(null, fd, inheritable=False)
    os.close(null)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def writer_active(root: Location) -> bool:
    """Whether a distill run holds `root`'s write lock now (the local lock file's flock, or an
    unexpired lease on S3). Only reads: a viewer can ask without disturbing the writer."""
    if root.is_local:
        import fcntl

        try:
            fh = (root.as_path() / LOCK).open("rb")
        except OSError:
            return False
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False
    lease = root / LEASE
    if not lease.is_file():
        return False
    try:
        held = json.loads(lease.read_bytes() or b"{}")
    except (OSError, ValueError):
        return False
    return time.time() <= float(held.get("expires", 0))


def _cannot_write(root: Location, exc: OSError) -> str:
    """Why a local run folder cannot be made or written, in one line naming the path."""
    path = root.as_path()
    if path.is_file():
        return f"--out {root} is a file, not a folder; choose a folder for the run"
    blocking = next((up for up in path.parents if up.is_file()), None)
    if blocking is not None:
        return f"cannot write to {root}: {blocking} is a file, not a folder"
    return f"cannot write to {root}: {exc.strerror or exc}"


def lease_seconds() -> float:
    return float(os.environ.get("DISTILL_LEASE_SECONDS", "60"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def object_lease(root: Location) -> Lease:
    if root.scheme != "s3":
        raise DistillError(
            f"cannot write a run to {root}: distill keeps one writer per run on object stores "
            "with conditional writes, which it implements for s3:// (AWS S3 and S3-compatible "
            "stores). Reading runs from any pyarrow filesystem works; write this run to a local "
            "path or s3://")
    return _S3Lease(root).acquire()


class _S3Lease:
    """`RUN/.lease.json` on S3, held with conditional writes (see the module docstring)."""

    def __init__(self, root: Location) -> None:
        self.root = root
        self.bucket, _, prefix = root.path.partition("/")
        self.key = f"{prefix}/{LEASE}" if prefix else LEASE
        self.ttl = lease_seconds()
        self.token = secrets.token_hex(8)
        self.client = s3_client()
        self.etag = ""
        self.expires = 0.0  # when the lease runs out unless renewed (this host's clock)
        self.lease = Lease(str(root))
        self.stop = threading.Event()
        self.renewing = threading.Lock()

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps({"token": self.token, "host": socket.gethostname(),
                           "pid": os.getpid(), "renewed": now,
                           "expires": now + self.ttl}).encode()

    def _put(self, **cond: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            r = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(),
                                       ContentType="application/json", **cond)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return None
            if code in ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId"):
                raise StorageError(f"cannot write to {self.root}: {code}") from exc
            raise
        return str(r["ETag"])

    def acquire(self) -> Lease:
        sent = time.time()
        etag = self._put(IfNoneMatch="*")
        if etag is None:
            r = self.client.get_object(Bucket=self.bucket, Key=self.key)
            held = json.loads(r["Body"].read() or b"{}")
            dead_here = held.get("host") == socket.gethostname() and \
                not _pid_alive(int(held.get("pid", 0)))
            expired = time.time() > float(held.get("expires", 0))
            if not (dead_here or expired):
                left = float(held.get("expires", 0)) - time.time()
                raise RunLocked(
                    f"another distill run (host {held.get('host')}, pid {held.get('pid')}) holds "
                    f"the write lease on {self.root} for {left:.0f} s more and renews it while it "
                    "runs; wait for it or use another --out")
            etag = self._put(IfMatch=str(r["ETag"]))
            if etag is None:
                raise RunLocked(f"another distill run took over the write lease on {self.root} "
                                "at the same moment; wait for it or use another --out")
            logger.info("took over the %s write lease of %s (pid %s on %s)",
                        "expired" if expired else "dead", self.root, held.get("pid"),
                        held.get("host"))
        self.etag, self.expires = etag, sent + self.ttl
        self.lease.release_fn = self.release
        self.lease.confirm_fn = self.confirm
        threading.Thread(target=self._keep, name="lease", daemon=True).start()
        return self.lease

    def _keep(self) -> None:
        while not self.stop.wait(self.ttl / 3) and not self.lease.lost:
            try:
                self.renew()
            except Exception as exc:  # a network blip: try again before the lease runs out
                logger.warning("could not renew the write lease on %s: %s", self.root, exc)

    def confirm(self) -> None:
        """`Lease.holds`: renew now. A store that cannot be reached leaves the lease held until
        the time it was last renewed for, and lost after (another writer may have it by then)."""
        try:
            self.renew()
        except Exception as exc:
            if time.time() < self.expires:
                logger.warning("could not renew the write lease on %s: %s", self.root, exc)
            else:
                self.lease.lost = f"could not renew it before it expired ({exc})"

    def renew(self) -> None:
        """One conditional renewal (`If-Match` on our ETag); a refusal means another writer
        took the lease over, and marks it lost for good. Serialised: the renew thread and a
        `Lease.check` must not both send the same ETag (the second would be refused)."""
        with self.renewing:
            if self.lease.lost:
                return
            sent = time.time()
            etag = self._put(IfMatch=self.etag)
            if etag is None:
                self.lease.lost = "another writer took it over"
                logger.warning("lost the write lease on %s: another writer took it over; this "
                               "process writes nothing more there", self.root)
                return
            self.etag, self.expires = etag, sent + self.ttl

    def release(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception):
            self.renew()  # a lease taken over meanwhile is found lost here, and left alone
        if self.lease.lost:
            return
        with contextlib.suppress(Exception):
            r = self.client.get_object(Bucket=self.bucket, Key=self.key)
            if json.loads(r["Body"].read()).get("token") == self.token:
                self.client.delete_object(Bucket=self.bucket, Key=self.key)
