"""Shard schema: a sample written and read back equals the input, column by column; the writer
never exposes a partial file; a bad file fails naming itself."""

import io
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from distill.coco import Person
from distill.errors import ShardError
from distill.labels.depth import decode_depth16, encode_depth16
from distill.shards import (
    SCHEMA,
    Sample,
    Segment,
    ShardWriter,
    TextRegion,
    decode_row,
    encode_sample,
    iter_samples,
    make_metadata,
    open_shard,
    read_metadata,
    read_shard,
)


def make_sample(image_id: int, h: int = 24, w: int = 32, full: bool = True) -> Sample:
    rng = np.random.default_rng(image_id)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    kp = np.zeros((17, 3), np.float32)
    kp[5] = (3.5, 4.25, 2)
    sample = Sample(
        image_id=image_id, file_name=f"{image_id:012d}.jpg", split="val2017", width=w, height=h,
        image=buf.getvalue(), coco_captions=["A cat.", "A small cat on a mat."],
        persons=[Person(kp, (1.0, 2.0, 10.5, 20.0), 150.5, False, 1)],
    )
    if full:
        d16, lo, hi = encode_depth16(rng.random((h, w)) * 40 + 2)
        sample.depth16, sample.depth_min, sample.depth_max = d16, lo, hi
        sample.normals = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        sample.panoptic = rng.choice(np.array([1, 17, 187, 255], np.uint8), (h, w))
        sample.segments = [Segment(1, 0.9, True, 100), Segment(187, 0.75, False, 200)]
        sample.groups = rng.integers(0, 2**11, (h, w)).astype(np.uint16)
        sample.text_mask = rng.random((h, w)) > 0.8
        sample.text_regions = [TextRegion(np.array([[1, 1], [5, 1.5], [5, 4]], np.float32), 0.8)]
        sample.teacher_captions = ["a cat sitting on a mat"]
        sample.tokens = ["cat", "sitting", "mat"]
    return sample


def assert_same(a: Sample, b: Sample) -> None:
    for name, va in vars(a).items():
        vb = getattr(b, name)
        if isinstance(va, np.ndarray):
            assert vb.dtype == va.dtype and np.array_equal(va, vb), name
        elif name == "persons":
            assert len(va) == len(vb)
            for pa_, pb in zip(va, vb, strict=True):
                assert np.array_equal(pa_.keypoints, pb.keypoints)
                assert (pa_.bbox, pa_.area, pa_.iscrowd, pa_.num_keypoints) == (
                    pb.bbox, pb.area, pb.iscrowd, pb.num_keypoints)
        elif name == "text_regions" and va is not None:
            assert [r.score for r in va] == pytest.approx([r.score for r in vb])
            assert all(np.array_equal(r.points, s.points) for r, s in zip(va, vb, strict=True))
        elif name == "segments" and va is not None:
            assert [(s.category_id, s.isthing, s.area) for s in va] == [
                (s.category_id, s.isthing, s.area) for s in vb]
            assert [s.score for s in va] == pytest.approx([s.score for s in vb])
        else:
            assert va == vb, name


def test_written_shard_reads_back_equal_for_every_column(tmp_path):
    samples = [make_sample(i) for i in (5, 9)] + [make_sample(11, h=7, w=13, full=False)]
    path = tmp_path / "val2017-00003-of-00012.parquet"  # an older run's name reads as well
    meta = make_metadata("abc123", {"depth": {"backend": "depth-anything-v2", "sha256": "00"}})
    with ShardWriter(path, meta, row_group_size=2) as writer:
        for s in samples:
            writer.write(s)
    assert path.name == "val2017-00003-of-00012.parquet"
    back = list(iter_samples(path))
    assert len(back) == 3
    for a, b in zip(samples, back, strict=True):
        assert_same(a, b)
    assert back[2].depth16 is None and back[2].tokens is None
    # depth survives with its min/max
    d = decode_depth16(back[0].depth16, back[0].depth_min, back[0].depth_max)
    assert d.min() == pytest.approx(samples[0].depth_min, rel=1e-6)
    md = read_metadata(path)
    assert md["schema_version"] == "1" and md["fingerprint"] == "abc123"
    assert md["provenance"]["depth"]["backend"] == "depth-anything-v2"
    assert "pyarrow" in md["versions"]
    assert pq.ParquetFile(path).metadata.num_row_groups == 2
    assert read_shard(path).schema.remove_metadata() == SCHEMA


def test_labels_from_a_shard_with_pillows_pngs_equal_todays(tmp_path, monkeypatch):
    """A shard written before the PNG encoder changed (Pillow, compress_level 1) and one written
    now decode to the same labels, pixel for pixel; only the PNG bytes differ."""
    import distill.layers.codec as layer_codecs

    samples = [make_sample(i) for i in (5, 9)]
    now, before = tmp_path / "now.parquet", tmp_path / "before.parquet"
    with ShardWriter(now, make_metadata("f", {})) as w:
        for s in samples:
            w.write(s)

    def pillow_png(array: np.ndarray, compress_level: int = 1) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG",
                                                          compress_level=compress_level)
        return buf.getvalue()

    monkeypatch.setattr(layer_codecs, "encode_png", pillow_png)
    with ShardWriter(before, make_metadata("f", {})) as w:
        for s in samples:
            w.write(s)
    for a, b, s in zip(iter_samples(before), iter_samples(now), samples, strict=True):
        assert_same(a, b)
        assert_same(s, b)


