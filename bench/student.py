"""Student-side benchmarks: the training loader per CPU core, and the student's forward and
training throughput (tiny on a CPU; the paper preset in bf16/fp16, channels-last and compiled
on a GPU)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["bench_loader", "bench_student", "naive_loader", "refine_ratio", "student_throughput"]


def _median_seconds(fn: Callable[[], Any], repeat: int, sync: Callable[[], None]) -> float:
    fn()
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def naive_loader(row: dict[str, Any], size: int, rng: Any) -> dict[str, Any]:
    """The torchvision-style baseline of the loader benchmark: decode the JPEG and the four
    label PNGs (depth, normals, groups, text) with PIL, resize each to `size`×`size` (bilinear,
    nearest for the label maps), apply one random affine (PIL's, the transform torchvision's
    `RandomAffine` runs on PIL images) to all five, and make tensors. No letterbox, heatmaps,
    PAFs, photometric augmentation or bit unpacking: the floor a plain loader pays."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    zoom = float(rng.uniform(1.0, 1.1))
    tx, ty = (float(v) for v in rng.uniform(-0.2 * size, 0.2 * size, 2))
    c = (size - 1) / 2.0
    inverse = (1 / zoom, 0.0, c - (c + tx) / zoom, 0.0, 1 / zoom, c - (c + ty) / zoom)
    out: dict[str, Any] = {}
    for column, nearest in (("image", False), ("depth_png", False), ("normals_png", False),
                            ("groups_png", True), ("text_png", True)):
        data = row.get(column)
        if data is None:
            continue
        with Image.open(io.BytesIO(data)) as img:
            if img.mode.startswith("I;16"):
                img = img.convert("I")  # 32-bit, PIL's only resizable 16-bit form
            elif column == "image":
                img = img.convert("RGB")
            resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
            moved = img.resize((size, size), resample).transform(
                (size, size), Image.Transform.AFFINE, inverse, resample)
            out[column] = torch.from_numpy(np.asarray(moved).copy())
    return out


