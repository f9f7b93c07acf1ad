"""A run that grows: a larger --limit, a wider --image-ids, or images added to the split later
plan new shards for the new images only; committed shards stay byte-identical; the manifest
records each extension; shrinking or changing the selection is refused in one readable line."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from distill.errors import DistillError
from distill.identity import label_fingerprint, label_view
from distill.inspect import inspect_path
from distill.inspect_format import format_inspect
from distill.labels.tokens import read_vocabulary
from distill.manifest import MANIFEST_VERSION, read_manifest, write_manifest
from distill.runfolder import resolve_shards
from distill.storage import Location
from distill.viz import read_row
from pipelines.generate_labels import RunOptions, generate_labels, plan_run
from tests.conftest import (
    COCO7_IDS,
    assert_same_sample,
    label_config,
    make_coco7,
    run_until,
    shard_rows,
    write_coco,
)

ROOT = Path(__file__).resolve().parents[2]


def _add_images(root: Path, *ids: int) -> None:
    """Images joining the split later: the annotation files are rewritten with them added (the
    files already there are not touched)."""
    kp = json.loads((root / "annotations" / "person_keypoints_val2017.json").read_text())
    caps = json.loads((root / "annotations" / "captions_val2017.json").read_text())
    for img in kp["images"]:
        img["write"] = False  # already on disk
    new = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 48, "height": 40} for i in ids]
    captions = caps["annotations"] + [
        {"id": 5000 + i, "image_id": i, "caption": "a cat under a red umbrella"} for i in ids]
    write_coco(root, "val2017", kp["images"] + new, kp["annotations"], captions)


def _plan(root: Path, out: Path, **options):
    return plan_run(label_config(root), RunOptions(out=out, **options))


def _shards(out: Path | str) -> dict[str, list[int]]:
    return {e.name: e.image_ids for e in read_manifest(Location(out) / "manifest.json").shards}


def test_a_larger_limit_plans_only_the_next_images_in_new_shards(tmp_path):
    root, out = make_coco7(tmp_path / "coco"), tmp_path / "out"
    _plan(root, out, limit=4)  # writes the plan (no teacher runs at planning)
    first = _shards(out)
    assert first == {"val2017-00000.parquet": [1, 3, 5], "val2017-00001.parquet": [7]}
    dry = _plan(root, out, limit=6, dry_run=True)
    assert [j.entry.name for j in dry.jobs if j.entry.name not in first] == \
        ["val2017-00002.parquet"]
    assert _shards(out) == first  # a dry run writes nothing
    plan = _plan(root, out, limit=6)
    assert _shards(out) == {**first, "val2017-00002.parquet": [9, 12]}  # the old ones as they were
    assert any("grows by 2 image(s) in 1 new shard(s)" in n for n in plan.notes)
    manifest = read_manifest(out / "manifest.json")
    assert manifest.selection == {"limit": 4, "image_ids": None}  # the first plan's
    (ext,) = manifest.extensions
    assert ext["selection"] == {"limit": 6, "image_ids": None}
    assert (ext["images"], ext["shards"]) == (2, ["val2017-00002.parquet"]) and ext["at"]
    # The same --limit again adds nothing; no --limit takes the rest of the split.
    assert _plan(root, out, limit=6, dry_run=True).manifest.extensions == manifest.extensions
    _plan(root, out)
    assert _shards(out)["val2017-00003.parquet"] == [20]
    assert [e["images"] for e in read_manifest(out / "manifest.json").extensions] == [2, 1]
    report = inspect_path(out)
    assert [e["shards"] for e in report["progress"]["extensions"]] == \
        [["val2017-00002.parquet"], ["val2017-00003.parquet"]]
    grew = [line for line in format_inspect(report).splitlines() if "grew" in line]
    assert [line.split(": ", 1)[1] for line in grew] == [
        "+2 images in val2017-00002.parquet", "+1 images in val2017-00003.parquet"]


def test_a_wider_image_ids_adds_only_the_new_ids(tmp_path):
    root, out = make_coco7(tmp_path / "coco"), tmp_path / "out"
    _plan(root, out, image_ids=[12, 3])
    _plan(root, out, image_ids=[3, 12, 1, 20, 9, 5])
    assert _shards(out) == {"val2017-00000.parquet": [3, 12], "val2017-00001.parquet": [1, 5, 9],
                            "val2017-00002.parquet": [20]}
    # A run planned with --image-ids grows to the whole split without it.
    _plan(root, out)
    assert _shards(out)["val2017-00003.parquet"] == [7]


def test_images_joining_the_split_get_new_shards_even_with_lower_ids(tmp_path):
    root, out = make_coco7(tmp_path / "coco"), tmp_path / "out"
    _plan(root, out)
    _add_images(root, 2, 30, 4)
    plan = _plan(root, out)  # the same command: the new images join
    shards = _shards(out)
    assert list(shards)[-1] == "val2017-00003.parquet" and shards["val2017-00003.parquet"] == \
        [2, 4, 30]
    assert [e.image_ids for e in plan.manifest.shards][:3] == [[1, 3, 5], [7, 9, 12], [20]]
    new_job = [j for j in plan.jobs if j.entry.name == "val2017-00003.parquet"]
    assert [it.image_id for it in new_job[0].items] == [2, 4, 30]


def test_a_limit_counts_what_the_run_holds_then_takes_the_lowest_new_ids(tmp_path):
    root, out = make_coco7(tmp_path / "coco"), tmp_path / "out"
    _plan(root, out, limit=3)  # 1, 3, 5
    _add_images(root, 2)  # lower than planned ids
    _plan(root, out, limit=3)  # the run holds 3: nothing joins, nothing is dropped
    assert _shards(out) == {"val2017-00000.parquet": [1, 3, 5]}
    _plan(root, out, limit=5)  # two more: the lowest unplanned ids, the new 2 first
    assert _shards(out)["val2017-00001.parquet"] == [2, 7]


@pytest.mark.parametrize(("first", "then", "words"), [
    ({"limit": 5}, {"limit": 3}, "already plans 5 images and --limit 3 would drop 2 of them"),
    ({"image_ids": [1, 3, 5]}, {"image_ids": [1, 5, 7]},
     "already plans 1 image(s) that --image-ids leaves out (ids 3)"),
    ({}, {"image_ids": [1, 3]}, "leaves out (ids 5, 7, 9, 12, 20)"),
])
def test_shrinking_or_changing_the_selection_is_refused_and_changes_nothing(tmp_path, first,
                                                                            then, words):
    root, out = make_coco7(tmp_path / "coco"), tmp_path / "out"
    _plan(root, out, **first)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(DistillError) as err:
        _plan(root, out, **then)
    assert words in str(err.value) and "a run only grows" in str(err.value)
    assert "{" not in str(err.value)  # words, not a dict repr
    assert (out / "manifest.json").read_bytes() == before


def test_a_shrinking_limit_through_the_cli_is_one_line_and_exit_2(tmp_path):
    root, out = make_coco7(tmp_path / "coco"), tmp_path / "out"
    _plan(root, out, limit=5)
    proc = subprocess.run(
        [sys.executable, "-m", "distill.cli", "run", "generate-labels", "--preset", "demo",
         "--set", f"data.root={root}", "--set", "teachers.text.input_size=160",
         "--shard-size", "3", "--out", str(out), "--no-live", "--limit", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors == [f"error: {out} already plans 5 images and --limit 2 would drop 3 of "
                      "them; a run only grows: pass --limit 5 or more, or no --limit for the "
                      "whole split; or choose another --out, or pass --new-run to start over"]


def test_a_run_from_before_growth_keeps_its_names_and_grows_after_them(tmp_path):
    """A version-1 manifest with `-of-` names: its shards keep their names, new ones follow."""
    root, out = make_coco7(tmp_path / "coco"), tmp_path / "out"
    _plan(root, out, limit=4)
    doc = json.loads((out / "manifest.json").read_text())
    for k, shard in enumerate(doc["shards"]):
        shard["name"] = f"val2017-{k:05d}-of-00002.parquet"
    doc["version"] = 1
    del doc["extensions"]
    (out / "manifest.json").write_text(json.dumps(doc))
    plan = _plan(root, out, limit=7)
    assert list(_shards(out)) == ["val2017-00000-of-00002.parquet",
                                  "val2017-00001-of-00002.parquet", "val2017-00002.parquet"]
    assert plan.manifest.version == MANIFEST_VERSION and len(plan.manifest.extensions) == 1


@pytest.mark.parametrize("where", ["local", "s3"])
def test_growth_never_replaces_a_file_distill_did_not_write(tmp_path, request, where):
    """A user's own file where a grown plan puts a new shard: refused in one line naming it,
    the plan is not extended, the file stays as it was (local disk and S3)."""
    root = make_coco7(tmp_path / "coco")
    out = tmp_path / "out" if where == "local" else f"{request.getfixturevalue('s3_bucket')}/run"
    _plan(root, out, limit=4)  # val2017-00000 [1, 3, 5], val2017-00001 [7]
    mine = Location(out) / "shards" / "val2017-00002.parquet"
    mine.write_bytes(b"my own table")
    before = (Location(out) / "manifest.json").read_bytes()
    for dry_run in (True, False):
        with pytest.raises(DistillError) as err:
            _plan(root, out, limit=7, dry_run=dry_run)
        assert str(err.value).startswith(f"{mine} is not a shard of this run")
        assert "\n" not in str(err.value) and "never replaces" in str(err.value)
    assert mine.read_bytes() == b"my own table"
    assert (Location(out) / "manifest.json").read_bytes() == before  # not extended
    mine.delete()
    _plan(root, out, limit=7)  # once it is moved away, the run grows
    assert list(_shards(out))[-1] == "val2017-00002.parquet"


def test_a_new_run_never_replaces_a_file_distill_did_not_write(tmp_path):
    """--new-run plans afresh: a user's file under a name the old plan did not have is refused
    before anything of the old run is cleared; the old plan's own shards are replaced."""
    root, out = make_coco7(tmp_path / "coco"), tmp_path / "out"
    _plan(root, out, limit=2)  # val2017-00000 only
    (out / "shards").mkdir()
    (out / "shards" / "val2017-00000.parquet").write_bytes(b"distill's (planned)")
    (out / "shards" / "val2017-00001.parquet").write_bytes(b"mine")
    with pytest.raises(DistillError, match=r"val2017-00001.parquet is not a shard of this run"):
        _plan(root, out, limit=7, new_run=True)
    assert (out / "shards" / "val2017-00000.parquet").exists()  # nothing cleared yet
    assert (out / "shards" / "val2017-00001.parquet").read_bytes() == b"mine"
    (out / "shards" / "val2017-00001.parquet").rename(out / "mine.parquet")
    _plan(root, out, limit=7, new_run=True)
    assert not (out / "shards" / "val2017-00000.parquet").exists()  # the old run's: cleared


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((out / "shards").glob("*.parquet"))}


