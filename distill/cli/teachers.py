"""`distill teachers list`."""

from __future__ import annotations

import typer

from distill.cli.groups import teachers_app


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
