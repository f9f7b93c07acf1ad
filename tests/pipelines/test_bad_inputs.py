"""Bad inputs through the real CLI: each is quarantined with a clear reason (or, for images a
photo library legitimately holds — grayscale, CMYK, alpha, 16-bit — converted and labelled),
the run completes, and `distill run retry-failed` re-runs only the quarantined samples.
`distill data check --decode` counts the same data truly, and the decode stage keeps COCO's
stored pixels but shows a plain folder's photos as a viewer does (EXIF orientation)."""

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

GOOD, TRUNCATED, EMPTY, MISSING, ALPHA, CMYK, GRAY, DEEP, ONE_PIXEL, BOMB, ESCAPE = range(101, 112)
CORRUPT, FOLDER, DUPLICATE = range(112, 115)
UNKNOWN = 999
HUGE = 2**63  # one above int64: the shards' and the quarantine's image_id type


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
        CORRUPT: ("corrupt.jpg", b"<html>not found</html>", 64, 48),  # PIL's message has an address
        FOLDER: ("folder.jpg", None, 64, 48),  # a directory named like an image
        DUPLICATE: ("dup-a.jpg", _jpeg(64, 48, seed=7), 64, 48),  # also listed as dup-b.jpg
        HUGE: ("huge.jpg", _jpeg(64, 48, seed=8), 64, 48),  # crashed the whole run at commit
    }
    (root / "escape.jpg").write_bytes(_jpeg(64, 48, seed=5))  # exists, but outside the split
    (split / "folder.jpg").mkdir()
    (split / "dup-b.jpg").write_bytes(_jpeg(64, 48, seed=9))
    images = []
    for image_id, (name, data, w, h) in files.items():
        if data is not None:
            (split / name).write_bytes(data)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
    images[0]["width"] = "64"  # GOOD: a number written as text is the number, not a mismatch
    captions = [{"id": i, "image_id": image_id, "caption": f"a photo number {i}"}
                for i, image_id in enumerate([*files, UNKNOWN])]
    captions.append({"id": 500, "image_id": GOOD, "caption": None})  # left out, listed
    persons = [{"id": 1, "image_id": UNKNOWN, "category_id": 1, "keypoints": [0] * 51,
                "num_keypoints": 0, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0}]
    for name, anns, extra in (
            ("person_keypoints", persons, []),
            ("captions", captions, [{"id": DUPLICATE, "file_name": "dup-b.jpg", "width": 64,
                                     "height": 48}])):
        (root / "annotations" / f"{name}_val2017.json").write_text(
            json.dumps({"images": images + extra, "annotations": anns}))
    return root


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _rows(out: Path) -> dict[int, object]:
    return {s.image_id: s for p in sorted((out / "shards").glob("*.parquet"))
            for s in iter_samples(p)}


@pytest.mark.slow
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
    assert (rows[GOOD].width, rows[GOOD].height) == (64, 48)
    assert "None" not in rows[GOOD].coco_captions and len(rows[GOOD].coco_captions) == 1
    failures = {f.image_id: f for f in read_quarantine(out / "quarantine.parquet")}
    expected = {
        TRUNCATED: ("decode", "ImageDecodeError", "truncated"),
        EMPTY: ("decode", "ImageDecodeError", "empty file"),
        MISSING: ("read", "FileNotFoundError", "does not exist"),
        ONE_PIXEL: ("decode", "ImageDecodeError", "1x1"),
        BOMB: ("decode", "ImageDecodeError", "decompression bomb"),
        ESCAPE: ("read", "UnsafePathError", "outside"),
        UNKNOWN: ("read", "UnknownImageId", "refers to image id 999"),
        CORRUPT: ("decode", "ImageDecodeError", "not a format pillow can read"),
        FOLDER: ("read", "NotARegularFile", "not a regular file (a directory)"),
        DUPLICATE: ("read", "DuplicateImageId", "has 2 different entries"),
    }
    assert set(failures) == set(expected)  # HUGE is in no shard and no quarantine row
    for image_id, (stage, error_type, words) in expected.items():
        f = failures[image_id]
        assert (f.stage, f.error_type) == (stage, error_type), f
        assert words in f.message.lower(), f
        assert " at 0x" not in f.message, f
    assert failures[UNKNOWN].shard == "" and failures[TRUNCATED].shard.startswith("val2017-")
    # Every planned image is in exactly one place.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"]["written"] + summary["images"]["quarantined_in_plan"] == 14
    assert summary["images"]["unaccounted"] == 0
    assert summary["images"]["quarantined"] == 10  # images, however many rows name them
    manifest = json.loads((out / "manifest.json").read_text())
    assert HUGE not in {i for e in manifest["shards"] for i in e["image_ids"]}
    assert not list(out.rglob("*.tmp*"))

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
    assert summary["this_invocation"]["images_processed"] == 9  # the 9 quarantined in the plan
    assert summary["this_invocation"]["retry_failed"] is True

    # Adding the caption teacher now runs it on every written row, including the shard whose
    # images were all quarantined (it has no rows and commits at once).
    _invoke("run", "generate-labels", *common)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shards"] == {"planned": 4, "complete": 4}
    assert summary["this_invocation"]["added_teachers"] == ["caption"]
    assert summary["this_invocation"]["images_processed"] == len(after)
    final = _rows(out)
    assert sorted(final) == sorted(after)
    assert all(s.teacher_captions for s in final.values())
    for image_id, sample in after.items():  # the other teachers' labels are kept as they were
        assert np.array_equal(final[image_id].depth16, sample.depth16)
    assert {f.image_id for f in read_quarantine(out / "quarantine.parquet")} == left


