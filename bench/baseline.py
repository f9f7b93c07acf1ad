"""The baseline generate-labels must beat: the plain single-process loop a user would write.

Decode each JPEG, run the four project teachers, the project's own post-processing
(`pipelines.postprocess.build_sample`, `distill.shards.encode_sample`) and write one Parquet
file — against `distill run generate-labels` on the same images with the same teachers. Each run
is a fresh process (Ray's start included, as a user pays it), launched from here so that the
whole process tree (driver, Ray's services and workers) can be sampled for memory.

Figures per run, from the moment the process is started: wall seconds, seconds to the first
committed shard (the loop: to its first finished batch), the peak PSS of the process tree and
the peak RSS of the driver (the loop: the one process). A linear fit T = a + b·N over the image
counts gives each side's fixed and per-image cost, and the image count where they cross.

usage: python -m bench.baseline loop|pipeline ROOT OUT RESULT_JSON   (one run; used by
       `bench_baseline`, which `python -m bench.run --only baseline` calls)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["bench_baseline", "plain_loop", "tree_memory"]

BATCH = 8  # the loop's batch: what a user would pick for tiny models on a CPU


def plain_loop(root: Path, out: Path, overrides: list[str]) -> dict[str, float]:
    """Label every image of `root`'s val2017 the way a user would without distill's pipeline;
    returns event times (time.time()) for the first batch and the end."""
    from bench.pipeline import bench_config
    from distill.coco import open_dataset
    from distill.images import decode_image
    from distill.shards import ShardWriter, encode_sample
    from pipelines.postprocess import LabelContext, build_sample
    from teachers.registry import create_teacher

    cfg = bench_config(root, *overrides)
    dataset = open_dataset(root, "val2017")
    teachers = {role: create_teacher(role, t) for role, t in cfg.teachers.roles().items()
                if t.enabled}
    ctx = LabelContext.from_config(cfg.labels)
    events: dict[str, float] = {}
    with ShardWriter(out, {}, cfg.shards.row_group_size) as writer:
        records = dataset.records
        for start in range(0, len(records), BATCH):
            chunk = records[start:start + BATCH]
            blobs = [(dataset.image_dir / r.file_name).read_bytes() for r in chunk]
            images = [decode_image(b) for b in blobs]
            outputs = {role: t.predict(images) for role, t in teachers.items()}
            for i, (record, blob, image) in enumerate(zip(chunk, blobs, images, strict=True)):
                sample = build_sample(record, "val2017", blob, (image.shape[1], image.shape[0]),
                                      {role: res[i] for role, res in outputs.items()}, ctx)
                writer.write_row(encode_sample(sample, cfg.labels.png_compress_level))
            events.setdefault("first_output", time.time())
    events["end"] = time.time()
    return events


def _pipeline(root: Path, out: Path, overrides: list[str]) -> dict[str, float]:
    from bench.pipeline import bench_config
    from pipelines.generate_labels import RunOptions, generate_labels

    generate_labels(bench_config(root, *overrides), RunOptions(out=out, live=False))
    return {"end": time.time()}


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _kib(pid: int, path: str, field: str) -> int:
    try:
        with open(f"/proc/{pid}/{path}") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(root_pid: int) -> tuple[int, int, int]:
    """(PSS of `root_pid` and all its descendants, RSS of `root_pid`, processes), in KiB."""
    tree = _children()
    pids, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(tree.get(pid, []))
    pss = sum(_kib(p, "smaps_rollup", "Pss:") for p in pids)
    return pss, _kib(root_pid, "status", "VmRSS:"), len(pids)


def _measure(kind: str, root: Path, out: Path, work: Path, overrides: list[str]) -> dict[str, Any]:
    """One run in a fresh process, sampled every 0.25 s."""
    result = work / f"{kind}-{out.parent.name if kind == 'loop' else out.name}.json"
    env = {**os.environ, "RAY_TMPDIR": str(work / "ray"),
           "DISTILL_BENCH_OVERRIDES": json.dumps(overrides)}
    (work / "ray").mkdir(parents=True, exist_ok=True)
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "bench.baseline", kind, str(root), str(out),
                             str(result)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    peak_pss = peak_rss = peak_procs = 0
    first_shard: float | None = None
    shards = out / "shards"
    while proc.poll() is None:
        pss, rss, n = tree_memory(proc.pid)
        peak_pss, peak_rss, peak_procs = max(peak_pss, pss), max(peak_rss, rss), max(peak_procs, n)
        if kind == "pipeline" and first_shard is None and shards.is_dir() and any(
                p.suffix == ".parquet" for p in shards.iterdir()):
            first_shard = time.time() - started
        time.sleep(0.25)
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} run failed ({proc.returncode}): {stderr[-1500:]}")
    events = json.loads(result.read_text())
    if kind == "loop":
        first_shard = events["first_output"] - started
    return {"seconds": events["end"] - started, "first_output_seconds": first_shard,
            "peak_pss_mib": peak_pss / 1024, "peak_driver_rss_mib": peak_rss / 1024,
            "processes": peak_procs}


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares T = a + b·N."""
    ns, ts = [p[0] for p in points], [p[1] for p in points]
    mean_n, mean_t = statistics.fmean(ns), statistics.fmean(ts)
    var = sum((n - mean_n) ** 2 for n in ns)
    b = sum((n - mean_n) * (t - mean_t) for n, t in zip(ns, ts, strict=True)) / var if var else 0.0
    return mean_t - b * mean_n, b


