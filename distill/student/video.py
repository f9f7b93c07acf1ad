"""`distill predict --video`: a student over every frame of a video (PyAV reads and writes it),
an annotated copy of the video (people's skeletons, the caption words) and a JSON-lines file
with one record per frame (its people and words, `distill.student.predict.describe`'s form, and
its time in the video), written atomically; frames per second measured per step."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from distill.errors import DistillError
from distill.labels.keypoints import LIMBS
from distill.paint import one_line
from distill.storage import atomic_output, temp_name
from distill.student.predict import (
    Prediction,
    Predictor,
    check_out_folder,
    describe,
    make_out_folder,
)

__all__ = ["VideoSource", "annotate", "predict_video", "video_frames", "video_paths"]

_LIMB_COLOR = (60, 220, 255)
_JOINT_COLOR = (255, 80, 60)
_TEXT_BG = (0, 0, 0)
# A video ending up to this many frames before its header says is whole (an edit list or a
# rounded duration); more is a file cut short.
_CUT_SLACK = 2


def _av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise DistillError("--video needs PyAV: pip install 'distill[export]'") from exc
    return av


def _why(exc: BaseException) -> str:
    """FFmpeg's reason without its errno and the file name the message repeats."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class VideoSource:
    """An open video file: its frame rate, the frame count and duration its container states,
    and its frames, decoded one at a time by `frames()`. Once they are read, `cut_short()`
    says whether the video ended before its container says it should (a file cut short, or
    one whose decoding failed part way): the frames before the cut are kept."""

    def __init__(self, path: Path) -> None:
        av = _av()
        self.path = path
        try:
            self.container = av.open(str(path))
        except (OSError, av.FFmpegError) as exc:
            hint = (" (not a video FFmpeg reads, or a file cut short before its index)"
                    if isinstance(exc, av.InvalidDataError) else "")
            raise DistillError(f"cannot read video {path}: {_why(exc)}{hint}") from exc
        if not self.container.streams.video:
            kinds = sorted({s.type for s in self.container.streams})
            self.container.close()
            raise DistillError(f"no video stream in {path}" + (
                f" (it holds {' and '.join(kinds)} only)" if kinds else ""))
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.fps = float(self.stream.average_rate or self.stream.guessed_rate or 25)
        self.stated = int(self.stream.frames or 0)  # 0: the container does not say
        self.duration: float | None = None  # seconds of video the container states
        if self.stream.duration is not None and self.stream.time_base is not None:
            self.duration = float(self.stream.duration * self.stream.time_base)
        elif self.container.duration and len(self.container.streams) == 1:
            self.duration = self.container.duration / av.time_base
        self.decoded = 0
        self.end = 0.0  # the time the last decoded frame ends
        self.error = ""  # why decoding stopped part way, if it did

    def frames(self) -> Iterator[tuple[float, np.ndarray]]:
        """(time in s, RGB uint8 (H, W, 3)) of every frame there is; closes the file at the end.
        A decoding error after the first frame ends the frames (see `cut_short`)."""
        av = _av()
        try:
            for frame in self.container.decode(self.stream):
                i = self.decoded
                t = float(frame.time) if frame.time is not None else i / self.fps
                rgb = frame.to_ndarray(format="rgb24")
                self.decoded, self.end = i + 1, t + 1 / self.fps
                yield t, rgb
        except av.FFmpegError as exc:
            if not self.decoded:
                raise DistillError(f"cannot decode video {self.path}: {_why(exc)}") from exc
            self.error = _why(exc)
        finally:
            self.container.close()

    def cut_short(self) -> str | None:
        """Once `frames()` is read: why the video ended before its container says it should
        (more than `_CUT_SLACK` frames early, or a decoding error), or None."""
        n = self.decoded
        if self.error:
            return f"{self.path} is cut short after {n} frames: {self.error}"
        if self.stated and self.stated - n > _CUT_SLACK:
            return f"{self.path} is cut short after {n} frames (its header says {self.stated})"
        if not self.stated and self.duration and self.duration - self.end > _CUT_SLACK / self.fps:
            return (f"{self.path} is cut short after {n} frames ({self.end:.2f} s of the "
                    f"{self.duration:.2f} s its header says)")
        return None


def video_frames(path: Path) -> int:
    """The frame count the container states (0 when it does not say)."""
    source = VideoSource(path)
    source.container.close()
    return source.stated


