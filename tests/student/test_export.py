"""`distill export` (ONNX, TorchScript) and running the exported file: its outputs equal
PyTorch's within `distill.student.export.TOLERANCE` on real photos (scikit-image's), the file
carries what running it alone needs, `distill predict` runs it with the same refinement and
decoding, `distill predict --video` on a video the test writes, and the error paths.

The CLI runs in this process (typer's runner: the same app, arguments, output and exit codes)
except once, where `distill predict` runs the exported file in a Python of its own as a user's
shell would: each such process imports torch again, ~20 s on a loaded 2-core machine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from distill.cli import app
from distill.config import config_to_dict
from distill.storage import file_sha256
from distill.student import layout
from distill.student.predict import Predictor, load_student
from tests.student import test_predict_inputs as _inputs
from tests.test_cli import distill

pytest.importorskip("onnxruntime")
skdata = pytest.importorskip("skimage.data")

# `trained` (the tiny student trained 2 epochs on the real coco7 shards: run folder, shards
# folder) and `untrained` (freshly initialised) are tests/student/conftest.py's, one per session.


def _photos() -> list[np.ndarray]:
    """Real photos of different shapes (letterboxed differently)."""
    return [skdata.astronaut(), skdata.coffee(), skdata.chelsea()]


def _forward(predictor: Predictor, images: list[np.ndarray]) -> dict[str, torch.Tensor]:
    outputs, _, _ = predictor.forward(predictor.letterbox(images))
    return outputs


def _cli(*args: str) -> str:
    """`distill ARGS` run in this process, succeeding; what it printed."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def _cli_error(*args: str) -> str:
    """`distill ARGS` run in this process, failing as a user should see it: exit code 2 and
    one line, no traceback; that line."""
    [line] = _inputs.error_lines(CliRunner().invoke(app, list(args)))
    assert line.startswith("error: ")
    return line


@pytest.mark.slow
@pytest.mark.parametrize("fmt,fp16,dynamic", [
    ("onnx", False, False), ("onnx", False, True), ("onnx", True, False),
    ("torchscript", False, True),
    ("torchscript", True, False)])
def test_export_matches_pytorch_on_real_photos_and_carries_what_it_needs(
        trained, tmp_path, fmt, fp16, dynamic):
    from distill.student.export import (
        TOLERANCE,
        export_student,
        load_exported,
        read_export_metadata,
    )

    out, _ = trained
    path = tmp_path / ("student.onnx" if fmt == "onnx" else "student.pt")
    meta = export_student(out, fmt, path, fp16=fp16, dynamic_batch=dynamic)
    student = load_student(out)
    tol = TOLERANCE["float16" if fp16 else "float32"]

    # the file says, alone, how to run it
    doc = read_export_metadata(path)
    assert doc == json.loads(json.dumps(meta))
    assert doc["format"] == fmt and doc["dtype"] == ("float16" if fp16 else "float32")
    assert doc["batch"] == (None if dynamic else 1)
    assert doc["config"]["student"] == config_to_dict(student.config.student)
    assert doc["input"]["size"] == student.config.student.input_size == 64
    assert doc["input"]["layout"] == "NCHW" and "127.5" in doc["input"]["normalisation"]
    assert doc["layout"]["maps"]["depth"] == [layout.DEPTH.start, layout.DEPTH.stop]
    assert doc["layout"]["channels"] == layout.CHANNELS
    assert student.vocab is not None and doc["vocabulary"]["words"] == student.vocab.words
    assert doc["checkpoint"]["model_sha256"] == file_sha256(student.checkpoint /
                                                            "model.safetensors")
    assert doc["tolerance"]["max_abs"] == tol
    assert doc["tolerance"]["measured_max_abs"] <= tol

    exported = load_exported(path)
    assert exported.vocab is not None
    assert np.array_equal(exported.vocab.vectors, student.vocab.vectors)
    assert exported.config.student == student.config.student
    assert exported.config.predict == student.config.predict

    eager, other = Predictor(student), Predictor(exported)
    assert other.engine.name == ("onnxruntime" if fmt == "onnx" else "torchscript")
    photos = _photos()
    # one batch of three: a fixed-batch file runs it as three calls of its own batch
    ref, got = _forward(eager, photos), _forward(other, photos)
    assert set(got) == set(ref)
    for key in ref:
        diff = float((ref[key] - got[key]).abs().max())
        # maps are unit (v + 1) / 2 here: half the [-1, 1] difference the tolerance states
        assert diff * (2 if key == "maps" else 1) <= tol, (key, diff)
    if not fp16:  # same code after the forward pass: the same words and people
        for a, b in zip(eager.predict(photos), other.predict(photos), strict=True):
            assert [w.word for w in a.words] == [w.word for w in b.words]
            assert len(a.people) == len(b.people)
            assert np.abs(a.labels.depth - b.labels.depth).max() < 1e-3
    if fmt == "onnx" and not fp16 and not dynamic:  # the Python API takes the file too
        import distill

        api = distill.load_student(path)
        assert api.predictor.engine.name == "onnxruntime"
        assert api.predict(photos[1]).labels.width == photos[1].shape[1]


