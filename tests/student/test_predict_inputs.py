"""`distill predict` on inputs it cannot (wholly) read, on an untrained tiny student (no
training: these tests are about the inputs): an unreadable image among good ones, --out that
is a file, a file name with a newline, a video whose records must be in its own pixels, an
audio-only file and videos cut short."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from distill.cli import app

av = pytest.importorskip("av")


# `untrained`, a run folder holding a freshly initialised 64-px student, is tests/student/
# conftest.py's.


def predict(*args: str):
    return CliRunner().invoke(app, ["predict", *args, "--device", "cpu"])


def error_lines(result) -> list[str]:
    """stderr's lines of a run that exited 2 without a traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    return result.stderr.strip().splitlines()


def photo(path: Path, w: int = 96, h: int = 72) -> Path:
    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def write_video(path: Path, w: int, h: int, frames: int, **options: str) -> Path:
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            rgb = np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def cut_in_half(path: Path, to: Path) -> Path:
    data = path.read_bytes()
    to.write_bytes(data[:len(data) // 2])
    return to


def test_unreadable_images_are_listed_and_exit_2(untrained, tmp_path):
    """Each input that cannot be read gets a line, a count ends the run and the exit code is
    2; the images that were read still get their panels and records."""
    images = tmp_path / "images"
    images.mkdir()
    photo(images / "good.jpg")
    (images / "notes.jpg").write_text("my notes, not a photo")
    (images / "empty.png").write_bytes(b"")
    out = tmp_path / "pred"
    lines = error_lines(predict(str(images), "-k", str(untrained), "--out", str(out)))
    assert len(lines) == 3 and lines[-1] == (
        'error: 2 of 3 inputs could not be read (listed above; predictions.json names them '
        'under "failed")')
    assert sorted(line.split(":")[0] for line in lines[:2]) == [
        str(images / "empty.png"), str(images / "notes.jpg")]
    doc = json.loads((out / "predictions.json").read_text())
    assert [Path(r["image"]).name for r in doc["images"]] == ["good.jpg"]
    assert Path(doc["images"][0]["panel"]).is_file() and len(doc["failed"]) == 2
    # one text file alone: nothing was read, which is not a success either
    lines = error_lines(predict(str(images / "notes.jpg"), "-k", str(untrained), "--out",
                                str(tmp_path / "pred2")))
    assert lines[-1].startswith("error: 1 of 1 inputs could not be read")


def test_out_that_is_a_file_is_one_line(untrained, tmp_path):
    mine = tmp_path / "existing.txt"
    mine.write_text("the user's")
    image = photo(tmp_path / "a.jpg")
    clip = write_video(tmp_path / "clip.mp4", 64, 48, 2)
    for args in ([str(image)], ["--video", str(clip)]):
        lines = error_lines(predict(*args, "-k", str(untrained), "--out", str(mine)))
        assert lines == [f"error: --out {mine} is a file, not a folder; pass a folder for the "
                         "predictions"]
        lines = error_lines(predict(*args, "-k", str(untrained), "--out", str(mine / "sub")))
        assert lines == [f"error: --out {mine / 'sub'}: {mine} is a file, not a folder"]
    assert mine.read_text() == "the user's"


def test_a_file_name_with_a_newline_gets_its_panel(untrained, tmp_path):
    image = photo(tmp_path / "two\nlines 写真.jpg")
    out = tmp_path / "pred"
    result = predict(str(image), "-k", str(untrained), "--out", str(out))
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["images"][0]["image"] == str(image)
    with Image.open(doc["images"][0]["panel"]) as panel:
        assert panel.width > 0


def test_video_records_are_in_the_frames_own_pixels(untrained, tmp_path):
    """A 640×480 clip: each JSON line says 640×480, the frame its people's keypoints are in
    (the maps are computed at most 256 px on a side, which is no business of the record)."""
    clip = write_video(tmp_path / "clip.mp4", 640, 480, 2)
    out = tmp_path / "pred"
    result = predict("--video", str(clip), "-k", str(untrained), "--out", str(out), "--no-sheets")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert all((r["width"], r["height"]) == (640, 480) for r in records)
    for r in records:
        for person in r["people"]:
            kp = np.array(person["keypoints"]).reshape(-1, 3)
            seen = kp[kp[:, 2] > 0]
            assert (seen[:, 0] <= 640).all() and (seen[:, 1] <= 480).all()


@pytest.mark.slow
def test_a_video_without_pictures_or_cut_short(untrained, tmp_path):
    """Audio only, or cut before its index: one line, exit 2. Cut part way: the frames before
    the cut are predicted and written, and the run ends saying where it was cut (exit 2)."""
    audio = tmp_path / "audio.mp4"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "pred"
    assert error_lines(predict("--video", str(audio), "-k", str(untrained), "--out", str(out))
                       ) == [f"error: no video stream in {audio} (it holds audio only)"]
    whole = write_video(tmp_path / "whole.mp4", 96, 80, 8)  # its index at the end
    cut = cut_in_half(whole, tmp_path / "cut.mp4")
    [line] = error_lines(predict("--video", str(cut), "-k", str(untrained), "--out", str(out)))
    assert line.startswith(f"error: cannot read video {cut}: Invalid data found")
    assert not out.exists()  # nothing was read: nothing written

    fast = write_video(tmp_path / "fast.mp4", 96, 80, 8, movflags="faststart")  # index first
    half = cut_in_half(fast, tmp_path / "half.mp4")
    lines = error_lines(predict("--video", str(half), "-k", str(untrained), "--out", str(out),
                                "--no-sheets"))
    assert lines == [f"error: {half} is cut short after 3 frames (its header says 8); the "
                     "outputs above hold the 3 frame(s) before the cut"]
    records = (out / "half.jsonl").read_text().splitlines()
    assert [json.loads(r)["frame"] for r in records] == [0, 1, 2]
    summary = json.loads((out / "half.summary.json").read_text())
    assert summary["frames"] == 3 and summary["frames_stated"] == 8
    assert summary["cut_short"] == f"{half} is cut short after 3 frames (its header says 8)"
    # the whole file is not cut short
    result = predict("--video", str(fast), "-k", str(untrained), "--out", str(out), "--no-sheets")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "fast.summary.json").read_text())["cut_short"] is None
