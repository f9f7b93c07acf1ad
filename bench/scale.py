"""Planning at scale: synthetic COCO splits of 10k, 100k and 1M images, and what the driver
spends planning them (`python -m bench.run --only scale`).

Each split is the real COCO images of ../shared coco-mini (val2017 and train2017, 165 JPEGs)
listed over and over under new ids 1..N: every image a hard link to its source JPEG (no bytes
copied), its annotations the source's real ones (people with keypoints, boxes and segmentation
polygons; five captions) under the new id, in COCO's two annotation files, the images listed in
a shuffled order as COCO's are not sorted. A split is made once and kept in the cache folder
(`<work>/scale-cache`, so `--work DIR` keeps it between invocations); the repository never
holds one.

Per split, each in a fresh process:
- `plan`: `pipelines.plan.plan_run` of a new run in dry-run mode (read the split, plan it,
  build every shard's job), timed in the process, with its peak RSS;
- `dry run`: `distill run generate-labels --dry-run` end to end (the CLI, the plan, the
  one-image timed sample of the demo preset's tiny teachers), its wall time and peak RSS
  (its VmHWM).

Peak RSS: each process's own VmHWM (a spawned child's `ru_maxrss` would count the bench
driver's RSS at the spawn).

usage: python -m bench.scale ROOT OUT SHARD_SIZE RESULT_JSON   (the timed plan, one process)
       python -m bench.scale --cli PEAK_FILE ARGS...           (`distill ARGS`, its peak RSS)
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bench_scale", "goal_rows", "summary_lines", "synthetic_split"]

SIZES = (10_000, 100_000, 1_000_000)
SPLIT = "train"
SHARD_SIZES = (4, 1000)  # the demo preset's tiny shards (the worst case) and the default
GOAL_RATIO = 10.0  # 1M plan ÷ 100k plan
GOAL_RSS_MIB = 2048
# ../shared beside the repository, as the tests find it (DISTILL_BENCH_COCO_MINI: elsewhere)
COCO_MINI = Path(os.environ.get(
    "DISTILL_BENCH_COCO_MINI",
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco-mini"))
REPO = Path(__file__).resolve().parents[1]


def _sources(mini: Path) -> list[dict[str, Any]]:
    """Every coco-mini image with its real annotations: {path, image, persons, captions}."""
    out = []
    for split in ("val2017", "train2017"):
        kp = json.loads((mini / "annotations" / f"person_keypoints_{split}.json").read_text())
        cap = json.loads((mini / "annotations" / f"captions_{split}.json").read_text())
        persons: dict[int, list[dict[str, Any]]] = {}
        for ann in kp["annotations"]:
            persons.setdefault(ann["image_id"], []).append(ann)
        captions: dict[int, list[dict[str, Any]]] = {}
        for ann in cap["annotations"]:
            captions.setdefault(ann["image_id"], []).append(ann)
        for img in kp["images"]:
            path = mini / "images" / split / img["file_name"]
            if path.is_file():
                out.append({"path": path, "image": img, "persons": persons.get(img["id"], []),
                            "captions": captions.get(img["id"], [])})
    out.sort(key=lambda s: str(s["path"]))
    return out


def _write_list(f: Any, key: str, entries: Iterator[dict[str, Any]]) -> None:
    f.write(f'"{key}":[')
    first = True
    for entry in entries:
        f.write(("" if first else ",") + json.dumps(entry, separators=(",", ":")))
        first = False
    f.write("]")


def synthetic_split(cache: Path, n: int, mini: Path = COCO_MINI) -> Path:
    """A COCO folder of `n` images (split `train`) in `cache`, made once: hard links to the
    coco-mini JPEGs and their real annotations under ids 1..n, listed in a shuffled order."""
    root = cache / f"coco-{n}"
    done = root / "complete.json"
    if done.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    sources = _sources(mini)
    if not sources:
        raise FileNotFoundError(f"no COCO images in {mini}")
    (root / SPLIT).mkdir(parents=True)
    (root / "annotations").mkdir()
    order = np.random.default_rng(0).permutation(n) + 1  # ids 1..n, listed shuffled
    for image_id in range(1, n + 1):
        src = sources[image_id % len(sources)]
        os.link(src["path"], root / SPLIT / f"{image_id:012d}.jpg")

    def image(image_id: int) -> dict[str, Any]:
        img = dict(sources[image_id % len(sources)]["image"])
        img.update(id=image_id, file_name=f"{image_id:012d}.jpg")
        return img

    def annotations(kind: str) -> Iterator[dict[str, Any]]:
        ann_id = 0
        for image_id in order.tolist():
            for ann in sources[image_id % len(sources)][kind]:
                ann_id += 1
                yield {**ann, "image_id": image_id, "id": ann_id}

    for name, kind in (("person_keypoints", "persons"), ("captions", "captions")):
        with open(root / "annotations" / f"{name}_{SPLIT}.json", "w") as f:
            f.write('{"info":{"description":"synthetic COCO split (distill bench)"},'
                    '"licenses":[],')
            _write_list(f, "images", (image(i) for i in order.tolist()))
            f.write(",")
            _write_list(f, "annotations", annotations(kind))
            if kind == "persons":
                f.write(',"categories":[{"id":1,"name":"person","supercategory":"person"}]')
            f.write("}")
    sizes = {p.name: p.stat().st_size for p in (root / "annotations").iterdir()}
    done.write_text(json.dumps({"images": n, "annotation_bytes": sizes}))
    return root


def _peak_mib() -> float:
    """This process's peak RSS since it started (VmHWM). Not `ru_maxrss`: on Linux a spawned
    child's counts its parent's RSS at the spawn (the bench driver's ~0.5 GB, a floor under
    every figure)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed_child(cmd: list[str], env: dict[str, str], peak_file: Path) -> tuple[float, float, str]:
    """Run `cmd` (which writes its own peak RSS to `peak_file`); (wall seconds, that peak in
    MiB, its output)."""
    peak_file.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    proc.wait()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} … exited {proc.returncode}: {out[-1500:]}")
    return seconds, float(peak_file.read_text()), out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def bench_scale(work: Path, sizes: tuple[int, ...] = SIZES,
                shard_sizes: tuple[int, ...] = SHARD_SIZES) -> dict[str, Any]:
    if not (COCO_MINI / "annotations").is_dir():
        return {"error": f"needs the real COCO images of {COCO_MINI} (../shared absent)"}
    cache = work / "scale-cache"
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in sizes:
        free = shutil.disk_usage(cache).free
        t0 = time.perf_counter()
        root = synthetic_split(cache, n)
        made = time.perf_counter() - t0
        info = json.loads((root / "complete.json").read_text())
        row: dict[str, Any] = {"images": n, "annotation_bytes": sum(info["annotation_bytes"]
                                                                    .values()),
                               "made_seconds": round(made, 1), "disk_free_gb": free / 1e9,
                               "plan": {}}
        for shard_size in shard_sizes:
            result = work / f"scale-plan-{n}-{shard_size}.json"
            wall, rss, _ = _timed_child(
                [sys.executable, "-m", "bench.scale", str(root), str(work / f"scale-out-{n}"),
                 str(shard_size), str(result)], _env(), work / "scale-peak")
            got = json.loads(result.read_text())
            row["plan"][str(shard_size)] = {**got, "process_seconds": wall, "peak_rss_mib": rss}
            print(f"  {n:,} images, shards of {shard_size}: plan {got['plan_seconds']:.1f} s "
                  f"(reading {got['read_seconds']:.1f} s), peak RSS {rss:.0f} MiB", flush=True)
        wall, rss, _ = _timed_child(
            [sys.executable, "-m", "bench.scale", "--cli", str(work / "scale-peak"), "run",
             "generate-labels", "--preset", "demo", "--set", f"data.root={root}", "--set",
             f"data.split={SPLIT}", "--shard-size", "1000", "--out", str(work / f"scale-dry-{n}"),
             "--dry-run", "--sample", "1"], _env(), work / "scale-peak")
        row["dry_run"] = {"seconds": wall, "peak_rss_mib": rss, "shard_size": 1000}
        print(f"  {n:,} images: --dry-run {wall:.1f} s, peak RSS {rss:.0f} MiB", flush=True)
        rows.append(row)
    return {"rows": rows, "split": SPLIT, "source": "../shared coco-mini (165 real COCO JPEGs)"}


