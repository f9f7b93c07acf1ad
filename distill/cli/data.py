"""`distill data …`: check, make-demo."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from distill.cli.exits import handles_errors
from distill.cli.groups import data_app
from distill.cli.options import ConfigOpt, PresetOpt, SetOpt


def _say_why_folder(root: Any) -> None:
    """A plain image folder has no persons or captions: say why it was read as one."""
    from distill.coco import dataset_kind
    from distill.storage import Location

    parent = Location(root).parent
    hint = (f"; {parent} has one: did you mean `distill data check {parent}`?"
            if dataset_kind(parent) == "coco" else "")
    typer.echo(f"  (read as a plain folder of images, without persons or captions: it has no "
               f"annotations/ folder{hint})")


@data_app.command("check")
@handles_errors
def data_check(
    root: Annotated[str, typer.Argument(help="A COCO 2017 folder or a plain image folder (a path "
                                        "or a URI).")],
    split: Annotated[str, typer.Option(help="Split name, e.g. train2017 or val2017.")] = "val2017",
    decode: Annotated[bool, typer.Option(
        "--decode", help="Also decode every image, in this process, with the config's "
        "data.max_image_pixels and data.min_image_side, so that the count of usable images is "
        "what generate-labels will label.")] = False,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Read a dataset the way generate-labels will and summarise it: records, people,
    captions, every sample that would be quarantined, with its reason, and the annotation
    entries that are left out (no usable image id, a caption that is not text). With
    --decode, every image is decoded as generate-labels decodes it.

    \b
    Examples:
      distill data check /data/coco --split val2017
      distill data check /data/coco --split val2017 --decode \\
          --set data.max_image_pixels=200000000
    """
    import distill
    from distill.config import load_config
    from distill.progress import Progress

    cfg = load_config(preset, config, list(set_ or [])) if decode else None
    tty = sys.stderr.isatty()
    with contextlib.ExitStack() as stack:
        bar: list[Progress] = []  # made on the first decoded image, when the total is known
        last = [time.monotonic()]

        def decoding(done: int, total: int, failed: int) -> None:
            if not bar:
                bar.append(stack.enter_context(Progress("decode", total, "images", enabled=tty)))
            bar[0].advance(1)
            if not tty and (time.monotonic() - last[0] >= 10 or done == total):
                typer.echo(f"decode: {done}/{total} images, {failed} failed", err=True)
                last[0] = time.monotonic()

        check = distill.check_data(root, split, decode=decode, config=cfg, progress=decoding)
    ds = check.dataset
    typer.echo(f"{ds.kind} dataset {ds.root} split {ds.split} (images in {ds.image_dir})")
    if ds.kind == "folder":
        _say_why_folder(ds.root)
    typer.echo(f"  images:   {check.images}")
    typer.echo(f"  persons:  {check.persons} ({check.with_keypoints} with keypoints)")
    typer.echo(f"  captions: {check.captions}")
    typer.echo(f"  problems: {len(ds.problems)}")
    for kind, n, example in check.problem_kinds():
        typer.echo(f"    {kind}: {n}  e.g. image {example.image_id}: {example.message}")
    shown = 20
    if check.dropped:
        kinds = ", ".join(f"{k} {n}" for k, n in check.dropped_kinds())
        typer.echo(f"  left out: {len(check.dropped)} annotation entries ({kinds}); no image is "
                   "quarantined for them")
        for d in check.dropped[:shown]:
            typer.echo(f"    {d.error_type}: {d.message}")
        if len(check.dropped) > shown:
            typer.echo(f"    … and {len(check.dropped) - shown} more")
    if check.data is None:
        typer.echo("  (images were not decoded: --decode decodes each one, as generate-labels "
                   "will)")
        return
    failures, data = check.failures, check.data
    typer.echo(f"  decoded:  {check.usable} of {check.images} images (data.max_image_pixels = "
               f"{data.max_image_pixels}, data.min_image_side = {data.min_image_side}); "
               f"{len(failures)} do not")
    for f in failures[:shown * 5]:
        typer.echo(f"    image {f.image_id} {f.file_name}: {f.error_type}: {f.message}")
    if len(failures) > shown * 5:
        typer.echo(f"    … and {len(failures) - shown * 5} more")
    typer.echo(f"  usable:   {check.usable} images (what generate-labels will label)")


@data_app.command("make-demo")
@handles_errors
def data_make_demo(
    out: Annotated[Path, typer.Argument(help="Folder to write the COCO-format demo set into.")] = (
        Path("demo-data/coco")
    ),
) -> None:
    """Build a small COCO-format demo set (val2017) from scikit-image's bundled real photos."""
    import distill

    ds = distill.make_demo(out)
    typer.echo(f"wrote {len(ds.records)} images with annotations to {out}")

