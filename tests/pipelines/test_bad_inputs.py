"""Bad inputs through the real CLI: each is quarantined with a clear reason (or, for images a
photo library legitimately holds — grayscale, CMYK, alpha, 16-bit — converted and labelled),
the run completes, and `distill run retry-failed` re-runs only the quarantined samples."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from distill.cli import app
from distill.quarantine import read_quarantine
from distill.shards import iter_samples

pytestmark = pytest.mark.slow

GOOD, TRUNCATED, EMPTY, MISSING, ALPHA, CMYK, GRAY, DEEP, ONE_PIXEL, BOMB, ESCAPE = range(101, 112)
UNKNOWN = 999


def _jpeg(w: int, h: int, mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    rgb.convert(mode).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _bad_coco(root: Path) -> Path:
    split = root / "val2017"
    split.mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(1)
    files: dict[int, tuple[str, bytes | None, int, int]] = {
        GOOD: ("good.jpg", _jpeg(64, 48), 64, 48),
        TRUNCATED: ("truncated.jpg", _jpeg(64, 48, seed=2)[:400], 64, 48),
        EMPTY: ("empty.jpg", b"", 64, 48),
        MISSING: ("missing.jpg", None, 64, 48),
        ALPHA: ("alpha.png", _png(Image.fromarray(
            rng.integers(0, 255, (30, 40, 4), dtype=np.uint8), "RGBA")), 40, 30),
        CMYK: ("cmyk.jpg", _jpeg(40, 30, "CMYK", seed=3), 40, 30),
        GRAY: ("gray.jpg", _jpeg(40, 30, "L", seed=4), 40, 30),
        DEEP: ("deep.png", _png(Image.fromarray(
            rng.integers(0, 65535, (30, 40), dtype=np.uint16))), 40, 30),
        ONE_PIXEL: ("one.png", _png(Image.new("RGB", (1, 1), (9, 9, 9))), 1, 1),
        # 10000 x 9000 = 90 M pixels, above PIL's (and data.max_image_pixels') 89.5 M limit;
        # a 1-bit PNG of zeros is a few kB on disk.
        BOMB: ("bomb.png", _png(Image.new("1", (10000, 9000))), 10000, 9000),
        ESCAPE: ("../escape.jpg", None, 64, 48),
    }
    (root / "escape.jpg").write_bytes(_jpeg(64, 48, seed=5))  # exists, but outside the split
    images = []
    for image_id, (name, data, w, h) in files.items():
        if data is not None:
            (split / name).write_bytes(data)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
    captions = [{"id": i, "image_id": image_id, "caption": f"a photo number {i}"}
                for i, image_id in enumerate([*files, UNKNOWN])]
    persons = [{"id": 1, "image_id": UNKNOWN, "category_id": 1, "keypoints": [0] * 51,
                "num_keypoints": 0, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0}]
    for name, anns in (("person_keypoints", persons), ("captions", captions)):
        (root / "annotations" / f"{name}_val2017.json").write_text(
            json.dumps({"images": images, "annotations": anns}))
    return root


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _rows(out: Path) -> dict[int, object]:
    return {s.image_id: s for p in sorted((out / "shards").glob("*.parquet"))
            for s in iter_samples(p)}


def test_bad_inputs_are_quarantined_and_retry_failed_redoes_only_them(tmp_path, ray_address):
    root = _bad_coco(tmp_path / "coco")
    out = tmp_path / "out"
    common = ["--preset", "demo", "--set", f"data.root={root}", "--set",
              "teachers.text.input_size=160", "--shard-size", "4", "--out", str(out),
              "--no-live"]
    # The caption teacher joins later (below), after retry-failed.
    text = _invoke("run", "generate-labels", *common, "--set", "teachers.caption.enabled=false")
    assert "quarantined" in text and "retry-failed" in text

    rows = _rows(out)
    # Converted, labelled like any photo: alpha over black, CMYK→RGB, gray→RGB, 16-bit→8-bit.
    assert sorted(rows) == [GOOD, ALPHA, CMYK, GRAY, DEEP]
    for image_id in (ALPHA, CMYK, GRAY, DEEP):
        s = rows[image_id]
        assert (s.width, s.height) == (40, 30) and s.depth16.shape == (30, 40)
    failures = {f.image_id: f for f in read_quarantine(out / "quarantine.parquet")}
    expected = {
        TRUNCATED: ("decode", "ImageDecodeError", "truncated"),
        EMPTY: ("decode", "ImageDecodeError", "empty file"),
        MISSING: ("read", "FileNotFoundError", "does not exist"),
        ONE_PIXEL: ("decode", "ImageDecodeError", "1x1"),
        BOMB: ("decode", "ImageDecodeError", "decompression bomb"),
        ESCAPE: ("read", "UnsafePathError", "outside"),
        UNKNOWN: ("read", "UnknownImageId", "refers to image id 999"),
    }
    assert set(failures) == set(expected)
    for image_id, (stage, error_type, words) in expected.items():
        f = failures[image_id]
        assert (f.stage, f.error_type) == (stage, error_type), f
        assert words in f.message.lower(), f
    assert failures[UNKNOWN].shard == "" and failures[TRUNCATED].shard.startswith("val2017-")
    # Every planned image is in exactly one place.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"]["written"] + summary["images"]["quarantined_in_plan"] == 11
    assert summary["images"]["unaccounted"] == 0
    assert summary["images"]["quarantined"] == 7  # images, however many rows name them

    # Fix two of them; retry-failed runs only the quarantined samples.
    split = root / "val2017"
    (split / "truncated.jpg").write_bytes(_jpeg(64, 48, seed=2))
    (split / "missing.jpg").write_bytes(_jpeg(64, 48, seed=6))
    before = {k: v for k, v in rows.items()}
    text = _invoke("run", "retry-failed", str(out), "--no-live")
    after = _rows(out)
    assert sorted(after) == sorted([*rows, TRUNCATED, MISSING])
    for image_id, sample in before.items():  # untouched rows are byte-for-byte the same
        assert after[image_id].image == sample.image
        assert np.array_equal(after[image_id].depth16, sample.depth16)
    left = {f.image_id for f in read_quarantine(out / "quarantine.parquet")}
    assert left == set(expected) - {TRUNCATED, MISSING}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["this_invocation"]["images_processed"] == 6  # the 6 quarantined in the plan
    assert summary["this_invocation"]["retry_failed"] is True

    # Adding the caption teacher now runs it on every written row, including the shard whose
    # images were all quarantined (it has no rows and commits at once).
    _invoke("run", "generate-labels", *common)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shards"] == {"planned": 3, "complete": 3}
    assert summary["this_invocation"]["added_teachers"] == ["caption"]
    assert summary["this_invocation"]["images_processed"] == len(after)
    final = _rows(out)
    assert sorted(final) == sorted(after)
    assert all(s.teacher_captions for s in final.values())
    for image_id, sample in after.items():  # the other teachers' labels are kept as they were
        assert np.array_equal(final[image_id].depth16, sample.depth16)
    assert {f.image_id for f in read_quarantine(out / "quarantine.parquet")} == left
