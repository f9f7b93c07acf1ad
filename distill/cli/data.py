"""`distill data …`: check, make-demo."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from distill.cli.exits import handles_errors
from distill.cli.groups import data_app
from distill.cli.options import ConfigOpt, PresetOpt, SetOpt, progress_bar


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
    import time
    from collections import Counter

    from distill.coco import open_dataset

    reader_log = logging.getLogger("distill.coco")
    level = reader_log.level
    reader_log.setLevel(logging.ERROR)  # its warning about left-out entries: they are listed below
    try:
        ds = open_dataset(root, split)
    finally:
        reader_log.setLevel(level)
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
    shown = 20
    if ds.dropped:
        kinds = ", ".join(f"{k} {n}" for k, n in
                          Counter(d.error_type for d in ds.dropped).most_common())
        typer.echo(f"  left out: {len(ds.dropped)} annotation entries ({kinds}); no image is "
                   "quarantined for them")
        for d in ds.dropped[:shown]:
            typer.echo(f"    {d.error_type}: {d.message}")
        if len(ds.dropped) > shown:
            typer.echo(f"    … and {len(ds.dropped) - shown} more")
    if not decode:
        typer.echo("  (images were not decoded: --decode decodes each one, as generate-labels "
                   "will)")
        return

    from distill.config import load_config
    from pipelines.stages import Item, decode_items

    data = load_config(preset, config, list(set_ or [])).data
    failures = []
    tty = sys.stderr.isatty()
    last = time.monotonic()
    with progress_bar(len(ds.records), "decode", "images", tty) as advance:
        for done, record in enumerate(ds.records, 1):
            item = Item(image_id=record.image_id, shard="", split=ds.split, roles=(),
                        file_name=record.file_name, record=record)
            decode_items([item], data)
            if item.failure is not None:
                failures.append(item.failure)
            advance(1)
            if not tty and (time.monotonic() - last >= 10 or done == len(ds.records)):
                typer.echo(f"decode: {done}/{len(ds.records)} images, {len(failures)} failed",
                           err=True)
                last = time.monotonic()
    good = len(ds.records) - len(failures)
    typer.echo(f"  decoded:  {good} of {len(ds.records)} images (data.max_image_pixels = "
               f"{data.max_image_pixels}, data.min_image_side = {data.min_image_side}); "
               f"{len(failures)} do not")
    for f in failures[:shown * 5]:
        typer.echo(f"    image {f.image_id} {f.file_name}: {f.error_type}: {f.message}")
    if len(failures) > shown * 5:
        typer.echo(f"    … and {len(failures) - shown * 5} more")
    typer.echo(f"  usable:   {good} images (what generate-labels will label)")


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