# ---------------------------------------------------------------------------------------------
# `distill data check` on the same data: every problem listed, no traceback, a true count


def test_data_check_lists_every_problem_and_decode_counts_the_usable_images(tmp_path):
    root = _bad_coco(tmp_path / "coco")
    result = CliRunner().invoke(app, ["data", "check", str(root), "--split", "val2017"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "images:   10" in text and "problems: 6" in text
    for words in ("DuplicateImageId: 1", "NotARegularFile: 1", "UnknownImageId: 2",
                  "FileNotFoundError: 1", "UnsafePathError: 1"):
        assert words in text, words
    # The entries no id can carry are listed, not planned.
    assert "left out: 4 annotation entries (InvalidImageId 3, NotACaption 1)" in text
    assert f"id {HUGE}) in person_keypoints_val2017.json" in text
    assert "does not fit in 64 bits" in text and "'caption' is null, not text" in text
    assert "--decode decodes each one" in text

    result = CliRunner().invoke(app, ["data", "check", str(root), "--split", "val2017",
                                      "--decode", "--preset", "demo"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    # Of the 10 readable files, 5 decode; the other 5 and their reasons are printed.
    assert "decoded:  5 of 10 images" in text and "5 do not" in text
    assert "usable:   5 images" in text
    for image_id, words in ((TRUNCATED, "truncated"), (EMPTY, "empty file"),
                            (ONE_PIXEL, "1x1"), (BOMB, "decompression bomb"),
                            (CORRUPT, "not a format Pillow can read")):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"image {image_id} "))
        assert words in line, line
    assert " at 0x" not in text and "Traceback" not in result.output
    assert "decode: 10/10 images, 5 failed" in result.stderr  # the progress line
    # The config's limits are the ones applied.
    result = CliRunner().invoke(app, ["data", "check", str(root), "--split", "val2017",
                                      "--decode", "--preset", "demo", "--set",
                                      "data.min_image_side=1"])
    assert result.exit_code == 0, result.output
    assert "decoded:  6 of 10 images" in result.stdout
    assert "data.min_image_side = 1" in result.stdout


# ---------------------------------------------------------------------------------------------
# the decode stage: reasons without addresses, EXIF orientation by dataset kind and row


def _exif_jpeg(pixels: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _stored() -> np.ndarray:
    stored = np.zeros((40, 64, 3), np.uint8)  # 64 wide, 40 high as stored
    stored[:8, :16] = 255
    return stored


def test_decode_reasons_name_no_memory_address(tmp_path):
    from distill.coco import ImageRecord
    from distill.config import DataConfig
    from pipelines.stages import Item, _describe, decode_items

    path = tmp_path / "corrupt.jpg"
    path.write_bytes(b"<html>404</html>")
    item = Item(1, "s", "val2017", ("depth",), "corrupt.jpg",
                ImageRecord(1, "corrupt.jpg", str(path)))
    decode_items([item], DataConfig())
    assert item.failure is not None and item.failure.error_type == "ImageDecodeError"
    assert "0x" not in item.failure.message and "not a format" in item.failure.message
    # Whatever raised it, a quarantine reason carries no address.
    from PIL import UnidentifiedImageError

    kind, message = _describe(UnidentifiedImageError(
        "cannot identify image file <_io.BytesIO object at 0x7f2c5e1d3a90>"))
    assert (kind, message) == ("UnidentifiedImageError",
                               "cannot identify image file <_io.BytesIO object>")


def test_plain_folders_are_labelled_upright_coco_as_stored_and_the_bytes_stay(tmp_path):
    from distill.coco import open_dataset
    from distill.config import load_config
    from pipelines.stages import Item, decode_items, postprocess_items

    data = _exif_jpeg(_stored(), 6)  # a phone photo: stored landscape, shown portrait
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "p.jpg").write_bytes(data)
    coco = tmp_path / "coco"
    (coco / "val2017").mkdir(parents=True)
    (coco / "val2017" / "p.jpg").write_bytes(data)
    (coco / "annotations").mkdir()
    doc = {"images": [{"id": 1, "file_name": "p.jpg", "width": 64, "height": 40}],
           "annotations": []}
    for name in ("person_keypoints", "captions"):
        (coco / "annotations" / f"{name}_val2017.json").write_text(json.dumps(doc))

    shapes = {}
    for root in (folder, coco):
        cfg = load_config("demo", overrides=[f"data.root={root}"])
        (record,) = open_dataset(root, "val2017" if root == coco else "").records
        item = Item(record.image_id, "s", "val2017", ("depth",), record.file_name, record)
        decode_items([item], cfg.data)
        assert item.ok, item.failure
        assert item.image == data  # the shard keeps the file's own bytes
        shapes[root.name] = item.array.shape
        postprocess_items([item], cfg.labels)
        assert item.ok and item.encoded["image"] == data
        # width/height recorded are those of the pixels the teachers labelled
        assert (item.encoded["width"], item.encoded["height"]) == shapes[root.name][1::-1]
    assert shapes == {"photos": (64, 40, 3), "coco": (40, 64, 3)}


def test_a_committed_row_decodes_as_the_row_says_and_must_match_its_size(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distill.config import DataConfig
    from pipelines.stages import Item, decode_items

    data = _exif_jpeg(_stored(), 6)
    shard = tmp_path / "s.parquet"
    pq.write_table(pa.table({"image_id": [1, 2, 3], "image": [data] * 3, "width": [40, 64, 40],
                             "height": [64, 40, 64], "exif_transpose": [True, None, False]}),
                   shard)
    older = tmp_path / "older.parquet"  # a shard from before the column: rows as stored
    pq.write_table(pa.table({"image_id": [4], "image": [data], "width": [64], "height": [40]}),
                   older)
    folder = tmp_path / "photos"  # the data root's kind no longer decides: the row does
    folder.mkdir()

    def decode(image_id: int, path: Path = shard) -> Item:
        item = Item(image_id, "s", "val2017", ("caption",), "p.jpg", shard_path=str(path))
        decode_items([item], DataConfig(root=str(folder)))
        return item

    upright = decode(1)  # a plain folder's row was labelled upright (40 x 64)
    assert upright.ok and upright.array.shape == (64, 40, 3)
    stored = decode(2)  # a null flag: as stored (64 x 40)
    assert stored.ok and stored.array.shape == (40, 64, 3)
    assert decode(4, older).ok and decode(4, older).array.shape == (40, 64, 3)
    wrong = decode(3)  # a row whose size the decode does not reproduce
    assert wrong.failure is not None and wrong.failure.error_type == "SizeMismatch"
    assert "64x40 but its shard row says 40x64" in wrong.failure.message


def test_a_fifo_put_in_an_images_place_after_planning_fails_instead_of_blocking(tmp_path):
    import os

    from distill.coco import ImageRecord
    from distill.config import DataConfig
    from pipelines.stages import Item, decode_items

    path = tmp_path / "a.jpg"
    os.mkfifo(path)  # reading it would wait for a writer forever
    item = Item(1, "s", "val2017", ("depth",), "a.jpg", ImageRecord(1, "a.jpg", str(path)))
    decode_items([item], DataConfig())
    assert item.failure is not None and item.failure.error_type == "NotARegularFile"
    assert "not a regular file (a FIFO (named pipe))" in item.failure.message