@pytest.mark.slow
def test_a_run_grows_three_ways_and_its_committed_shards_never_change(tmp_path, ray_address,
                                                                     labelled_coco7):
    root, out = make_coco7(tmp_path / "coco"), tmp_path / "out"
    cfg = label_config(root)

    def run(**options):
        return generate_labels(cfg, RunOptions(out=out, live=False, **options))

    run(limit=4)  # [1, 3, 5] [7]
    seen = _digests(out)
    assert list(seen) == ["val2017-00000.parquet", "val2017-00001.parquet"]
    steps = [({"limit": 5}, [9]), ({"image_ids": [1, 3, 5, 7, 9, 12]}, [12]), ({}, [2, 20, 30])]
    for options, new_ids in steps:
        if not options:
            _add_images(root, 2, 30)  # the split gains images, one with a lower id
        result = run(**options)
        now = _digests(out)
        assert {k: now[k] for k in seen} == seen  # every committed shard byte-identical
        (added,) = set(now) - set(seen)
        assert _shards(out)[added] == new_ids
        assert result.summary["this_invocation"]["shards_written"] == 1
        assert result.summary["this_invocation"]["shards_skipped"] == len(seen)
        seen = now
    manifest = read_manifest(out / "manifest.json")
    assert [e.sha256 for e in manifest.shards] == list(seen.values())
    assert [(x["selection"], x["shards"]) for x in manifest.extensions] == [
        ({"limit": 5, "image_ids": None}, ["val2017-00002.parquet"]),
        ({"limit": None, "image_ids": [1, 3, 5, 7, 9, 12]}, ["val2017-00003.parquet"]),
        ({"limit": None, "image_ids": None}, ["val2017-00004.parquet"])]
    everything = sorted([*COCO7_IDS, 2, 30])
    assert sorted(shard_rows(out)) == everything  # every image once
    assert result.summary["images"] == {"planned": 9, "written": 9, "quarantined": 0,
                                        "quarantined_in_plan": 0, "unaccounted": 0}
    # Every reader finds every shard of the grown run.
    assert [p.name for p in resolve_shards(out)] == list(seen)
    report = inspect_path(out)
    assert report["rows"]["total"] == 9 and len(report["rows"]["per_shard"]) == 5
    assert report["progress"]["done"] == 5 and report["progress"]["pending"] == []
    where, row = read_row(out, 8)  # what `distill show RUN --row 8` draws: the last new image
    assert (where, row["image_id"]) == ("val2017-00004.parquet row 2", 30)
    # The vocabulary is rebuilt over all shards, the new shards' tokens included.
    vocab = read_vocabulary(out / "vocab.parquet")
    assert set(vocab.words) == {t for s in shard_rows(out).values() for t in s.tokens}
    # Against a straight run of the same images (the session's labelled_coco7: the same pixels
    # and settings, shards [1 3 5] [7 9 12] [20]) the grown run batched 7 and 9 (both 518×518 at
    # the depth teacher's input) apart: the labels agree up to depth's last float bits.
    straight, grown = shard_rows(labelled_coco7[1]), shard_rows(out)
    for image_id, sample in straight.items():
        assert_same_sample(sample, grown[image_id], depth_levels=1)


