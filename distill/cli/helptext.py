"""Help that reads well at any width: docstrings reflowed into paragraphs the terminal wraps
evenly, examples kept as written, man-page placeholders (N, PATH, KEY=VALUE)."""

from __future__ import annotations

from inspect import cleandoc
from pathlib import Path
from textwrap import dedent
from typing import Any, get_args, get_origin

import typer
import typer.core

__all__ = ["tidy_help"]


def _reflow(text: str | None) -> str | None:
    """A docstring's paragraphs as single lines, so that the terminal wraps them evenly; a
    paragraph opened by click's `\\b` (examples) keeps its lines as written."""
    if not text:
        return text
    return "\n\n".join(_verbatim(p) if p.startswith("\b") else " ".join(p.split())
                       for p in cleandoc(text).split("\n\n"))


def _verbatim(paragraph: str) -> str:
    """A `\\b` paragraph (a heading, then examples) with its marker dropped — typer's rich help
    keeps line breaks as written — and its lines under the heading flush left, continuations
    indented: typer strips a common indent only where another paragraph follows."""
    head, _, body = paragraph.removeprefix("\b\n").partition("\n")
    return f"{head}\n{dedent(body)}" if body else head


def _metavar(param: Any) -> str:
    """What an option's value is, in the words of a man page (N, PATH, KEY=VALUE)."""
    if isinstance(param, typer.core.TyperArgument):
        return param.name.upper() if param.name else "ARG"
    if param.name == "set_":
        return "KEY=VALUE"
    desc = param.type_descriptor
    kind = desc.annotation
    if desc.is_list or get_origin(kind) is list:
        kind = (get_args(kind) or (str,))[0]
    if kind is int:
        return "N"
    if kind is float:
        return "X"
    if desc.is_path or kind is Path:
        return "PATH"
    return "TEXT"


def tidy_help(command: Any) -> Any:
    """Every command's help as a reader wants it (tests/test_cli.py renders them all at 80
    and 120 columns): reflowed paragraphs, no value placeholder on a flag, and a man-page
    placeholder (N, PATH, KEY=VALUE) for a value."""
    command.help = _reflow(command.help)
    command.epilog = _reflow(command.epilog)
    made = command.get_help_option  # --help itself is made on first use: a flag too

    def help_option(ctx: Any) -> Any:
        option = made(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for param in command.params:
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""
        elif param.metavar is None:
            param.metavar = _metavar(param)
        if isinstance(param, typer.core.TyperArgument):  # its name says it: no type column
            param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub)
    return command

