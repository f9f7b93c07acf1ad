"""`distill export`: a trained student as one self-contained file, ONNX or TorchScript, and
loading such a file back as an engine (`distill.student.engines`) for `distill predict`.

The file runs alone: besides the network it carries, as one JSON document (ONNX: the model's
`metadata_props["distill"]`; TorchScript: the extra file `distill.json`), the student config and
the settings predict needs (labels, predict), the output channel layout, the input size and
normalisation, the vocabulary itself (words, counts, scaled GloVe vectors as base64 float32,
and their sha256), the distill version and the checkpoint's fingerprint (sha256 of its
model.safetensors, its epoch, the config fingerprint).

Input: (B, 3, S, S) float32 RGB, NCHW, x = rgb_uint8 / 127.5 - 1, the image letterboxed into
S × S (aspect kept, bilinear, centred, black padding). Outputs, in this order: "maps" (B, 44, S,
S) in [-1, 1] (channels as in `distill.student.layout`), "tokens" (B, T, D) and, with the
multi-hot tail, "multi_hot" (B, V) logits; always float32 (an --fp16 file computes in half and
casts its input and outputs).

Every export is checked before it is written: the exported network runs on a seeded input and
must match the PyTorch student within `TOLERANCE` (max |difference| over every output value);
the figure measured is kept in the metadata. Loading checks the metadata and the network's
input and output signature against each other before anything runs
(`distill.student.signature`).

Security: a TorchScript archive holds code, so `load_exported` calls `torch.jit.load` only on an
archive whose `distill.json` names it a distill export (read from the zip first); ONNX files are
opened with ONNX Runtime's `InferenceSession` (no pickle anywhere).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill import __version__
from distill.config import Config, config_to_dict, load_config_dict, parse_override
from distill.errors import DistillError
from distill.labels.keypoints import JOINT_NAMES, LIMB_NAMES
from distill.runfolder import StudentRun
from distill.storage import Location, atomic_write_bytes, file_sha256
from distill.student import layout
from distill.student.engines import Engine, OnnxEngine, TorchScriptEngine
from distill.student.predict import ExportedStudent, LoadedStudent, load_student
from distill.student.signature import (
    check_metadata,
    check_onnx,
    check_torchscript,
    output_shapes,
    vocabulary_doc,
    vocabulary_from_doc,
)

__all__ = [
    "ENGINES",
    "FORMATS",
    "OPSET",
    "TOLERANCE",
    "ExportWrapper",
    "export_metadata",
    "export_student",
    "is_exported",
    "load_exported",
    "max_difference",
    "onnx_model_proto",
    "onnx_session",
    "read_export_metadata",
]

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
ENGINES = ("auto", "torch", "onnxruntime", "torchscript")
OPSET = 18
KIND = "distill-student"  # the metadata's "kind": what marks a file as distill's
FORMAT_VERSION = 1
META_KEY = "distill"  # ONNX metadata_props key
EXTRA_FILE = "distill.json"  # TorchScript _extra_files name
# Max |exported − PyTorch| over every output value (maps and tokens, both in [-1, 1]) that an
# export must meet, measured on a seeded input at export and on real photos in the tests.
TOLERANCE = {"float32": 1e-4, "float16": 2e-2}
_CHECK_BATCH = 2  # images in the export-time check (and the dynamic-batch example)


# ---------------------------------------------------------------------------------------------
# Metadata


def _output_names(student: LoadedStudent) -> list[str]:
    return ["maps", "tokens"] + (["multi_hot"] if student.model.multi_hot is not None else [])


def export_metadata(student: LoadedStudent, *, fmt: str, fp16: bool, dynamic_batch: bool,
                    names: list[str]) -> dict[str, Any]:
    """The JSON document an exported file carries (see the module docstring)."""
    cfg = student.config
    size = cfg.student.input_size
    model_file = StudentRun.model_file(student.checkpoint)
    return {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "distill_version": __version__,
        "format": fmt,
        "opset": OPSET if fmt == "onnx" else None,
        "dtype": "float16" if fp16 else "float32",
        "batch": None if dynamic_batch else 1,
        # only what running the student needs: no data paths or teacher settings
        "config": {"preset": cfg.preset, "student": config_to_dict(cfg.student),
                   "labels": config_to_dict(cfg.labels), "predict": config_to_dict(cfg.predict)},
        "input": {
            "name": "image", "shape": ["batch" if dynamic_batch else 1, 3, size, size],
            "layout": "NCHW", "dtype": "float32", "color": "RGB", "size": size,
            "normalisation": "x = rgb_uint8 / 127.5 - 1 (→ [-1, 1])",
            "letterbox": f"aspect kept, bilinear resize (antialiased when shrinking) into "
                         f"{size}×{size}, centred, black (0) padding",
        },
        "outputs": names,
        "layout": {
            # the loaded student's: the paper's 44, then its extra layers' and plug-ins'
            "channels": layout.channels(),
            "maps": {name: [s.start, s.stop] for name, s in layout.modalities().items()},
            "joint_names": list(JOINT_NAMES), "limb_names": list(LIMB_NAMES),
            "maps_range": "[-1, 1] (tanh); unit maps = (v + 1) / 2",
            "tokens": f"({cfg.student.num_tokens}, {cfg.student.token_dim}) in [-1, 1], "
                      "GloVe vectors divided by vocabulary.scale",
        },
        "vocabulary": vocabulary_doc(student.vocab),
        "checkpoint": {
            "source": str(student.checkpoint), "epoch": student.epoch,
            "model_sha256": file_sha256(model_file) if model_file.is_file() else None,
            "config_fingerprint": cfg.fingerprint(("student",)),
        },
        "tolerance": {"max_abs": TOLERANCE["float16" if fp16 else "float32"]},
    }


def _check_metadata(doc: Any, where: object) -> dict[str, Any]:
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise DistillError(f"{where} is not a student distill export wrote (no distill "
                           "metadata)")
    version = doc.get("format_version", 0)
    if not isinstance(version, int):
        raise DistillError(f"{where}: its metadata's format_version {version!r} is not a number")
    if version > FORMAT_VERSION:
        raise DistillError(f"{where} was exported by a newer distill (format "
                           f"{doc['format_version']}; this one reads {FORMAT_VERSION})")
    return doc


def _torchscript_metadata(path: Path) -> dict[str, Any] | None:
    """The `distill.json` of a TorchScript archive (read with zipfile: nothing is run), or None
    when `path` is not a zip archive or holds none."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(f"/extra/{EXTRA_FILE}"):
                try:
                    return json.loads(archive.read(name))
                except ValueError as exc:
                    raise DistillError(f"{path}: its {EXTRA_FILE} is not JSON: {exc}") from exc
    return None


