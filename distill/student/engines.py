"""What runs a student's forward pass: one small interface (`Engine`) in front of a PyTorch
module, a TorchScript module or an ONNX Runtime session, so that letterboxing, depth refinement
and token and people decoding (`distill.student.predict.Predictor`) are the same code whatever
runs the network.

An engine takes (B, 3, S, S) float32 RGB in [-1, 1] (NCHW, as `YMapNet` does) and returns the
student's outputs by name ("maps" (B, 44, S, S) in [-1, 1], "tokens" (B, T, D), optionally
"multi_hot"), float32 torch tensors on the engine's device. An exported file whose batch is
fixed runs a larger batch as several calls of its own batch (the last one padded). An exported
file's engine checks its outputs against the shapes its metadata states and turns its
runtime's errors into a `DistillError` naming the file (a foreign network that passed the
checks at loading, `distill.student.signature`, still fails in one line).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from distill.errors import DistillError

__all__ = ["Engine", "OnnxEngine", "Shape", "TorchEngine", "TorchScriptEngine", "shape_text"]

Shape = tuple[int | None, ...]  # an output's dimensions; None: any size (the batch)


class Engine(Protocol):
    """A student forward pass: (B, 3, S, S) RGB in [-1, 1] → outputs by name."""

    name: str  # "torch", "torchscript" or "onnxruntime"
    device: torch.device

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]: ...


class TorchEngine:
    """A PyTorch module (a `YMapNet`, or anything returning its dict of outputs)."""

    name = "torch"

    def __init__(self, model: Callable[[torch.Tensor], dict[str, torch.Tensor]],
                 device: str | torch.device = "cpu") -> None:
        self.model = model
        self.device = torch.device(device)

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.float() for k, v in self.model(x.to(self.device)).items()}


def shape_text(shape: Sequence[object]) -> str:
    """[batch, 44, 64, 64]: a shape as a message shows it (any size: "batch" first, else "?")."""
    return "[" + ", ".join(str(d) if isinstance(d, int) else "batch" if i == 0 else "?"
                           for i, d in enumerate(shape)) + "]"


class _Exported:
    """What the engines of an exported file share: its name for messages, the output shapes
    its metadata states, and running it in calls of its own batch."""

    def __init__(self, names: Sequence[str], batch: int | None, source: str,
                 expected: Mapping[str, Shape] | None) -> None:
        self.names = list(names)
        self.batch = batch
        self.source = source or "the exported student"
        self.expected = dict(expected or {})

    def _run(self, chunk: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def _checked_run(self, chunk: torch.Tensor) -> list[torch.Tensor]:
        try:
            outs = self._run(chunk)
        except Exception as exc:  # onnxruntime's classes are not importable by name
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DistillError(f"{self.source} fails on a {shape_text(chunk.shape)} input: "
                               f"{first}") from exc
        if len(outs) != len(self.names):
            raise DistillError(f"{self.source} returns {len(outs)} outputs; its metadata says "
                               f"{len(self.names)} ({', '.join(self.names)})")
        for name, out in zip(self.names, outs, strict=True):
            want = self.expected.get(name)
            got = tuple(out.shape)
            if want is not None and (len(got) != len(want) or any(
                    w is not None and g != w for g, w in zip(got, want, strict=True))):
                raise DistillError(f"{self.source}: its output {name!r} is {shape_text(got)}; "
                                   f"its metadata says {shape_text(want)}")
        return outs

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return _in_batches(self._checked_run, x, self.names, self.batch)


def _in_batches(run: Callable[[torch.Tensor], list[torch.Tensor]], x: torch.Tensor,
                names: Sequence[str], batch: int | None) -> dict[str, torch.Tensor]:
    """`run` over `x` in calls of exactly `batch` images (None: all at once), the last call
    padded with zeros and the padding's outputs dropped."""
    if batch is None or x.shape[0] == batch:
        outs = run(x)
    else:
        parts: list[list[torch.Tensor]] = []
        for k in range(0, x.shape[0], batch):
            chunk = x[k:k + batch]
            n = chunk.shape[0]
            if n < batch:
                chunk = torch.cat([chunk, chunk.new_zeros((batch - n, *chunk.shape[1:]))])
            parts.append([o[:n] for o in run(chunk)])
        outs = [torch.cat([p[i] for p in parts]) for i in range(len(names))]
    return {name: o.float() for name, o in zip(names, outs, strict=True)}


class TorchScriptEngine(_Exported):
    """A TorchScript module `distill export --format torchscript` wrote (outputs as a tuple in
    the order `names`)."""

    name = "torchscript"

    def __init__(self, module: Any, names: Sequence[str], batch: int | None,
                 device: str | torch.device = "cpu", *, source: str = "",
                 expected: Mapping[str, Shape] | None = None) -> None:
        super().__init__(names, batch, source, expected)
        self.module = module
        self.device = torch.device(device)

    def _run(self, chunk: torch.Tensor) -> list[torch.Tensor]:
        out = self.module(chunk.to(self.device, torch.float32))
        return list(out) if isinstance(out, (tuple, list)) else [out]


class OnnxEngine(_Exported):
    """An ONNX Runtime `InferenceSession` (its execution providers decide where it runs; the
    outputs come back as CPU tensors, where decoding runs anyway)."""

    name = "onnxruntime"

    def __init__(self, session: Any, batch: int | None, *, source: str = "",
                 expected: Mapping[str, Shape] | None = None) -> None:
        super().__init__([o.name for o in session.get_outputs()], batch, source, expected)
        self.session = session
        inputs = session.get_inputs()
        self.input_name = inputs[0].name
        self.input_dtype = np.float16 if "float16" in inputs[0].type else np.float32
        self.device = torch.device("cpu")
        self.providers = list(session.get_providers())

    def _run(self, chunk: torch.Tensor) -> list[torch.Tensor]:
        feed = {self.input_name: chunk.detach().cpu().numpy().astype(self.input_dtype)}
        return [torch.from_numpy(np.asarray(o)) for o in self.session.run(None, feed)]
