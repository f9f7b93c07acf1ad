"""The run plan and manifest: deterministic, atomic, refusing a changed config by name, and
trusting a shard only when its footer, rows and checksum agree."""

import json
import os

import pytest

from distill.config import load_config
from distill.errors import FingerprintMismatch, ShardError
from distill.identity import LABEL_SECTIONS, check_fingerprint
from distill.manifest import Manifest, make_plan, read_manifest, shard_is_complete, write_manifest
from distill.shards import ShardWriter, make_metadata
from distill.storage import atomic_write_bytes, file_sha256
from tests.test_shards import make_sample


def test_plan_is_sorted_and_independent_of_input_order():
    plan = make_plan([9, 3, 7, 1, 5, 3], "val2017", 2)
    assert [s.name for s in plan] == [f"val2017-0000{i}.parquet" for i in range(3)]
    assert [s.image_ids for s in plan] == [[1, 3], [5, 7], [9]]
    assert make_plan([5, 1, 9, 7, 3], "val2017", 2) == plan
    assert make_plan([], "val2017", 4) == []


def _manifest(cfg) -> Manifest:
    return Manifest("val2017", cfg.fingerprint(LABEL_SECTIONS), cfg.fingerprint_view(LABEL_SECTIONS),
                    cfg.shards.shard_size, make_plan(list(range(10)), "val2017", 4))


def test_manifest_round_trips_and_is_written_atomically(tmp_path):
    cfg = load_config("demo")
    m = _manifest(cfg)
    m.shards[0].teachers = {"depth": "done", "text": "pending"}
    path = tmp_path / "manifest.json"
    write_manifest(path, m)
    assert read_manifest(path) == m
    assert os.listdir(tmp_path) == ["manifest.json"]  # no temp file left behind
    assert not m.shards[0].done(["depth", "text"])


def test_a_changed_config_is_refused_naming_what_changed(tmp_path):
    m = _manifest(load_config("demo"))
    same = load_config("demo", overrides=["teachers.depth.batch_size=1"])  # runtime only
    check_fingerprint(m, same.fingerprint(LABEL_SECTIONS), same.fingerprint_view(LABEL_SECTIONS),
                      tmp_path)
    new = load_config("demo", overrides=["labels.vocab_size=100", "teachers.text.input_size=320"])
    with pytest.raises(FingerprintMismatch) as err:
        check_fingerprint(m, new.fingerprint(LABEL_SECTIONS), new.fingerprint_view(LABEL_SECTIONS),
                          tmp_path)
    msg = str(err.value)
    assert "labels.vocab_size: 2048 → 100" in msg and "teachers.text.input_size: 640 → 320" in msg
    assert "--new-run" in msg


def test_a_shard_is_trusted_only_when_footer_rows_and_checksum_agree(tmp_path):
    m = _manifest(load_config("demo"))
    entry = m.shards[0]
    path = tmp_path / entry.name
    assert not shard_is_complete(path, entry)  # nothing written yet
    with ShardWriter(path, make_metadata("f", {})) as w:
        for i in (1, 2):
            w.write(make_sample(i, full=False))
    entry.rows, entry.sha256 = 2, file_sha256(path)
    assert shard_is_complete(path, entry)
    entry.rows = 3
    assert not shard_is_complete(path, entry)
    entry.rows = 2
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated: footer gone
    assert not shard_is_complete(path, entry)
    path.write_bytes(data[:-9] + b"x" + data[-8:])  # one byte changed, footer intact
    assert not shard_is_complete(path, entry)


def test_read_manifest_errors_name_the_file(tmp_path):
    bad = tmp_path / "manifest.json"
    atomic_write_bytes(bad, json.dumps({"version": 99}).encode())
    with pytest.raises(ShardError, match="manifest version 99"):
        read_manifest(bad)
