"""The student's and the labels' commands: predict, export, show, view, inspect."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from distill.cli.exits import handles_errors
from distill.cli.groups import app
from distill.cli.options import (
    CheckpointOpt,
    DeviceOpt,
    EngineOpt,
    SetOpt,
    VocabOpt,
)
from distill.errors import DistillError


def _fps_line(steps: dict[str, float]) -> str:
    return ", ".join(f"{k} {1e3 / v:.1f}" if v > 0 else f"{k} –" for k, v in steps.items())


@app.command("predict")
@handles_errors
def predict(
    checkpoint: CheckpointOpt,
    images: Annotated[Path | None, typer.Argument(
        help="An image file or a folder of images (turned as their EXIF orientation says, as "
        "a viewer shows them); or --video instead.")] = None,
    video: Annotated[Path | None, typer.Option(
        "--video", help="A video file (anything FFmpeg reads): writes <name>.annotated.mp4 "
        "(people and words drawn) and <name>.jsonl (one record per frame) into --out.")] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Folder for <image>.png panels and predictions.json (a video: "
        "its annotated copy and JSON lines).")] = Path("predictions"),
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 1,
    refine: Annotated[bool, typer.Option(
        "--refine/--no-refine", help="Refine depth from the predicted normals (paper §3.2).")
    ] = True,
    sheets: Annotated[bool, typer.Option(
        "--sheets/--no-sheets", help="Draw a PNG panel per image (a video: write its annotated "
        "copy).")] = True,
    device: DeviceOpt = "auto",
    engine: EngineOpt = "auto",
    vocab: VocabOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run a trained student on images or a video: depth (refined from its normals), normals,
    text, class groups, people (joints + PAFs decoded) and caption words. Writes a PNG panel per
    image and predictions.json (people, words, timings), and reports frames per second, per
    step too. The checkpoint may be a file distill export wrote (ONNX, TorchScript): the same
    refinement and decoding run around its runtime. An input that cannot be read (an image, or
    a video cut short) is named and the others are still written, with exit code 2.

    \b
    Examples:
      distill predict demo-data/coco/val2017 --checkpoint demo-data/student \\
          --out demo-data/pred
      distill predict photo.jpg -k /runs/student --device cuda \\
          --set predict.refine_iterations=0
      distill predict photos/ --checkpoint student.onnx --out pred
      distill predict --video clip.mp4 --checkpoint student.onnx --out pred
    """
    import distill
    from distill.paint import one_line
    from distill.student.predict_files import FilesPrediction

    result = distill.predict(checkpoint, images, video=video, out=out, batch_size=batch_size,
                             refine=refine, sheets=sheets, device=device, engine=engine,
                             vocab=vocab, overrides=list(set_ or []),
                             progress=sys.stderr.isatty())
    steps_words = ("letterboxing, refinement and decoding" if refine else
                   "letterboxing and decoding (no refinement)")
    if not isinstance(result, FilesPrediction):
        summary = result.summary
        fps = summary["frames_per_second"]
        typer.echo(f"{summary['frames']} frame(s) of {video} on {summary['device']} "
                   f"({summary['engine']}): {fps['model']} frames/s model only, "
                   f"{fps['predict']} with {steps_words}, "
                   f"{fps['end_to_end']} end to end (decoding, drawing and encoding the video "
                   "included)")
        typer.echo(f"  frames/s per step (medians): {_fps_line(summary['steps_ms'])}")
        typer.echo(f"outputs: {summary['jsonl']}"
                   + (f", {summary['annotated']}" if sheets else "") + f", {result.path}")
        if summary["cut_short"]:
            raise DistillError(f"{summary['cut_short']}; the outputs above hold the "
                               f"{summary['frames']} frame(s) before the cut")
        return
    fps = result.frames_per_second
    if result.warning:
        typer.secho(result.warning, fg=typer.colors.RED, err=True)
    if result.records:
        typer.echo(f"{len(result.records)} image(s) on {result.device} ({result.engine}): "
                   f"{fps['model']} frames/s model only, {fps['predict']} with reading, "
                   f"{steps_words}, {fps['end_to_end']} end to end "
                   "(reading, drawing and writing included)")
    if result.steps_ms:
        typer.echo(f"  frames/s per step (medians): {_fps_line(result.steps_ms)}")
    typer.echo(f"outputs: {out}/  (predictions.json" + (", <image>.png panels)" if sheets else ")"))
    if sheets and result.kept:
        typer.echo(f"  {len(result.kept)} panel(s) keep the image's extension "
                   f"({result.kept[0]}.png): another input has the same name without it, or a "
                   "file distill did not write is there")
    for item in result.failed:
        typer.secho(f"{one_line(item['image'])}: {item['error']}",
                    fg=typer.colors.RED, err=True)
    if result.failed:  # the run is not what was asked for: say so in the exit code too
        raise DistillError(f"{len(result.failed)} of {len(result.failed) + len(result.records)} "
                           "inputs could not be read (listed above; predictions.json names them "
                           "under \"failed\")")