def _onnx_metadata(path: Path) -> dict[str, Any] | None:
    """The distill metadata of an ONNX file (its metadata_props, read with onnx without
    loading the weights' external data), or None when `path` is not an ONNX model."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError):
        return None
    props = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in props:
        return None
    try:
        return json.loads(props[META_KEY])
    except ValueError as exc:
        raise DistillError(f"{path}: its '{META_KEY}' metadata is not JSON: {exc}") from exc


def read_export_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a file `distill export` wrote; `DistillError` for any other file."""
    p = Path(path)
    if not p.is_file():
        raise DistillError(f"{p} does not exist" if not p.exists() else f"{p} is not a file")
    doc = _torchscript_metadata(p)
    if doc is None and not zipfile.is_zipfile(p):
        doc = _onnx_metadata(p)
    return _check_metadata(doc, p)


def is_exported(path: str | os.PathLike[str] | Location) -> bool:
    """Whether `path` is a local file distill export wrote (a checkpoint folder is not)."""
    loc = Location(path)
    if not loc.is_local or not loc.path or not Path(loc.path).is_file():
        return False
    try:
        read_export_metadata(loc.path)
    except DistillError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Export


class ExportWrapper(nn.Module):
    """The student as an exporter wants it: a tuple of float32 outputs in a fixed order; with
    `half`, computing in float16 between a float32 input and float32 outputs."""

    def __init__(self, model: nn.Module, names: list[str], half: bool) -> None:
        super().__init__()
        self.model = model.half() if half else model
        self.names = names
        self.fp16 = half

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x.half() if self.fp16 else x)
        return tuple(out[n].float() for n in self.names)