def annotate(rgb: np.ndarray, prediction: Prediction) -> np.ndarray:
    """The frame with the people's skeletons and the caption words drawn on it."""
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    w = img.width
    lw = max(2, round(w / 200))
    r = lw + 1
    for person in prediction.people:
        kp = person.keypoints
        for a, b in LIMBS:
            if kp[a, 2] > 0 and kp[b, 2] > 0:
                draw.line([(float(kp[a, 0]), float(kp[a, 1])), (float(kp[b, 0]),
                                                                   float(kp[b, 1]))],
                          fill=_LIMB_COLOR, width=lw)
        for x, y, c in kp:
            if c > 0:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=_JOINT_COLOR)
    words = one_line(" ".join(word.word for word in prediction.words))
    if words:
        font = ImageFont.load_default(size=max(10, w // 40))
        box = draw.textbbox((6, 6), words, font=font)
        draw.rectangle([box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3], fill=_TEXT_BG)
        draw.text((6, 6), words, fill=(255, 255, 255), font=font)
    return np.asarray(img)


def video_paths(video: Path, out: Path) -> tuple[Path, Path]:
    """Where the annotated video and the JSON lines of `video` go in the folder `out`:
    `<stem>.annotated.mp4` and `<stem>.jsonl`; a file of those names distill did not write
    (not a JSON-lines file whose first record names a frame) is refused."""
    check_out_folder(out)
    annotated, lines = out / f"{video.stem}.annotated.mp4", out / f"{video.stem}.jsonl"
    if annotated.resolve() == video.resolve():
        raise DistillError(f"the annotated video would overwrite its input {video}; pass "
                           "another --out")
    for path in (annotated, lines):
        if path.exists() and not _ours(lines):
            raise DistillError(f"{path} exists and distill did not write it; pass --out a "
                               "folder of its own")
    return annotated, lines


def _ours(lines: Path) -> bool:
    try:
        with open(lines) as f:
            first = json.loads(f.readline() or "{}")
        return isinstance(first, dict) and "frame" in first and "people" in first
    except (OSError, ValueError):
        return False


def _codec(av: Any) -> str:
    """H.264 where this FFmpeg can encode it, else MPEG-4 part 2 (in every FFmpeg build)."""
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # av raises its own UnknownCodecError and friends
        return "mpeg4"


def _even(rgb: np.ndarray) -> np.ndarray:
    """yuv420p wants even sides: repeat the last row / column where one is odd."""
    h, w = rgb.shape[:2]
    return np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else rgb


def predict_video(predictor: Predictor, video: Path, out: Path, *, batch_size: int = 1,
                  draw: bool = True,
                  progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run `predictor` over every frame of `video`; write `out/<stem>.annotated.mp4` (with
    `draw`) and `out/<stem>.jsonl` (one record per frame). Returns a summary: frames, paths,
    frames per second (model only; with letterboxing, refinement and decoding; end to end),
    the median ms and frames/s of every step, and `cut_short`: None, or why the video ended
    before its header says (the frames before the cut are written; none: `DistillError`)."""
    av = _av()
    annotated, lines_path = video_paths(video, out)
    source = VideoSource(video)
    fps = source.fps
    tmp_video = annotated.with_name(temp_name(annotated.name))
    container: Any = None
    stream: Any = None
    steps: dict[str, list[float]] = {}
    count, predict_seconds = 0, 0.0
    started = time.perf_counter()
    try:
        make_out_folder(out)
        with atomic_output(lines_path) as sink:
            batch: list[tuple[float, np.ndarray]] = []

            def flush() -> None:
                nonlocal container, stream, count, predict_seconds
                t0 = time.perf_counter()
                results = predictor.predict(
                    [rgb for _, rgb in batch])
                predict_seconds += time.perf_counter() - t0
                for (t, rgb), result in zip(batch, results, strict=True):
                    record = {"frame": count, "time_s": round(t, 4),
                              **describe(result, f"{video.name}#{count}")}
                    sink.stream.write((json.dumps(record) + "\n").encode())
                    for k, v in result.timings.items():
                        steps.setdefault(k, []).append(v)
                    if draw:
                        picture = _even(annotate(rgb, result))
                        if container is None:
                            container = av.open(str(tmp_video), "w", format="mp4")
                            stream = container.add_stream(
                                _codec(av), rate=Fraction(fps).limit_denominator(1001))
                            stream.height, stream.width = picture.shape[:2]
                            stream.pix_fmt = "yuv420p"
                        frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
                        for packet in stream.encode(frame):
                            container.mux(packet)
                    count += 1
                if progress is not None:
                    progress(len(batch))
                batch.clear()

            for t, rgb in source.frames():
                batch.append((t, rgb))
                if len(batch) == batch_size:
                    flush()
            if batch:
                flush()
            cut = source.cut_short()
            if count == 0:
                raise DistillError(cut or f"{video} has no frames")
            if container is not None:
                for packet in stream.encode():
                    container.mux(packet)
                container.close()
                container = None
                os.replace(tmp_video, annotated)
    finally:
        source.container.close()  # read to the end, or not (an error part way)
        if container is not None:
            container.close()
        tmp_video.unlink(missing_ok=True)
    wall = time.perf_counter() - started
    forward = sum(steps.get("forward", [])) / 1e3
    medians = {k: statistics.median(v) for k, v in steps.items()}
    return {
        "video": str(video), "frames": count, "video_fps": round(fps, 3),
        "frames_stated": source.stated or None, "cut_short": cut,
        "annotated": str(annotated) if draw else None, "jsonl": str(lines_path),
        "frames_per_second": {
            "model": round(count / forward, 2) if forward else None,
            "predict": round(count / predict_seconds, 2) if predict_seconds else None,
            "end_to_end": round(count / wall, 2) if wall else None,
        },
        "steps_ms": {k: round(v, 3) for k, v in medians.items()},
        "steps_frames_per_second": {k: round(1e3 / v, 1) if v > 0 else None
                                    for k, v in medians.items()},
    }
