"""Keeping Ray's native log lines off the console of a run (without `-v`).

Ray's C++ core worker in the driver process writes every log line of level ERROR or above to
the process's stderr as well as to its log file (`python-core-driver-*.log` in the session's
`logs/` folder). One such line comes with every run: Ray Data always hands its actors their
arguments through the object store (its `MapTransformer` and `DataContext`, `ray.put` by Ray
Data itself, whatever `fn_constructor_kwargs` hold), and our teacher pools keep
`max_restarts=-1` so that a lost node's actors come back (DECISIONS, "Failures"); that pair is
what the core worker warns about (ray-project/ray#53727), once per process. Ray has no switch
for the stderr copy, so while the run's Ray session is open the driver's file descriptor 2 is a
pipe, and a thread forwards everything to the terminal except lines in Ray's native format
(`[2026-12-02 02:09:55,717 E 18255 18255] core_worker.cc:2465: …`) of level I, W or E. Python's
own stderr (`sys.stderr`, the log handlers on it, rich) writes to the terminal directly, so a
terminal stays a terminal for the live table. A fatal line (F) and everything that is not a
native Ray line go through. Nothing is lost: each dropped line is in the driver's log file.
"""

from __future__ import annotations

import io
import logging
import os
import re
import select
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

__all__ = ["NATIVE_LINE", "native_lines_dropped"]

logger = logging.getLogger(__name__)

# Ray's C++ log prefix: [date time,ms LEVEL pid tid] file.cc:line:
NATIVE_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [IWE] \d+ \d+\] [\w./-]+:\d+:")


class _Forwarder(threading.Thread):
    """Reads the pipe that fd 2 became; writes every line but Ray's native ones to `target`."""

    def __init__(self, source: int, target: int) -> None:
        super().__init__(name="stderr-filter", daemon=True)
        self.source, self.target = source, target
        self.stop = threading.Event()
        self.pending = b""
        self.dropped = 0

    def run(self) -> None:
        while True:
            ready, _, _ = select.select([self.source], [], [], 0.1)
            if not ready:
                if self.stop.is_set():
                    break
                continue
            chunk = os.read(self.source, 65536)
            if not chunk:
                break
            self._feed(chunk)
        self._write(self.pending)

    def _feed(self, chunk: bytes) -> None:
        lines = (self.pending + chunk).split(b"\n")
        self.pending = lines.pop()
        for line in lines:
            if NATIVE_LINE.match(line):
                self.dropped += 1
            else:
                self._write(line + b"\n")
        if self.pending and not self.pending.startswith(b"["):
            self._write(self.pending)  # a partial line that cannot be Ray's: show it now
            self.pending = b""

    def _write(self, data: bytes) -> None:
        with suppress(OSError):
            while data:
                data = data[os.write(self.target, data):]


def _stream_handlers(stream: Any) -> list[logging.StreamHandler[Any]]:
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    # (a handler whose `stream` is a property, as logging's last-resort handler, reads
    # `sys.stderr` each time: it follows the swap by itself and cannot be given a stream)
    return [h for lg in loggers for h in lg.handlers
            if isinstance(h, logging.StreamHandler) and h.stream is stream
            and not isinstance(getattr(type(h), "stream", None), property)]


@contextmanager
def native_lines_dropped(enabled: bool = True) -> Iterator[None]:
    """While open, Ray's native I/W/E lines on fd 2 stay off the console (see the module)."""
    if not enabled:
        yield
        return
    try:
        old = sys.stderr
        old.flush()
        terminal = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no real stderr (embedded, closed): leave it
        yield
        return
    read_end, write_end = os.pipe()
    # Python's stderr goes to the terminal itself, so isatty() and rich see what they saw.
    direct = io.TextIOWrapper(io.FileIO(terminal, "w", closefd=False), line_buffering=True,
                              encoding=getattr(old, "encoding", None) or "utf-8",
                              errors=getattr(old, "errors", None) or "backslashreplace")
    handlers = _stream_handlers(old)
    forwarder = _Forwarder(read_end, terminal)
    forwarder.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = direct
    for h in handlers:
        h.setStream(direct)
    try:
        yield
    finally:
        for h in handlers:
            h.setStream(old)
        sys.stderr = old
        with suppress(OSError, ValueError):
            direct.flush()
        os.dup2(terminal, 2)  # closes the pipe's last write end (only this process held it)
        forwarder.stop.set()
        forwarder.join(timeout=5)
        with suppress(OSError):
            os.close(read_end)
        os.close(terminal)
        if forwarder.dropped:
            logger.debug("%d of Ray's native log line(s) kept off the console",
                         forwarder.dropped)
