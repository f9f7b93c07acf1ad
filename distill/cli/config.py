"""`distill config …`: show, presets."""

from __future__ import annotations

import typer

from distill.cli.exits import handles_errors
from distill.cli.groups import config_app
from distill.cli.options import ConfigOpt, PresetOpt, SetOpt


@config_app.command("show")
@handles_errors
def config_show(
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Print the resolved config as TOML (readable back with --config) and its fingerprint."""
    import distill
    from distill.config import load_config

    typer.echo(distill.show_config(load_config(preset, config, set_)))


@config_app.command("presets")
def config_presets() -> None:
    """List the named presets."""
    import distill

    for name in distill.list_presets():
        typer.echo(name)

