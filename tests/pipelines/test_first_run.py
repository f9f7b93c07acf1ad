"""A first generate-labels run that fails before committing a shard leaves nothing behind (no
plan, config, quarantine or lock, and not the folder it made; on S3 not even a "folder" marker
object); a run that already had a plan keeps it, and so does a first run stopped with Ctrl-C.
A first run that lost its write lease to another writer touches nothing: the files are the new
writer's. Ray is replaced by a session that fails to start, so no Ray runs here."""

from __future__ import annotations

import contextlib
import json
import time
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


def _objects(uri: str) -> dict[str, bytes]:
    """Every object under `uri` with its bytes, "folder" marker objects (keys ending in /)
    included."""
    import boto3

    client = boto3.client("s3")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for o in listed if o["Key"].startswith(prefix)}


def test_a_failed_first_run_on_s3_leaves_no_object(synthetic_coco, s3_bucket, ray_fails):
    out = f"{s3_bucket}/run"
    with pytest.raises(DistillError, match="cannot join Ray"):
        generate_labels(label_config(synthetic_coco), RunOptions(out=out))
    assert _objects(s3_bucket) == {}  # no plan, no config, no lease, no empty `run/` marker


def test_a_first_run_that_lost_its_lease_leaves_the_new_writers_files(synthetic_coco, s3_bucket,
                                                                      monkeypatch):
    """Writer A planned a first run, then paused (SIGSTOP) past its lease; writer B took the
    run over and rewrote the config (the same bytes: it is the same command). A's failure that
    follows must not undo "its" first run: every file is B's now, and so is the lease."""
    import boto3

    out = f"{s3_bucket}/run"
    bucket = s3_bucket.removeprefix("s3://")
    client = boto3.client("s3")

    @contextlib.contextmanager
    def taken_over_then_fails(*args: object, **kwargs: object) -> Iterator[None]:
        client.put_object(Bucket=bucket, Key="run/.lease.json", Body=json.dumps(
            {"token": "b", "host": "elsewhere", "pid": 1, "renewed": time.time(),
             "expires": time.time() + 3600}).encode())
        config = client.get_object(Bucket=bucket, Key="run/config.toml")["Body"].read()
        client.put_object(Bucket=bucket, Key="run/config.toml", Body=config)
        raise DistillError("cannot join Ray at 127.0.0.1:1: Connection refused")
        yield  # pragma: no cover

    monkeypatch.setattr(generate, "ray_session", taken_over_then_fails)
    with pytest.raises(DistillError, match="cannot join Ray"):
        generate_labels(label_config(synthetic_coco), RunOptions(out=out))
    left = _objects(out)
    assert {"run/manifest.json", "run/config.toml", "run/.lease.json"} <= set(left), sorted(left)
    assert json.loads(left["run/.lease.json"])["token"] == "b"
    assert not [k for k in left if k.endswith("/")], sorted(left)


def test_a_run_says_it_starts_ray(synthetic_coco, tmp_path, ray_fails, capfd):
    """Issue 32: the console says "starting Ray" before the seconds Ray takes to start."""
    with pytest.raises(DistillError, match="cannot join Ray"):
        generate_labels(label_config(synthetic_coco), RunOptions(out=tmp_path / "run"))
    assert "[generate-labels] starting Ray" in capfd.readouterr().err
