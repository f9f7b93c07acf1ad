"""The `distill` command line: a thin typer layer over the library. Each command parses its
options, loads config, calls one library function (the same one `import distill` offers),
prints its result and turns `DistillError` into exit code 2. Heavy imports (torch, Ray)
happen inside commands so that `--help` stays fast.

Exit codes: 0 done; 2 an error (one line on stderr, no traceback; -vv logs the traceback);
130 Ctrl-C and 143 SIGTERM (128 + the signal, as a shell reports it). SIGTERM stops a command
exactly as Ctrl-C does: everything a run committed stays, and it says how far it got.

One module per command group: `run` (generate-labels, retry-failed, train-student, evaluate,
audit), `config`, `data`, `teachers`, `student` (predict, export, show, view, inspect); the
groups themselves in `groups`, the shared options in `options`, exit codes in `exits`, the help
layout in `helptext`."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

import typer

from distill import interrupts
from distill.cli import config, data, run, student, teachers  # noqa: F401  (register commands)
from distill.cli.exits import handles_errors, interrupted
from distill.cli.groups import app
from distill.cli.helptext import tidy_help
from distill.cli.options import expanded_glob

__all__ = ["app", "cli", "handles_errors", "main", "tidy_help"]

logger = logging.getLogger(__name__)


def cli() -> Any:
    """The whole command line as one click command, help tidied (`tidy_help`)."""
    return tidy_help(typer.main.get_command(app))


def main() -> None:
    """Console-script entry point. From its first instruction to its last, the first SIGINT or
    SIGTERM decides the exit code (130, 143), whatever became of its KeyboardInterrupt on the
    way (`distill.interrupts`): an interrupted command never exits 0."""
    interrupts.install()
    glob = expanded_glob(sys.argv[1:])
    if glob:
        typer.secho(f"error: {glob}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    code: Any = 0
    try:
        try:
            cli()(prog_name="distill")
        finally:
            interrupts.stop_raising()
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:  # the first signal came after the command, before stop_raising
        code = 1
    except BaseException:
        if interrupts.first_signal() is None:
            raise
        logger.debug("stopped by a signal", exc_info=True)
    interrupts.ignore()
    signum = interrupts.first_signal()
    if signum is not None:
        with contextlib.suppress(typer.Exit):
            interrupted(signum)
        code = interrupts.exit_code(signum)
    sys.exit(code)

