"""What a file `distill export` wrote must be before `distill predict` runs it: the metadata it
carries (the vocabulary document is written here too), checked field by field (its output names, batch, input size, a vocabulary whose
vectors are the size and type its words and dimension say), and its network's input and
output signature checked against that metadata. A foreign network carrying distill's metadata,
or a damaged file, is then one line naming the file and what is wrong — never an error from
inside ONNX Runtime or TorchScript, and before anything runs.

The shapes: input (batch, 3, S, S) float32; "maps" (batch, 44, S, S), "tokens" (batch, T, D)
and, with the multi-hot tail, "multi_hot" (batch, V); S, T and D from the exported config,
batch 1 or any (`--dynamic-batch`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

import numpy as np

from distill.config import Config
from distill.errors import DistillError
from distill.labels.tokens import Vocabulary
from distill.student import layout
from distill.student.engines import Shape, shape_text

__all__ = ["OUTPUTS", "check_metadata", "check_onnx", "check_torchscript", "input_shape",
           "output_shapes", "vocabulary_doc", "vocabulary_from_doc"]

# The outputs an export has, in order: without and with the multi-hot tail.
OUTPUTS = (["maps", "tokens"], ["maps", "tokens", "multi_hot"])
_ONNX_INPUT_TYPES = ("tensor(float)", "tensor(float16)")


def check_metadata(meta: dict[str, Any], config: Config, where: object) -> None:
    """The metadata's fields that running the file relies on, against each other and the
    config it carries (loaded already); `DistillError` naming `where` and the field."""
    outputs = meta.get("outputs")
    if outputs not in OUTPUTS:
        raise DistillError(f"{where}: its metadata names the outputs {outputs!r}; a distill "
                           f"export has {' or '.join(map(str, OUTPUTS))}")
    batch = meta.get("batch")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise DistillError(f"{where}: its metadata's batch {batch!r} is neither a positive "
                           "number nor null (any batch)")
    size = (meta.get("input") or {}).get("size")
    if size != config.student.input_size:
        raise DistillError(f"{where}: its metadata's input size {size!r} is not its config's "
                           f"student.input_size {config.student.input_size}")


def _digest(words: list[str], vectors: np.ndarray) -> str:
    return hashlib.sha256(json.dumps(words).encode() + vectors.tobytes()).hexdigest()


def vocabulary_doc(vocab: Vocabulary | None) -> dict[str, Any] | None:
    """The vocabulary as an exported file carries it (words, counts, dim, scale, the vectors
    as base64 float32 and their sha256); `vocabulary_from_doc` reads it back."""
    if vocab is None:
        return None
    vectors = np.ascontiguousarray(vocab.vectors, np.float32)
    return {"words": list(vocab.words), "counts": [int(c) for c in vocab.counts],
            "dim": vocab.dim, "scale": float(vocab.scale),
            "vectors_float32_base64": base64.b64encode(vectors.tobytes()).decode("ascii"),
            "sha256": _digest(list(vocab.words), vectors)}


def vocabulary_from_doc(doc: Any, token_dim: int, where: object) -> Vocabulary | None:
    """The vocabulary an exported file carries (None when it carries none), checked: words and
    counts alike in number, `dim` the student's token size, the vectors exactly words × dim
    finite float32 values and their sha256 the one recorded."""
    if not doc:
        return None

    def damaged(what: str) -> DistillError:
        return DistillError(f"{where}: its vocabulary is damaged: {what}")

    try:
        words, counts = list(doc["words"]), [int(c) for c in doc["counts"]]
        dim, scale = int(doc["dim"]), float(doc["scale"])
        raw = base64.b64decode(doc["vectors_float32_base64"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise damaged(f"{type(exc).__name__} {exc}") from exc
    if not all(isinstance(w, str) for w in words) or len(counts) != len(words):
        raise damaged(f"{len(words)} words but {len(counts)} counts")
    if dim != token_dim:
        raise damaged(f"{dim}-d vectors, but the student's tokens are {token_dim}-d")
    if len(raw) != len(words) * dim * 4:
        raise damaged(f"its vectors are {len(raw)} bytes; {len(words)} words × {dim} float32 "
                      f"values are {len(words) * dim * 4}")
    vectors = np.frombuffer(raw, np.float32).reshape(len(words), dim).copy()
    if not np.isfinite(vectors).all() or not np.isfinite(scale) or scale <= 0:
        raise damaged("its vectors or scale are not finite positive numbers")
    if _digest(words, vectors) != doc.get("sha256"):
        raise damaged("its words and vectors do not match their sha256")
    return Vocabulary(words, counts, vectors, scale)


def input_shape(meta: dict[str, Any], config: Config) -> Shape:
    size = config.student.input_size
    return (meta.get("batch"), 3, size, size)


def output_shapes(meta: dict[str, Any], config: Config) -> dict[str, Shape]:
    """Each output's shape as the metadata states it (the batch: None, any)."""
    s = config.student
    shapes: dict[str, Shape] = {"maps": (None, layout.channels(), s.input_size, s.input_size),
                                "tokens": (None, s.num_tokens, s.token_dim),
                                "multi_hot": (None, None)}
    return {name: shapes[name] for name in meta["outputs"]}


