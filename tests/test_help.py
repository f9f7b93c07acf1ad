"""Every command's --help reads well at 80 and 120 columns: prose wrapped evenly (not at the
docstring's own line breaks), examples whole, no value placeholder on a flag, nothing cut."""

from __future__ import annotations

import re
from itertools import pairwise

import pytest
from typer.testing import CliRunner

from distill import cli

WIDTHS = (80, 120)


def _commands(command, path=()):
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


COMMANDS = [path for path, _ in _commands(cli.cli())]


def _render(path: tuple[str, ...], width: int, monkeypatch) -> str:
    import typer.rich_utils
    import typer.testing

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", width)
    # the command line as `distill` runs it: help tidied (`cli.cli`), not typer's raw one
    monkeypatch.setattr(typer.testing, "_get_command", lambda app: cli.cli())
    result = CliRunner().invoke(cli.app, [*path, "--help"], prog_name="distill",
                                terminal_width=width)
    assert result.exit_code == 0, result.output
    return result.output


def _examples(command) -> list[str]:
    """The example lines a command's docstring gives (commands and their continuations)."""
    text = command.help or ""
    block = text.split("Examples:", 1)[1] if "Examples:" in text else ""
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_every_command_is_rendered():
    assert ("run", "generate-labels") in COMMANDS and ("predict",) in COMMANDS
    assert len(COMMANDS) >= 15


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "distill")
def test_help_is_clean_at_width(path, width, monkeypatch):
    command = dict(_commands(cli.cli()))[path]
    text = _render(path, width, monkeypatch)
    lines = [line.rstrip() for line in text.splitlines()]
    assert max(len(line) for line in lines) <= width, "a line is wider than the terminal"
    assert "…" not in text, "a help text is cut"
    assert not re.search(r"<(bool|str|int|float|list\[)", text), "a type placeholder shows"
    assert f"Usage: distill {' '.join(path)}".rstrip() in text
    rendered = {line.strip() for line in lines}
    for example in _examples(command):  # each example line whole, on one line
        assert example in rendered, example
    # prose wraps greedily: a line ends early only where its paragraph ends
    prose = lines[:next((k for k, line in enumerate(lines) if line.startswith("╭")),
                        len(lines))]
    for line, after in pairwise(prose):
        words = after.split()
        if not line.strip() or not words or after.startswith((" distill", "     ")) or \
                "Examples:" in line or line.strip().startswith("distill"):
            continue
        assert len(line) + 1 + len(words[0]) > width - 1, f"ragged: {line!r} / {after!r}"


def test_flags_show_no_value_and_values_a_plain_placeholder(monkeypatch):
    text = _render(("run", "generate-labels"), 120, monkeypatch)
    dry = next(line for line in text.splitlines() if "│ --dry-run" in line)
    assert re.search(r"--dry-run\s+Print the plan", dry), dry
    assert re.search(r"--limit\s+N\s", text) and re.search(r"--set\s+-s\s+KEY=VALUE", text)
