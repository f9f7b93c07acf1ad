"""The run plan and manifest: deterministic, atomic, refusing a changed config by name,
trusting a shard only when its footer, rows, size and identity (or checksum) agree, and a
commit that costs the same whatever the plan's size."""

import json
import os

import pytest

from distill.config import load_config
from distill.errors import FingerprintMismatch, ShardError
from distill.identity import LABEL_SECTIONS, check_fingerprint
from distill.manifest import (
    Manifest,
    compact_manifest,
    local_identity,
    make_plan,
    read_manifest,
    record_commit,
    shard_is_complete,
    write_manifest,
)
from distill.shards import ShardWriter, make_metadata
from distill.storage import atomic_write_bytes, file_sha256
from tests.conftest import label_config, s3_keys
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


def _committed(tmp_path, m: Manifest):
    """Shard 0 of `m` written and committed as `Committer.commit` records it."""
    entry = m.shards[0]
    path = tmp_path / entry.name
    with ShardWriter(path, make_metadata("f", {})) as w:
        for i in (1, 2):
            w.write(make_sample(i, full=False))
    entry.rows, entry.sha256, entry.size = 2, w.sha256, w.size
    entry.inode, entry.mtime_ns = local_identity(path)
    return entry, path


def test_a_resume_trusts_size_footer_and_identity_and_verify_hashes(tmp_path, monkeypatch):
    """Issue 31, item 2: no byte of a committed shard is read at resume unless asked."""
    entry, path = _committed(tmp_path, _manifest(load_config("demo")))
    data = path.read_bytes()
    with monkeypatch.context() as mp:  # the metadata check hashes nothing
        mp.setattr("distill.manifest.file_sha256", lambda p: pytest.fail("hashed " + str(p)))
        assert shard_is_complete(path, entry)
    # altered in place, same size, its mtime put back: only --verify-shards can tell
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(len(data) // 3)
        fh.write(bytes([data[len(data) // 3] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == len(data) and path.stat().st_ino == st.st_ino
    assert shard_is_complete(path, entry)
    assert not shard_is_complete(path, entry, verify=True)
    # a copy with the same bytes (another inode) is hashed, found equal, and trusted
    path.unlink()
    path.write_bytes(data)
    assert shard_is_complete(path, entry)
    assert (entry.inode, entry.mtime_ns) == local_identity(path)
    path.write_bytes(data[:-20] + data[-8:])  # truncated, footer intact: the size tells
    assert not shard_is_complete(path, entry)
    path.unlink()  # removed
    assert not shard_is_complete(path, entry)


def test_an_older_manifest_without_identity_falls_back_to_the_checksum(tmp_path):
    entry, path = _committed(tmp_path, _manifest(load_config("demo")))
    entry.inode = entry.mtime_ns = None  # as a version 3 manifest reads
    data = path.read_bytes()
    path.write_bytes(data[:-9] + b"x" + data[-8:])  # one byte changed, size and footer intact
    assert not shard_is_complete(path, entry)
    path.write_bytes(data)
    assert shard_is_complete(path, entry)


def _plan(shards: int) -> Manifest:
    m = _manifest(load_config("demo"))
    m.shards = make_plan(list(range(shards * 1000)), "val2017", 1000)
    return m


def test_a_commit_writes_a_record_whose_size_does_not_grow_with_the_plan(tmp_path):
    """Issue 31, item 3: a commit writes one small record, never the whole plan; read back,
    manifest.json and its records are one manifest; compaction folds them in."""
    sizes = {}
    for shards in (10, 1000):
        folder = tmp_path / str(shards)
        m = _plan(shards)
        write_manifest(folder / "manifest.json", m)
        plan_bytes = (folder / "manifest.json").read_bytes()
        entry, _ = _committed(folder / "shards", m)
        m.dtypes["depth"] = "float16"
        sizes[shards] = record_commit(folder / "manifest.json", m, entry)
        assert (folder / "manifest.json").read_bytes() == plan_bytes  # not rewritten
        assert sizes[shards] == (folder / "manifest.d" / "val2017-00000.json").stat().st_size
        assert read_manifest(folder / "manifest.json") == m
        assert compact_manifest(folder / "manifest.json", m)
        assert sorted(os.listdir(folder)) == ["manifest.json", "shards"]
        assert read_manifest(folder / "manifest.json") == m
        assert not compact_manifest(folder / "manifest.json", m)  # nothing to fold
    assert sizes[10] == sizes[1000] < 1000


def test_a_record_the_whole_manifest_already_holds_is_not_applied_again(tmp_path):
    """A kill between writing manifest.json whole and removing the records it holds: those
    records are of an older generation, and a later change to the plan wins over them."""
    m = _plan(3)
    path = tmp_path / "manifest.json"
    write_manifest(path, m)
    entry, _ = _committed(tmp_path / "shards", m)
    record_commit(path, m, entry)
    record = tmp_path / "manifest.d" / "val2017-00000.json"
    kept = record.read_bytes()
    write_manifest(path, m)  # compaction
    entry.teachers = {"depth": "done", "caption": "pending"}  # then a teacher is added
    write_manifest(path, m)
    atomic_write_bytes(record, kept)  # as if its removal had been killed
    assert read_manifest(path).shards[0].teachers == {"depth": "done", "caption": "pending"}


def test_commit_records_on_s3_read_back_and_compact(s3_bucket):
    uri = f"{s3_bucket}/run"
    m = _plan(2)
    write_manifest(f"{uri}/manifest.json", m)
    entry = m.shards[1]
    entry.rows, entry.sha256, entry.size, entry.teachers = 0, "ab" * 32, 10, {"depth": "done"}
    record_commit(f"{uri}/manifest.json", m, entry)
    assert s3_keys(uri) == ["manifest.d/val2017-00001.json", "manifest.json"]
    assert read_manifest(f"{uri}/manifest.json") == m
    assert compact_manifest(f"{uri}/manifest.json", m)
    assert s3_keys(uri) == ["manifest.json"]
    assert read_manifest(f"{uri}/manifest.json") == m


def test_plan_run_skips_a_committed_shard_by_metadata_and_verify_shards_hashes(
        synthetic_coco, tmp_path):
    """Ray-free: a plan, one shard committed as `Committer` commits it (every image
    quarantined, so no teacher runs), then the shard altered in place with the same size and
    mtime: a resume keeps it, a resume with `verify_shards` (--verify-shards) labels it again."""
    from pipelines.commit import Committer
    from pipelines.plan import RunOptions, plan_run

    out = tmp_path / "run"
    config = label_config(synthetic_coco)
    plan = plan_run(config, RunOptions(out=out))
    job = plan.jobs[0]
    for item in job.items:
        item.fail("read", "Test", "quarantined by the test")
    Committer(plan).commit(job, job.items)
    assert sorted(os.listdir(out / "manifest.d")) == ["val2017-00000.json"]
    assert plan_run(config, RunOptions(out=out, dry_run=True)).skipped == [job.entry.name]
    shard = out / "shards" / job.entry.name
    data, st = shard.read_bytes(), shard.stat()
    at = data.index(b"val2017-00000") + len(b"val2017-0000")  # in the footer's metadata
    with open(shard, "r+b") as fh:
        fh.seek(at)
        fh.write(b"9")
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert plan_run(config, RunOptions(out=out, dry_run=True)).skipped == [job.entry.name]
    again = plan_run(config, RunOptions(out=out, dry_run=True, verify_shards=True))
    assert again.skipped == [] and [j.entry.name for j in again.jobs] == [job.entry.name]