@app.command("export")
@handles_errors
def export(
    checkpoint: CheckpointOpt,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="The file to write (atomically; a file distill did not export is "
        "never overwritten).")],
    format_: Annotated[str, typer.Option(
        "--format", "-f", help="onnx (ONNX Runtime, TensorRT, any ONNX runtime) or torchscript "
        "(libtorch, C++).")] = "onnx",
    fp16: Annotated[bool, typer.Option(
        "--fp16", help="Compute in float16 (float32 input and outputs); for GPUs. ONNX "
        "Runtime's CPU provider may not run it.")] = False,
    dynamic_batch: Annotated[bool, typer.Option(
        "--dynamic-batch", help="Any batch size (default: batch 1; predict runs a larger batch "
        "as several calls).")] = False,
    vocab: VocabOpt = None,
    set_: SetOpt = None,
) -> None:
    """Export a trained student to one self-contained file: ONNX (opset 18) or TorchScript. The
    file carries the student config, the output channel layout, the input size and
    normalisation, the vocabulary and the checkpoint's fingerprint, so that it runs alone
    (distill predict --checkpoint FILE). Before writing, the export runs on a check input and
    must match PyTorch within 1e-4 (2e-2 with --fp16), max absolute difference.

    \b
    Examples:
      distill export -k demo-data/student --format onnx --out student.onnx
      distill export -k /runs/student --format torchscript \\
          --dynamic-batch --out student.pt
      distill predict photo.jpg -k student.onnx --out pred
    """
    import distill

    meta = distill.export(checkpoint, out, format=format_, fp16=fp16,
                          dynamic_batch=dynamic_batch, vocab=vocab, overrides=list(set_ or []))
    tol = meta["tolerance"]
    vocab_doc = meta.get("vocabulary")
    typer.echo(f"wrote {out} ({format_}, {meta['dtype']}, batch "
               f"{meta['batch'] or 'dynamic'}, input {meta['input']['size']}×"
               f"{meta['input']['size']}, {len(vocab_doc['words']) if vocab_doc else 0} "
               f"vocabulary words, {out.stat().st_size / 1e6:.1f} MB); max |difference| from "
               f"PyTorch {tol['measured_max_abs']:.2g} (tolerance {tol['max_abs']:g})")


@app.command("show")
@handles_errors
def show(
    shard: Annotated[str, typer.Argument(help="A label shard (.parquet), or a run folder / shards "
                                       "folder (rows counted across its shards in order).")],
    row: Annotated[int, typer.Option("--row", "-r", help="Row index in the shard(s).")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("show.png"),
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", "-k", help="Also run this student on the image and draw its output "
        "beside the teacher labels.")] = None,
    device: DeviceOpt = "auto",
    width: Annotated[int, typer.Option(min=96, help="Width of one panel in pixels.")] = 320,
    set_: SetOpt = None,
) -> None:
    """Draw one sample as a contact sheet: image, depth, normals, class groups (legend), text
    mask, joints and PAFs over the image, captions and tokens — the picture to look at before
    trusting a run. With --checkpoint, the student's prediction sits below each teacher panel.

    \b
    Examples:
      distill show demo-data/run/shards/val2017-00000.parquet --row 2 --out row2.png
      distill show SHARD --row 0 --checkpoint demo-data/student --out compare.png
    """
    import distill

    picture = distill.show(shard, row, out, checkpoint=checkpoint, device=device, width=width,
                           overrides=list(set_ or []))
    typer.echo(f"wrote {picture.path} ({picture.width}x{picture.height})")
    if picture.warning:
        typer.secho(f"warning: {picture.warning}", fg=typer.colors.YELLOW, err=True)


@app.command("view")
@handles_errors
def view(
    run: Annotated[str, typer.Argument(help="A generate-labels run folder, a shards folder, a "
                                       "glob or one shard (a path or a URI).")],
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", "-k", help="A trained student: its outputs become layers beside the "
        "teachers', with each sample's HDM and token cosine.")] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on.")] = 8765,
    host: Annotated[str, typer.Option(
        help="Address to bind. 127.0.0.1 keeps the viewer on this machine; anything else "
        "lets others on the network read the run.")] = "127.0.0.1",
    device: DeviceOpt = "auto",
) -> None:
    """Browse a run in a web browser: a grid of samples (thumbnails, captions, badges) with
    filters and sorts, a sample page with toggleable label layers, a run page with per-stage
    rates, shard status and the quarantine. Read-only but for its per-row statistics, kept in
    RUN/view-stats.parquet (or the local cache) for the next start; pages a 118k-row run
    without loading it.

    \b
    Examples:
      distill view demo-data/run      # then open http://127.0.0.1:8765
      distill view s3://bucket/runs/coco -k demo-data/student --port 9000
      ssh -L 8765:127.0.0.1:8765 gpu-box distill view /runs/coco
    """
    import socket

    import uvicorn

    import distill

    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"warning: serving on {host}: anyone who can reach this machine on port "
                    f"{port} can read the run (no authentication)", fg=typer.colors.YELLOW,
                    err=True)
    viewer = distill.create_viewer(run, checkpoint=checkpoint, device=device)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise DistillError(f"cannot serve on {host}:{port}: {exc.strerror or exc} "
                               "(pass another --port)") from None
    rows = viewer.state.view.total_rows()
    typer.echo(f"distill view: {run} ({rows:,} rows) at http://{host}:{port}/  (Ctrl-C stops)")
    uvicorn.run(viewer, host=host, port=port, log_level="warning")


@app.command("inspect")
@handles_errors
def inspect(
    path: Annotated[str, typer.Argument(
        help="A generate-labels run folder, a shards folder or one shard (a path or a URI).")],
    sample_rows: Annotated[int | None, typer.Option(
        min=1, help="Decode only the first N rows for the pixel statistics (default: all).")] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the report as JSON to this file (not a folder).")] = None,
) -> None:
    """Summarise labels: schema, rows, shards done/pending, every teacher's provenance, the
    quarantine, and QA statistics (class-group pixel shares, empty-caption and empty-token
    rates, depth range, bytes per sample per column)."""
    import distill
    from distill.inspect_format import format_inspect

    report = distill.inspect_labels(path, sample_rows=sample_rows, json_out=json_out)
    typer.echo(format_inspect(report))
    if json_out is not None:
        typer.echo(f"report: {json_out}")

