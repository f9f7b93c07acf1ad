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
    from distill.config import dump_toml, load_config

    cfg = load_config(preset, config, set_)
    labels = cfg.fingerprint(("data", "teachers", "labels", "shards"))
    typer.echo(f"# preset: {cfg.preset}")
    typer.echo(f"# fingerprint: {cfg.fingerprint()}  (labels: {labels})")
    typer.echo(dump_toml(cfg))


@config_app.command("presets")
def config_presets() -> None:
    """List the named presets."""
    from distill.config import available_presets

    for name in available_presets():
        typer.echo(name)

