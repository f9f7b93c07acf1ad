"""Fixtures for `distill view`: the session's labelled coco7 run, a tiny student trained on it,
and the app around them."""

from __future__ import annotations

import pytest

from distill.config import load_config


@pytest.fixture(scope="package")
def view_student(labelled_coco7, tmp_path_factory):
    """A tiny student (64 px) trained 1 epoch on the coco7 run: its run folder."""
    from distill.student.train import TrainOptions, train_student

    _, run, _ = labelled_coco7
    out = tmp_path_factory.mktemp("view-student") / "student"
    cfg = load_config("demo", overrides=["student.input_size=64", "train.num_workers=0",
                                         "train.batch_size=4", "train.epochs=1"])
    train_student(cfg, TrainOptions(shards=run / "shards", out=out, progress=False))
    return out


@pytest.fixture(scope="package")
def view_client(labelled_coco7, view_student):
    """A test client of the app on the coco7 run, with the student loaded."""
    from starlette.testclient import TestClient

    from distill.view import create_app

    _, run, _ = labelled_coco7
    with TestClient(create_app(run, checkpoint=str(view_student))) as client:
        yield client


@pytest.fixture(autouse=True)
def _view_cache(tmp_path, monkeypatch):
    """The viewer's statistics of plain shards folders go to a cache of the test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="package")
def labelled_coco7(labelled_coco7, tmp_path_factory):
    """The session's coco7 run, copied: the viewer writes its statistics beside a run, and the
    session's run must stay as the pipeline wrote it."""
    import shutil

    root, run, result = labelled_coco7
    copy = shutil.copytree(run, tmp_path_factory.mktemp("view-run") / "out")
    return root, copy, result