def _fits(shape: list[Any] | None, want: Shape) -> bool:
    """Whether a declared shape (ints, or names / None for free dimensions; none declared:
    left to the engine's check as it runs) can be `want`."""
    if not shape:
        return True
    return len(shape) == len(want) and all(
        not isinstance(d, int) or w is None or d == w for d, w in zip(shape, want, strict=True))


def check_onnx(session: Any, meta: dict[str, Any], config: Config, where: object) -> None:
    """An ONNX Runtime session's declared input and outputs against the metadata."""
    prefix = f"{where} carries distill's metadata but its network does not fit it"
    inputs = session.get_inputs()
    want = input_shape(meta, config)
    if (len(inputs) != 1 or not _fits(inputs[0].shape, want)
            or inputs[0].type not in _ONNX_INPUT_TYPES):
        got = ", ".join(f"{i.name!r} {shape_text(i.shape)} {i.type}" for i in inputs)
        raise DistillError(f"{prefix}: it takes {got or 'no input'}; the metadata says one "
                           f"float32 image {shape_text(want)}")
    names = [o.name for o in session.get_outputs()]
    if names != meta["outputs"]:
        raise DistillError(f"{prefix}: its outputs are {names}; the metadata says "
                           f"{meta['outputs']}")
    shapes = output_shapes(meta, config)
    for out in session.get_outputs():
        want = (meta.get("batch"), *shapes[out.name][1:])
        if not _fits(out.shape, want):
            raise DistillError(f"{prefix}: its output {out.name!r} is "
                               f"{shape_text(out.shape)}; the metadata says {shape_text(want)}")


def check_torchscript(module: Any, meta: dict[str, Any], where: object) -> None:
    """A TorchScript module's forward signature against the metadata: one tensor in, a tuple
    of as many tensors as the metadata's outputs back (shapes are checked as it runs)."""
    prefix = f"{where} carries distill's metadata but its network does not fit it"
    try:
        schema = module.forward.schema
    except (AttributeError, RuntimeError) as exc:
        raise DistillError(f"{prefix}: it has no forward method ({exc})") from exc
    args = [a for a in schema.arguments if a.name != "self"]
    if len(args) != 1 or str(args[0].type) != "Tensor":
        got = ", ".join(f"{a.name}: {a.type}" for a in args) or "nothing"
        raise DistillError(f"{prefix}: its forward takes {got}; the metadata says one image "
                           "tensor")
    returns = [str(r.type) for r in schema.returns]
    want = "Tuple[" + ", ".join(["Tensor"] * len(meta["outputs"])) + "]"
    if returns != [want]:
        raise DistillError(f"{prefix}: its forward returns {', '.join(returns) or 'nothing'}; "
                           f"the metadata says {want} ({', '.join(meta['outputs'])})")
