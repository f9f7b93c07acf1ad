"""`distill teachers list` and `distill teachers fetch`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from distill.cli.exits import handles_errors
from distill.cli.groups import teachers_app
from distill.cli.options import ConfigOpt, PresetOpt, SetOpt


@teachers_app.command("list")
def teachers_list() -> None:
    """List teacher backends per role, whether they can run here, and the paper's choice."""
    import distill

    typer.echo(f"{'role':<9} {'backend':<18} {'status':<34} paper default")
    broken: dict[str, str] = {}
    for row in distill.list_teachers():
        typer.echo(f"{row.role:<9} {row.name:<18} {row.status:<34} {row.paper_checkpoint}")
        if row.import_error is not None and row.package is not None:
            broken[row.package] = row.import_error
    for package, why in broken.items():
        typer.echo(f"{package}: {why}")


@teachers_app.command("fetch")
@handles_errors
def teachers_fetch(
    roles: Annotated[list[str] | None, typer.Argument(
        help="Teacher roles to fetch (depth, panoptic, text, caption, pose). Default: every "
             "enabled one.", show_default=False)] = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    cache: Annotated[Path | None, typer.Option(
        "--cache", help="Hugging Face cache folder to fill. Default: HF_HUB_CACHE "
        "(~/.cache/huggingface/hub); runs then read it with HF_HUB_CACHE=DIR.")] = None,
) -> None:
    """Download and verify every checkpoint the config's teachers need, so that runs then work
    offline (HF_HUB_OFFLINE=1): hub ids at their revision, each file against its sha256 (the
    hub's, and teachers.<role>.sha256). Prints the one manual step where a source needs a
    person. Exit 2: a file failed its hash (nothing left under its name), or a manual step
    remains."""
    import distill
    from distill.config import load_config
    from distill.errors import DistillError

    report = distill.fetch_teachers(load_config(preset, config, set_), roles, cache=cache)
    for row in report.rows:
        typer.echo(f"{row.role:<9} {row.status:<6} {row.detail}")
        if row.verified:
            typer.echo(f"{'':<9} sha256 verified: {', '.join(row.verified)}")
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if report.manual:
        raise DistillError(f"{len(report.manual)} checkpoint(s) need the manual step above; "
                           "fetch again after it")
    offline = "HF_HUB_OFFLINE=1" if cache is None else \
        f"HF_HUB_OFFLINE=1 HF_HUB_CACHE={report.cache}"
    typer.echo(f"all weights here: runs work offline with {offline}")