@pytest.mark.slow
def test_a_growth_killed_midway_resumes_without_growing_twice(tmp_path, ray_address,
                                                              labelled_coco7):
    # the session's labelled run ([1 3 5] [7 9 12] [20], committed); the split then gains
    # four images: two new shards, [2 4 30] and [31]
    root, out = _copy_run(labelled_coco7, tmp_path)
    _add_images(root, 2, 4, 30, 31)
    before = _digests(out)
    cmd = [sys.executable, "-m", "distill.cli", "run", "generate-labels", "--preset", "demo",
           "--set", f"data.root={root}", "--set", "teachers.text.input_size=160",
           "--set", "teachers.depth.batch_size=2", "--shard-size", "3", "--out", str(out),
           "--no-live", "--address", str(ray_address)]
    assert run_until(cmd, out, 4) == -signal.SIGKILL  # one of two new shards committed
    assert run_until(cmd, out, None) == 0  # the same command finishes the extension
    now = _digests(out)
    assert {k: now[k] for k in before} == before
    assert sorted(shard_rows(out)) == sorted([*COCO7_IDS, 2, 4, 30, 31])
    manifest = read_manifest(out / "manifest.json")
    assert [x["shards"] for x in manifest.extensions] == [["val2017-00003.parquet",
                                                          "val2017-00004.parquet"]]
    assert all(e.sha256 == now[e.name] for e in manifest.shards)


