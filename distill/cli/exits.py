"""How a command ends: the project's errors become one line and exit code 2, an interruption
(Ctrl-C: 130, SIGTERM: 143; the first signal decides, `distill.interrupts`) one line saying how
far the command got."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer

from distill import interrupts
from distill.errors import DistillError

__all__ = ["handles_errors", "interrupted", "progress_notes"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str) -> None:
    from distill.storage import redact_credentials

    typer.secho(f"error: {redact_credentials(message)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


# What the running command has done so far, said when it is interrupted (Ctrl-C, SIGTERM).
progress_notes: list[Callable[[], str]] = []
_said_interrupted = False  # whether the running command printed its "interrupted" line


def interrupted(signum: int) -> NoReturn:
    """One line saying how far the command got, then exit 128 + the signal."""
    global _said_interrupted
    if not _said_interrupted:
        _said_interrupted = True
        note = ""
        with contextlib.suppress(Exception):
            note = "; ".join(f() for f in progress_notes)
        typer.secho("interrupted" + (" (SIGTERM)" if signum == signal.SIGTERM else "")
                    + (f": {note}" if note else ""), fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(code=interrupts.exit_code(signum))


def handles_errors(fn: F) -> F:
    """Turn the project's errors into a one-line message and exit code 2, and an interruption
    (Ctrl-C: 130, SIGTERM: 143; the first signal decides, `distill.interrupts`) into one line
    saying how far the command got."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _said_interrupted
        progress_notes.clear()
        _said_interrupted = False
        try:
            return fn(*args, **kwargs)
        except DistillError as exc:
            signum = interrupts.first_signal()
            if signum is not None:  # what the signal's KeyboardInterrupt became on its way
                logger.debug("stopped by a signal", exc_info=True)
                interrupted(signum)
            logger.debug("command failed", exc_info=True)
            _fail(str(exc))
        except KeyboardInterrupt as exc:
            logger.debug("interrupted", exc_info=True)
            interrupted(interrupts.signal_of(exc))

    return wrapper  # type: ignore[return-value]

