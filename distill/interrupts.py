"""How the `distill` command stops on Ctrl-C (SIGINT) and SIGTERM.

The first signal raises `KeyboardInterrupt` (`Terminated` for SIGTERM) in the main thread, so
that every clean-up path runs as it does for Ctrl-C: a shard's temp file goes, Ray shuts down,
the run folder's lock or lease is released. That first signal alone decides the exit code
(`exit_code`: 130, 143), not the exception that reaches the CLI: Ray turns whatever its signal
check raised into a new, plain `KeyboardInterrupt`, and a library may catch one. Later signals
raise nothing (one line says that distill is already stopping), so that they cannot cut a
clean-up short half-way or change the exit code.
"""

from __future__ import annotations

import logging
import os
import signal
from contextlib import suppress
from typing import Any

__all__ = ["Terminated", "exit_code", "first_signal", "ignore", "install", "signal_of",
           "stop_raising"]

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt (see the module docstring)."""


class _State:
    first: int | None = None  # the first signal received since `install`
    raising = True  # whether that first signal raises (the command is still running)
    told = False  # whether "already stopping" was said


_state = _State()


def install() -> None:
    """From now on SIGINT and SIGTERM stop this process as the module docstring says. A SIGINT
    the parent set to be ignored (a background job of a non-interactive shell, some CI
    runners) is handled too: a run someone signals stops, and says so in its exit code."""
    _state.first, _state.raising, _state.told = None, True, False
    with suppress(ValueError):  # not the main thread (an embedding program): Python's own
        for sig in _SIGNALS:
            signal.signal(sig, _on_signal)


def _on_signal(signum: int, frame: Any) -> None:
    if _state.first is None:
        _state.first = signum
        if _state.raising:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        return
    if not _state.told:
        _state.told = True
        # os.write: a handler may run while the main thread is inside a write to sys.stderr
        with suppress(OSError):
            os.write(2, f"distill: stopping already ({signal.Signals(signum).name} again); "
                        "finishing the clean-up\n".encode())


def first_signal() -> int | None:
    """The first signal received since `install` (None: none, or `install` never ran)."""
    return _state.first


def signal_of(exc: BaseException) -> int:
    """The signal that stops the process: the first received, else the one `exc` stands for
    (a program that calls a command without `install`)."""
    if _state.first is not None:
        return _state.first
    return signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT


def exit_code(signum: int) -> int:
    """128 + the signal, as a shell reports a process it stopped: 130 Ctrl-C, 143 SIGTERM."""
    return 128 + signum


def stop_raising() -> None:
    """The command is over: a first signal from now on is only recorded."""
    _state.raising = False


def ignore() -> None:
    """The exit code is decided: signals from now on change nothing, up to the process's very
    end (Python resets its own handlers to the default, killing, action while it finalizes)."""
    with suppress(ValueError):
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
