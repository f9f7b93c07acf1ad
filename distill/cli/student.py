"""The student's and the labels' commands: predict, export, show, view, inspect."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from distill.cli.exits import handles_errors
from distill.cli.groups import app
from distill.cli.options import (
    CheckpointOpt,
    DeviceOpt,
    EngineOpt,
    SetOpt,
    VocabOpt,
    device_name,
    progress_bar,
)
from distill.errors import DistillError


def _image_files(path: Path) -> list[Path]:
    from distill.coco import IMAGE_SUFFIXES

    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DistillError(f"{path} has no images ({', '.join(IMAGE_SUFFIXES)})")
        return files
    raise DistillError(f"{path} does not exist")



def load_for_predict(checkpoint: str, engine: str, dev: str, vocab: str | None,
                      set_: list[str] | None) -> Any:
    """A train-student checkpoint (PyTorch) or a file `distill export` wrote (ONNX Runtime,
    TorchScript), as `Predictor` takes it."""
    from distill.student.export import ENGINES, is_exported, load_exported
    from distill.student.predict import load_student

    if engine not in ENGINES:
        raise DistillError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine in ("onnxruntime", "torchscript") or is_exported(checkpoint):
        if not Path(checkpoint).is_file():
            raise DistillError(f"--engine {engine} runs a file distill export wrote; "
                               f"{checkpoint} is not a file (distill export --checkpoint "
                               f"{checkpoint} --format onnx --out student.onnx)")
        return load_exported(checkpoint, engine, dev, vocab=vocab, overrides=list(set_ or []))
    if Path(checkpoint).suffix.lower() in (".onnx", ".pt", ".ts") and Path(checkpoint).is_file():
        raise DistillError(f"{checkpoint} is not a student distill export wrote (no distill "
                           "metadata): refusing to run it")
    return load_student(checkpoint, dev, vocab=vocab, overrides=list(set_ or []))


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
    import json
    import statistics
    import time

    import numpy as np
    from PIL import Image

    from distill.images import decode_image
    from distill.storage import atomic_write_bytes
    from distill.student.predict import Predictor, describe, make_out_folder, panel_paths
    from distill.viz import contact_sheet, one_line, save_sheet

    if (images is None) == (video is None):
        raise DistillError("pass images (a file or a folder) or --video FILE, one of the two")
    dev = device_name(device)
    if video is not None:
        _predict_video(video, checkpoint, out, batch_size, refine, sheets, dev, engine, vocab,
                       set_)
        return
    assert images is not None
    files = _image_files(images)
    panels, kept = panel_paths(files, out)
    student = load_for_predict(checkpoint, engine, dev, vocab, set_)
    # Maps come back at most 1024 px on a side (the panels are 320 px wide; a 12 MP photo at full
    # size would cost GBs); people and words are not affected.
    predictor = Predictor(student, dev, refine=refine, full_maps=sheets, display_max=1024)
    make_out_folder(out)
    size = student.config.student.input_size
    predictor.predict([np.zeros((size, size, 3), np.uint8)])  # warm-up: not timed
    records: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    predict_seconds = 0.0
    started = time.perf_counter()
    with progress_bar(len(files), "predict", "images", sys.stderr.isatty()) as advance:
        for k in range(0, len(files), batch_size):
            chunk, inputs, datas = [], [], []
            t0 = time.perf_counter()
            for f in files[k:k + batch_size]:
                try:
                    data = f.read_bytes()
                    # as training sees a plain folder's photo: upright, as a viewer shows it
                    inputs.extend(predictor.letterbox_encoded([data], exif_transpose=True))
                    chunk.append(f)
                    datas.append(data)
                except (DistillError, OSError) as exc:
                    failed.append({"image": str(f), "error": f"{type(exc).__name__}: {exc}"})
            results = predictor.predict_letterboxed(inputs)
            predict_seconds += time.perf_counter() - t0
            for f, data, result in zip(chunk, datas, results, strict=True):
                record = describe(result, str(f))
                if sheets:
                    wh = (result.labels.width, result.labels.height)
                    shown = decode_image(data, at_least=wh, exif_transpose=True)
                    if shown.shape[1::-1] != wh:
                        shown = np.asarray(Image.fromarray(shown).resize(
                            wh, Image.Resampling.BILINEAR))
                    sheet = contact_sheet(shown, result.labels, title=f"student: {f.name}")
                    panel = panels[f]
                    record["panel"] = str(panel)
                    save_sheet(sheet, panel)
                records.append(record)
            advance(len(files[k:k + batch_size]))
    wall = time.perf_counter() - started
    forward = sum(r["timings_ms"]["forward"] for r in records) / 1e3
    fps = {
        "model": round(len(records) / forward, 2) if forward else None,
        "predict": round(len(records) / predict_seconds, 2) if predict_seconds else None,
        "end_to_end": round(len(records) / wall, 2) if wall else None,
    }
    steps = {k: statistics.median(r["timings_ms"][k] for r in records)
             for k in (records[0]["timings_ms"] if records else {})}
    doc = {"checkpoint": str(student.checkpoint), "engine": predictor.engine.name,
           "device": dev, "batch_size": batch_size, "refine": refine,
           "frames_per_second": fps, "steps_ms": {k: round(v, 3) for k, v in steps.items()},
           "images": records, "failed": failed}
    atomic_write_bytes(out / "predictions.json", (json.dumps(doc, indent=1) + "\n").encode())
    if records:
        typer.echo(f"{len(records)} image(s) on {dev} ({predictor.engine.name}): "
                   f"{fps['model']} frames/s model only, {fps['predict']} with reading, "
                   f"letterboxing, refinement and decoding, {fps['end_to_end']} end to end "
                   "(reading, drawing and writing included)")
    if steps:
        typer.echo(f"  frames/s per step (medians): {_fps_line(steps)}")
    typer.echo(f"outputs: {out}/  (predictions.json" + (", <image>.png panels)" if sheets else ")"))
    if sheets and kept:
        typer.echo(f"  {len(kept)} panel(s) keep the image's extension ({kept[0]}.png): another "
                   "input has the same name without it, or a file distill did not write is there")
    for item in failed:
        typer.secho(f"{one_line(item['image'])}: {item['error']}",
                    fg=typer.colors.RED, err=True)
    if failed:  # the run is not what was asked for: say so in the exit code too
        raise DistillError(f"{len(failed)} of {len(files)} inputs could not be read (listed "
                           "above; predictions.json names them under \"failed\")")


def _predict_video(video: Path, checkpoint: str, out: Path, batch_size: int, refine: bool,
                   draw: bool, dev: str, engine: str, vocab: str | None,
                   set_: list[str] | None) -> None:
    import json

    from distill.storage import atomic_write_bytes
    from distill.student.predict import Predictor
    from distill.student.video import predict_video, video_frames, video_paths

    if not video.is_file():
        raise DistillError(f"--video {video} does not exist" if not video.exists() else
                           f"--video {video} is not a file")
    video_paths(video, out)  # refuse a foreign file before loading anything
    student = load_for_predict(checkpoint, engine, dev, vocab, set_)
    predictor = Predictor(student, dev, refine=refine, full_maps=False, display_max=256)
    frames = video_frames(video)
    with progress_bar(frames or 0, "predict", "frames", sys.stderr.isatty() and frames > 0) as advance:
        summary = predict_video(predictor, video, out, batch_size=batch_size, draw=draw,
                                progress=advance)
    summary = {"checkpoint": str(student.checkpoint), "engine": predictor.engine.name,
               "device": dev, "refine": refine, **summary}
    atomic_write_bytes(out / f"{video.stem}.summary.json",
                       (json.dumps(summary, indent=1) + "\n").encode())
    fps = summary["frames_per_second"]
    typer.echo(f"{summary['frames']} frame(s) of {video} on {dev} ({predictor.engine.name}): "
               f"{fps['model']} frames/s model only, {fps['predict']} with letterboxing, "
               f"refinement and decoding, {fps['end_to_end']} end to end (decoding, drawing "
               "and encoding the video included)")
    typer.echo(f"  frames/s per step (medians): {_fps_line(summary['steps_ms'])}")
    typer.echo(f"outputs: {summary['jsonl']}" + (f", {summary['annotated']}" if draw else "")
               + f", {out / (video.stem + '.summary.json')}")
    if summary["cut_short"]:
        raise DistillError(f"{summary['cut_short']}; the outputs above hold the "
                           f"{summary['frames']} frame(s) before the cut")


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
    from distill.student.export import export_student

    meta = export_student(checkpoint, format_, out, fp16=fp16, dynamic_batch=dynamic_batch,
                          vocab=vocab, overrides=list(set_ or []))
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
    from distill.shards import decode_row
    from distill.viz import read_row, row_warning, save_sheet, sheet_for_sample

    where, data = read_row(shard, row)
    sample = decode_row(data)
    compare = None
    if checkpoint is not None:
        from distill.student.predict import Predictor

        dev = device_name(device)
        student = load_for_predict(checkpoint, "auto", dev, None, set_)  # or an exported file
        compare = Predictor(student, dev).predict_encoded(
            [sample.image], exif_transpose=sample.exif_transpose)[0].labels
    warning = row_warning(shard, row)
    sheet = sheet_for_sample(sample, compare=compare, panel_width=width,
                             title=f"{where} · image {sample.image_id} "
                             f"({sample.file_name})", warning=warning)
    save_sheet(sheet, out)
    typer.echo(f"wrote {out} ({sheet.width}x{sheet.height})")
    if warning:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)


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
    rates, shard status and the quarantine. Read-only; pages a 118k-row run without loading it.

    \b
    Examples:
      distill view demo-data/run      # then open http://127.0.0.1:8765
      distill view s3://bucket/runs/coco -k demo-data/student --port 9000
      ssh -L 8765:127.0.0.1:8765 gpu-box distill view /runs/coco
    """
    import socket

    import uvicorn

    from distill.view import create_app

    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"warning: serving on {host}: anyone who can reach this machine on port "
                    f"{port} can read the run (no authentication)", fg=typer.colors.YELLOW,
                    err=True)
    app = create_app(run, checkpoint=checkpoint, device=device_name(device) if checkpoint else "cpu")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise DistillError(f"cannot serve on {host}:{port}: {exc.strerror or exc} "
                               "(pass another --port)") from None
    rows = app.state.view.total_rows()
    typer.echo(f"distill view: {run} ({rows:,} rows) at http://{host}:{port}/  (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@app.command("inspect")
@handles_errors
def inspect(
    path: Annotated[str, typer.Argument(
        help="A generate-labels run folder, a shards folder or one shard (a path or a URI).")],
    sample_rows: Annotated[int | None, typer.Option(
        min=1, help="Decode only the first N rows for the pixel statistics (default: all).")] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the report as JSON.")] = None,
) -> None:
    """Summarise labels: schema, rows, shards done/pending, every teacher's provenance, the
    quarantine, and QA statistics (class-group pixel shares, empty-caption and empty-token
    rates, depth range, bytes per sample per column)."""
    import json

    from distill.inspect import format_inspect, inspect_path
    from distill.storage import atomic_write_bytes

    report = inspect_path(path, sample_rows=sample_rows)
    typer.echo(format_inspect(report))
    if json_out is not None:
        atomic_write_bytes(json_out, (json.dumps(report, indent=1, default=str) + "\n").encode())
        typer.echo(f"report: {json_out}")