def _check_out(out: Path) -> None:
    """--out may be new, or a file distill exported before; never anything else."""
    if out.is_dir():
        raise DistillError(f"--out {out} is a folder; pass a file name (e.g. {out}/student.onnx)")
    if out.exists():
        try:
            read_export_metadata(out)
        except DistillError:
            raise DistillError(f"--out {out} exists and is not a file distill exported; "
                               "refusing to overwrite it (pass another --out)") from None


def _sample_input(size: int, batch: int = _CHECK_BATCH) -> torch.Tensor:
    """A seeded input in [-1, 1] with image-like structure (smooth gradients and edges, not
    only noise), for the export-time check."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size),
                            indexing="ij")
    base = torch.stack([xx, yy, (xx * yy).sign() * 0.5])
    noise = torch.rand((batch, 3, size, size), generator=g) * 2 - 1
    return (0.6 * base + 0.4 * noise).clamp(-1, 1)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Max |a − b| over every output the two share."""
    return max(float((a[k].detach().float() - b[k].detach().float()).abs().max())
               for k in a if k in b)


def _quiet_export() -> contextlib.ExitStack:
    """Exporters talk on stdout and warn about tracing; keep the command's output its own."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def onnx_model_proto(wrapper: nn.Module, x: torch.Tensor, names: list[str],
                 dynamic_batch: bool) -> Any:
    """The wrapper as an ONNX ModelProto (torch.export-based exporter, opset `OPSET`)."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; say so plainly)
    except ImportError as exc:
        raise DistillError("ONNX export needs onnx and onnxscript: pip install "
                           "'distill[export]'") from exc
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    with _quiet_export():
        program = torch.onnx.export(wrapper, (x,), dynamo=True, opset_version=OPSET,
                                    input_names=["image"], output_names=names,
                                    dynamic_shapes=dynamic, optimize=True, verbose=False)
    if program is None:  # pragma: no cover (the dynamo exporter always returns one)
        raise DistillError("torch.onnx.export returned no program")
    return program.model_proto


