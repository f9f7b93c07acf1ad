"""Shared fixtures: the ../shared data (tests skip without it), a synthetic COCO folder, one
local Ray per session, and an S3-compatible test server on 127.0.0.1 (moto).

A labelling run costs seconds however small its dataset (each run's teacher worker imports torch
and transformers), so the session labels `make_coco7` once per layout (`labelled_coco7`,
`pools_cli_run`) and tests that only read a run share those; a test that needs a run of its own
copies one or labels only what it checks."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
COCO_MINI = SHARED / "data" / "coco-mini"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# `make test` runs the suite in two pytest-xdist workers (gw0, gw1). Each is a session of its
# own: its own Ray (in its own temp folder, so neither finds the other's as "the cluster
# running here") and its own S3 test server.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if WORKER and os.environ.get("DISTILL_TEST_WORKER") != WORKER:
    os.environ["DISTILL_TEST_WORKER"] = WORKER
    os.environ.pop("DISTILL_TEST_S3_ENDPOINT", None)  # the controller's, inherited
    _ray_root = Path(os.environ.get("RAY_TMPDIR") or "/tmp") / WORKER
    _ray_root.mkdir(parents=True, exist_ok=True)
    os.environ["RAY_TMPDIR"] = str(_ray_root)

# The S3 test server's address is fixed before anything starts, so that every process of the
# session — Ray workers started later, CLI subprocesses — finds it through the standard
# environment, as a user's would. The server itself starts only when a test asks for it.
# A child process of the session (a helper script importing this module) keeps its parent's.
S3_ENDPOINT = os.environ.get("DISTILL_TEST_S3_ENDPOINT") or f"http://127.0.0.1:{_free_port()}"
os.environ.update({
    "DISTILL_TEST_S3_ENDPOINT": S3_ENDPOINT,
    "AWS_ENDPOINT_URL": S3_ENDPOINT,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
})


@pytest.fixture(scope="session")
def s3_server() -> str:
    """moto's S3 server on 127.0.0.1 for the session (skips when moto is not installed)."""
    server_mod = pytest.importorskip("moto.server")
    port = int(S3_ENDPOINT.rsplit(":", 1)[1])
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield S3_ENDPOINT
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A fresh bucket per test, as `s3://NAME`."""
    import boto3

    name = f"t-{secrets.token_hex(6)}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"


def upload_folder(local: Path, uri: str) -> str:
    """Copy a local folder (e.g. a COCO layout) to `uri` on the object store; returns `uri`."""
    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    client = boto3.client("s3")
    for path in sorted(local.rglob("*")):
        if path.is_file():
            key = "/".join(p for p in (prefix, path.relative_to(local).as_posix()) if p)
            client.upload_file(str(path), bucket, key)
    return uri


def s3_keys(uri: str) -> list[str]:
    """Every object under `uri` (keys relative to it), sorted; pyarrow's empty "folder" marker
    objects (keys ending in /) are left out."""
    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{prefix}/" if prefix else "")
    return sorted(o["Key"][len(prefix) + 1 if prefix else 0:]
                  for page in pages for o in page.get("Contents", [])
                  if not o["Key"].endswith("/"))


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    """The real COCO 2017 sample in ../shared (skips when absent)."""
    if not (COCO_MINI / "annotations").is_dir():
        pytest.skip("../shared/data/coco-mini is not present")
    return COCO_MINI


def write_coco(root: Path, split: str, images: list[dict], persons: list[dict],
               captions: list[dict]) -> Path:
    """Write a COCO-layout folder: <root>/<split>/*.jpg and the two annotation files."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for img in images:
        if img.get("write", True):
            pixels = rng.integers(0, 255, (img["height"], img["width"], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / img["file_name"], quality=90)
    meta = [{k: v for k, v in img.items() if k != "write"} for img in images]
    cats = [{"id": 1, "name": "person"}]
    (root / "annotations" / f"person_keypoints_{split}.json").write_text(
        json.dumps({"images": meta, "annotations": persons, "categories": cats}))
    (root / "annotations" / f"captions_{split}.json").write_text(
        json.dumps({"images": meta, "annotations": captions}))
    return root


@pytest.fixture
def synthetic_coco(tmp_path: Path) -> Path:
    """Three images (ids 3, 1, 2 on purpose), one person with keypoints, five captions."""
    images = [
        {"id": 3, "file_name": "000000000003.jpg", "width": 64, "height": 48},
        {"id": 1, "file_name": "000000000001.jpg", "width": 40, "height": 30},
        {"id": 2, "file_name": "000000000002.jpg", "width": 32, "height": 32},
    ]
    kp = [0.0] * 51
    kp[0:3] = [10, 12, 2]  # nose
    kp[15:18] = [20, 25, 1]  # left shoulder
    persons = [{"id": 7, "image_id": 1, "category_id": 1, "keypoints": kp, "num_keypoints": 2,
                "bbox": [5, 6, 20, 22], "area": 300.0, "iscrowd": 0}]
    captions = [{"id": i, "image_id": iid, "caption": c} for i, (iid, c) in enumerate([
        (1, "A man riding a horse."), (1, "A person on a brown horse."),
        (2, "Two cats on a sofa."), (3, "A red bus in the street."), (3, "A bus."),
    ])]
    return write_coco(tmp_path / "coco", "val2017", images, persons, captions)


@pytest.fixture(scope="session")
def ray_address() -> object:
    """One local Ray for the whole test session (started on first use, ~4 s), loopback-only
    like a real run's. In-process runs reuse it; CLI subprocesses join it with --address."""
    import logging

    import ray

    from pipelines.cluster import start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus=2, log_to_driver=False, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


LABEL_SETS = ["teachers.text.input_size=160", "shards.shard_size=3", "teachers.depth.batch_size=2"]


def label_config(root: Path | str, *overrides: str):
    """The demo preset on `root`, made smaller for tests (CRAFT on a 160-px canvas, 3 per shard)."""
    from distill.config import load_config

    return load_config("demo", overrides=[f"data.root={root}", *LABEL_SETS, *overrides])


COCO7_IDS = [12, 3, 7, 1, 9, 5, 20]


def _person(image_id: int, ann_id: int) -> dict:
    kp = [0.0] * 51
    kp[0:3] = [10 + image_id, 12, 2]
    kp[18:21] = [22, 30, 1]
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "keypoints": kp,
            "num_keypoints": 2, "bbox": [4, 5, 30, 35], "area": 900.0, "iscrowd": 0}


def make_coco7(root: Path) -> Path:
    """Seven images of mixed sizes (ids out of order), people on two, captions on all."""
    sizes = [(64, 48), (48, 64), (40, 40), (72, 40), (56, 56), (33, 45), (80, 60)]
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h}
              for i, (w, h) in zip(COCO7_IDS, sizes, strict=True)]
    persons = [_person(7, 100), _person(7, 101), _person(20, 102)]
    words = ["a dog on a red sofa", "two people riding horses", "a bus in the street"]
    captions = [{"id": 1000 + k, "image_id": i, "caption": words[k % 3]}
                for k, i in enumerate(COCO7_IDS + COCO7_IDS[:3])]
    return write_coco(root, "val2017", images, persons, captions)


def shard_rows(out: Path) -> dict[int, object]:
    """Every decoded sample of a run folder by image id; fails if an id is in two shards."""
    from distill.shards import iter_samples

    samples = {}
    for path in sorted((out / "shards").glob("*.parquet")):
        for s in iter_samples(path):
            assert s.image_id not in samples, f"image {s.image_id} is in two shards"
            samples[s.image_id] = s
    return samples


def assert_same_sample(a, b, *, depth_levels: int = 0) -> None:
    """Two decoded samples are equal in every column; with `depth_levels`, depth16 and normals
    may differ by that many levels and depth's min/max by float32 rounding (the same image
    labelled in another batch, README "Teachers")."""
    for name in vars(a):
        x, y = getattr(a, name), getattr(b, name)
        if depth_levels and name in ("depth16", "normals"):
            assert np.abs(x.astype(np.int32) - y.astype(np.int32)).max() <= depth_levels, name
        elif depth_levels and name in ("depth_min", "depth_max"):
            assert x == pytest.approx(y, rel=1e-5, abs=1e-7), name
        elif isinstance(x, np.ndarray):
            assert np.array_equal(x, y), name
        elif name == "persons":
            assert [p.keypoints.tolist() for p in x] == [p.keypoints.tolist() for p in y]
        elif name == "teacher_persons":  # the pose teacher's people (issue 28)
            assert [(p.box.tolist(), p.keypoints.tolist(), p.score, p.box_source)
                    for p in x or []] == [(p.box.tolist(), p.keypoints.tolist(), p.score,
                                           p.box_source) for p in y or []], name
        elif name == "plugins":  # plug-in and opt-in layers' values: arrays or plain values
            x, y = ({k: v for k, v in d.items() if v is not None} for d in (x, y))
            assert x.keys() == y.keys(), name  # (a value a layer left None is no value)
            for key in x:
                if isinstance(x[key], np.ndarray):
                    assert np.array_equal(x[key], y[key]), f"{name}[{key}]"
                else:  # Arrow values decoded to Python: lists, dicts, strings
                    assert repr(x[key]) == repr(y[key]), f"{name}[{key}]"
        elif name == "text_regions":
            assert [(r.points.tolist(), r.score) for r in x or []] == \
                   [(r.points.tolist(), r.score) for r in y or []], name
        else:
            assert x == y, name


@pytest.fixture(scope="session")
def coco7(tmp_path_factory) -> Path:
    """`make_coco7` once per session (tests must not modify it: copy it to change it)."""
    return make_coco7(tmp_path_factory.mktemp("coco7") / "coco")


@pytest.fixture(scope="session")
def labelled_coco7(tmp_path_factory, ray_address, coco7):
    """`make_coco7` labelled once per session by the real pipeline (tiny teachers, real CRAFT):
    (dataset root, run folder, RunResult). Tests must not modify the run folder."""
    from pipelines.generate_labels import RunOptions, generate_labels

    out = tmp_path_factory.mktemp("labelled") / "out"
    result = generate_labels(label_config(coco7), RunOptions(out=out, live=False))
    return coco7, out, result


@dataclass
class CliRun:
    """A finished `distill` process: its run folder and what it printed."""

    out: Path
    pid: int
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def pools_cli_run(tmp_path_factory, ray_address, coco7) -> CliRun:
    """`make_coco7` labelled once per session as `labelled_coco7` is, but in the pools layout
    (an actor pool per teacher, on Ray Data) and by the CLI, joining the session's Ray as a
    user's second run would. The console test reads what it printed, the layout test its rows.
    Tests must not modify the run folder."""
    out = tmp_path_factory.mktemp("pools") / "out"
    args = [sys.executable, "-m", "distill.cli", "run", "generate-labels", "--preset", "demo",
            "--out", str(out), "--no-live", "--address", str(ray_address)]
    for setting in [f"data.root={coco7}", *LABEL_SETS, "ray.layout=pools"]:
        args += ["--set", setting]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    stdout, stderr = proc.communicate(timeout=600)
    return CliRun(out, proc.pid, proc.returncode, stdout, stderr)


def committed_shards(out: Path | str) -> int:
    """Shards a run's manifest (with its commit records) records as committed (-1: no
    manifest yet); path or URI."""
    try:
        from distill.manifest import read_manifest
        from distill.storage import Location

        manifest = read_manifest(Location(out) / "manifest.json")
    except Exception:
        return -1  # no manifest yet
    return sum(1 for s in manifest.shards if s.sha256)


def run_until(cmd: list[str], out: Path | str, point: int | None, timeout: float = 300) -> int:
    """Start the CLI; SIGKILL it as soon as `point` shards are committed (-1: as soon as the
    plan is written). Returns the exit code (-9 when killed)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if point is not None and committed_shards(out) >= point:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"CLI failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    return proc.returncode


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `make test`'s two xdist workers, every test on the session's Ray runs in one worker,
    in order, as a plain `pytest` run has them (one Ray, started once); the other worker takes
    the tests that start no Ray of the session's (units, pictures, CLIs with a Ray of their own)."""
    group = pytest.mark.xdist_group("session-ray")
    for item in items:
        if "ray_address" in getattr(item, "fixturenames", ()):
            item.add_marker(group)
