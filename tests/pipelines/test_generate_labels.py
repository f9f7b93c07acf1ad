"""generate-labels end to end on Ray (the session's local instance): shards, manifest,
quarantine, vocab, summary; resume, fingerprint refusal, adding a teacher, retry-failed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from distill.coco import open_dataset
from distill.errors import DistillError, FingerprintMismatch
from distill.labels.tokens import read_vocabulary
from distill.manifest import read_manifest
from distill.quarantine import read_quarantine
from distill.shards import read_metadata
from pipelines.generate_labels import RunOptions, generate_labels, plan_run
from tests.conftest import COCO7_IDS as IDS
from tests.conftest import assert_same_sample, label_config, shard_rows

pytestmark = pytest.mark.slow

ROLES = ["depth", "panoptic", "text", "caption", "pose"]  # the demo preset's teachers


@pytest.fixture(scope="module")
def full_run(labelled_coco7):
    return labelled_coco7[1], labelled_coco7[2]


def test_every_image_lands_in_one_row_with_every_column_decodable(full_run, coco7):
    out, result = full_run
    samples = shard_rows(out)
    assert sorted(samples) == sorted(IDS)  # all good images written, none twice
    assert read_quarantine(out / "quarantine.parquet") == []
    truth = open_dataset(coco7, "val2017").by_id()
    for image_id, s in samples.items():
        rec = truth[image_id]
        assert (s.width, s.height) == (rec.width, rec.height)
        assert s.coco_captions == rec.captions
        assert [p.keypoints.tolist() for p in s.persons] == \
               [p.keypoints.tolist() for p in rec.persons]
        assert s.image == Path(rec.path).read_bytes()  # the original bytes: shards are self-contained
        for name in ("depth16", "normals", "panoptic", "groups", "text_mask"):
            assert getattr(s, name).shape[:2] == (s.height, s.width), name
        assert s.depth16.dtype == np.uint16 and s.depth_max >= s.depth_min
        assert s.teacher_captions and s.tokens is not None
    # Plain pyarrow reads every shard; rows are sorted by id; small row groups.
    for path in sorted((out / "shards").glob("*.parquet")):
        table = pq.read_table(path)
        ids = table.column("image_id").to_pylist()
        assert ids == sorted(ids)
        meta = read_metadata(path)
        assert set(meta["provenance"]) == set(ROLES)
        assert meta["fingerprint"] == result.plan.manifest.fingerprint
        assert {"schema_version", "versions"} <= set(meta)
    assert [p.name for p in sorted((out / "shards").glob("*.parquet"))] == [
        "val2017-00000.parquet", "val2017-00001.parquet",
        "val2017-00002.parquet"]
    # No temp files left behind.
    assert not list((out / "shards").glob(".*"))


def test_manifest_vocab_and_summary_describe_the_run(full_run):
    out, _ = full_run
    manifest = read_manifest(out / "manifest.json")
    assert [e.image_ids for e in manifest.shards] == [[1, 3, 5], [7, 9, 12], [20]]
    assert all(e.done(ROLES) and e.rows == len(e.image_ids) for e in manifest.shards)
    vocab = read_vocabulary(out / "vocab.parquet")
    all_tokens = [t for s in shard_rows(out).values() for t in s.tokens]
    assert set(vocab.words) == set(all_tokens)
    assert vocab.counts == sorted(vocab.counts, reverse=True)
    assert np.abs(vocab.vectors).max() == pytest.approx(1.0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == {"planned": 7, "written": 7, "quarantined": 0,
                                 "quarantined_in_plan": 0, "unaccounted": 0}
    assert set(summary["teachers"]) == set(ROLES)
    assert all(t["images"] == 7 and t["images_per_second"] > 0
               for t in summary["teachers"].values())
    assert summary["bytes"]["per_sample"]["image"] > 0
    assert summary["shards"] == {"planned": 3, "complete": 3}


@pytest.fixture(scope="module")
def pools_run(pools_cli_run) -> Path:
    """The same run in the pools layout (an actor pool per teacher, on Ray Data), by the CLI."""
    assert pools_cli_run.returncode == 0, pools_cli_run.stderr[-3000:]
    return pools_cli_run.out


def test_both_layouts_write_the_same_labels(full_run, pools_run):
    """The default on CPU teachers is the fused layout (every stage in one actor per CPU);
    the pools layout cuts the same blocks and runs the same stages: the same rows, column for
    column, and the same manifest fingerprint."""
    got, want = shard_rows(full_run[0]), shard_rows(pools_run)
    assert sorted(got) == sorted(want) == sorted(IDS)
    for image_id, sample in want.items():
        assert_same_sample(got[image_id], sample)
    assert full_run[1].plan.manifest.fingerprint == \
        read_manifest(pools_run / "manifest.json").fingerprint
    summary = json.loads((pools_run / "summary.json").read_text())
    assert summary["images"]["written"] == len(IDS)


def test_the_pools_graph_holds_a_bounded_window_of_the_object_store(coco7, ray_address,
                                                                     tmp_path):
    """Ray Data's object store limit is the graph's window (`object_store_budget`), not half the
    store: memory stays flat whatever the number of images (issue 16). Set where the pools
    layout starts, in the driver (the run above is another process)."""
    import ray.data

    from pipelines.cluster import ClusterInfo
    from pipelines.graph import _Pools

    options = RunOptions(out=tmp_path / "out", dry_run=True, live=False)
    plan = plan_run(label_config(coco7, "ray.layout=pools"), options)
    ray.data.DataContext._set_current(ray.data.DataContext())  # none set by an earlier test
    _Pools(plan, options, ClusterInfo("local", 2, 0, 1)).close()
    limits = ray.data.DataContext.get_current().execution_options.resource_limits
    assert 0 < limits.object_store_memory <= 1 << 30


def test_rerunning_the_same_command_skips_complete_shards(full_run, coco7):
    out, _ = full_run
    before = {p.name: p.read_bytes() for p in (out / "shards").glob("*.parquet")}
    again = generate_labels(label_config(coco7), RunOptions(out=out, live=False))
    assert again.plan.jobs == [] and len(again.plan.skipped) == 3
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("*.parquet")} == before


def test_dry_run_on_a_complete_run_says_there_is_nothing_to_do(full_run, coco7, tmp_path):
    """Issue 26: `--dry-run` on a complete run was a traceback (max() of no teachers, sizing
    the fused workers for a plan with no stage)."""
    out = tmp_path / "out"
    shutil.copytree(full_run[0], out)
    overrides = [f"data.root={coco7}", "teachers.text.input_size=160", "shards.shard_size=3",
                 "teachers.depth.batch_size=2"]  # label_config's
    proc = subprocess.run(
        [sys.executable, "-m", "distill.cli", "run", "generate-labels", "--preset", "demo",
         *[a for o in overrides for a in ("--set", o)], "--out", str(out), "--dry-run"],
        capture_output=True, text=True)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "nothing to do: all 3 shard(s) of the 7 planned images are committed" in proc.stdout


def test_a_damaged_shard_is_redone_and_nothing_else(full_run, coco7, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(full_run[0], out)
    victim = out / "shards" / "val2017-00001.parquet"
    victim.write_bytes(victim.read_bytes()[:1000])  # a torn copy: footer unreadable
    plan = plan_run(label_config(coco7), RunOptions(out=out, dry_run=True))
    assert [j.entry.name for j in plan.jobs] == [victim.name]
    assert len(plan.skipped) == 2


def test_a_shard_that_does_not_account_for_its_images_is_redone(full_run, coco7, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(full_run[0], out)
    doc = json.loads((out / "manifest.json").read_text())
    doc["shards"][0]["image_ids"].append(2)  # planned, but neither written nor quarantined
    (out / "manifest.json").write_text(json.dumps(doc))
    plan = plan_run(label_config(coco7), RunOptions(out=out, dry_run=True))
    assert [j.entry.name for j in plan.jobs] == ["val2017-00000.parquet"]


def test_new_run_checks_the_new_request_before_clearing_the_old_run(full_run, coco7, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(full_run[0], out)
    before = sorted(p.name for p in out.rglob("*") if p.is_file())
    with pytest.raises(DistillError, match=r"\[999\]"):
        plan_run(label_config(coco7), RunOptions(out=out, new_run=True, image_ids=[999]))
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == before


def test_a_changed_config_is_refused_unless_new_run(full_run, coco7, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(full_run[0], out)
    changed = label_config(coco7, "labels.text_score_threshold=0.7")
    with pytest.raises(FingerprintMismatch, match=r"labels\.text_score_threshold: 0\.5 → 0\.7"):
        plan_run(changed, RunOptions(out=out))
    # Runtime-only settings (batch sizes, workers) are not part of a run's identity.
    same = label_config(coco7, "teachers.depth.batch_size=1", "teachers.text.concurrency=2")
    assert plan_run(same, RunOptions(out=out, dry_run=True)).jobs == []
    with pytest.raises(FingerprintMismatch, match="--limit"):
        plan_run(label_config(coco7), RunOptions(out=out, limit=2))
    plan = plan_run(changed, RunOptions(out=out, new_run=True))
    assert len(plan.jobs) == 3 and not list((out / "shards").glob("*.parquet"))
    assert any("--new-run: cleared" in n for n in plan.notes)


def test_adding_a_teacher_runs_only_that_teacher(full_run, coco7, tmp_path):
    out = tmp_path / "out"
    first = generate_labels(label_config(coco7, "teachers.caption.enabled=false"),
                            RunOptions(out=out, live=False))
    assert first.summary["stages"].keys() == {"decode", "depth", "panoptic", "text", "pose",
                                              "postprocess"}
    assert all(s.teacher_captions is None for s in shard_rows(out).values())
    plan = plan_run(label_config(coco7), RunOptions(out=out, dry_run=True))
    assert plan.added_roles == ["caption"]
    assert plan.stage_names() == ["decode", "caption", "postprocess"]
    assert {j.kind for j in plan.jobs} == {"add-teacher"}
    second = generate_labels(label_config(coco7), RunOptions(out=out, live=False))
    counts = {k: v["images"] for k, v in second.summary["stages"].items()}
    assert counts == {"decode": 14, "depth": 7, "panoptic": 7, "text": 7, "pose": 7,
                      "caption": 7, "postprocess": 14}  # only caption ran again
    # The result equals a run that had every teacher from the start.
    full = shard_rows(full_run[0])
    for image_id, sample in shard_rows(out).items():
        assert_same_sample(sample, full[image_id])
    meta = read_metadata(out / "shards" / "val2017-00000.parquet")
    assert set(meta["provenance"]) == set(ROLES)
    assert read_manifest(out / "manifest.json").fingerprint == full_run[1].plan.manifest.fingerprint


def test_a_teacher_that_cannot_load_fails_the_run_clearly(coco7, ray_address, tmp_path):
    cfg = label_config(coco7, "teachers.depth.variant=pretrained",
                       f"teachers.depth.checkpoint={tmp_path / 'no-such-dav2'}")
    with pytest.raises(DistillError, match="no-such-dav2"):
        generate_labels(cfg, RunOptions(out=tmp_path / "out", live=False))
    assert not list((tmp_path / "out" / "shards").glob("*.parquet"))


@pytest.mark.shared
def test_coco_mini_val_end_to_end(coco_mini, ray_address, tmp_path):
    out = tmp_path / "out"
    cfg = label_config(coco_mini, "shards.shard_size=32", "teachers.text.input_size=128")
    result = generate_labels(cfg, RunOptions(out=out, live=False))
    truth = open_dataset(coco_mini, "val2017")
    samples = shard_rows(out)
    failures = read_quarantine(out / "quarantine.parquet")
    written, quarantined = set(samples), {f.image_id for f in failures}
    assert not written & quarantined
    assert written | quarantined == {r.image_id for r in truth.records}
    assert len(samples) == len(truth.records) == 79
    for record in truth.records:
        s = samples[record.image_id]
        assert s.coco_captions == record.captions
        assert len(s.persons) == len(record.persons)
        for got, want in zip(s.persons, record.persons, strict=True):
            assert np.array_equal(got.keypoints, want.keypoints)
            assert got.bbox == pytest.approx(want.bbox)
    assert result.summary["shards"] == {"planned": 3, "complete": 3}


def test_a_resume_in_another_precision_is_refused(tmp_path, labelled_coco7, ray_address):
    from distill.errors import FingerprintMismatch
    from distill.manifest import read_manifest, write_manifest

    root, labelled, _ = labelled_coco7
    recorded = read_manifest(labelled / "manifest.json").dtypes
    assert set(recorded) == set(ROLES)
    assert set(recorded.values()) == {"float32"}  # CPU: "auto" resolved to float32
    out = tmp_path / "run"
    shutil.copytree(labelled, out)
    manifest = read_manifest(out / "manifest.json")
    manifest.dtypes["depth"] = "float16"  # as if the first shards were labelled on a GPU
    write_manifest(out / "manifest.json", manifest)
    (out / "shards" / manifest.shards[-1].name).unlink()  # one shard left to label
    with pytest.raises(FingerprintMismatch, match=r"float16.*never mixes precisions"):
        generate_labels(label_config(root), RunOptions(out=out, live=False))
    assert not (out / "shards" / manifest.shards[-1].name).exists()


def test_a_fused_worker_lost_mid_run_is_replaced_and_nothing_is_lost(coco7, full_run, tmp_path,
                                                                       monkeypatch):
    """A worker that dies (here killed; on a cluster, with its node) has its queued blocks
    sent to the others and a replacement started; the run writes every image, the same rows."""
    import ray

    import pipelines.graph as graph

    killed: list[object] = []

    class KillsOne(graph._Fused):
        def items(self):
            for item in super().items():
                if not killed:
                    killed.append(self.actors[0])
                    ray.kill(self.actors[0])
                yield item

    monkeypatch.setattr(graph, "_Fused", KillsOne)
    out = tmp_path / "out"
    result = generate_labels(label_config(coco7), RunOptions(out=out, live=False))
    assert killed
    assert result.summary["images"]["written"] == len(IDS)
    got, want = shard_rows(out), shard_rows(full_run[0])
    assert sorted(got) == sorted(want)
    for image_id, sample in want.items():
        assert_same_sample(got[image_id], sample)
