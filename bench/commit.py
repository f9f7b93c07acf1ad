"""Single writer: how fast one driver commits label shards.

generate-labels commits every shard from one process, the driver (`pipelines.commit.Committer`):
the rows arrive already encoded (PNG bytes made on the CPU workers), and the driver writes them
into a Parquet file through `distill.storage.atomic_output` (temp name, then rename on a disk;
temp object, completed upload, server-side move on S3), replaces the shard's quarantine rows and
writes its commit record beside the manifest. This section does exactly that work, without Ray,
for a few shards of realistic rows, to a local folder and to an S3 test server side by side, and asks at what
cluster size that one writer, not the GPUs, would set the pace.

Rows: the 7 demo photos (scikit-image) cropped and resized to 640×480 and stored as JPEG
(quality 90, as COCO stores its images), with label maps of that size encoded by the project's
own encoders (`distill.shards.encode_sample`): a smooth inverse-depth map (a ground-plane ramp
plus the photo's blurred luminance, made at half resolution and upsampled as a DPT head's
output is), its Sobel normals, a Felzenszwalb segmentation as the panoptic map, its group mask
and a text mask. They are cycled under distinct image ids.

The S3 server is moto's `ThreadedMotoServer` on 127.0.0.1 in its own process: pure Python, one
GIL, on the same cores as the writer, keeping every object in memory. Its figure is a lower bound
on what the same client gets from a real object store; it is not a real-S3 figure.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bench_single_writer", "encoded_rows", "summary_lines"]

H, W = 480, 640
GOAL_IMAGES_PER_SECOND = 500  # the labelling goal of a 16-GPU cluster
GOAL_GPUS = 16
TRAIN2017 = 118_287
MB = 1e6

_CAPTIONS = ["A photo taken for the single-writer benchmark.", "A second caption of the photo."]


def _photos() -> list[tuple[str, np.ndarray]]:
    from skimage import data as skdata

    return [("astronaut", skdata.astronaut()), ("coffee", skdata.coffee()),
            ("chelsea", skdata.chelsea()), ("motorcycle", skdata.stereo_motorcycle()[0]),
            ("rocket", skdata.rocket()), ("text", skdata.text()), ("page", skdata.page())]


# Each row is a 640×480 window of its photo on a 704×528 canvas, at its own offset (and every
# other one mirrored), so that no two rows of a row group share bytes: Parquet's dictionary
# encoding and zstd would otherwise squeeze repeated PNGs to nothing, which real rows never are.
CANVAS_W, CANVAS_H = W + 64, H + 48


def _fit(array: np.ndarray) -> np.ndarray:
    """Scale to cover the canvas, then centre-crop: an RGB uint8 (CANVAS_H, CANVAS_W, 3)."""
    from PIL import Image

    im = Image.fromarray(array).convert("RGB")
    s = max(CANVAS_W / im.width, CANVAS_H / im.height)
    im = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.LANCZOS)
    left, top = (im.width - CANVAS_W) // 2, (im.height - CANVAS_H) // 2
    return np.asarray(im.crop((left, top, left + CANVAS_W, top + CANVAS_H)))


def _scene(name: str, photo: np.ndarray) -> dict[str, Any]:
    """A photo on the canvas and its label maps before encoding: inverse depth (a ground-plane
    ramp plus blurred luminance, made at half resolution and upsampled bilinearly as a DPT
    head's output is), a Felzenszwalb segmentation as COCO-panoptic ids, a text mask."""
    from PIL import Image
    from scipy import ndimage
    from skimage.segmentation import felzenszwalb

    from distill.labels.groups import GroupTable
    from distill.labels.text import rasterize_polygons

    rgb = _fit(photo)
    lum = rgb.astype(np.float32).mean(-1) / 255
    half = np.asarray(Image.fromarray(lum).resize((CANVAS_W // 2, CANVAS_H // 2),
                                                  Image.Resampling.BILINEAR))
    ys = np.mgrid[0:CANVAS_H // 2, 0:CANVAS_W // 2][0].astype(np.float32) * 2
    inv = 1 / (1.5 + 8 * (1 - ys / CANVAS_H)) + 0.0125 * ndimage.gaussian_filter(half, 4)
    depth = np.asarray(Image.fromarray(inv.astype(np.float32)).resize(
        (CANVAS_W, CANVAS_H), Image.Resampling.BILINEAR))
    ids = np.array([c.id for c in GroupTable.load().categories], np.uint8)
    panoptic = ids[felzenszwalb(rgb, scale=300, sigma=0.8, min_size=400) % len(ids)]
    polygons = [np.array([[130, 70], [290, 70], [290, 100], [130, 100]], np.float32),
                np.array([[430, 320], [550, 325], [548, 350], [430, 346]], np.float32)]
    text = rasterize_polygons(polygons, CANVAS_H, CANVAS_W)
    if name in ("text", "page"):  # the dark letters themselves
        text = text | (ndimage.gaussian_filter(lum, 1) < 0.25)
    return {"name": name, "rgb": rgb, "depth": depth, "panoptic": panoptic, "text": text,
            "polygons": polygons}


def _sample(image_id: int, scene: dict[str, Any], dx: int, dy: int, flip: bool) -> Any:
    """The 640×480 window at (dx, dy) of a scene (mirrored when `flip`) as a full `Sample`."""
    from PIL import Image

    from distill.labels.depth import encode_depth16
    from distill.labels.groups import GroupTable, encode_group_mask
    from distill.labels.normals import encode_normals8, sobel_normals
    from distill.labels.tokens import tokenize
    from distill.shards import Sample, Segment, TextRegion

    def window(a: np.ndarray) -> np.ndarray:
        a = a[dy:dy + H, dx:dx + W]
        return np.ascontiguousarray(a[:, ::-1] if flip else a)

    rgb, depth, panoptic, text = (window(scene[k]) for k in ("rgb", "depth", "panoptic",
                                                             "text"))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    d16, lo, hi = encode_depth16(depth)
    table = GroupTable.load()
    cats, areas = np.unique(panoptic, return_counts=True)
    thing = set(table.thing_ids())
    regions = []
    for poly in scene["polygons"]:
        pts = poly - np.array([dx, dy], np.float32)
        if flip:
            pts[:, 0] = W - 1 - pts[:, 0]
        regions.append(TextRegion(pts, 0.8))
    caption = f"A {scene['name']} photographed for the benchmark."
    return Sample(
        image_id=image_id, file_name=f"{image_id:012d}.jpg", split="train2017", width=W,
        height=H, image=buf.getvalue(), depth16=d16, depth_min=lo, depth_max=hi,
        normals=encode_normals8(sobel_normals(depth)), panoptic=panoptic,
        segments=[Segment(int(c), 0.9, int(c) in thing, int(a))
                  for c, a in zip(cats, areas, strict=True)],
        groups=encode_group_mask(table, panoptic, text), text_mask=text, text_regions=regions,
        teacher_captions=[caption], coco_captions=list(_CAPTIONS), tokens=tokenize(caption))


def encoded_rows(distinct: int = 64) -> list[dict[str, Any]]:
    """`distinct` pre-encoded shard rows (what CPU workers hand the driver): windows of the
    7 demo photos in turn, each at its own offset."""
    from distill.shards import encode_sample

    scenes = [_scene(name, photo) for name, photo in _photos()]
    rng = np.random.default_rng(0)
    rows = []
    for j in range(distinct):
        dx, dy = int(rng.integers(0, CANVAS_W - W + 1)), int(rng.integers(0, CANVAS_H - H + 1))
        sample = _sample(j + 1, scenes[j % len(scenes)], dx, dy, flip=(j // len(scenes)) % 2 == 1)
        rows.append(encode_sample(sample, 1))
    return rows


def _row_bytes(row: dict[str, Any]) -> int:
    return sum(len(v) for v in row.values() if isinstance(v, bytes))


def commit_shards(root: str, manifest: Any, shards: list[tuple[Any, list[dict[str, Any]]]],
                  row_group_size: int) -> dict[str, float]:
    """`Committer.commit` for a label job with no failures, shard after shard: the Parquet
    file (temp → final), the quarantine step (a read; no rewrite when the shard failed nothing),
    the commit record. Seconds per step and the committed bytes."""
    from distill.manifest import record_commit, write_manifest
    from distill.quarantine import replace_failures
    from distill.runfolder import LabelRun
    from distill.shards import ShardWriter, make_metadata

    run = LabelRun(root)
    write_manifest(run.manifest, manifest)  # the plan, once, as planning writes it
    out = {"shard_seconds": 0.0, "quarantine_seconds": 0.0, "manifest_seconds": 0.0,
           "bytes": 0, "rows": 0}
    for entry, shard_rows in shards:
        t0 = time.perf_counter()
        rows = sorted(shard_rows, key=lambda r: r["image_id"])
        meta = make_metadata(manifest.fingerprint, {"bench": {"teacher": "none"}}, extra={
            "shard": entry.name, "split": manifest.split, "planned_images": entry.image_ids,
            "teachers": ["depth", "panoptic", "text", "caption"], "oom_batch_halvings": {},
        })
        with ShardWriter(run.shard(entry.name), meta, row_group_size) as writer:
            for row in rows:
                writer.write_row(row)
        t1 = time.perf_counter()
        replace_failures(run.quarantine, [entry.name], entry.image_ids, [])
        t2 = time.perf_counter()
        entry.rows, entry.sha256, entry.size = len(rows), writer.sha256, writer.size
        entry.teachers = {r: "done" for r in ("depth", "panoptic", "text", "caption")}
        record_commit(run.manifest, manifest, entry)
        t3 = time.perf_counter()
        out["shard_seconds"] += t1 - t0
        out["quarantine_seconds"] += t2 - t1
        out["manifest_seconds"] += t3 - t2
        out["bytes"] += writer.size
        out["rows"] += len(rows)
    out["seconds"] = out["shard_seconds"] + out["quarantine_seconds"] + out["manifest_seconds"]
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_SERVER = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
print("ready", flush=True)
sys.stdin.read()
server.stop()
"""

_S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 in a child process; the standard AWS variables point this
    process at it for the duration of the block (restored after). Yields the endpoint."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**_S3_ENV, "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("moto's server did not start (is moto[server] installed?)")
        os.environ.update(env)
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _delete_prefix(client: Any, bucket: str, prefix: str) -> None:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def _rate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = statistics.median(r["seconds"] for r in runs)
    rows, size, n = runs[0]["rows"], runs[0]["bytes"], len(runs[0]["shard_names"])
    per_shard = {k.removesuffix("_seconds"): statistics.median(r[k] for r in runs) / n
                 for k in ("shard_seconds", "quarantine_seconds", "manifest_seconds")}
    # The config's default shard size (1000 images): the Parquet step scales with rows, the
    # quarantine and manifest rewrites are per shard. An extrapolation, not a measurement.
    per_row = per_shard["shard"] / (rows / n)
    at_1000 = 1000 / (1000 * per_row + per_shard["quarantine"] + per_shard["manifest"])
    return {
        "seconds": seconds,
        "runs_seconds": [round(r["seconds"], 3) for r in runs],
        "rows_per_second": rows / seconds,
        "mb_per_second": size / MB / seconds,
        "images_per_second": rows / seconds,  # one row per image
        "gpus_at_bottleneck": rows / seconds / (GOAL_IMAGES_PER_SECOND / GOAL_GPUS),
        "meets_goal": rows / seconds >= GOAL_IMAGES_PER_SECOND,
        "seconds_per_shard": per_shard,
        "extrapolated_rows_per_second_at_shard_size_1000": at_1000,
    }


def bench_single_writer(work: Path, shards: int = 2, rows_per_shard: int = 256,
                        repeat: int = 3, row_group_size: int = 64) -> dict[str, Any]:
    """Commit `shards` × `rows_per_shard` pre-encoded rows, `repeat` times to a local folder
    and to moto's S3 server, alternating (a 1-shard warm-up on each first). The manifest is a
    train2017-sized plan (every shard entry and image id), as a real run rewrites per commit."""
    import boto3

    from distill.manifest import Manifest, make_plan
    from distill.runfolder import LabelRun

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    templates = encoded_rows(row_group_size)
    build_seconds = time.perf_counter() - t0
    plan = make_plan(list(range(1, TRAIN2017 + 1)), "train2017", rows_per_shard)
    base = Manifest(split="train2017", fingerprint="bench-single-writer", config={},
                    shard_size=rows_per_shard, shards=plan)

    def job(n: int) -> tuple[Any, list[tuple[Any, list[dict[str, Any]]]]]:
        manifest = copy.deepcopy(base)
        out = []
        for entry in manifest.shards[:n]:
            rows = [{**templates[i % len(templates)], "image_id": image_id,
                     "file_name": f"{image_id:012d}.jpg"}
                    for i, image_id in enumerate(entry.image_ids)]
            out.append((entry, rows))
        return manifest, out

    runs: dict[str, list[dict[str, Any]]] = {"local": [], "s3": []}
    manifest_bytes = record_bytes = 0
    local_root = work / "single-writer"
    probe = work / "probe.parquet"
    bare: list[tuple[float, int]] = []
    with moto_server() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint)
        bucket = "distill-bench"
        client.create_bucket(Bucket=bucket)
        for k in range(repeat + 1):  # k = 0: warm-up, one shard
            n = 1 if k == 0 else shards
            for target in ("local", "s3"):
                manifest, jobs = job(n)
                root = str(local_root / f"r{k}") if target == "local" else \
                    f"s3://{bucket}/r{k}"
                result = commit_shards(root, manifest, jobs, row_group_size)
                result["shard_names"] = [e.name for e, _ in jobs]
                if target == "local":
                    run = LabelRun(local_root / f"r{k}")
                    manifest_bytes = run.manifest.size()
                    record_bytes = run.commit_record(jobs[0][0].name).size()
                    shard_file = run.committed_shards()[0].as_path()
                    shutil.copyfile(shard_file, probe)
                    shutil.rmtree(local_root / f"r{k}", ignore_errors=True)
                else:
                    _delete_prefix(client, bucket, f"r{k}/")
                if k > 0:
                    runs[target].append(result)
            if k > 0:  # the server's own ceiling: the same shard bytes, bare boto3 uploads
                t = time.perf_counter()
                for i in range(n):
                    client.upload_file(str(probe), bucket, f"bare{k}/{i}.parquet")
                bare.append((time.perf_counter() - t, n * probe.stat().st_size))
                _delete_prefix(client, bucket, f"bare{k}/")
    sizes = [_row_bytes(r) for r in templates]
    local, s3 = _rate(runs["local"]), _rate(runs["s3"])
    return {
        "shards": shards,
        "rows_per_shard": rows_per_shard,
        "row_group_size": row_group_size,
        "repeat": repeat,
        "rows_built_seconds": build_seconds,
        "row_bytes_mean": statistics.mean(sizes),
        "row_bytes_min": min(sizes),
        "row_bytes_max": max(sizes),
        "row_bytes_by_column": {c: statistics.mean(len(r[c]) for r in templates)
                                for c in templates[0] if isinstance(templates[0][c], bytes)},
        "shard_bytes_mean": runs["local"][0]["bytes"] / shards,
        "manifest_bytes": manifest_bytes,
        "commit_record_bytes": record_bytes,
        "manifest_plan_shards": len(plan),
        "local": local,
        "s3_moto": s3,
        "s3_moto_bare_upload": {
            "seconds": statistics.median(t for t, _ in bare),
            "mb_per_second": statistics.median(b / t / MB for t, b in bare),
            "rows_per_second": statistics.median(shards * rows_per_shard / t for t, _ in bare),
        },
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpu_count": os.cpu_count(),
        "goal_images_per_second": GOAL_IMAGES_PER_SECOND,
        "goal_gpus": GOAL_GPUS,
        "units": {"rows_per_second": "rows/s (= images/s)", "mb_per_second": "10^6 bytes/s of "
                  "committed shard files", "seconds": "s per commit of all shards",
                  "seconds_per_shard": "s per shard, by step", "gpus_at_bottleneck":
                  "GPUs whose labelling rate (goal: 500/16 images/s each) equals the writer's",
                  "row_bytes_mean": "bytes of encoded columns per row",
                  "extrapolated_rows_per_second_at_shard_size_1000": "rows/s, from the "
                  "per-step medians (Parquet per row, quarantine and manifest per shard)"},
        "note": "Ray-free: ShardWriter + quarantine + commit record per shard, as "
                "Committer.commit does; S3 = moto's ThreadedMotoServer in a child process on "
                "127.0.0.1 (single Python process, same 2 cores): a lower bound, not real S3",
    }


def _busy(sw: dict[str, Any]) -> str:
    load, cores = max(sw.get("load_average", [0])), sw.get("cpu_count") or 1
    if load <= cores:
        return ""
    return (f" **The machine was busy** (1-minute load average up to {load:.1f} on {cores} "
            "cores while this section ran): these figures are lower than an idle machine's.")


def _manifest_step(sw: dict[str, Any]) -> str:
    plan = (f"a train2017-sized plan: {sw['manifest_plan_shards']} shards, "
            f"{sw['manifest_bytes'] / MB:.1f} MB of JSON")
    if "commit_record_bytes" not in sw:  # figures of a distill that rewrote the whole manifest
        return f"a manifest rewrite ({plan})"
    return f"its {sw['commit_record_bytes']} B commit record ({plan}, written once)"


def summary_lines(sw: Any) -> list[str]:
    lines = ["", "## 7. Single writer: the driver committing shards"]
    if sw is None:
        return [*lines, "", "(not run)"]
    if "error" in sw:
        return [*lines, "", f"failed: {sw['error']}"]
    goal = sw["goal_images_per_second"]

    def verdict(r: dict[str, Any]) -> str:
        return "met" if r["meets_goal"] else "NOT met"

    lines += ["", f"One process commits {sw['shards']} shards × {sw['rows_per_shard']} "
              f"pre-encoded rows (the demo photos at 640×480 as JPEG with label PNGs from "
              f"`encode_sample`: {sw['row_bytes_mean'] / 1e3:,.0f} kB/row on average, "
              f"{sw['shard_bytes_mean'] / MB:.0f} MB/shard), each shard followed by its "
              f"quarantine step (no failures: read, not rewritten) and {_manifest_step(sw)}, median of {sw['repeat']} runs, local and S3 alternating.", "",
              "| target | rows/s = images/s | MB/s | s per shard: Parquet / quarantine / "
              f"manifest | GPUs at which it binds | ≥ {goal} images/s |",
              "|---|---:|---:|---:|---:|---|"]
    for label, key in (("local disk", "local"), ("S3 (moto server)", "s3_moto")):
        r = sw[key]
        ps = r["seconds_per_shard"]
        lines.append(f"| {label} | {r['rows_per_second']:.0f} | {r['mb_per_second']:.0f} | "
                     f"{ps['shard']:.2f} / {ps['quarantine']:.3f} / {ps['manifest']:.3f} | "
                     f"{r['gpus_at_bottleneck']:.0f} | {verdict(r)} |")
    ext = {k: sw[k]["extrapolated_rows_per_second_at_shard_size_1000"] for k in ("local",
                                                                                  "s3_moto")}
    lines += ["", f"GPUs at which it binds: the writer's images/s ÷ {goal / sw['goal_gpus']:.2f} "
              f"images/s per GPU (the {goal} images/s goal of a {sw['goal_gpus']}-GPU "
              "cluster). The S3 figure comes from moto, a single-process Python server on the "
              f"same {sw['cpu_count']} cores as the writer that keeps every object in memory: a "
              "lower bound on what this client gets from a real object store, not a real-S3 "
              "figure. Not counted here: the driver also receives every row from the workers "
              "(Ray object transfers)." + _busy(sw),
              "", f"The server's own ceiling, measured in the same runs: bare boto3 uploads of "
              f"the same shard bytes to moto reach {sw['s3_moto_bare_upload']['mb_per_second']:.0f} "
              f"MB/s ({sw['s3_moto_bare_upload']['rows_per_second']:.0f} rows/s); the whole commit "
              f"reaches {sw['s3_moto']['mb_per_second']:.0f} MB/s, "
              f"{sw['s3_moto']['mb_per_second'] / sw['s3_moto_bare_upload']['mb_per_second']:.0%} "
              "of it (Parquet writing and the upload run one after the other). Against this "
              "server no writer placement reaches the goal; moving shard writing onto workers "
              "would overlap the two steps, at most reaching the bare-upload figure."
              "", "The quarantine step and the manifest step are per shard (a rewritten "
              "manifest grows with the split, a commit record does not); at the config's default 1000 images per shard "
              f"the same step times extrapolate to {ext['local']:.0f} rows/s locally and "
              f"{ext['s3_moto']:.0f} on moto (an extrapolation, not measured)."]
    return lines
