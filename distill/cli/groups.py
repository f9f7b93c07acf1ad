"""The command line's groups (`distill run`, `config`, `data`, `teachers`) and its root options
(-v, --version, the console's log format); the commands register themselves on these."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from distill import __version__

__all__ = ["app", "config_app", "data_app", "run_app", "teachers_app"]

app = typer.Typer(
    name="distill",
    help="Distil vision foundation models into the Y-MAP-Net multi-task student.\n\n"
    "Teachers label COCO images (Ray stages) into Parquet shards; the student trains on them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
run_app = typer.Typer(
    help="The pipeline's jobs: label generation, student training (resumable, local or on Ray).",
    no_args_is_help=True,
)
config_app = typer.Typer(help="Show and check run configuration.", no_args_is_help=True)
data_app = typer.Typer(help="Check datasets and build the bundled demo set.", no_args_is_help=True)
teachers_app = typer.Typer(help="The teacher backends.", no_args_is_help=True)
app.add_typer(run_app, name="run")
app.add_typer(teachers_app, name="teachers")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

def _version(value: bool) -> None:
    if value:
        typer.echo(f"distill {__version__}")
        raise typer.Exit()


# Libraries that log credentials at DEBUG: botocore every request's headers (the access key id
# in Authorization, X-Amz-Security-Token), s3transfer and boto3 call arguments, urllib3 the
# URLs (a presigned one carries a signature and a token). They stay at INFO, also at -vv.
_SECRETS_AT_DEBUG = ("botocore", "boto3", "s3transfer", "urllib3")


class _LogFormat(logging.Formatter):
    """The console's log lines, with any credentials of a URI in them (a message or a
    traceback that quotes a URI a user gave) replaced by `***`."""

    def format(self, record: logging.LogRecord) -> str:
        from distill.storage import redact_credentials

        return redact_credentials(super().format(record))


@app.callback()
def _root(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")
    ] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormat("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    for name in _SECRETS_AT_DEBUG:
        logging.getLogger(name).setLevel(max(level, logging.INFO))

