"""The `export` section of `make bench`: the student's forward frames/s at batch 1, side by side
for PyTorch eager, `torch.compile`, TorchScript and ONNX Runtime on the CPU (the tiny and the
paper preset at their input sizes, random weights: speed does not depend on them), and the GPU
rows (CUDA eager, ONNX Runtime's CUDA and TensorRT execution providers) when there is a GPU —
otherwise those rows say "not measured: no GPU". Each engine runs the same (1, 3, S, S) input
through `distill.student.engines`, the interface `distill predict` runs; medians of repeated
calls after a warm-up. A row that fails (torch.compile without a compiler, an exporter error)
keeps its error string instead of a figure."""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.student import _median_seconds

__all__ = ["bench_export", "export_lines"]


def _median_fps(fn: Callable[[], Any], repeat: int, sync: Callable[[], None]) -> float:
    return 1.0 / _median_seconds(fn, repeat, sync)


def _row(preset: str, engine: str, device: str, measure: Callable[[], float]) -> dict[str, Any]:
    row: dict[str, Any] = {"preset": preset, "engine": engine, "device": device}
    try:
        row["frames_per_second"] = measure()
    except Exception as exc:  # a row says why it is missing
        row["error"] = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
    return row


def _build(make: Callable[[], Callable[[], None]]) -> tuple[Callable[[], None] | None, str]:
    """An engine's timed call, built and warmed up once (export, compile), or why not."""
    try:
        call = make()
        call()  # warm-up: torch.compile compiles here, ONNX Runtime plans its arena
        return call, ""
    except Exception as exc:  # a row says why it is missing
        return None, f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]


