"""`distill inspect`: every number in the report equals the same quantity counted directly with
pyarrow / PIL on a small run folder built here (two committed shards, one planned but not
written, a quarantine), for a run folder, a folder of shards and one shard, on a local disk and
on an S3-compatible store."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from distill.config import load_config
from distill.errors import ShardError
from distill.identity import label_fingerprint, label_view
from distill.inspect import inspect_path
from distill.inspect_format import format_inspect
from distill.labels.groups import GROUP_NAMES
from distill.manifest import Manifest, make_plan, write_manifest
from distill.quarantine import Failure, replace_failures
from distill.shards import ShardWriter, column_bytes, make_metadata
from distill.storage import file_sha256
from tests.conftest import upload_folder
from tests.test_viz import make_labelled_sample

IDS = list(range(1, 11))  # planned; 4 per shard → 3 shards, the last not written
QUARANTINED = {3: ("decode", "ImageDecodeError", "cannot decode image: truncated"),
               8: ("read", "FileNotFoundError", "file missing")}


def provenance(role: str, checkpoint: str) -> dict:
    return {"role": role, "backend": f"{role}-net", "variant": "pretrained",
            "checkpoint": checkpoint, "revision": "main", "weights_sha256": {"w.pt": "ab" * 32},
            "dtype": "float32", "device": "cpu", "input_size": 64, "versions": {}, "extra": {}}


def samples_for(ids: list[int]) -> list:
    out = []
    for i in ids:
        if i == 1:  # everything, two people
            s = make_labelled_sample(i, people=2)
        elif i == 2:  # empty caption, no tokens, no depth
            s = make_labelled_sample(i, depth=False, caption_text="", tokens=[])
        elif i == 4:  # caption teacher did not run (null captions); no groups; portrait
            s = make_labelled_sample(i, w=48, h=80, caption=False, groups=False, people=0)
        elif i == 5:  # a caption but every word filtered out
            s = make_labelled_sample(i, caption_text="a an the", tokens=[], text=False)
        else:
            s = make_labelled_sample(i, w=100, h=60, people=i % 3, void_sign=i == 6)
        out.append(s)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inspect") / "out"
    config = load_config("demo", overrides=["teachers.text.enabled=false",
                                            "teachers.pose.enabled=false"])
    view = label_view(config)
    fp = label_fingerprint(view)
    plan = make_plan(IDS, "val2017", 4)
    manifest = Manifest("val2017", fp, view, 4, plan)
    roles = ["depth", "panoptic", "caption"]
    for k, entry in enumerate(plan[:2]):
        ids = [i for i in entry.image_ids if i not in QUARANTINED]
        prov = {"depth": provenance("depth", "depth-v1" if k == 0 else "depth-v2"),
                "caption": provenance("caption", "cap")}
        meta = make_metadata(fp, prov, extra={"shard": entry.name, "teachers": roles})
        path = out / "shards" / entry.name
        with ShardWriter(path, meta, row_group_size=2) as writer:
            for s in samples_for(ids):
                writer.write(s)
        entry.rows, entry.sha256 = len(ids), file_sha256(path)
        # shard 1 had the caption teacher added to the plan but not yet run on it
        entry.teachers = {r: "done" for r in (roles if k == 0 else roles[:2])}
        failures = [Failure(i, f"{i:012d}.jpg", entry.name, *QUARANTINED[i])
                    for i in entry.image_ids if i in QUARANTINED]
        replace_failures(out / "quarantine.parquet", [entry.name], entry.image_ids, failures)
    # an annotation problem naming no shard, and a second failure of image 8's kind
    replace_failures(out / "quarantine.parquet", [""], [99],
                     [Failure(99, "", "", "read", "FileNotFoundError", "file missing")])
    write_manifest(out / "manifest.json", manifest)
    (out / "config.toml").write_text("# test\n")
    return out


def shard_files(run: Path) -> list[Path]:
    return sorted((run / "shards").glob("*.parquet"))


def test_rows_schema_and_bytes_match_the_files(run):
    report = inspect_path(run)
    files = shard_files(run)
    assert report["kind"] == "run"
    per_shard = {p.name: pq.read_table(p).num_rows for p in files}
    assert per_shard == {"val2017-00000.parquet": 3, "val2017-00001.parquet": 3}
    assert report["rows"]["per_shard"] == per_shard
    assert report["rows"]["total"] == sum(per_shard.values()) == 6
    schema = report["schema"]
    assert schema["matches"] and not schema["differences"]
    table = pq.read_table(files[0])
    assert schema["columns"] == {f.name: str(f.type) for f in table.schema}
    totals, rows = column_bytes(files)
    assert rows == 6
    assert report["bytes"]["per_column"] == totals
    assert report["bytes"]["per_sample"] == pytest.approx({c: n / 6 for c, n in totals.items()})
    assert report["bytes"]["total"] == sum(totals.values())
    assert report["bytes"]["per_sample"]["image"] > report["bytes"]["per_sample"]["width"]


def test_done_and_pending_come_from_the_manifest(run):
    progress = inspect_path(run)["progress"]
    assert progress["planned"] == 3 and progress["done"] == 1
    assert sorted(progress["teachers"]) == ["caption", "depth", "panoptic"]  # text is off
    status = {s["name"]: s for s in progress["shards"]}
    assert status["val2017-00000.parquet"]["status"] == "done"
    assert status["val2017-00001.parquet"]["teachers_pending"] == ["caption"]
    assert status["val2017-00002.parquet"]["reason"] == "not committed"
    assert progress["pending"] == ["val2017-00001.parquet",
                                   "val2017-00002.parquet"]
    assert progress["planned_images"] == len(IDS)
    verified = inspect_path(run, verify_checksums=True)["progress"]
    assert verified["done"] == 1 and verified["checksums_verified"]


def test_quarantine_counts(run):
    q = inspect_path(run)["quarantine"]
    rows = pq.read_table(run / "quarantine.parquet").to_pylist()
    assert q["rows"] == len(rows) == 3
    assert q["images"] == len({r["image_id"] for r in rows}) == 3
    assert q["by_stage"] == dict(Counter(r["stage"] for r in rows)) == {"decode": 1, "read": 2}
    assert q["by_type"] == dict(Counter(r["error_type"] for r in rows))
    assert q["by_stage_type"] == {"read/FileNotFoundError": 2, "decode/ImageDecodeError": 1}
    assert q["by_reason"] == {"read/FileNotFoundError: file missing": 2,
                              "decode/ImageDecodeError: cannot decode image: truncated": 1}
    assert q["by_shard"]["(no shard)"] == 1


def test_provenance_of_every_teacher(run):
    prov = inspect_path(run)["provenance"]
    fps = {pq.ParquetFile(p).schema_arrow.metadata[b"distill.fingerprint"] for p in
           shard_files(run)}
    assert len(fps) == 1
    assert list(prov["label_fingerprints"]) == [fps.pop().decode().strip('"')]
    assert set(prov["teachers"]) == {"depth", "caption"}
    (cap,) = prov["teachers"]["caption"]
    assert cap["provenance"] == provenance("caption", "cap") and len(cap["shards"]) == 2
    depth = prov["teachers"]["depth"]  # the two shards disagree: both variants are listed
    assert [e["provenance"]["checkpoint"] for e in depth] == ["depth-v1", "depth-v2"]
    assert [e["shards"] for e in depth] == [["val2017-00000.parquet"],
                                            ["val2017-00001.parquet"]]


def _direct_qa(files: list[Path], limit: int | None) -> dict:
    """The QA numbers recomputed straight from the columns, PNGs decoded with PIL."""
    table = pa.concat_tables([pq.read_table(p) for p in files])
    if limit is not None:
        table = table.slice(0, limit)
    rows = table.to_pylist()
    with_caption = [r for r in rows if r["teacher_captions"] is not None]
    group_counts = np.zeros(len(GROUP_NAMES))
    pixels = 0
    void = 0
    text_px = text_total = 0
    for r in rows:
        if r["groups_png"] is not None:
            g = np.asarray(Image.open(io.BytesIO(r["groups_png"])), np.int64)
            pixels += g.size
            for k in range(len(GROUP_NAMES)):
                group_counts[k] += ((g >> k) & 1).sum()
            void += ((g & 0x3FF) == 0).sum()
        if r["text_png"] is not None:
            t = np.asarray(Image.open(io.BytesIO(r["text_png"])))
            text_px += (t == 255).sum()
            text_total += t.size
    depth_min = pc.drop_null(table.column("depth_min"))
    return {
        "rows": len(rows),
        "caption_rows": len(with_caption),
        "empty_caption": sum(1 for r in with_caption
                             if not any(c.strip() for c in r["teacher_captions"])),
        "empty_tokens": sum(1 for r in with_caption if not r["tokens"]),
        "shares": dict(zip(GROUP_NAMES, group_counts / pixels, strict=True)),
        "void": void / pixels,
        "text": text_px / text_total,
        "depth_rows": len(depth_min),
        "depth_min": pc.min_max(depth_min).as_py(),
        "depth_max_mean": pc.mean(table.column("depth_max")).as_py(),
        "people": [len(r["persons"]) for r in rows],
    }


@pytest.mark.parametrize("limit", [None, 3])
def test_qa_statistics_match_a_direct_count(run, limit):
    qa = inspect_path(run, sample_rows=limit)["qa"]
    want = _direct_qa(shard_files(run), limit)
    assert qa["rows"] == qa["pixels"]["rows"] == want["rows"] == (6 if limit is None else 3)
    assert qa["sampled"] == (limit is not None)
    c = qa["captions"]
    assert c["rows_with_caption_teacher"] == want["caption_rows"]
    assert c["empty_caption_rate"] == pytest.approx(want["empty_caption"] / want["caption_rows"])
    assert c["empty_token_rate"] == pytest.approx(want["empty_tokens"] / want["caption_rows"])
    if limit is None:  # image 2 has an empty caption; 2 and 5 have no tokens; 4 no caption
        assert (c["empty_captions"], c["empty_tokens"], want["caption_rows"]) == (1, 2, 5)
    shares = qa["pixels"]["group_shares"]
    assert list(shares) == list(GROUP_NAMES)
    assert shares == pytest.approx(want["shares"])
    assert shares["Persons"] > 0 and shares["Animals"] == 0
    assert qa["pixels"]["no_class_group_share"] == pytest.approx(want["void"])
    assert (qa["pixels"]["no_class_group_share"] > 0) == (limit is None)  # image 6's sign
    assert qa["pixels"]["text_share"] == pytest.approx(want["text"])
    d = qa["depth"]
    assert d["rows_with_depth"] == want["depth_rows"]
    assert d["fraction_with_depth"] == pytest.approx(want["depth_rows"] / want["rows"])
    assert (d["depth_min"]["min"], d["depth_min"]["max"]) == (
        want["depth_min"]["min"], want["depth_min"]["max"])
    assert d["depth_max"]["mean"] == pytest.approx(want["depth_max_mean"])
    p = qa["people"]
    assert p["total"] == sum(want["people"]) and p["max"] == max(want["people"])
    assert p["per_image"] == pytest.approx(np.mean(want["people"]))
    assert p["images_with_people"] == sum(1 for n in want["people"] if n)


def test_text_report_states_each_section(run):
    text = format_inspect(inspect_path(run, sample_rows=3))
    assert "(run folder)" in text
    assert "3 planned, 1 done, 2 pending" in text
    assert "teachers to add: caption" in text and "not committed" in text
    assert "matches distill's shard schema" in text
    assert "depth-v1" in text and "depth-v2" in text
    assert "Quarantine: 3 failure(s) of 3 image(s)" in text
    assert "2 × read/FileNotFoundError: file missing" in text
    assert "QA statistics over the first 3 rows (of 6)" in text
    assert "Persons" in text and "Bytes per sample" in text


def test_a_shards_folder_and_a_single_shard(run, tmp_path):
    folder = inspect_path(run / "shards")
    assert folder["kind"] == "shards" and folder["progress"] is None
    assert folder["quarantine"] is None and folder["rows"]["total"] == 6
    one = shard_files(run)[1]
    single = inspect_path(one)
    assert single["kind"] == "shard"
    assert single["rows"] == {"total": 3, "per_shard": {one.name: 3}}
    assert single["qa"]["rows"] == 3
    assert "(one shard)" in format_inspect(single)
    with pytest.raises(ShardError, match="does not exist"):
        inspect_path(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match=r"no \*\.parquet shards"):
        inspect_path(tmp_path / "empty")


def test_a_foreign_or_broken_file_is_reported_not_fatal(run, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = shard_files(run)[0]
    (folder / good.name).write_bytes(good.read_bytes())
    (folder / "broken.parquet").write_bytes(b"not parquet at all")
    pq.write_table(pa.table({"image_id": [1, 2], "extra": ["a", "b"]}), folder / "other.parquet")
    report = inspect_path(folder)
    by_name = {s["name"]: s for s in report["shards"]}
    assert "error" in by_name["broken.parquet"]
    assert by_name["other.parquet"]["schema_matches"] is False
    assert report["rows"]["total"] == 3 + 2
    assert report["qa"]["rows"] == 3  # only the distill shard is read for QA
    assert set(report["qa"]["shards_skipped"]) == {"broken.parquet", "other.parquet"}
    assert report["schema"]["shards_not_matching"] == ["other.parquet"]
    text = format_inspect(report)
    assert "unreadable" in text and "SCHEMA DIFFERS" in text
    with pytest.raises(ShardError, match="not a readable Parquet"):
        inspect_path(folder / "broken.parquet")


def test_a_users_own_parquet_beside_the_shards_is_not_read(run, tmp_path):
    """The run's shards are what its manifest committed: a user's `notes.parquet` in the shards
    folder is listed as not a shard, never read, and does not count."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    pq.write_table(pa.table({"note": ["mine"], "n": [1]}), copy / "shards" / "notes.parquet")
    report = inspect_path(copy)
    assert [s["name"] for s in report["shards"]] == [p.name for p in shard_files(run)]
    assert report["rows"]["total"] == 6 and report["schema"]["matches"]
    assert report["qa"]["rows"] == 6 and report["qa"]["shards_skipped"] == []
    assert report["progress"]["done"] == 1
    assert report["progress"]["other_files"] == ["notes.parquet"]
    text = format_inspect(report)
    assert "not shards of this run" in text and "notes.parquet" in text
    assert "SCHEMA DIFFERS" not in text and "unreadable" not in text
    folder = inspect_path(copy / "shards")  # the run's shards folder: the same rule
    assert folder["rows"]["total"] == 6 and "notes.parquet" not in folder["rows"]["per_shard"]