def summary_lines(sc: Any) -> list[str]:
    lines = ["", "## Planning at scale (`--only scale`)"]
    if sc is None:
        return [*lines, "", "(not run)"]
    if "error" in sc:
        return [*lines, "", f"failed: {sc['error']}"]
    shard_sizes = list(sc["rows"][0]["plan"])
    lines += ["", f"Synthetic COCO splits: the images of {sc['source']} "
              "hard-linked under ids 1..N, each with its source's real annotations (people, "
              "keypoints, segmentation polygons, five captions), listed shuffled. Each figure "
              "is one fresh process (bench/scale.py). *plan*: `plan_run` of a new run, dry "
              "(read the annotations, check every image file, plan, build every shard's job); "
              "*--dry-run*: `distill run generate-labels --dry-run --sample 1` end to end (the "
              "demo preset's tiny teachers timed on one image), shards of 1000. RSS: the "
              "process's peak.", "",
              "| images | annotation JSON MB | " + " | ".join(
                  f"plan s (shards of {s}) | of it reading s | peak RSS MiB" for s in shard_sizes)
              + " | --dry-run s | --dry-run peak RSS MiB |",
              "|---:|---:|" + "---:|---:|---:|" * len(shard_sizes) + "---:|---:|"]
    for r in sc["rows"]:  # a figure a row lacks (not measured) reads "–"
        cells = [f"{r['images']:,}", f"{r['annotation_bytes'] / 1e6:,.0f}"]
        for s in shard_sizes:
            p = r["plan"].get(s)
            cells += [f"{p['plan_seconds']:.1f}", f"{p['read_seconds']:.1f}",
                      f"{p['peak_rss_mib']:,.0f}"] if p else ["–"] * 3
        dry = r.get("dry_run")
        cells += [f"{dry['seconds']:.1f}", f"{dry['peak_rss_mib']:,.0f}"] if dry else ["–"] * 2
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Goals: planning 1M images in ≤ {GOAL_RATIO:.0f}× the time of 100k, with the "
              f"driver's peak RSS ≤ {GOAL_RSS_MIB:,} MiB (the goal table above)."]
    if sc.get("note"):
        lines += ["", sc["note"]]
    ratios = plan_ratios(sc)
    if ratios:
        lines += ["", "Plan time, 1M ÷ 100k images: " + ", ".join(
            f"{v:.1f}× with shards of {k}" for k, v in ratios.items()) + "."]
    return lines


