"""`distill teachers fetch` end to end against a local hub (tests/hubserver.py on 127.0.0.1,
`HF_ENDPOINT`) serving a tiny random Depth Anything V2 in the hub's layout (config.json,
model.safetensors, preprocessor_config.json): a pinned revision, an unpinned one warned about,
a corrupted file and a wrong recorded sha256 refused with nothing left under its name, a
dropped connection resumed with a Range request, and the cache then used with HF_HUB_OFFLINE=1
by a real `generate-labels` run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.hubserver import Hub, HubServer, Repo

ROOT = Path(__file__).resolve().parents[2]
REPO = "org/dav2-tiny"


@pytest.fixture(scope="module")
def dav2_folder(tmp_path_factory) -> Path:
    """A tiny random DepthAnythingForDepthEstimation, saved as transformers saves a model."""
    import torch
    from transformers import DepthAnythingForDepthEstimation

    from teachers.depth_anything_v2 import tiny_config

    folder = tmp_path_factory.mktemp("dav2-tiny")
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(tiny_config()).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "DPTImageProcessor", "do_resize": True, "size":
         {"height": 56, "width": 56}, "keep_aspect_ratio": True, "ensure_multiple_of": 14}))
    return folder


@pytest.fixture
def hub(dav2_folder) -> Hub:
    hub = Hub()
    hub.add(Repo.from_folder(REPO, dav2_folder))
    return hub


def fetch(url: str, cache: Path, *args: str, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "distill.cli", "teachers", "fetch", "depth", "--preset", "demo",
           "--cache", str(cache), "--set", "teachers.depth.variant=pretrained",
           "--set", f"teachers.depth.checkpoint={REPO}", *args]
    full_env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_TELEMETRY": "1",
                **(env or {})}
    full_env.pop("HF_HUB_OFFLINE", None)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=full_env,
                          timeout=300)


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one error line (above it only huggingface_hub's progress bars)."""
    lines = [ln for ln in done.stderr.strip().splitlines() if not ln.startswith("Fetching")]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def snapshot(cache: Path, commit: str) -> Path:
    return cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / commit


@pytest.mark.slow
def test_a_pinned_revision_is_fetched_verified_and_then_loads_offline(hub, tmp_path):
    repo = hub.repos[REPO]
    cache = tmp_path / "hub"
    with HubServer(hub) as url:
        done = fetch(url, cache, "--set", f"teachers.depth.revision={repo.commit}")
    assert done.returncode == 0, done.stderr
    assert f"hub {REPO} at {repo.commit}" in done.stdout
    assert "sha256 verified: model.safetensors" in done.stdout
    assert "not pinned" not in done.stderr
    assert f"HF_HUB_OFFLINE=1 HF_HUB_CACHE={cache}" in done.stdout
    files = snapshot(cache, repo.commit)
    assert sorted(p.name for p in files.iterdir()) == sorted(repo.files)
    # the server is gone: a real labelling run (fail-fast check, Ray workers, shard
    # provenance) reads the weights from the cache alone, at the pinned commit
    from distill.shards import read_metadata
    from tests.conftest import make_coco7

    root = make_coco7(tmp_path / "coco")
    off = [f"teachers.{role}.enabled=false" for role in ("panoptic", "text", "caption", "pose")]
    cmd = [sys.executable, "-m", "distill.cli", "run", "generate-labels", "--preset", "demo",
           "--root", str(root), "--split", "val2017", "--limit", "3", "--out",
           str(tmp_path / "labels"), "--no-live",
           *(arg for setting in (*off, "teachers.depth.variant=pretrained",
                                 f"teachers.depth.checkpoint={REPO}",
                                 f"teachers.depth.revision={repo.commit}",
                                 "teachers.depth.input_size=56")
             for arg in ("--set", setting))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (shard,) = sorted((tmp_path / "labels" / "shards").glob("*.parquet"))
    depth = read_metadata(shard)["provenance"]["depth"]
    assert (depth["variant"], depth["checkpoint"], depth["commit"]) == \
        ("pretrained", REPO, repo.commit)


def test_an_unpinned_revision_is_warned_about_with_the_commit_to_pin(hub, tmp_path):
    commit = hub.repos[REPO].commit
    with HubServer(hub) as url:
        done = fetch(url, tmp_path / "hub")
    assert done.returncode == 0, done.stderr
    assert f"is not pinned to a commit (it resolved to {commit}); pin it with --set " \
           f"teachers.depth.revision={commit}" in done.stderr


def test_a_corrupted_file_is_refused_and_nothing_is_left_under_its_name(hub, tmp_path):
    repo = hub.repos[REPO]
    hub.corrupt.add((REPO, "model.safetensors"))
    cache = tmp_path / "hub"
    with HubServer(hub) as url:
        done = fetch(url, cache, "--set", f"teachers.depth.revision={repo.commit}")
    assert done.returncode == 2
    line = error_line(done)
    assert "model.safetensors" in line and f"not {repo.etag('model.safetensors')}" in line
    assert "the hub's LFS hash" in line and "refused and removed" in line
    assert not (snapshot(cache, repo.commit) / "model.safetensors").exists()
    assert not list(cache.rglob(repo.etag("model.safetensors")))


def test_a_wrong_recorded_sha256_is_refused(hub, tmp_path):
    repo = hub.repos[REPO]
    wrong = hashlib.sha256(b"not the config").hexdigest()
    toml = tmp_path / "pins.toml"
    toml.write_text(f'[teachers.depth]\nrevision = "{repo.commit}"\n'
                    f'sha256 = {{"config.json" = "{wrong}"}}\n')
    cache = tmp_path / "hub"
    with HubServer(hub) as url:
        done = fetch(url, cache, "-c", str(toml))
    assert done.returncode == 2
    line = error_line(done)
    assert f"config.json at {repo.commit}" in line and f"not {wrong} (teachers.depth.sha256)" \
        in line
    assert not (snapshot(cache, repo.commit) / "config.json").exists()


def test_a_dropped_download_is_resumed_with_a_range_request_and_verified(tmp_path):
    """huggingface_hub writes a download in 10 MiB chunks and, when the connection drops,
    asks for the rest from the last written byte: an 11 MiB weights file cut after 10.5 MiB."""
    from safetensors.numpy import save

    weights = save({"w": np.random.default_rng(0).standard_normal(11 * 2**18, np.float32)})
    hub = Hub()
    repo = hub.add(Repo(REPO, {"config.json": b"{}", "model.safetensors": weights}))
    hub.drop_after[(REPO, "model.safetensors")] = 10 * 2**20 + 2**19
    cache = tmp_path / "hub"
    with HubServer(hub) as url:
        done = fetch(url, cache, "--set", f"teachers.depth.revision={repo.commit}")
    assert done.returncode == 0, done.stderr
    gets = [r for m, p, r in hub.requests if m == "GET" and p.endswith("/model.safetensors")]
    assert gets == ["", f"bytes={10 * 2**20}-"]
    assert "sha256 verified: model.safetensors" in done.stdout
    data = (snapshot(cache, repo.commit) / "model.safetensors").read_bytes()
    assert data == weights
