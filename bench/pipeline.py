"""Pipeline benchmarks: generate-labels end to end against its teachers' bare forward time, the
bytes it writes, and a 2-node vs 1-node local Ray cluster on the same images.

The data is the bundled demo set (scikit-image photos) with every photo listed `copies` times
under its own id, so fixed per-run costs amortise over as many images as a real shard's worth.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from distill.config import Config, load_config

__all__ = ["bench_config", "bench_driver_memory", "bench_pipeline", "bench_scaling",
           "replicated_demo"]

# The demo preset with every teacher tiny (CRAFT too): the figure is the pipeline's overhead.
TINY_TEXT = ["teachers.text.variant=tiny", "teachers.text.checkpoint=''"]


def replicated_demo(root: Path, copies: int) -> Path:
    """A COCO-layout copy of the demo set with each image listed `copies` times (ids
    1000·k + i), captions and people included. The photos (PNGs in scikit-image) are stored
    as JPEG at quality 90, as COCO stores its images, so decode costs are COCO's."""
    from PIL import Image

    from distill.demo import make_demo_dataset

    if (root / "annotations" / "captions_val2017.json").is_file():
        return root
    src = root.with_name(root.name + "-src")
    make_demo_dataset(src)
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for name in ("person_keypoints_val2017.json", "captions_val2017.json"):
        doc = json.loads((src / "annotations" / name).read_text())
        images, anns = [], []
        for k in range(copies):
            for img in doc["images"]:
                new_id = 1000 * (k + 1) + img["id"]
                file_name = f"{new_id:012d}.jpg"
                dst = root / "val2017" / file_name
                if not dst.exists():
                    with Image.open(src / "val2017" / img["file_name"]) as photo:
                        photo.convert("RGB").save(dst, format="JPEG", quality=90)
                images.append({**img, "id": new_id, "file_name": file_name})
            for ann in doc["annotations"]:
                anns.append({**ann, "id": len(anns) + 1,
                             "image_id": 1000 * (k + 1) + ann["image_id"]})
        (root / "annotations" / name).write_text(json.dumps({**doc, "images": images,
                                                             "annotations": anns}))
    return root


def bench_config(root: Path, *overrides: str) -> Config:
    return load_config("demo", overrides=[f"data.root={root}", *TINY_TEXT, *overrides])


def _bare_forward_seconds(cfg: Config, root: Path, repeat: int) -> dict[str, float]:
    """Median seconds for each enabled teacher's `predict` over every image, in this process,
    in batches of its configured size (a warm-up pass first)."""
    from distill.images import decode_image
    from teachers.registry import create_teacher

    files = sorted((root / "val2017").iterdir())
    images = [decode_image(f.read_bytes()) for f in files]
    out: dict[str, float] = {}
    for role, tcfg in cfg.teachers.roles().items():
        if not tcfg.enabled:
            continue
        teacher = create_teacher(role, tcfg)
        batch = max(1, tcfg.batch_size)

        def run(t: Any = teacher, b: int = batch) -> None:
            for k in range(0, len(images), b):
                t.predict(images[k:k + b])

        run()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        out[role] = statistics.median(times)
    return out


def _timed_run(cfg: Config, out: Path) -> tuple[float, dict[str, Any]]:
    from pipelines.generate_labels import RunOptions, generate_labels

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = generate_labels(cfg, RunOptions(out=out, live=False))
    return time.perf_counter() - t0, result.summary


