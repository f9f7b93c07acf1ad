"""`distill predict` as a library function: a student run over image files (in batches, a PNG
panel per image, predictions.json with frames per second, per step too) or over a video (its
annotated copy, JSON lines and a summary). The checkpoint may be a train-student run or a file
`distill export` wrote; `Predictor` runs either with the same refinement and decoding."""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import DistillError
from distill.storage import atomic_write_bytes
from distill.student.predict import ExportedStudent, LoadedStudent

__all__ = ["FilesPrediction", "VideoPrediction", "image_files", "load_for_predict",
           "predict_files", "predict_video_file", "trained_on_random_weights"]

logger = logging.getLogger(__name__)


@dataclass
class FilesPrediction:
    """What `predict_files` did: one record per image written (as in predictions.json: people,
    words, timings, its panel), the inputs that could not be read, frames per second (model
    only, with pre- and post-processing, end to end) and each step's median milliseconds."""

    out: Path
    checkpoint: str
    engine: str
    device: str
    records: list[dict[str, Any]]
    failed: list[dict[str, str]]
    frames_per_second: dict[str, float | None]
    steps_ms: dict[str, float]
    sheets: bool
    kept: list[str] = field(default_factory=list)  # panels that keep their image's extension
    warning: str = ""  # the student learnt from random-weight teachers (drawn on every panel)

    @property
    def predictions(self) -> Path:
        return self.out / "predictions.json"


@dataclass
class VideoPrediction:
    """What `predict_video_file` did: the summary written to <name>.summary.json (frames,
    frames per second, steps, the JSON lines and annotated files, `cut_short` when the video
    ended early) and where it is."""

    summary: dict[str, Any]
    path: Path


def image_files(path: Path) -> list[Path]:
    """An image file, or a folder's images (by name)."""
    from distill.coco import IMAGE_SUFFIXES

    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DistillError(f"{path} has no images ({', '.join(IMAGE_SUFFIXES)})")
        return files
    raise DistillError(f"{path} does not exist")


def load_for_predict(checkpoint: str, engine: str, device: str, vocab: str | None = None,
                     overrides: list[str] | None = None) -> LoadedStudent | ExportedStudent:
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
        return load_exported(checkpoint, engine, device, vocab=vocab,
                             overrides=list(overrides or []))
    if Path(checkpoint).suffix.lower() in (".onnx", ".pt", ".ts") and Path(checkpoint).is_file():
        raise DistillError(f"{checkpoint} is not a student distill export wrote (no distill "
                           "metadata): refusing to run it")
    return load_student(checkpoint, device, vocab=vocab, overrides=list(overrides or []))


def trained_on_random_weights(student: LoadedStudent | ExportedStudent) -> str:
    """The random-weights warning of a train-student checkpoint whose training shards were
    labelled by random-weight teachers ("" otherwise, and for an exported file)."""
    from distill.provenance import random_weights_warning
    from distill.student.checkpoint import run_folder

    if not isinstance(student, LoadedStudent):
        return ""
    return random_weights_warning(run_folder(student.checkpoint).random_weight_roles(),
                                  student=True)


def predict_files(checkpoint: str, images: Path, out: Path, *, batch_size: int = 1,
                  refine: bool = True, sheets: bool = True, device: str = "cpu",
                  engine: str = "auto", vocab: str | None = None,
                  overrides: list[str] | None = None, progress: bool = False) -> FilesPrediction:
    """Run a student on an image file or a folder of images (EXIF-oriented, as a viewer shows
    them), `batch_size` at a time: a PNG panel per image into `out` (with `sheets`) and
    out/predictions.json. An input that cannot be read is listed in `.failed`; the others are
    still written. `progress` shows a bar on stderr."""
    from PIL import Image

    from distill.images import decode_image
    from distill.progress import Progress
    from distill.student.predict import Predictor, describe, make_out_folder, panel_paths
    from distill.viz import contact_sheet, save_sheet

    files = image_files(images)
    panels, kept = panel_paths(files, out)
    student = load_for_predict(checkpoint, engine, device, vocab, overrides)
    warning = trained_on_random_weights(student)
    # Maps come back at most 1024 px on a side (the panels are 320 px wide; a 12 MP photo at full
    # size would cost GBs); people and words are not affected.
    predictor = Predictor(student, device, refine=refine, full_maps=sheets, display_max=1024)
    make_out_folder(out)
    size = student.config.student.input_size
    predictor.predict([np.zeros((size, size, 3), np.uint8)])  # warm-up: not timed
    records: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    predict_seconds = 0.0
    started = time.perf_counter()
    with Progress("predict", len(files), "images", enabled=progress) as bar:
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
                    sheet = contact_sheet(shown, result.labels, title=f"student: {f.name}",
                                          warning=warning)
                    panel = panels[f]
                    record["panel"] = str(panel)
                    save_sheet(sheet, panel)
                records.append(record)
            bar.advance(len(files[k:k + batch_size]))
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
           "device": device, "batch_size": batch_size, "refine": refine,
           "frames_per_second": fps, "steps_ms": {k: round(v, 3) for k, v in steps.items()},
           "images": records, "failed": failed, **({"warning": warning} if warning else {})}
    atomic_write_bytes(out / "predictions.json", (json.dumps(doc, indent=1) + "\n").encode())
    return FilesPrediction(out=out, checkpoint=str(student.checkpoint),
                           engine=predictor.engine.name, device=device, records=records,
                           failed=failed, frames_per_second=fps, steps_ms=steps, sheets=sheets,
                           kept=kept, warning=warning)


def predict_video_file(checkpoint: str, video: Path, out: Path, *, batch_size: int = 1,
                       refine: bool = True, draw: bool = True, device: str = "cpu",
                       engine: str = "auto", vocab: str | None = None,
                       overrides: list[str] | None = None,
                       progress: bool = False) -> VideoPrediction:
    """Run a student on every frame of a video: <name>.jsonl (one record per frame), with
    `draw` <name>.annotated.mp4 (people and words drawn), and <name>.summary.json, all in
    `out`. A video cut short keeps the frames before the cut (`summary["cut_short"]`)."""
    from distill.progress import Progress
    from distill.student.predict import Predictor
    from distill.student.video import predict_video, video_frames, video_paths

    if not video.is_file():
        raise DistillError(f"--video {video} does not exist" if not video.exists() else
                           f"--video {video} is not a file")
    video_paths(video, out)  # refuse a foreign file before loading anything
    student = load_for_predict(checkpoint, engine, device, vocab, overrides)
    predictor = Predictor(student, device, refine=refine, full_maps=False, display_max=256)
    frames = video_frames(video)
    with Progress("predict", frames or 0, "frames", enabled=progress and frames > 0) as bar:
        summary = predict_video(predictor, video, out, batch_size=batch_size, draw=draw,
                                progress=bar.advance)
    summary = {"checkpoint": str(student.checkpoint), "engine": predictor.engine.name,
               "device": device, "refine": refine, **summary}
    path = out / f"{video.stem}.summary.json"
    atomic_write_bytes(path, (json.dumps(summary, indent=1) + "\n").encode())
    return VideoPrediction(summary=summary, path=path)
