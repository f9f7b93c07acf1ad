"""A first generate-labels run that fails before committing a shard leaves nothing behind (no
plan, config, quarantine or lock, and not the folder it made); a run that already had a plan
keeps it, and so does a first run stopped with Ctrl-C. Ray is replaced by a session that fails to start, so no Ray runs here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

import pipelines.generate_labels as generate
from distill.errors import DistillError
from distill.manifest import read_manifest
from pipelines.generate_labels import RunOptions, generate_labels
from tests.conftest import label_config


@contextlib.contextmanager
def _no_ray(*args: object, **kwargs: object) -> Iterator[None]:
    raise DistillError("cannot join Ray at 127.0.0.1:1: Connection refused")
    yield  # pragma: no cover


@pytest.fixture
def ray_fails(monkeypatch):
    monkeypatch.setattr(generate, "ray_session", _no_ray)


def test_a_first_run_that_cannot_join_ray_leaves_no_folder(synthetic_coco, tmp_path, ray_fails):
    out = tmp_path / "run"
    with pytest.raises(DistillError, match="cannot join Ray"):
        generate_labels(label_config(synthetic_coco), RunOptions(out=out))
    assert not out.exists()


def test_a_folder_the_user_made_stays_and_stays_empty(synthetic_coco, tmp_path, ray_fails):
    out = tmp_path / "mine"
    out.mkdir()
    with pytest.raises(DistillError, match="cannot join Ray"):
        generate_labels(label_config(synthetic_coco), RunOptions(out=out))
    assert out.is_dir() and list(out.iterdir()) == []


def test_a_first_run_stopped_right_after_its_plan_keeps_it(synthetic_coco, tmp_path,
                                                           monkeypatch):
    """Ctrl-C (or SIGTERM) is a stop, not a failure: the plan stays, and the CLI's "0 of N shards
    committed; re-run the same command to resume" stays true."""
    out = tmp_path / "run"
    planned = generate.plan_run

    def plan_then_stop(*args: object, **kwargs: object) -> object:
        planned(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "plan_run", plan_then_stop)
    with pytest.raises(KeyboardInterrupt):
        generate_labels(label_config(synthetic_coco), RunOptions(out=out))
    assert (out / "manifest.json").is_file()


def test_a_first_run_that_fails_right_after_its_plan_leaves_nothing(synthetic_coco, tmp_path,
                                                                    monkeypatch):
    out = tmp_path / "run"
    planned = generate.plan_run

    def plan_then_fail(*args: object, **kwargs: object) -> object:
        planned(*args, **kwargs)
        assert (out / "manifest.json").is_file()
        raise DistillError("disk full")

    monkeypatch.setattr(generate, "plan_run", plan_then_fail)
    with pytest.raises(DistillError, match="disk full"):
        generate_labels(label_config(synthetic_coco), RunOptions(out=out))
    assert not out.exists()


def test_a_run_that_had_a_plan_keeps_it_when_ray_fails(synthetic_coco, tmp_path, ray_fails):
    """The plan an earlier invocation wrote is the run's record: a later failure keeps it."""
    out = tmp_path / "run"
    config = label_config(synthetic_coco)
    generate.plan_run(config, RunOptions(out=out))  # an earlier invocation's plan
    planned = read_manifest(out / "manifest.json")
    with pytest.raises(DistillError, match="cannot join Ray"):
        generate_labels(config, RunOptions(out=out))
    assert read_manifest(out / "manifest.json") == planned
    assert (out / "config.toml").is_file()


def test_a_folder_of_someone_elses_files_is_refused_and_left_alone(synthetic_coco, tmp_path,
                                                                   ray_fails):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "config.toml").write_text("mine")
    with pytest.raises(DistillError, match="not a distill"):
        generate_labels(label_config(synthetic_coco), RunOptions(out=out))
    assert sorted(p.name for p in out.iterdir()) == ["config.toml"]
    assert (out / "config.toml").read_text() == "mine"