def _copy_run(labelled, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the session's labelled run and of its dataset, free to change: the copy's
    manifest and config.toml name the copied dataset (as if the dataset had moved)."""
    src_root, src_out, _ = labelled
    root, out = tmp_path / "coco", tmp_path / "out"
    shutil.copytree(src_root, root)
    shutil.copytree(src_out, out)
    config = out / "config.toml"
    config.write_text(config.read_text().replace(str(src_root), str(root)))
    manifest = read_manifest(out / "manifest.json")
    manifest.config = label_view(label_config(root))
    manifest.fingerprint = label_fingerprint(manifest.config)
    write_manifest(out / "manifest.json", manifest)
    return root, out


def _edit_annotations(root: Path, image_id: int, caption: str | None = None,
                      width: int | None = None, nose_x: float | None = None) -> None:
    """Change one image's entry in the annotation files (its image file stays as it is)."""
    for name in ("person_keypoints", "captions"):
        path = root / "annotations" / f"{name}_val2017.json"
        doc = json.loads(path.read_text())
        for img in doc["images"]:
            if img["id"] == image_id and width is not None:
                img["width"] = width
        for ann in doc["annotations"]:
            if ann["image_id"] != image_id:
                continue
            if name == "captions" and caption is not None:
                ann["caption"] = caption
            if name == "person_keypoints" and nose_x is not None:
                ann["keypoints"][0] = nose_x
        path.write_text(json.dumps(doc))


def _annotation_notes(plan) -> list[str]:
    return [n for n in plan.notes if "annotations of" in n]


@pytest.mark.slow
def test_changed_annotations_of_committed_images_are_named_in_one_warning(
        tmp_path, labelled_coco7, monkeypatch):
    import pipelines.plan as planning
    from distill.shards import read_shard

    root, out = _copy_run(labelled_coco7, tmp_path)
    reads: list[str] = []
    monkeypatch.setattr(planning, "read_shard", raising=False, value=lambda path, columns=None:
                        reads.append(path.name) or read_shard(path, columns))
    assert not _annotation_notes(_plan(root, out, dry_run=True))
    assert reads == []  # nothing changed: no shard is read to tell
    before = shard_rows(out)
    _edit_annotations(root, 1, caption="a caption written later", width=50)
    _edit_annotations(root, 7, nose_x=30.5)  # one keypoint of each of its two people
    _edit_annotations(root, 20, width=80)  # the same value: no change
    _add_images(root, 30)  # the run grows as well
    plan = _plan(root, out)
    assert _annotation_notes(plan) == [
        "the annotations of 2 committed image(s) changed since they were labelled (ids 1, 7): "
        "their rows keep the file name, size, captions and persons they were labelled with. "
        f"Relabel them with `distill run retry-failed {out} --ids 1,7`, or start over with "
        "--new-run"]
    assert sorted(reads) == ["val2017-00000.parquet", "val2017-00001.parquet"]  # only those
    assert plan.manifest.shards[-1].image_ids == [30]
    after = shard_rows(out)
    assert after[1].coco_captions == before[1].coco_captions and after[1].width == 72
    # A dry run says it too.
    assert len(_annotation_notes(_plan(root, out, dry_run=True))) == 1


def test_retry_failed_ids_must_name_planned_images(tmp_path):
    root, out = make_coco7(tmp_path / "coco"), tmp_path / "out"
    _plan(root, out, limit=4)
    with pytest.raises(DistillError, match=r"--ids names 2 image\(s\) this run does not plan: "
                                           r"9, 12"):
        _plan(root, out, retry_failed=True, retry_ids=[1, 9, 12])


@pytest.mark.slow
def test_retry_failed_ids_relabels_committed_images_with_their_new_annotations(
        tmp_path, labelled_coco7, ray_address):
    from typer.testing import CliRunner

    from distill.cli import app

    root, out = _copy_run(labelled_coco7, tmp_path)
    _edit_annotations(root, 3, caption="a lighthouse at dusk")
    before, digests = shard_rows(out), _digests(out)
    result = CliRunner().invoke(app, ["run", "retry-failed", str(out), "--ids", "3", "--no-live"])
    assert result.exit_code == 0, result.output
    after = shard_rows(out)
    assert after[3].coco_captions == ["a lighthouse at dusk"] * 2
    assert sorted(after) == sorted(before)
    for image_id in (1, 5):  # the shard's other rows stay as they were
        assert_same_sample(after[image_id], before[image_id])
    now = _digests(out)
    assert now["val2017-00000.parquet"] != digests["val2017-00000.parquet"]
    assert {k: v for k, v in now.items() if k != "val2017-00000.parquet"} == \
        {k: v for k, v in digests.items() if k != "val2017-00000.parquet"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["this_invocation"]["images_processed"] == 1
    assert not _annotation_notes(_plan(root, out, dry_run=True))  # relabelled: nothing stale