def test_plain_pyarrow_and_pil_decode_every_image_column(tmp_path):
    path = tmp_path / "val2017-00000-of-00001.parquet"
    with ShardWriter(path, make_metadata("f", {})) as w:
        w.write(make_sample(1))
    row = pq.read_table(path).to_pylist()[0]
    depth = np.asarray(Image.open(io.BytesIO(row["depth_png"])))
    assert depth.dtype == np.uint16 and depth.shape == (24, 32)
    assert np.asarray(Image.open(io.BytesIO(row["normals_png"]))).shape == (24, 32, 3)
    assert np.asarray(Image.open(io.BytesIO(row["groups_png"]))).dtype == np.uint16
    assert Image.open(io.BytesIO(row["image"])).size == (32, 24)
    assert len(row["persons"][0]["keypoints"]) == 51


def test_a_crash_while_writing_leaves_no_file_under_the_final_name(tmp_path):
    path = tmp_path / "val2017-00000-of-00001.parquet"
    with pytest.raises(RuntimeError), ShardWriter(path, make_metadata("f", {}), 1) as w:
        w.write(make_sample(1))
        w.write(make_sample(2))
        assert next(p.name for p in tmp_path.iterdir()).startswith(f".{path.name}.tmp-")
        assert not path.exists()
        raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("at", ["rows", "footer 1", "footer 2"])
def test_an_interrupt_while_a_shard_closes_closes_its_parquet_writer_once(tmp_path, monkeypatch,
                                                                           at):
    """Ctrl-C or SIGTERM (a KeyboardInterrupt) while the last rows go in, or inside the footer
    write: the temp goes, and pyarrow's finalizer does not close the writer (again) onto the
    closed temp file ("Exception ignored in ParquetWriter.__del__ … write to closed file")."""
    import gc
    import sys

    from distill.storage import atomic

    path = tmp_path / "val2017-00000.parquet"
    writer = ShardWriter(path, make_metadata("f", {}), row_group_size=8)
    writer.write(make_sample(1))  # buffered: close() writes it, then the footer
    if at == "rows":
        def interrupted_rows(self, *args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(pq.ParquetWriter, "write_table", interrupted_rows)
    else:
        real, calls = atomic._HashingSink.write, []

        def interrupted(self, data):
            calls.append(len(data))
            if len(calls) == int(at.split()[1]):
                raise KeyboardInterrupt
            return real(self, data)

        monkeypatch.setattr(atomic._HashingSink, "write", interrupted)
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(KeyboardInterrupt), writer:
        pass
    del writer
    gc.collect()
    assert not unraisable, [f"{u.object}: {u.exc_value!r}" for u in unraisable]
    assert os.listdir(tmp_path) == []


def test_label_maps_must_be_at_the_original_resolution(tmp_path):
    s = make_sample(1)
    s.depth16 = s.depth16[:-1]
    with pytest.raises(ShardError, match="original resolution"), \
            ShardWriter(tmp_path / "x-00000-of-00001.parquet", make_metadata("f", {})) as w:
        w.write(s)


def test_bad_files_fail_naming_the_file(tmp_path):
    junk = tmp_path / "val2017-00000-of-00001.parquet"
    junk.write_bytes(b"PAR1 not really")
    with pytest.raises(ShardError, match=str(junk)):
        read_shard(junk)
    with pytest.raises(ShardError, match="does not exist"):
        read_shard(tmp_path / "missing.parquet")
    other = tmp_path / "other.parquet"
    pq.write_table(pq.read_table(_tiny_table(tmp_path)).drop(["tokens"]), other)
    with pytest.raises(ShardError, match=r"missing \['tokens'\]"):
        read_shard(other)


def _tiny_table(tmp_path):
    p = tmp_path / "t-00000-of-00001.parquet"
    with ShardWriter(p, make_metadata("f", {})) as w:
        w.write(make_sample(1, full=False))
    return p


def test_encoding_only_some_columns_gives_the_same_values():
    sample = make_sample(3)
    full = encode_sample(sample)
    part = encode_sample(sample, columns=["text_png", "tokens", "groups_png"])
    assert list(part) == ["groups_png", "text_png", "tokens"]  # schema order
    assert all(part[k] == full[k] for k in part)
    with pytest.raises(ShardError, match="not shard columns"):
        encode_sample(sample, columns=["depth"])


def test_a_shard_from_before_the_exif_transpose_column_reads_as_the_stored_pixels(tmp_path):
    """`exif_transpose` (the last column) came after the first shards: a shard without it
    opens, reads and decodes, every row as stored (False); `inspect` calls its schema the
    distill one. A null in the column reads as False too."""
    assert SCHEMA.names[-1] == "exif_transpose" and SCHEMA.field("exif_transpose").nullable
    new = tmp_path / "val2017-00000-of-00001.parquet"
    upright = make_sample(1)
    upright.exif_transpose = True
    with ShardWriter(new, make_metadata("f", {})) as w:
        w.write(upright)
        w.write(make_sample(2))
    assert [s.exif_transpose for s in iter_samples(new)] == [True, False]
    assert decode_row({**pq.read_table(new).to_pylist()[0], "exif_transpose": None}) \
        .exif_transpose is False

    old = tmp_path / "old" / new.name
    old.parent.mkdir()
    pq.write_table(pq.read_table(new).drop(["exif_transpose"]), old)
    assert "exif_transpose" not in pq.read_schema(old).names
    assert open_shard(old).metadata.num_rows == 2
    assert read_shard(old).column_names == SCHEMA.names[:-1]
    back = list(iter_samples(old))
    assert [s.exif_transpose for s in back] == [False, False]
    for image_id, sample in zip((1, 2), back, strict=True):
        assert_same(make_sample(image_id), sample)
    from distill.inspect import inspect_path

    assert inspect_path(old)["schema"]["matches"]