def onnx_session(model: bytes | str, device: str | torch.device = "cpu") -> Any:
    """An ONNX Runtime session on `device`: CPU, or CUDA (with the CPU provider behind it for
    any node CUDA lacks) when onnxruntime has the CUDA provider."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DistillError("running an ONNX student needs onnxruntime: pip install "
                           "'distill[export]'") from exc
    dev = torch.device(device)
    providers: list[Any] = ["CPUExecutionProvider"]
    if dev.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DistillError("--device cuda: this onnxruntime has no CUDA execution provider "
                               "(install onnxruntime-gpu), or run on --device cpu")
        providers = [("CUDAExecutionProvider", {"device_id": dev.index or 0}),
                     "CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are about graph fusions
    try:
        return ort.InferenceSession(model, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own classes, not importable by name
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistillError(f"ONNX Runtime cannot run this model on {dev}: {first}") from exc


def _engine_outputs(engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return engine(x)


def export_student(checkpoint: str | os.PathLike[str] | Location, fmt: str,
                   out: str | os.PathLike[str], *, fp16: bool = False,
                   dynamic_batch: bool = False, vocab: str | os.PathLike[str] | None = None,
                   overrides: list[str] | None = None) -> dict[str, Any]:
    """Export a train-student checkpoint to `out` (ONNX or TorchScript, see the module
    docstring), written atomically once it matches PyTorch within `TOLERANCE`. Returns its
    metadata (with the difference measured)."""
    if fmt not in FORMATS:
        raise DistillError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    target = Path(out)
    _check_out(target)
    student = load_student(checkpoint, "cpu", vocab=vocab, overrides=overrides)
    names = _output_names(student)
    meta = export_metadata(student, fmt=fmt, fp16=fp16, dynamic_batch=dynamic_batch,
                           names=names)
    reference_model = student.model.eval()
    wrapper = ExportWrapper(copy.deepcopy(reference_model), names, fp16).eval()
    size = student.config.student.input_size
    x = _sample_input(size, _CHECK_BATCH if dynamic_batch else 1)
    with torch.inference_mode():
        reference = {k: v.float() for k, v in reference_model(x).items()}
    batch = None if dynamic_batch else 1
    if fmt == "onnx":
        proto = onnx_model_proto(wrapper, x, names, dynamic_batch)
        engine: Engine = OnnxEngine(onnx_session(proto.SerializeToString()), batch)
    else:
        with _quiet_export(), torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(wrapper, (x,), check_trace=False)
        engine = TorchScriptEngine(traced, names, batch)
    got = _engine_outputs(engine, x)
    if dynamic_batch:  # the batch dimension really is free: one image alone, too
        got1 = _engine_outputs(engine, x[:1])
        got = {k: torch.cat([got1[k], v[1:]]) for k, v in got.items()}
    diff = max_difference(got, reference)
    limit = meta["tolerance"]["max_abs"]
    meta["tolerance"]["measured_max_abs"] = diff
    meta["tolerance"]["measured_on"] = "a seeded image-like input, at export"
    if not diff <= limit:
        raise DistillError(f"the exported {fmt} student differs from PyTorch by {diff:.3g} "
                           f"(tolerance {limit:g}); nothing was written")
    doc = json.dumps(meta, separators=(",", ":"))
    if fmt == "onnx":
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_KEY, doc
        proto.producer_name, proto.producer_version = "distill", __version__
        data = proto.SerializeToString()
    else:
        buffer = io.BytesIO()
        with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript (FutureWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(traced, buffer, _extra_files={EXTRA_FILE: doc})
        data = buffer.getvalue()
    atomic_write_bytes(target, data)
    logger.info("exported %s to %s (%d bytes, max |diff| %.3g)", student.checkpoint, target,
                len(data), diff)
    return meta


# ---------------------------------------------------------------------------------------------
# Loading


def _config(doc: dict[str, Any], overrides: list[str]) -> Config:
    merged = copy.deepcopy(doc)
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return load_config_dict(merged)


def load_exported(path: str | os.PathLike[str], engine: str = "auto",
                  device: str | torch.device = "cpu", *,
                  vocab: str | os.PathLike[str] | None = None,
                  overrides: list[str] | None = None) -> ExportedStudent:
    """A file `distill export` wrote, ready for `Predictor`: `engine` "auto" (what the file is),
    "onnxruntime" or "torchscript" (which must be what the file is); `overrides` are --set
    settings (predict.*) over the exported config; `vocab` replaces the one it carries."""
    from distill.labels.tokens import read_vocabulary

    if engine not in ENGINES:
        raise DistillError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    p = Path(path)
    meta = read_export_metadata(p)
    fmt = meta["format"]
    wanted = {"onnxruntime": "onnx", "torchscript": "torchscript"}.get(engine)
    if engine == "torch":
        raise DistillError(f"--engine torch runs a train-student checkpoint; {p} is an "
                           f"exported {fmt} file (--engine auto runs it)")
    if wanted is not None and wanted != fmt:
        raise DistillError(f"--engine {engine} cannot run {p}: it is a {fmt} file")
    if fmt not in FORMATS:
        raise DistillError(f"{p}: unknown exported format {fmt!r}")
    try:  # the file's own config first: a damaged one is the file's fault, not --set's
        _config(meta["config"], [])
    except (DistillError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise DistillError(f"{p}: the config in its metadata does not load: {exc}") from exc
    config = _config(meta["config"], list(overrides or []))
    check_metadata(meta, config, p)
    words = (read_vocabulary(vocab) if vocab is not None else
             vocabulary_from_doc(meta.get("vocabulary"), config.student.token_dim, p))
    batch = meta.get("batch")
    dev = torch.device(device)
    shapes = output_shapes(meta, config)
    runner: Engine
    if fmt == "onnx":
        session = onnx_session(str(p), dev)
        check_onnx(session, meta, config, p)
        runner = OnnxEngine(session, batch, source=str(p), expected=shapes)
    else:
        with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript (FutureWarning)
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(p), map_location=dev)
        check_torchscript(module, meta, p)
        runner = TorchScriptEngine(module.eval(), meta["outputs"], batch, dev, source=str(p),
                                   expected=shapes)
    return ExportedStudent(runner, config, words, Location(p),
                           int(meta.get("checkpoint", {}).get("epoch", 0)), meta)
