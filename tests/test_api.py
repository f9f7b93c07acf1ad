"""The Python API (`import distill`): light to import, the same checks as the CLI, and
`open_run` decoding what the shards hold."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import distill
from distill.labels.depth import DEPTH_LEVELS
from distill.labels.groups import GROUP_NAMES
from distill.shards import iter_samples


def test_import_distill_loads_neither_torch_nor_ray():
    code = ("import sys, distill; distill.load_config; "
            "print('torch' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "False"]
    assert set(distill.__all__) <= set(dir(distill))
    with pytest.raises(AttributeError):
        distill.no_such_thing  # noqa: B018


def test_load_config_takes_a_mapping_or_set_strings():
    cfg = distill.load_config(preset="demo", overrides={
        "train.epochs": 2, "data.root": 'my "odd" folder', "teachers.text.enabled": False,
        "train.lr_start": 0.5})
    assert (cfg.train.epochs, cfg.data.root, cfg.teachers.text.enabled) == \
        (2, 'my "odd" folder', False)
    assert cfg.train.lr_start == 0.5
    same = distill.load_config(preset="demo", overrides=["train.epochs=2"])
    assert same.train.epochs == 2
    with pytest.raises(distill.DistillError, match=r"train\.epochs"):
        distill.load_config(preset="demo", overrides={"train.epochs": -1})


def test_open_run_decodes_every_row(labelled_coco7):
    _, out, result = labelled_coco7
    run = distill.open_run(out)
    assert len(run) == result.summary["images"]["written"] == 7
    assert run.manifest.fingerprint == result.plan.manifest.fingerprint
    assert run.config.data.split == "val2017" and run.quarantine() == []
    stored = {s.image_id: s for p in run.shards for s in iter_samples(p)}
    for s in run.samples():
        row = stored[s.image_id]
        assert s.image.shape == (row.height, row.width, 3) and s.image.dtype == np.uint8
        assert np.array_equal(s.depth, row.depth16.astype(np.float32) / DEPTH_LEVELS)
        assert s.normals.shape == (row.height, row.width, 3)
        assert np.allclose(np.linalg.norm(s.normals, axis=-1), 1, atol=0.02)
        assert s.groups.shape == (len(GROUP_NAMES), row.height, row.width)
        assert s.groups.dtype == bool and s.group_names == tuple(GROUP_NAMES)
        assert np.array_equal(s.text_mask, row.text_mask)
        assert s.people.shape == (len(row.persons), 17, 3)
        assert s.tokens == row.tokens and s.captions == row.teacher_captions
        assert s.labels.width == row.width and s.labels.source == "teachers"
    one = distill.open_run(run.shards[0])  # a single shard reads too, and knows its run
    assert len(one) == len(list(one.rows(columns=["image_id"])))
    assert one.manifest.fingerprint == run.manifest.fingerprint


def test_open_run_of_loose_shards_has_no_manifest(labelled_coco7, tmp_path):
    _, out, _ = labelled_coco7
    shard = next((out / "shards").glob("*.parquet"))
    (tmp_path / shard.name).write_bytes(shard.read_bytes())
    run = distill.open_run(tmp_path / shard.name)
    assert len(run) > 0
    with pytest.raises(distill.DistillError, match="not in a generate-labels run folder"):
        run.manifest  # noqa: B018


def test_create_teacher_by_backend_or_role():
    image = np.zeros((30, 40, 3), np.uint8)
    depth = distill.create_teacher("depth-anything-v2", variant="tiny")
    assert depth.predict([image])[0].depth.shape == (30, 40)
    by_role = distill.create_teacher("depth")
    assert type(by_role) is type(depth)
    with pytest.raises(distill.DistillError, match="unknown teacher 'depth-anything'"):
        distill.create_teacher("depth-anything")
    with pytest.raises(distill.DistillError, match="checkpoint is empty"):
        distill.create_teacher("depth", variant="pretrained")