def goal_rows(sc: Any) -> list[tuple[str, str, str, str]]:
    """The scale goals' rows of RESULTS.md's goal table: (goal, target, measured, verdict)."""
    if not isinstance(sc, dict) or not sc.get("rows"):
        return []
    ratios = plan_ratios(sc)
    by = {r["images"]: r for r in sc["rows"]}
    top = by[max(by)]
    # planning's own peak; the --dry-run's also holds the demo teachers it times (~1 GB)
    rss = max(p["peak_rss_mib"] for p in top["plan"].values())
    where = f"{max(by):,} images" + ("" if max(by) >= 1_000_000 else
                                     " (the largest split measured; 1M was not)")
    if top.get("dry_run"):
        where += f"; the --dry-run, teachers loaded: {top['dry_run']['peak_rss_mib']:,.0f} MiB"
    return [
        ("planning 1M images ÷ planning 100k (near-linear)", f"≤ {GOAL_RATIO:.0f}×",
         ", ".join(f"{v:.1f}× (shards of {k})" for k, v in ratios.items()) or
         "not measured: no 1M split in this run",
         ("met" if max(ratios.values()) <= GOAL_RATIO else "NOT met") if ratios else "–"),
        ("peak RSS of the driver planning 1M images", f"≤ {GOAL_RSS_MIB:,} MiB",
         f"{rss:,.0f} MiB at {where}",
         ("met" if rss <= GOAL_RSS_MIB else "NOT met") if max(by) >= 1_000_000 else
         ("NOT met" if rss > GOAL_RSS_MIB else "–")),
    ]


def plan_ratios(sc: dict[str, Any]) -> dict[str, float]:
    by = {r["images"]: r for r in sc.get("rows", [])}
    if 100_000 not in by or 1_000_000 not in by:
        return {}
    return {s: by[1_000_000]["plan"][s]["plan_seconds"] / by[100_000]["plan"][s]["plan_seconds"]
            for s in by[100_000]["plan"] if s in by[1_000_000]["plan"]}


def _plan_once(root: str, out: str, shard_size: int, result: str) -> None:
    """One timed dry plan of a new run (this process does nothing else)."""
    import logging

    from distill import coco
    from distill.config import load_config
    from pipelines.plan import RunOptions, plan_run

    logging.basicConfig(level=logging.WARNING)
    config = load_config("demo", overrides=[f"data.root={root}", f"data.split={SPLIT}",
                                            f"shards.shard_size={shard_size}"])
    reading = 0.0
    open_dataset = coco.open_dataset

    def timed_open(*args: Any, **kwargs: Any) -> Any:
        nonlocal reading
        t0 = time.perf_counter()
        try:
            return open_dataset(*args, **kwargs)
        finally:
            reading += time.perf_counter() - t0

    import pipelines.plan as plan_module

    plan_module.open_dataset = timed_open
    t0 = time.perf_counter()
    plan = plan_run(config, RunOptions(out=out, dry_run=True, live=False))
    seconds = time.perf_counter() - t0
    Path(result).write_text(json.dumps({
        "plan_seconds": seconds, "read_seconds": reading, "shards": len(plan.manifest.shards),
        "images_to_process": plan.images_to_process}))
    Path(result).with_name("scale-peak").write_text(str(_peak_mib()))


def _cli(peak_file: str, args: list[str]) -> None:
    """`distill ARGS` in this process, its peak RSS written to `peak_file` at exit."""
    import atexit
    import runpy

    atexit.register(lambda: Path(peak_file).write_text(str(_peak_mib())))
    sys.argv = ["distill", *args]
    runpy.run_module("distill.cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    if sys.argv[1] == "--cli":
        _cli(sys.argv[2], sys.argv[3:])
    else:
        _plan_once(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