def _preset_rows(preset: str, repeat: int, work: Path) -> list[dict[str, Any]]:
    """Every CPU engine of one preset, built first, then timed in interleaved rounds (each
    round times every engine once, `calls` calls each): a machine whose load changes moves
    every engine's figure alike. frames/s = the median over rounds."""
    import torch

    from distill.config import load_config
    from distill.student.engines import OnnxEngine, TorchEngine, TorchScriptEngine
    from distill.student.export import ExportWrapper, onnx_model_proto, onnx_session
    from distill.student.model import build_student

    scfg = load_config("paper" if preset == "paper" else "demo").student
    model = build_student(scfg, 0, "cpu").eval()
    x = torch.rand(1, 3, scfg.input_size, scfg.input_size) * 2 - 1
    names = ["maps", "tokens"]
    rounds, calls = (5, 1) if preset == "paper" else (max(5, repeat // 3), 5)

    def call_of(engine: Callable[[torch.Tensor], Any]) -> Callable[[], None]:
        def call() -> None:
            with torch.inference_mode():
                engine(x)
        return call

    def eager() -> Callable[[], None]:
        return call_of(TorchEngine(model))

    def compiled() -> Callable[[], None]:
        return call_of(TorchEngine(torch.compile(model)))

    def torchscript() -> Callable[[], None]:
        wrapper = ExportWrapper(copy.deepcopy(model), names, False).eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapper, (x,), check_trace=False)
        return call_of(TorchScriptEngine(traced, names, 1))

    def onnxruntime() -> Callable[[], None]:
        wrapper = ExportWrapper(model, names, False).eval()
        proto = onnx_model_proto(wrapper, x, names, dynamic_batch=False)
        path = work / f"{preset}.onnx"
        path.write_bytes(proto.SerializeToString())
        del proto
        return call_of(OnnxEngine(onnx_session(str(path)), 1))

    makers = {"PyTorch eager": eager, "torch.compile (inductor)": compiled,
              "TorchScript (trace)": torchscript, "ONNX Runtime (CPU EP)": onnxruntime}
    built: dict[str, tuple[Callable[[], None] | None, str, float]] = {}
    for name, make in makers.items():
        t0 = time.perf_counter()
        call, error = _build(make)
        built[name] = (call, error, round(time.perf_counter() - t0, 1))
    per_round: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(rounds):
        for name, (call, _, _) in built.items():
            if call is None:
                continue
            t0 = time.perf_counter()
            for _ in range(calls):
                call()
            per_round[name].append(calls / (time.perf_counter() - t0))
    rows = []
    for name, (call, error, setup) in built.items():
        row: dict[str, Any] = {"preset": preset, "engine": name, "device": "cpu",
                               "setup_seconds": setup, "input_size": scfg.input_size,
                               "parameters": sum(p.numel() for p in model.parameters())}
        if call is None:
            row["error"] = error
        else:
            row["frames_per_second"] = statistics.median(per_round[name])
            row["rounds"] = [round(v, 2) for v in per_round[name]]
        rows.append(row)
    return rows


def _gpu_rows(presets: tuple[str, ...]) -> list[dict[str, Any]]:
    import torch

    engines = ("PyTorch eager (CUDA)", "ONNX Runtime (CUDA EP)", "ONNX Runtime (TensorRT EP)")
    if not torch.cuda.is_available():
        return [{"preset": p, "engine": e, "device": "cuda", "not_measured": "no GPU"}
                for p in presets for e in engines]
    rows: list[dict[str, Any]] = []
    for preset in presets:  # only eager: onnxruntime-gpu is not a dependency of distill
        from distill.config import load_config
        from distill.student.model import build_student

        scfg = load_config("paper" if preset == "paper" else "demo").student
        model = build_student(scfg, 0, "cuda").eval()
        x = torch.rand(1, 3, scfg.input_size, scfg.input_size, device="cuda") * 2 - 1

        def call(model: Any = model, x: Any = x) -> None:
            with torch.inference_mode():
                model(x)

        rows.append(_row(preset, engines[0], "cuda",
                         lambda call=call: _median_fps(call, 20, torch.cuda.synchronize)))
        import onnxruntime as ort

        for name, ep in (("ONNX Runtime (CUDA EP)", "CUDAExecutionProvider"),
                         ("ONNX Runtime (TensorRT EP)", "TensorrtExecutionProvider")):
            if ep not in ort.get_available_providers():
                rows.append({"preset": preset, "engine": name, "device": "cuda",
                             "not_measured": f"this onnxruntime has no {ep} (onnxruntime-gpu)"})
                continue
            rows.append(_row(preset, name, "cuda",
                             lambda ep=ep, model=model, x=x: _ort_gpu_fps(model, x, ep)))
    return rows


def _ort_gpu_fps(model: Any, x: Any, provider: str) -> float:
    """frames/s of the model exported to ONNX and run by ONNX Runtime on `provider` (never run
    on this project's CPU machines: no GPU)."""
    import numpy as np
    import onnxruntime as ort

    from distill.student.export import ExportWrapper, onnx_model_proto

    names = ["maps", "tokens"]
    cpu = copy.deepcopy(model).cpu()
    proto = onnx_model_proto(ExportWrapper(cpu, names, False).eval(), x.cpu(), names, False)
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=[provider, "CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.cpu().numpy().astype(np.float32)}
    return _median_fps(lambda: session.run(None, feed), 20, lambda: None)


def bench_export(repeat: int = 15, presets: tuple[str, ...] = ("tiny", "paper")) -> dict[str, Any]:
    import torch

    with tempfile.TemporaryDirectory(prefix="distill-bench-export-") as tmp:
        rows = [r for p in presets for r in _preset_rows(p, repeat, Path(tmp))]
    return {"batch": 1, "torch_threads": torch.get_num_threads(), "cpu": rows,
            "gpu": _gpu_rows(presets),
            "note": "batch 1, random weights, float32; every engine built and warmed up "
                    "first (torch.compile's compile time and the ONNX export are in "
                    "setup_seconds, not the figure), then timed in interleaved rounds, "
                    "median over rounds; each engine through distill.student.engines, as "
                    "distill predict runs it; one niced process on a shared 2-core machine"}


def export_lines(ex: Any) -> list[str]:
    """The section's Markdown for RESULTS.md."""
    lines = ["", "## Export: one student forward pass per engine (batch 1)"]
    if ex is None:
        return [*lines, "", "(not run)"]
    if "error" in ex:
        return [*lines, "", f"failed: {ex['error']}"]
    lines += ["", f"{ex['note']}; torch threads {ex['torch_threads']}.", "",
              "| preset | input | engine | device | frames/s | setup s |",
              "|---|---:|---|---|---:|---:|"]
    for r in ex["cpu"]:
        value = (f"**{r['frames_per_second']:.2f}**" if "frames_per_second" in r
                 else f"failed: {r['error']}")
        lines.append(f"| {r['preset']} | {r.get('input_size', '')} | {r['engine']} | "
                     f"{r['device']} | {value} | {r.get('setup_seconds', '')} |")
    for r in ex["gpu"]:
        value = (f"**{r['frames_per_second']:.2f}**" if "frames_per_second" in r
                 else f"not measured: {r['not_measured']}" if "not_measured" in r
                 else f"failed: {r['error']}")
        lines.append(f"| {r['preset']} | | {r['engine']} | {r['device']} | {value} | |")
    return lines