def bench_loader(shards: Path, repeat: int, size: int = 256,
                 source: str = "") -> dict[str, Any]:
    """Training examples per second on ONE core (this process, torch and numpy on one thread):
    shard row → decoded image and labels → letterbox → full augmentation → heatmaps and PAFs →
    uint8 tensors; beside it, on the same rows, the naive torchvision-style loader
    (`naive_loader`) and the bare JPEG decode. The three run interleaved, `repeat` rounds,
    medians of this process's CPU time (the cost on one core, steady under other load)."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from distill.config import load_config
    from distill.images import decode_image, image_size
    from distill.labels.tokens import read_vocabulary
    from distill.runfolder import find_label_run, resolve_shards
    from distill.student.data import ShardStream

    torch.set_num_threads(1)
    cfg = load_config("demo").train
    run = find_label_run(shards)
    vocab = read_vocabulary(run.vocab) if run is not None and run.vocab.is_file() else None
    stream = ShardStream(shards, size, vocab, cfg, train=True, shuffle_buffer=1,
                         token_dim=vocab.dim if vocab else 50)
    rows = stream.count_rows()
    table = [r for p in resolve_shards(shards) for r in pq.read_table(
        p.as_path(), columns=["image", "depth_png", "normals_png", "groups_png", "text_png"]
    ).to_pylist()]
    images = [r["image"] for r in table]
    sizes = [image_size(b) for b in images]
    epoch = [0]
    rng = np.random.default_rng(0)

    def loader() -> None:
        stream.set_epoch(epoch[0])  # new augmentation draws every pass
        epoch[0] += 1
        for _ in stream:
            pass

    def naive() -> None:
        for row in table:
            naive_loader(row, size, rng)

    def decode() -> None:
        for data in images:
            decode_image(data)

    times: dict[str, list[float]] = {"loader": [], "naive": [], "decode": []}
    fns = {"loader": loader, "naive": naive, "decode": decode}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeat):  # CPU seconds of this process: what a core spends, whatever the load
        for name, fn in fns.items():
            t0 = time.process_time()
            fn()
            times[name].append(time.process_time() - t0)
    t_loader, t_naive, t_decode = (statistics.median(times[k]) for k in fns)
    return {
        "rows": rows,
        "size": size,
        "source": source or str(shards),
        "median_image_size": [int(statistics.median(w for w, _ in sizes)),
                              int(statistics.median(h for _, h in sizes))],
        "median_jpeg_kb": statistics.median(len(b) for b in images) / 1000,
        "samples_per_second_per_core": rows / t_loader,
        "naive_samples_per_second_per_core": len(table) / t_naive,
        "jpeg_decode_per_second_per_core": len(images) / t_decode,
        "ratio_to_jpeg_decode": t_loader / t_decode,
        "ratio_to_naive": t_loader / t_naive,
        "rounds": {k: [round(len(table) / t, 1) for t in v] for k, v in times.items()},
        "note": "one process, torch.set_num_threads(1); augmentation at the paper's "
                "probabilities; heatmaps at the schedule's start size (23 px joints, 6 px "
                "PAFs); loader, naive loader and bare decode interleaved, medians of the "
                "process's CPU time (time.process_time), not wall time, on a shared machine",
    }


def student_throughput(preset: str, device: str, batches: tuple[int, ...], *,
                       dtype: str = "float32", channels_last: bool = False,
                       compile_model: bool = False, train_batch: int | None = None,
                       repeat: int = 5) -> dict[str, Any]:
    """Forward images/s at each batch size and (optionally) training samples/s at
    `train_batch`, for the `preset` student at 256×256 on `device`."""
    import torch

    from distill.config import load_config
    from distill.student.loss import compute_loss
    from distill.student.model import build_student
    from distill.student.targets import PRESENT_KEYS

    cfg = load_config("paper" if preset == "paper" else "demo")
    scfg = cfg.student
    dev = torch.device(device)
    model = build_student(scfg, 0, dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp = {"float32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    runner: Any = torch.compile(model) if compile_model else model
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    size = scfg.input_size
    out: dict[str, Any] = {"preset": preset, "device": device, "dtype": dtype,
                           "channels_last": channels_last, "compiled": compile_model,
                           "parameters": sum(p.numel() for p in model.parameters())}

    def batch_of(n: int) -> torch.Tensor:
        x = torch.rand(n, 3, size, size, device=dev) * 2 - 1
        return x.to(memory_format=torch.channels_last) if channels_last else x

    model.eval()
    for n in batches:
        x = batch_of(n)

        @torch.inference_mode()
        def forward(x: torch.Tensor = x) -> None:
            with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                runner(x)

        seconds = _median_seconds(forward, repeat, sync)
        out[f"forward_batch{n}_images_per_second"] = n / seconds
    if train_batch:
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        x = batch_of(train_batch)
        target = torch.randint(0, 256, (train_batch, 44, size, size), dtype=torch.uint8,
                               device=dev)
        tokens = torch.zeros(train_batch, scfg.num_tokens, scfg.token_dim, device=dev)
        present = torch.ones(train_batch, len(PRESENT_KEYS), dtype=torch.bool, device=dev)
        scaler = torch.amp.GradScaler(enabled=dtype == "fp16")

        def step() -> None:
            with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss, _ = compute_loss(runner(x), target, tokens, present, cfg.train)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        seconds = _median_seconds(step, max(2, repeat // 2), sync)
        out[f"train_batch{train_batch}_samples_per_second"] = train_batch / seconds
    return out


def refine_ratio(preset: str, device: str = "cpu", repeat: int = 5) -> dict[str, Any]:
    """`distill predict`'s depth refinement (paper §3.2, the preset's iterations) against the
    `preset` student's forward pass, one 640×480 image letterboxed to 256×256, on `device`
    (on a CPU, one torch thread): the two interleaved, `repeat` rounds, medians; the goal is a
    ratio ≤ 0.5 (issue 31.5)."""
    import numpy as np
    import torch

    from distill.config import load_config
    from distill.storage import Location
    from distill.student.model import build_student
    from distill.student.predict import LoadedStudent, Predictor

    if device == "cpu":
        torch.set_num_threads(1)
    cfg = load_config("paper" if preset == "paper" else "demo")
    model = build_student(cfg.student, 0, device)
    predictor = Predictor(LoadedStudent(model, cfg, None, Location("."), 0), device)
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
    inputs = predictor.letterbox([image])
    outputs, boxes, _ = predictor.forward(inputs)
    sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
    forward, refine = [], []
    predictor.refine_batch(outputs["maps"], boxes)  # warm-up
    for _ in range(repeat):
        forward.append(predictor.forward(inputs)[2])
        sync()
        t0 = time.perf_counter()
        predictor.refine_batch(outputs["maps"], boxes)
        sync()
        refine.append((time.perf_counter() - t0) * 1e3)
    f, r = statistics.median(forward), statistics.median(refine)
    return {"preset": preset, "device": device, "size": cfg.student.input_size,
            "iterations": cfg.predict.refine_iterations, "forward_ms": f, "refine_ms": r,
            "refine_to_forward": r / f}


def bench_student(repeat: int) -> dict[str, Any]:
    import torch

    cpu = student_throughput("tiny", "cpu", (1, 30), repeat=repeat, train_batch=30)
    refine = [refine_ratio(p, "cpu", repeat) for p in ("tiny", "paper")]
    if not torch.cuda.is_available():
        return {"cpu": cpu, "refine": refine, "gpu": "no GPU on this machine"}
    gpu = []
    for dtype in ("bf16", "fp16"):
        for compiled in (False, True):
            try:
                gpu.append(student_throughput("paper", "cuda", (1, 30), dtype=dtype,
                                              channels_last=True, compile_model=compiled,
                                              train_batch=30, repeat=repeat))
            except Exception as exc:  # a row says why it is missing
                gpu.append({"preset": "paper", "dtype": dtype, "compiled": compiled,
                            "error": f"{type(exc).__name__}: {exc}"[:300]})
    refine.append(refine_ratio("paper", "cuda", repeat))
    return {"cpu": cpu, "refine": refine, "gpu": gpu, "gpu_name": torch.cuda.get_device_name(0)}