def bench_baseline(work: Path, copies: tuple[int, ...] = (8, 32, 128), repeat: int = 3,
                   overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """generate-labels against the plain loop at 7·copies images each, runs interleaved
    (loop, pipeline, loop, …), medians of `repeat`."""
    import shutil

    from bench.pipeline import replicated_demo

    rows: list[dict[str, Any]] = []
    for c in copies:
        root = replicated_demo(work / f"coco-{c}", c)
        n = len(list((root / "val2017").iterdir()))
        runs: dict[str, list[dict[str, Any]]] = {"loop": [], "pipeline": []}
        for r in range(repeat):
            for kind in ("loop", "pipeline"):
                out = work / f"out-{kind}-{c}-{r}"
                shutil.rmtree(out, ignore_errors=True)
                target = out
                if kind == "loop":  # one Parquet file
                    out.mkdir(parents=True)
                    target = out / "labels.parquet"
                runs[kind].append(_measure(kind, root, target, work, list(overrides)))
                shutil.rmtree(out, ignore_errors=True)
        row: dict[str, Any] = {"images": n}
        for kind, rs in runs.items():
            row[kind] = {key: statistics.median(x[key] for x in rs)
                         for key in rs[0] if rs[0][key] is not None}
            row[kind]["runs_seconds"] = [x["seconds"] for x in rs]
        row["ratio"] = row["pipeline"]["seconds"] / row["loop"]["seconds"]
        row["pss_ratio"] = row["pipeline"]["peak_pss_mib"] / row["loop"]["peak_pss_mib"]
        rows.append(row)
    fits = {kind: _fit([(r["images"], r[kind]["seconds"]) for r in rows])
            for kind in ("loop", "pipeline")}
    (a_l, b_l), (a_p, b_p) = fits["loop"], fits["pipeline"]
    crossover = (a_p - a_l) / (b_l - b_p) if b_l > b_p else None
    return {
        "rows": rows,
        "fit": {kind: {"fixed_seconds": a, "seconds_per_image": b}
                for kind, (a, b) in fits.items()},
        "crossover_images": crossover,
        "per_image_ratio": b_p / b_l if b_l else None,
        "start_up_excess_seconds": rows[0]["pipeline"].get("first_output_seconds", 0.0)
        - rows[0]["loop"].get("first_output_seconds", 0.0),
        "note": "each run a fresh process from start (imports, Ray start, models); runs "
                "interleaved loop/pipeline; PSS summed over the process tree every 0.25 s",
    }


def summary_lines(b: Any) -> list[str]:
    if not isinstance(b, dict) or "rows" not in b:
        return [f"Not measured: {b.get('error') if isinstance(b, dict) else b}", ""]
    lines = ["| images | generate-labels s | plain loop s | ratio | first shard / first batch s "
             "| peak PSS MiB generate-labels / loop | driver RSS MiB |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in b["rows"]:
        p, lo = r["pipeline"], r["loop"]
        lines.append(
            f"| {r['images']} | {p['seconds']:.1f} | {lo['seconds']:.1f} | {r['ratio']:.2f} | "
            f"{p.get('first_output_seconds', float('nan')):.1f} / "
            f"{lo.get('first_output_seconds', float('nan')):.1f} | "
            f"{p['peak_pss_mib']:.0f} / {lo['peak_pss_mib']:.0f} | "
            f"{p['peak_driver_rss_mib']:.0f} |")
    fit = b["fit"]
    cross = b["crossover_images"]
    lines += ["", f"Fit: generate-labels ≈ {fit['pipeline']['fixed_seconds']:.1f} s + "
              f"{fit['pipeline']['seconds_per_image']:.3f} s/image; the loop ≈ "
              f"{fit['loop']['fixed_seconds']:.1f} s + {fit['loop']['seconds_per_image']:.3f} "
              f"s/image; per-image ratio {b['per_image_ratio']:.2f}; break-even at "
              + (f"{cross:.0f} images." if cross is not None else "no N (the pipeline is not "
                 "cheaper per image)."), ""]
    return lines


def _main() -> None:
    kind, root, out, result = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    overrides = json.loads(os.environ.get("DISTILL_BENCH_OVERRIDES", "[]"))
    run = plain_loop if kind == "loop" else _pipeline
    result.write_text(json.dumps(run(root, out, overrides)))


if __name__ == "__main__":
    _main()
