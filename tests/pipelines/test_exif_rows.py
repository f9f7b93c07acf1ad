"""EXIF orientation is a per-row fact (the shard's `exif_transpose` column): a plain folder's
photos are labelled as a viewer shows them, and every later decoder of the stored `image` (the
student's targets, `distill show`) turns them the same way; a COCO row keeps its stored pixels.
The reference for "as a viewer shows it" is Pillow's own `ImageOps.exif_transpose`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from distill.labels.letterbox import Letterbox
from distill.layers.form import from_sample
from distill.student.targets import build_example
from distill.viz import sheet_for_sample, sheet_layout
from pipelines.generate_labels import RunOptions, generate_labels
from tests.conftest import label_config, shard_rows

STORED_W, STORED_H = 64, 40  # as stored: landscape, a red marker in the stored top-left corner
S = 64  # the student's canvas: the upright image's long side, so it is letterboxed at scale 1


def _photo(orientation: int) -> bytes:
    pixels = np.full((STORED_H, STORED_W, 3), 60, np.uint8)
    pixels[:16, :16] = (230, 20, 20)
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: turn 90° clockwise to view; 3: turn 180°
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _shown(data: bytes) -> np.ndarray:
    """The pixels a viewer shows (Pillow's EXIF transpose)."""
    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))


def _stored(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def _run(root: Path, out: Path) -> dict[int, object]:
    """Label `root` with the depth teacher alone (the others add time, not orientation)."""
    off = [f"teachers.{role}.enabled=false" for role in ("panoptic", "text", "caption")]
    generate_labels(label_config(root, "data.split=val2017", *off), RunOptions(out=out, live=False))
    return shard_rows(out)


def _student_plane(sample) -> np.ndarray:
    """The letterboxed image the student trains on for this row, (S, S, 3)."""
    example = build_example(sample, S, None, 4, (6.0, 2.0), None, None)
    return example.image.transpose(1, 2, 0)


@pytest.mark.slow
def test_a_plain_folder_row_is_upright_for_every_decoder(tmp_path, ray_address):
    folder = tmp_path / "photos" / "val2017"
    folder.mkdir(parents=True)
    photos = {"a_turned.jpg": _photo(6), "b_upside_down.jpg": _photo(3)}
    for name, data in photos.items():
        (folder / name).write_bytes(data)
    rows = {s.file_name: s for s in _run(tmp_path / "photos", tmp_path / "out").values()}
    assert sorted(rows) == sorted(photos)
    for name, data in photos.items():
        sample, shown = rows[name], _shown(data)
        assert sample.exif_transpose is True and sample.image == data  # the file's own bytes
        assert (sample.width, sample.height) == shown.shape[1::-1]  # the size a viewer shows
        assert sample.depth16.shape == shown.shape[:2]
        # The student's image plane is the upright photo, letterboxed like the labels.
        lb = Letterbox.fit(sample.width, sample.height, S)
        plane = _student_plane(sample)
        assert _diff(plane, lb.image(shown)) < 3.0, name
        if sample.width == STORED_W:  # 180°: the stored size, so check it is not as stored
            assert _diff(plane, lb.image(_stored(data))) > 8.0
        # `distill show`: the image panel is the upright photo too.
        labels = from_sample(sample)
        sheet = np.asarray(sheet_for_sample(sample))
        left, top, right, bottom = sheet_layout(labels).boxes["image"]
        panel = sheet[top:bottom, left:right]
        expect = np.asarray(Image.fromarray(shown).resize(panel.shape[1::-1],
                                                          Image.Resampling.BILINEAR))
        assert _diff(panel, expect) < 8.0, name
    # The marker moved where a viewer sees it: 90° clockwise → top right; 180° → bottom right.
    turned = _student_plane(rows["a_turned.jpg"])  # upright 40 x 64, columns 12..52 of 64
    assert turned[:16, 36:52, 0].mean() > 180 > 100 > turned[:16, 12:28, 0].mean()
    flipped = _student_plane(rows["b_upside_down.jpg"])  # upright 64 x 40, rows 12..52 of 64
    assert flipped[36:52, 48:, 0].mean() > 180 > 100 > flipped[12:28, :16, 0].mean()


def test_a_coco_row_keeps_the_stored_pixels(tmp_path):
    """COCO's annotations refer to the stored pixels: the row says so (False) and decodes as
    stored. (The decode and post-process stages in-process: the Ray run above is the same
    code.)"""
    from distill.coco import open_dataset
    from distill.shards import decode_row
    from pipelines.stages import Item, decode_items, postprocess_items

    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    data = _photo(6)
    (root / "val2017" / "000000000001.jpg").write_bytes(data)
    doc = {"images": [{"id": 1, "file_name": "000000000001.jpg", "width": STORED_W,
                       "height": STORED_H}], "annotations": []}
    for name in ("person_keypoints", "captions"):
        (root / "annotations" / f"{name}_val2017.json").write_text(json.dumps(doc))
    cfg = label_config(root, "data.split=val2017")
    (record,) = open_dataset(root, "val2017").records
    item = Item(1, "s", "val2017", ("depth",), record.file_name, record)
    postprocess_items(decode_items([item], cfg.data), cfg.labels)
    assert item.ok, item.failure
    sample = decode_row(item.encoded)
    assert sample.exif_transpose is False and sample.image == data
    assert (sample.width, sample.height) == (STORED_W, STORED_H)
    lb = Letterbox.fit(STORED_W, STORED_H, S)
    assert _diff(_student_plane(sample), lb.image(_stored(data))) < 3.0