@pytest.mark.slow
def test_cli_export_then_predict_with_the_onnx_file_and_the_error_paths(trained, tmp_path):
    from PIL import Image

    out, _ = trained
    onnx = tmp_path / "student.onnx"
    stdout = _cli("export", "--checkpoint", str(out), "--format", "onnx", "--out", str(onnx))
    assert "wrote" in stdout and "max |difference|" in stdout
    images = tmp_path / "images"
    images.mkdir()
    for name, photo in (("astronaut", skdata.astronaut()), ("coffee", skdata.coffee())):
        Image.fromarray(photo).save(images / f"{name}.jpg", quality=92)
    pred = tmp_path / "pred"
    # the one subprocess: the exported file runs in a Python that never built the student
    proc = distill("predict", str(images), "--checkpoint", str(onnx), "--out", str(pred),
                   "--device", "cpu")
    assert "(onnxruntime)" in proc.stdout and "frames/s per step" in proc.stdout
    doc = json.loads((pred / "predictions.json").read_text())
    assert doc["engine"] == "onnxruntime" and len(doc["images"]) == 2
    assert doc["frames_per_second"]["model"] > 0
    assert set(doc["steps_ms"]) >= {"forward", "refine", "tokens", "pose"}
    assert all(Path(r["panel"]).is_file() for r in doc["images"])
    # a second export over its own earlier file is fine
    _cli("export", "-k", str(out), "--format", "onnx", "--out", str(onnx))

    foreign = tmp_path / "notes.onnx"
    foreign.write_text("my notes")
    err = _cli_error("export", "-k", str(out), "--out", str(foreign))
    assert "not a file distill exported" in err and foreign.read_text() == "my notes"
    err = _cli_error("export", "-k", str(out), "--format", "tflite", "--out", str(tmp_path / "x"))
    assert "--format 'tflite'" in err
    err = _cli_error("export", "-k", str(tmp_path / "nothing"), "--out", str(tmp_path / "y.onnx"))
    assert "no student checkpoint" in err
    assert not (tmp_path / "y.onnx").exists()
    err = _cli_error("predict", str(images), "-k", str(foreign), "--out", str(pred))
    assert "not a student distill export wrote" in err
    err = _cli_error("predict", str(images), "-k", str(onnx), "--engine", "torchscript", "--out",
                     str(pred))
    assert "it is a onnx file" in err


