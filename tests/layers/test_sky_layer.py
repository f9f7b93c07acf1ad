"""A label layer defined in one file (`tests/layers/sky_layer.py`) works end to end once
registered: the student learns it as one more channel and is scored on it, `distill show` and
`distill view` draw it, `distill inspect` reports its statistic and the viewer sorts by it
(issue 27)."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from distill.layers import LayerError, register, unregister
from tests.layers.sky_layer import LAYER, sky_mask
from tests.test_shards import make_sample


@pytest.fixture
def sky():
    register(LAYER)
    try:
        yield LAYER
    finally:
        unregister(LAYER.name)


def test_registering_twice_or_a_taken_column_fails_loudly(sky):
    with pytest.raises(LayerError, match="already registered"):
        register(LAYER)


def test_the_student_learns_the_layer_as_one_more_channel(sky):
    from distill.student import layout
    from distill.student.targets import build_example, present_keys

    assert layout.channels() == layout.CHANNELS + 1 and layout.modalities()["sky"] == slice(44, 45)
    assert present_keys()[-1] == "sky"
    sample = make_sample(5, h=24, w=32)
    sample.panoptic = np.full((24, 32), 255, np.uint8)
    sample.panoptic[:8] = 187  # sky-other-merged: the top third
    ex = build_example(sample, 32, None, 4, (3.0, 1.0), None, None)
    assert ex.target.shape[0] == 45 and ex.present["sky"]
    # the letterbox (32x24 into 32x32) pads 4 rows above: sky covers rows 4..11
    assert (ex.target[44, 4:12] == 255).all() and (ex.target[44, 12:] == 0).all()
    assert (ex.target[44, :4] == 0).all()
    sample.panoptic = None
    assert not build_example(sample, 32, None, 4, (3.0, 1.0), None, None).present["sky"]


@pytest.mark.slow
def test_a_one_file_layer_is_learned_shown_viewed_and_inspected(sky, labelled_coco7,
                                                                 tmp_path):
    from starlette.testclient import TestClient

    from distill.config import load_config
    from distill.images import decode_png
    from distill.inspect import inspect_path
    from distill.layers.form import from_sample
    from distill.shards import iter_samples
    from distill.student.train import TrainOptions, train_student
    from distill.view import create_app
    from distill.viz import panel_boxes, sheet_for_row

    _, run, _ = labelled_coco7  # the 7 coco7 images, labelled in-process on the session's Ray
    shards = sorted((run / "shards").glob("*.parquet"))
    rows = [r for p in shards for r in pq.read_table(p).to_pylist()]
    shares = [None if r["panoptic_png"] is None else float(sky_mask(decode_png(
        r["panoptic_png"])).mean()) for r in rows]

    # The student learns it: one epoch, one more output channel.
    student = tmp_path / "student"
    cfg = load_config("demo", overrides=["student.input_size=64", "train.num_workers=0",
                                         "train.batch_size=4", "train.epochs=1"])
    train_student(cfg, TrainOptions(shards=run / "shards", out=student, progress=False))
    history = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/sky" in json.dumps(h) for h in history)  # its MSE entered the loss

    # `distill show` draws it in a panel of its own.
    sample = next(iter_samples(shards[0]))
    boxes = panel_boxes(from_sample(sample))
    assert "sky" in boxes
    sheet = sheet_for_row(run / "shards", 0)
    assert sheet.size[1] > boxes["sky"][3]

    # `distill inspect` reports its statistic over the rows that have it.
    qa = inspect_path(run)["qa"]["layers"]["sky"]
    sized = [(s, r["width"] * r["height"]) for s, r in zip(shares, rows, strict=True)
             if s is not None]
    assert qa["rows"] == len(sized)
    assert qa["sky_share"] == pytest.approx(sum(s * n for s, n in sized)
                                            / sum(n for _, n in sized))

    # `distill view`: sorts by it, lists it as a layer of the teachers and of the student, and
    # draws both.
    viewed = shutil.copytree(run, tmp_path / "run")  # (the viewer writes its statistics there)
    with TestClient(create_app(viewed, checkpoint=str(student))) as client:
        assert "sky_share" in client.get("/api/meta").json()["sort_keys"]
        ranked = client.get("/api/rows", params={"sort": "sky_share", "order": "desc"})
        assert ranked.status_code == 200
        doc = client.get(f"/api/sample/{shards[0].name}/0").json()
        assert "sky" in doc["layers"] and "sky" in doc["student"]["layers"]
        assert doc["student"]["scores"]["mse"]["sky"] is not None  # scored like any modality
        for source in ("teacher", "student"):
            got = client.get(f"/layer/{source}/{shards[0].name}/0/sky.png")
            assert got.status_code == 200, got.text
            assert Image.open(io.BytesIO(got.content)).mode == "RGBA"
