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

from bench.commit import bench_single_writer
from bench.summary import summary_markdown
from bench.teacher_rates import bench_teachers
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


SECTIONS = ("baseline", "postprocess", "pipeline", "loader", "student", "export", "teachers",
            "scaling", "single_writer", "manifest", "driver_memory", "viewer", "viewer_scale",
            "profile", "scale", "sasd")


def run_sections(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from bench.baseline import bench_baseline
    from bench.export import bench_export
    from bench.manifest import bench_manifest
    from bench.pipeline import bench_driver_memory, bench_pipeline, bench_scaling
    from bench.student import bench_student
    from bench.viewer_scale import bench_viewer_scale

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
        "viewer_scale": lambda: bench_viewer_scale(work),
        "scale": lambda: _bench_scale(work, args),
        "profile": lambda: bench_profile(args.repeat),
        "sasd": lambda: _bench_sasd(work),
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


def _bench_scale(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from bench.scale import bench_scale

    return bench_scale(work, args.scale_sizes)


def _bench_sasd(work: Path) -> dict[str, Any]:
    from bench.sasd import bench_sasd
    from bench.scale import COCO_MINI as root  # (DISTILL_BENCH_COCO_MINI: elsewhere)

    if not (root / "annotations").is_dir():
        return {"error": f"needs the real images of {root}"}
    return bench_sasd(work, root)


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
    parser.add_argument("--scale-sizes", type=lambda v: tuple(int(x) for x in v.split(",")),
                        default=(10_000, 100_000, 1_000_000),
                        help="images of the synthetic splits of the scale section")
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