def _write_video(path: Path, frames: int = 8) -> None:
    """A short real video: the astronaut photo panning, 8 frames at 8 frames/s (PyAV)."""
    import av

    photo = skdata.astronaut()[::4, ::4]  # 128 × 128
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 96, 80, "yuv420p"
        for i in range(frames):
            rgb = np.ascontiguousarray(photo[i * 4:i * 4 + 80, i * 3:i * 3 + 96])
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.slow
def test_cli_predict_video_writes_an_annotated_video_and_a_record_per_frame(trained, tmp_path):
    av = pytest.importorskip("av")
    out, _ = trained
    clip = tmp_path / "clip.mp4"
    _write_video(clip)
    pred = tmp_path / "pred"
    stdout = _cli("predict", "--video", str(clip), "--checkpoint", str(out), "--out", str(pred),
                  "--device", "cpu", "--batch-size", "3")
    assert "8 frame(s)" in stdout and "frames/s per step" in stdout
    lines = (pred / "clip.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["frame"] for r in records] == list(range(8))
    assert all({"people", "words", "time_s", "timings_ms"} <= set(r) for r in records)
    assert records[0]["width"] == 96 and records[0]["height"] == 80
    with av.open(str(pred / "clip.annotated.mp4")) as container:
        decoded = list(container.decode(video=0))
    assert len(decoded) == 8 and decoded[0].width == 96 and decoded[0].height == 80
    summary = json.loads((pred / "clip.summary.json").read_text())
    assert summary["frames"] == 8 and summary["frames_per_second"]["model"] > 0
    # again into the same folder: its own files are replaced
    _cli("predict", "--video", str(clip), "-k", str(out), "--out", str(pred), "--device", "cpu")
    (pred / "clip.jsonl").write_text("the user's own file\n")
    err = _cli_error("predict", "--video", str(clip), "-k", str(out), "--out", str(pred))
    assert "distill did not write" in err
    err = _cli_error("predict", "--video", str(tmp_path / "none.mp4"), "-k", str(out))
    assert "does not exist" in err


# A network that is not distill's, under distill's metadata (copied from a real export's, or
# damaged): loading names the file and what does not fit, before anything runs.

def _foreign_onnx(path: Path, meta: dict, image: list, outputs: dict[str, list | None]) -> Path:
    """An ONNX file whose every output is its input (Identity), carrying `meta`."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Identity", ["image"], [name]) for name in outputs]
    graph = helper.make_graph(
        nodes, "foreign", [helper.make_tensor_value_info("image", TensorProto.FLOAT, image)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # what every onnxruntime reads
    entry = model.metadata_props.add()
    entry.key, entry.value = "distill", json.dumps(meta)
    onnx.save(model, str(path))
    return path


def _foreign_torchscript(path: Path, meta: dict, module: torch.nn.Module) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (torch.zeros(1, 3, 64, 64),))
        torch.jit.save(traced, str(path), _extra_files={"distill.json": json.dumps(meta)})
    return path


class _One(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class _Two(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, x.mean(1)


def test_a_foreign_network_or_damaged_metadata_is_one_line(untrained, tmp_path):
    import base64

    from distill.labels.tokens import Vocabulary
    from distill.student.export import export_metadata
    from distill.student.signature import vocabulary_doc, vocabulary_from_doc

    student = load_student(untrained)
    meta = json.loads(json.dumps(export_metadata(student, fmt="onnx", fp16=False,
                                                 dynamic_batch=False,
                                                 names=["maps", "tokens"])))
    image = _inputs.photo(tmp_path / "a.jpg")

    def fails(model: Path) -> str:
        [line] = _inputs.error_lines(_inputs.predict(str(image), "-k", str(model), "--out",
                                                     str(tmp_path / "pred")))
        return line

    fits_not = "carries distill's metadata but its network does not fit it"
    small = _foreign_onnx(tmp_path / "small.onnx", meta, [1, 3, 32, 32],
                          {"maps": None, "tokens": None})
    assert fails(small) == (f"error: {small} {fits_not}: it takes 'image' [1, 3, 32, 32] "
                            "tensor(float); the metadata says one float32 image [1, 3, 64, 64]")
    same_in = _foreign_onnx(tmp_path / "same_in.onnx", meta, [1, 3, 64, 64],
                            {"maps": None, "tokens": None})
    assert fails(same_in) == (f"error: {same_in} {fits_not}: its output 'maps' is "
                              "[1, 3, 64, 64]; the metadata says [1, 44, 64, 64]")
    named = _foreign_onnx(tmp_path / "named.onnx", meta, [1, 3, 64, 64], {"out": None})
    assert fails(named) == (f"error: {named} {fits_not}: its outputs are ['out']; the "
                            "metadata says ['maps', 'tokens']")

    # the vocabulary's vectors written as float64: twice the bytes its words and dim need
    rng = np.random.default_rng(0)
    vocab = Vocabulary(["cat", "dog"], [3, 2], rng.random((2, 50), np.float32), 4.0)
    doc = vocabulary_doc(vocab)
    assert doc is not None
    back = vocabulary_from_doc(doc, 50, "here")  # what an export writes reads back whole
    assert back is not None and back.words == vocab.words
    assert np.array_equal(back.vectors, vocab.vectors)
    doc["vectors_float32_base64"] = base64.b64encode(vocab.vectors.astype(np.float64)).decode()
    damaged = _foreign_onnx(tmp_path / "damaged.onnx", {**meta, "vocabulary": doc},
                            [1, 3, 64, 64], {"maps": None, "tokens": None})
    assert fails(damaged) == (f"error: {damaged}: its vocabulary is damaged: its vectors are "
                              "800 bytes; 2 words × 50 float32 values are 400")
    wrong_dim = _foreign_onnx(tmp_path / "wrong_dim.onnx",
                              {**meta, "vocabulary": {**doc, "dim": 25}},
                              [1, 3, 64, 64], {"maps": None, "tokens": None})
    assert "25-d vectors, but the student's tokens are 50-d" in fails(wrong_dim)

    ts_meta = {**meta, "format": "torchscript", "opset": None}
    one = _foreign_torchscript(tmp_path / "one.pt", ts_meta, _One())
    assert fails(one) == (f"error: {one} {fits_not}: its forward returns Tensor; the metadata "
                          "says Tuple[Tensor, Tensor] (maps, tokens)")
    two = _foreign_torchscript(tmp_path / "two.pt", ts_meta, _Two())  # found as it runs
    assert fails(two) == (f"error: {two}: its output 'maps' is [1, 3, 64, 64]; its metadata "
                          "says [batch, 44, 64, 64]")
