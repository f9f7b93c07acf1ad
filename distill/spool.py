"""Where uploads to S3 are staged on the local disk before they go (`distill.storage`).

Each process spools into its own folder, `TMP/distill-spool-PID-HEX/` (`TMP` is Python's temp
folder: `TMPDIR`), made on the first upload. The folder is `flock`ed by its process for as long
as the process lives, so the kernel itself says whether a spool's writer is alive:

- the writer removes its spool file after every upload, failed or not, and the folder at exit
  (a normal end, an error, Ctrl-C, SIGTERM through the CLI);
- a writer killed with SIGKILL cannot, so the next distill process that spools an upload on this
  machine (the resume) removes every spool folder whose lock it can take: a whole shard at real
  scale would otherwise stay in TMP forever;
- a live writer's folder, even a stopped one's, stays locked and is never touched.

A folder is made under a hidden name and locked before it is renamed to `distill-spool-*`, so
no other process ever sees one of them unlocked while its writer lives.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import tempfile
import threading
from pathlib import Path

__all__ = ["spool_folder"]

logger = logging.getLogger(__name__)

PREFIX = "distill-spool-"

_guard = threading.Lock()
_held: tuple[int, Path, int] | None = None  # (pid, folder, locked fd) of this process's spool


def spool_folder() -> Path:
    """This process's spool folder, made (and dead writers' spools removed) on first use."""
    global _held
    with _guard:
        if _held is None or _held[0] != os.getpid():
            base = Path(tempfile.gettempdir())
            remove_dead(base)
            _held = (os.getpid(), *_make(base))
        return _held[1]


def _make(base: Path) -> tuple[Path, int]:
    staging = Path(tempfile.mkdtemp(prefix=f".{PREFIX}", dir=base))
    fd = os.open(staging, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    folder = base / f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(staging, folder)
    return folder, fd


def remove_dead(base: Path) -> int:
    """Remove the spool folders in `base` whose writer is gone (their lock is free); returns how
    many. A folder whose lock is held is a live writer's, and stays."""
    removed = 0
    for folder in sorted(base.glob(f"{PREFIX}*")):
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its writer lives
            os.close(fd)
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
            removed += not folder.exists()
        finally:
            os.close(fd)
    if removed:
        logger.info("removed %d upload spool folder(s) of killed distill processes in %s",
                    removed, base)
    return removed


@atexit.register
def _remove_own() -> None:
    """At exit: this process's spool folder goes (a forked child leaves its parent's alone)."""
    global _held
    held, _held = _held, None
    if held is None or held[0] != os.getpid():
        return
    shutil.rmtree(held[1], ignore_errors=True)
    with contextlib.suppress(OSError):
        os.close(held[2])


def _forget_in_child() -> None:
    """A forked child spools into its own folder; the parent's stays locked by the parent."""
    global _guard, _held
    _guard, _held = threading.Lock(), None


os.register_at_fork(after_in_child=_forget_in_child)
