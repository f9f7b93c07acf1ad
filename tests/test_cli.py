"""The CLI as a user runs it (in a subprocess, like a shell would)."""

import subprocess
import sys

import pytest
import tomllib

from distill import __version__


def distill(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "distill.cli", *args], capture_output=True,
                          text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_lists_the_commands_and_version():
    out = distill("--help").stdout
    for cmd in ("run", "config", "data"):
        assert cmd in out
    assert distill("--version").stdout.strip() == f"distill {__version__}"


def test_config_show_paper_prints_the_papers_settings():
    out = distill("config", "show", "--preset", "paper").stdout
    assert "# fingerprint:" in out
    doc = tomllib.loads(out)
    assert doc["train"]["loss_gains"]["tokens"] == 10.0 and doc["train"]["patience"] == 65
    assert doc["train"]["augment"]["pan_zoom"] == 0.45 and doc["student"]["pixelwise_width"] == 1500
    assert doc["teachers"]["depth"]["checkpoint"] == "depth-anything/Depth-Anything-V2-Large-hf"


def test_config_errors_exit_2_with_a_message():
    proc = distill("config", "show", "--set", "train.mixed_precision=fp8", check=False)
    assert proc.returncode == 2 and "allowed values" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_make_demo_then_check_it(tmp_path):
    pytest.importorskip("skimage")
    root = tmp_path / "demo"
    assert "wrote 7 images" in distill("data", "make-demo", str(root)).stdout
    out = distill("data", "check", str(root), "--split", "val2017").stdout
    assert "images:   7" in out and "persons:  1 (1 with keypoints)" in out
    assert "captions: 14" in out and "problems: 0" in out


def test_data_check_reports_layout_errors(tmp_path):
    (tmp_path / "annotations").mkdir()
    proc = distill("data", "check", str(tmp_path), check=False)
    assert proc.returncode == 2 and "person_keypoints_val2017.json" in proc.stderr


def test_data_check_on_coco_mini(coco_mini):
    out = distill("data", "check", str(coco_mini), "--split", "val2017").stdout
    assert "images:   79" in out and "problems: 0" in out


def test_run_group_has_help():
    assert "label generation" in distill("run", "--help").stdout


def test_teachers_list_shows_every_backend_and_the_papers_choice():
    out = distill("teachers", "list").stdout
    for name in ("depth-anything-v2", "detectron2", "mask2former", "dptext-detr", "craft",
                 "visiongpt2", "vit-gpt2"):
        assert name in out
    assert "depth-anything/Depth-Anything-V2-Large-hf" in out