def _without_where(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("path", "shards_folder")}


def test_a_run_on_s3_inspects_like_its_local_copy(run, s3_bucket, tmp_path):
    uri = upload_folder(run, f"{s3_bucket}/runs/a")
    local = inspect_path(run, sample_rows=4)
    remote = inspect_path(uri, sample_rows=4)
    assert remote["kind"] == "run" and remote["path"] == uri
    assert remote["shards_folder"] == f"{uri}/shards"
    assert _without_where(remote) == _without_where(local)
    assert remote["rows"]["total"] == 6 and remote["quarantine"]["rows"] == 3
    assert inspect_path(uri, verify_checksums=True)["progress"]["done"] == 1
    # its shards folder, a glob and one shard, by URI
    assert inspect_path(f"{uri}/shards")["rows"] == local["rows"]
    assert inspect_path(f"{uri}/shards/val2017-0000*.parquet")["rows"] == local["rows"]
    one = f"{uri}/shards/{shard_files(run)[1].name}"
    assert inspect_path(one)["rows"] == {"total": 3, "per_shard": {shard_files(run)[1].name: 3}}
    # and the CLI, as a user runs it (the S3 endpoint comes from the environment)
    json_out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "inspect", uri, "--sample-rows",
                           "4", "--json", str(json_out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"{uri} (run folder)" in proc.stdout
    assert "Rows: 6 in 2 readable shard(s)" in proc.stdout
    doc = json.loads(json_out.read_text())
    assert doc["rows"] == local["rows"]
    assert doc["progress"]["done"] == local["progress"]["done"] == 1


def test_show_reads_rows_across_a_runs_committed_shards(run, tmp_path):
    """`distill show RUN --row i` (viz.read_row): rows counted across the committed shards in
    run order, whether given the run folder, its shards folder or a glob."""
    from distill.viz import read_row

    first, second = shard_files(run)
    assert read_row(run, 0) == read_row(first, 0)
    where, row = read_row(run / "shards", 5)
    assert where == f"{second.name} row 2"
    assert row == pq.read_table(second).slice(2, 1).to_pylist()[0]
    assert read_row(f"{run}/shards/*.parquet", 4) == read_row(second, 1)
    with pytest.raises(ShardError, match=r"row 6 is out of range.*has 6 rows"):
        read_row(run, 6)
    with pytest.raises(ShardError, match="out of range"):
        read_row(run, -1)


def test_random_weight_teachers_are_named_at_the_top(run, tmp_path):
    """A shard whose depth teacher was the tiny (random-init) variant: the report lists it under
    `random_weights`, the text says so on its second line and on the teacher's own line; the
    fixture's pretrained run says nothing of the kind."""
    tiny = provenance("depth", "") | {"variant": "tiny", "weights_sha256": {}}
    path = tmp_path / "val2017-00000-of-00001.parquet"
    meta = make_metadata("f" * 16, {"depth": tiny, "caption": provenance("caption", "cap")})
    with ShardWriter(path, meta) as writer:
        for s in samples_for([1]):
            writer.write(s)
    report = inspect_path(path)
    assert report["provenance"]["random_weights"] == ["depth"]
    lines = format_inspect(report).splitlines()
    assert lines[1].startswith("RANDOM WEIGHTS: the depth teacher was not pretrained")
    assert "plumbing tests only" in lines[1]
    (depth_line,) = [line for line in lines if line.startswith("  depth ")]
    assert "RANDOM init (tiny variant)" in depth_line
    (caption_line,) = [line for line in lines if line.startswith("  caption ")]
    assert "RANDOM" not in caption_line and "w.pt abababababab" in caption_line

    pretrained = inspect_path(run, sample_rows=1)
    assert pretrained["provenance"]["random_weights"] == []
    assert "RANDOM" not in format_inspect(pretrained)


def test_teacher_lines_say_whether_the_hub_revision_was_pinned(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    provs = {
        "depth": provenance("depth", "org/depth") | {"commit": commit,
                                                      "commit_source": "hub cache"},
        "panoptic": provenance("panoptic", "org/pan") | {"revision": commit, "commit": commit,
                                                          "commit_source": "pinned"},
        "caption": provenance("caption", "/ckpt/cap") | {"commit": None,
                                                          "commit_source": "local path"},
    }
    path = tmp_path / "val2017-00000-of-00001.parquet"
    with ShardWriter(path, make_metadata("f" * 16, provs)) as writer:
        for s in samples_for([1]):
            writer.write(s)
    lines = format_inspect(inspect_path(path)).splitlines()
    (depth,) = [i for i, line in enumerate(lines) if line.startswith("  depth ")]
    assert "@ main (commit 0123456789ab, not pinned)" in lines[depth]
    assert lines[depth + 1].startswith("    warning: teachers.depth: checkpoint 'org/depth' at "
                                       "revision 'main' is not pinned")
    assert f"--set teachers.depth.revision={commit}" in lines[depth + 1]
    (pan,) = [line for line in lines if line.startswith("  panoptic ")]
    assert f"@ {commit} (pinned)" in pan
    (cap,) = [line for line in lines if line.startswith("  caption ")]
    assert "(local path, no commit)" in cap
    assert sum("not pinned" in line for line in lines) == 2  # the depth line and its warning


def test_a_student_run_or_parquet_that_is_no_shard_is_one_line(tmp_path):
    """`distill inspect STUDENT_RUN` says what the folder is and what inspect takes (exit 2)
    instead of reading its vocab.parquet as a shard; Parquet files none of which is a shard
    are refused in one line too (among real shards they are reported, see above)."""
    from typer.testing import CliRunner

    from distill.cli import app
    from tests.test_runfolder import student_run_folder

    student = student_run_folder(tmp_path / "student")
    res = CliRunner().invoke(app, ["inspect", str(student.root)])
    assert res.exit_code == 2 and res.stderr.strip().splitlines() == [
        f"error: {student.root} is a train-student run folder (checkpoints/, metrics.jsonl, "
        "vocab.parquet), not labels: pass a generate-labels run folder, its shards/ folder, a "
        "glob or .parquet shards"]
    res = CliRunner().invoke(app, ["show", str(student.root), "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "is a train-student run folder" in res.stderr
    assert not (tmp_path / "x.png").exists()
    tables = tmp_path / "tables"
    tables.mkdir()
    pq.write_table(pa.table({"note": ["mine"]}), tables / "notes.parquet")
    with pytest.raises(ShardError, match=rf"^{tables} holds no label shards: its Parquet files "
                       r"\(notes.parquet\) lack distill's shard columns \(image_id, file_name"):
        inspect_path(tables)
    with pytest.raises(ShardError, match=r"notes.parquet is not a label shard: it is Parquet "
                       "without distill's shard columns"):
        inspect_path(tables / "notes.parquet")
