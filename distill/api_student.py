"""The Python API of the commands around a trained student: `distill run evaluate`,
`distill predict`, `distill export`. Exported lazily by `import distill` (README, "Python
API"); each is the function the CLI command calls."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.api import PathLike, _set_strings
from distill.errors import DistillError

if TYPE_CHECKING:
    from distill.student.evaluate_checkpoint import Evaluation
    from distill.student.predict_files import FilesPrediction, VideoPrediction

__all__ = ["evaluate", "export", "predict"]

Overrides = Mapping[str, Any] | Sequence[str] | None


def _device(name: str) -> str:
    from distill.student.train import resolve_device

    return str(resolve_device(name))


def evaluate(checkpoint: PathLike, shards: PathLike, *, out: PathLike | None = None,
             batch_size: int = 16, limit: int | None = None, pose: bool = True,
             workers: int = 0, device: str = "auto", vocab: PathLike | None = None,
             overrides: Overrides = None, progress: bool = False) -> Evaluation:
    """`distill run evaluate`: score a student (a train-student run folder or checkpoint) on
    label shards against its teachers — HDM and MSE per modality, token cosines, COCO keypoint
    AP — and write the JSON report (default: evaluation.json in the student run folder).
    Returns an `Evaluation`: `.report` (the dict written), `.path`, and `.trained_on`, the
    scored shards the student was trained on (their scores overstate it)."""
    from distill.student.evaluate_checkpoint import evaluate_checkpoint

    return evaluate_checkpoint(
        str(checkpoint), str(shards), out=None if out is None else str(out),
        batch_size=batch_size, limit=limit, pose=pose, workers=workers, device=_device(device),
        vocab=None if vocab is None else str(vocab), overrides=_set_strings(overrides),
        progress=progress)


def predict(checkpoint: PathLike, images: str | os.PathLike[str] | None = None, *,
            video: str | os.PathLike[str] | None = None,
            out: str | os.PathLike[str] = "predictions", batch_size: int = 1,
            refine: bool = True, sheets: bool = True, device: str = "auto",
            engine: str = "auto", vocab: PathLike | None = None, overrides: Overrides = None,
            progress: bool = False) -> FilesPrediction | VideoPrediction:
    """`distill predict`: run a student (a train-student run, or a file `distill export`
    wrote) on `images` (a file or a folder) or on a `video`, writing into `out`.

    Images give a `FilesPrediction`: `.records` (per image: people, words, timings, its PNG
    panel when `sheets`), `.failed` (inputs that could not be read; the others are written),
    `.frames_per_second`, `.steps_ms`; out/predictions.json holds the same. A video gives a
    `VideoPrediction` (`.summary`: frames, frames per second, the JSON lines and annotated
    files, `cut_short` when the video ended early)."""
    from distill.student.predict_files import predict_files, predict_video_file

    if (images is None) == (video is None):
        raise DistillError("pass images (a file or a folder) or --video FILE, one of the two")
    kwargs: dict[str, Any] = dict(batch_size=batch_size, refine=refine, device=_device(device),
                                  engine=engine, vocab=None if vocab is None else str(vocab),
                                  overrides=_set_strings(overrides), progress=progress)
    if video is not None:
        return predict_video_file(str(checkpoint), Path(video), Path(out), draw=sheets,
                                  **kwargs)
    assert images is not None
    return predict_files(str(checkpoint), Path(images), Path(out), sheets=sheets, **kwargs)


def export(checkpoint: PathLike, out: str | os.PathLike[str], *, format: str = "onnx",
           fp16: bool = False, dynamic_batch: bool = False, vocab: PathLike | None = None,
           overrides: Overrides = None) -> dict[str, Any]:
    """`distill export`: write a trained student as one self-contained file, ONNX (opset 18)
    or TorchScript (`format`), after checking it matches PyTorch (1e-4; 2e-2 with `fp16`).
    Returns the metadata the file carries (config, output layout, input, vocabulary,
    `tolerance` with the measured difference); `load_student(out)` runs it."""
    from distill.student.export import export_student

    return export_student(checkpoint, format, Path(out), fp16=fp16,
                          dynamic_batch=dynamic_batch,
                          vocab=None if vocab is None else str(vocab),
                          overrides=_set_strings(overrides))
