"""The `distill` command line: a thin typer layer over the library. Each command loads config,
calls one library function and turns `DistillError` into exit code 2. Heavy imports (torch, Ray)
happen inside commands so that `--help` stays fast."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from distill import __version__
from distill.errors import DistillError

__all__ = ["app", "main"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

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

PresetOpt = Annotated[
    str | None,
    typer.Option("--preset", "-p", help="Named preset: 'paper' (the paper's models and settings) "
                 "or 'demo' (tiny offline models). Default: a config file's own, else 'paper'."),
]
ConfigOpt = Annotated[
    list[Path] | None,
    typer.Option("--config", "-c", help="TOML config file(s) applied over the preset, in order.",
                 exists=False, dir_okay=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one setting, e.g. --set train.epochs=10 "
                 "--set teachers.depth.checkpoint=/ckpt/dav2-large. Repeatable."),
]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def handles_errors(fn: F) -> F:
    """Turn the project's errors into a one-paragraph message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DistillError as exc:
            logger.debug("command failed", exc_info=True)
            _fail(str(exc))

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"distill {__version__}")
        raise typer.Exit()


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
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


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


@data_app.command("check")
@handles_errors
def data_check(
    root: Annotated[Path, typer.Argument(help="A COCO 2017 folder or a plain image folder.")],
    split: Annotated[str, typer.Option(help="Split name, e.g. train2017 or val2017.")] = "val2017",
) -> None:
    """Read a dataset the way generate-labels will and summarise it: records, people,
    captions, and every sample that would be quarantined, with its reason."""
    from collections import Counter

    from distill.coco import open_dataset

    ds = open_dataset(root, split)
    people = sum(len(r.persons) for r in ds.records)
    with_kp = sum(1 for r in ds.records for p in r.persons if p.num_keypoints > 0)
    captions = sum(len(r.captions) for r in ds.records)
    typer.echo(f"{ds.kind} dataset {ds.root} split {ds.split} (images in {ds.image_dir})")
    typer.echo(f"  images:   {len(ds.records)}")
    typer.echo(f"  persons:  {people} ({with_kp} with keypoints)")
    typer.echo(f"  captions: {captions}")
    typer.echo(f"  problems: {len(ds.problems)}")
    for kind, n in Counter(p.error_type for p in ds.problems).most_common():
        example = next(p for p in ds.problems if p.error_type == kind)
        typer.echo(f"    {kind}: {n}  e.g. image {example.image_id}: {example.message}")


@data_app.command("make-demo")
@handles_errors
def data_make_demo(
    out: Annotated[Path, typer.Argument(help="Folder to write the COCO-format demo set into.")] = (
        Path("demo-data/coco")
    ),
) -> None:
    """Build a small COCO-format demo set (val2017) from scikit-image's bundled real photos."""
    from distill.demo import make_demo_dataset

    ds = make_demo_dataset(out)
    typer.echo(f"wrote {len(ds.records)} images with annotations to {out}")


@teachers_app.command("list")
def teachers_list() -> None:
    """List teacher backends per role, whether they can run here, and the paper's choice."""
    import importlib.util

    from distill.config import TEACHER_BACKENDS, TeachersConfig

    paper = TeachersConfig().roles()
    needs = {"detectron2": "detectron2", "dptext-detr": "adet", "craft": "easyocr_en_models"}
    typer.echo(f"{'role':<9} {'backend':<18} {'status':<34} paper default")
    for role, names in TEACHER_BACKENDS.items():
        for name in names:
            module = needs.get(name)
            ok = module is None or importlib.util.find_spec(module) is not None
            status = "ready" if ok else f"needs `{module}` (not installed)"
            if name == "craft" and not ok:
                status = "ready with a weights path (no wheel)"
            mark = paper[role].checkpoint if paper[role].backend == name else ""
            typer.echo(f"{role:<9} {name:<18} {status:<34} {mark}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
