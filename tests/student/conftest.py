"""Students the student tests share, made once per session: a tiny student trained briefly on
the session's labelled coco7 run, and one freshly initialised (tests that only need a model to
load). Tests must not modify their folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.config import load_config

SIZE = 64


def tiny_config(*overrides: str):
    """The demo preset's tiny student at 64 px, trained in this process, 4 images a batch."""
    return load_config("demo", overrides=[
        f"student.input_size={SIZE}", "train.num_workers=0", "train.batch_size=4", *overrides])


@pytest.fixture(scope="session")
def trained(labelled_coco7, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny student trained 2 epochs on the real coco7 shards: (run folder, shards folder)."""
    from distill.student.train import TrainOptions, train_student

    _, run, _ = labelled_coco7
    out = tmp_path_factory.mktemp("student") / "student"
    train_student(tiny_config("train.epochs=2"),
                  TrainOptions(shards=run / "shards", out=out, progress=False))
    return out, run / "shards"


@pytest.fixture(scope="session")
def untrained(tmp_path_factory) -> Path:
    """A train-student run folder holding a freshly initialised 64-px student."""
    from distill.config import dump_toml
    from distill.runfolder import StudentRun
    from distill.storage import atomic_write_bytes
    from distill.student.checkpoint import checkpoint_bytes, save_checkpoint
    from distill.student.model import build_student

    out = tmp_path_factory.mktemp("untrained") / "student"
    out.mkdir()
    config = load_config("demo", overrides=[f"student.input_size={SIZE}"])
    run = StudentRun(out)
    run.mark()
    atomic_write_bytes(run.config, dump_toml(config).encode())
    save_checkpoint(run, "last", *checkpoint_bytes(build_student(config.student, 0), {"epoch": 0}))
    return out