def bench_pipeline(work: Path, copies: int, repeat: int) -> dict[str, Any]:
    """generate-labels end to end (Ray already up) ÷ Σ bare teacher forward on the same images;
    and the steady-state form: (T(4N) − T(N)) ÷ (3 · bare(N)), in which fixed costs (planning,
    starting the actor pools: a process each, importing torch and transformers, building the
    model) cancel, as they do over a real split."""
    import ray

    from distill.runfolder import resolve_shards
    from distill.shards import column_bytes
    from pipelines.cluster import start_local_ray

    root = replicated_demo(work / "coco", copies)
    many = replicated_demo(work / "coco4x", 4 * copies)
    cfg = bench_config(root)
    n = len(list((root / "val2017").iterdir()))
    t0 = time.perf_counter()
    start_local_ray(num_cpus=2, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    runs, runs_4x, stages = [], [], {}
    try:
        for r in range(repeat):
            seconds, summary = _timed_run(cfg, work / f"run{r}")
            runs.append(seconds)
            stages = summary["stages"]
        for r in range(max(1, repeat - 1)):
            runs_4x.append(_timed_run(bench_config(many), work / f"run4x{r}")[0])
    finally:
        ray.shutdown()
    bare = _bare_forward_seconds(cfg, root, repeat)
    bare_total = sum(bare.values())
    end_to_end = statistics.median(runs)
    marginal = (statistics.median(runs_4x) - end_to_end) / 3  # seconds per N more images
    per_column, rows = column_bytes(resolve_shards(work / "run0"))
    return {
        "images": n,
        "teachers": {role: t.backend for role, t in cfg.teachers.roles().items() if t.enabled},
        "ray_start_seconds": ray_start,
        "end_to_end_seconds": end_to_end,
        "end_to_end_runs": runs,
        "four_times_images_runs": runs_4x,
        "marginal_seconds": marginal,
        "bare_forward_seconds": bare,
        "bare_forward_total": bare_total,
        "overhead_ratio": end_to_end / bare_total,
        "steady_state_ratio": marginal / bare_total,
        "fixed_seconds": end_to_end - marginal,
        "images_per_second": n / end_to_end,
        "steady_state_images_per_second": n / marginal if marginal > 0 else None,
        "stages": stages,
        "bytes_per_sample": {k: v / max(rows, 1) for k, v in sorted(
            per_column.items(), key=lambda kv: -kv[1])},
        "note": "Ray started once before the timed runs (its start is reported apart); each "
                "run plans, starts its actor pools, labels and commits every shard",
    }


def bench_scaling(work: Path, copies: int) -> dict[str, Any]:
    """The same images on a 1-node and a 2-node local Ray cluster (1 CPU per node), each run in
    its own process; efficiency = T(1 node) / (2 · T(2 nodes))."""
    root = replicated_demo(work / "coco", copies)
    times: dict[str, float] = {}
    for nodes in (1, 2):
        result = work / f"scaling-{nodes}.json"
        cmd = [sys.executable, "-m", "bench.scaling_run", str(root), str(work / f"scale{nodes}"),
               str(nodes), str(result)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            return {"error": f"{nodes}-node run failed: {proc.stderr[-2000:]}"}
        times[f"{nodes}_node"] = json.loads(result.read_text())["seconds"]
    return {
        "images": len(list((root / "val2017").iterdir())),
        "seconds": times,
        "speedup": times["1_node"] / times["2_node"],
        "efficiency": times["1_node"] / (2 * times["2_node"]),
        "note": "local ray.cluster_utils.Cluster: a head that only drives plus 1 or 2 worker "
                "nodes of 1 CPU each, on this 2-core machine",
    }


# ---------------------------------------------------------------------------------------------
# The driver's memory over a long run

DEPTH_ONLY = ["teachers.panoptic.enabled=false", "teachers.text.enabled=false",
              "teachers.caption.enabled=false"]


def _status_mib(pid: int) -> dict[str, float]:
    """VmRSS and its parts (private anonymous, shared memory: the object store pages it
    mapped) of one process, MiB."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssShmem"):
                out[key] = int(value.split()[0]) / 1024
    if "VmRSS" not in out:
        raise OSError(f"process {pid} is exiting")  # a zombie has no memory lines
    return out


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (a local Ray: gcs_server, raylet, its workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _pss_mib(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            continue  # a worker that just exited
    return total / 1024


def _written(out: Path) -> int:
    try:
        doc = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return 0
    return sum(len(e["image_ids"]) for e in doc.get("shards", []) if e.get("sha256"))


def _slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares MiB per 1,000 images."""
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return 1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx \
        if sxx else None


def bench_driver_memory(work: Path, copies: int = 512, shard_size: int = 8,
                        interval: float = 1.0) -> dict[str, Any]:
    """`distill run generate-labels` as its own process on 7·`copies` images (only the tiny
    depth teacher: the cheapest honest setup, the driver's side is the same whatever the
    teachers), its driver's RSS sampled every `interval` s against the images committed so
    far, and the peak PSS of its whole process tree (driver, gcs, raylet, Ray's workers)."""
    root = replicated_demo(work / "coco-memory", copies)
    out = work / "run-memory"
    shutil.rmtree(out, ignore_errors=True)
    sets = [f"data.root={root}", *TINY_TEXT, *DEPTH_ONLY, f"shards.shard_size={shard_size}"]
    cmd = [sys.executable, "-m", "distill.cli", "run", "generate-labels", "--preset", "demo",
           "--out", str(out), "--no-live", *[a for s in sets for a in ("--set", s)]]
    samples: list[dict[str, float]] = []
    t0 = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as proc:
        while proc.poll() is None:
            try:
                row = {"t": time.perf_counter() - t0, "written": _written(out),
                       **_status_mib(proc.pid), "tree_pss": _pss_mib(_tree(proc.pid))}
            except OSError:
                break  # the driver is exiting
            samples.append(row)
            time.sleep(interval)
        err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        return {"error": f"generate-labels failed ({proc.returncode}): {err[-2000:]}"}
    n = 7 * copies
    warm = [s for s in samples if s["written"] >= n // 8]  # after the first eighth
    checkpoints = {}
    for k in (n // 8, n // 2, n):
        near = [s for s in samples if s["written"] <= k]
        if near:
            checkpoints[str(k)] = round(max(s["VmRSS"] for s in near), 1)
    return {
        "images": n,
        "shard_size": shard_size,
        "teachers": ["depth (tiny)"],
        "seconds": round(time.perf_counter() - t0, 1),
        "samples": len(samples),
        "driver_rss_peak_mib": max(s["VmRSS"] for s in samples),
        "driver_rss_peak_by_images": checkpoints,  # peak RSS until that many were committed
        "driver_rss_slope_mib_per_1000": _slope([(int(s["written"]), s["VmRSS"]) for s in warm]),
        "driver_rss_slope_second_half_mib_per_1000": _slope(
            [(int(s["written"]), s["VmRSS"]) for s in samples if s["written"] >= n // 2]),
        # the curve: the driver's RSS when each further eighth of the images was committed
        "driver_rss_curve_mib": {str(k): round(max(s["VmRSS"] for s in samples
                                                   if s["written"] <= k), 1)
                                 for k in range(n // 8, n + 1, n // 8)},
        "driver_anon_slope_mib_per_1000": _slope(
            [(int(s["written"]), s["RssAnon"]) for s in warm]),
        "driver_shmem_slope_mib_per_1000": _slope(
            [(int(s["written"]), s["RssShmem"]) for s in warm]),
        "driver_anon_peak_mib": max(s["RssAnon"] for s in samples),
        "driver_shmem_peak_mib": max(s["RssShmem"] for s in samples),
        "tree_pss_peak_mib": max(s["tree_pss"] for s in samples),
        "note": "one run; RSS sampled every second against the images committed so far; slopes "
                "fitted after the first eighth of the images (warm-up); the tree is the driver "
                "and its descendants (the local Ray it starts)",
    }
