"""What runs a student's forward pass: one small interface (`Engine`) in front of a PyTorch
module, a TorchScript module or an ONNX Runtime session, so that letterboxing, depth refinement
and token and people decoding (`distill.student.predict.Predictor`) are the same code whatever
runs the network.

An engine takes (B, 3, S, S) float32 RGB in [-1, 1] (NCHW, as `YMapNet` does) and returns the
student's outputs by name ("maps" (B, 44, S, S) in [-1, 1], "tokens" (B, T, D), optionally
"multi_hot"), float32 torch tensors on the engine's device. An exported file whose batch is
fixed runs a larger batch as several calls of its own batch (the last one padded).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

__all__ = ["Engine", "OnnxEngine", "TorchEngine", "TorchScriptEngine"]


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


class TorchScriptEngine:
    """A TorchScript module `distill export --format torchscript` wrote (outputs as a tuple in
    the order `names`)."""

    name = "torchscript"

    def __init__(self, module: Any, names: Sequence[str], batch: int | None,
                 device: str | torch.device = "cpu") -> None:
        self.module = module
        self.names = list(names)
        self.batch = batch
        self.device = torch.device(device)

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        def run(chunk: torch.Tensor) -> list[torch.Tensor]:
            return list(self.module(chunk.to(self.device, torch.float32)))

        return _in_batches(run, x, self.names, self.batch)


class OnnxEngine:
    """An ONNX Runtime `InferenceSession` (its execution providers decide where it runs; the
    outputs come back as CPU tensors, where decoding runs anyway)."""

    name = "onnxruntime"

    def __init__(self, session: Any, batch: int | None) -> None:
        self.session = session
        inputs = session.get_inputs()
        self.input_name = inputs[0].name
        self.input_dtype = np.float16 if "float16" in inputs[0].type else np.float32
        self.names = [o.name for o in session.get_outputs()]
        self.batch = batch
        self.device = torch.device("cpu")
        self.providers = list(session.get_providers())

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        def run(chunk: torch.Tensor) -> list[torch.Tensor]:
            feed = {self.input_name: chunk.detach().cpu().numpy().astype(self.input_dtype)}
            return [torch.from_numpy(np.asarray(o)) for o in self.session.run(None, feed)]

        return _in_batches(run, x, self.names, self.batch)
