"""The fast training loader (issue 16.4: one resampler per sample, label maps in one gather,
heatmaps and PAFs drawn straight into uint8, only the columns it uses read and decoded) builds
examples IDENTICAL to the loader before it (`tests.student.old_loader`, a frozen copy), bit for
bit, for the same seed: image, all 44 target channels, tokens, present flags and keypoints."""

import io

import numpy as np
import pytest
from PIL import Image

from distill.coco import Person
from distill.config import AugmentConfig, TrainConfig
from distill.images import decode_own_png
from distill.labels.depth import encode_depth16
from distill.labels.tokens import Vocabulary
from distill.runfolder import shard_name
from distill.shards import Sample, ShardWriter, decode_row, make_metadata, open_shard
from distill.student.augment import Affine, Resampler, augment_pixels, warp
from distill.student.data import ShardStream
from distill.student.targets import build_example
from tests.student import old_loader

S = 64
ALWAYS = AugmentConfig(pan_zoom=1.0, max_zoom=1.6, color=1.0, noise=1.0, burned_pixels=1.0)


def photo(h: int, w: int, seed: int) -> bytes:
    """A smooth JPEG (a photo's statistics, not noise), quality 90 like COCO's."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def coco_like(image_id: int, h: int, w: int, people: int = 2, full: bool = True) -> Sample:
    """Every label the loader reads, at a COCO-like aspect, people with joints near the edges."""
    rng = np.random.default_rng(image_id)
    persons = []
    for _ in range(people):
        kp = np.zeros((17, 3), np.float32)
        labelled = rng.random(17) < 0.7
        kp[labelled, 0] = rng.uniform(-0.4, w - 0.6, labelled.sum())
        kp[labelled, 1] = rng.uniform(-0.4, h - 0.6, labelled.sum())
        kp[labelled, 2] = rng.integers(1, 3, labelled.sum())
        persons.append(Person(kp, (0.0, 0.0, float(w), float(h)), 100.0, False,
                              int(labelled.sum())))
    sample = Sample(image_id=image_id, file_name=f"{image_id:012d}.jpg", split="train2017",
                    width=w, height=h, image=photo(h, w, image_id), persons=persons,
                    coco_captions=["a cat"])
    if full:
        d16, lo, hi = encode_depth16(rng.random((h, w)) * 40 + 2)
        sample.depth16, sample.depth_min, sample.depth_max = d16, lo, hi
        sample.normals = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        sample.panoptic = rng.choice(np.array([1, 17, 187, 255], np.uint8), (h, w))
        sample.groups = rng.integers(0, 2**11, (h, w)).astype(np.uint16)
        sample.text_mask = rng.random((h, w)) > 0.7
        sample.teacher_captions = ["a cat on a mat"]
        sample.tokens = ["cat", "mat"]
    return sample


VOCAB = Vocabulary(["cat", "mat"], [5, 3],
                   np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4), 1.0)
SAMPLES = [coco_like(1, 120, 160), coco_like(2, 160, 120, people=3), coco_like(3, 90, 171),
           coco_like(4, 120, 160, people=0), coco_like(5, 100, 100, full=False)]


def assert_identical(new, old) -> None:
    assert new.image_id == old.image_id and new.has_person == old.has_person
    assert new.present == old.present
    for name in ("image", "target", "tokens", "keypoints"):
        a, b = getattr(new, name), getattr(old, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert np.array_equal(a, b), f"{name} differs at {np.argwhere(a != b)[:5].tolist()}"


@pytest.mark.parametrize("augment", [AugmentConfig(), ALWAYS], ids=["paper", "always"])
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"{s.width}x{s.height}")
def test_examples_are_identical_to_the_old_loader_for_every_seed(sample, augment):
    for seed in range(12):
        schedule = (23.0 - seed % 4 * 5, 6.0 - seed % 3 * 2)
        args = (sample, S, VOCAB, 8, schedule)
        new = build_example(*args, np.random.default_rng([seed, 0, sample.image_id]), augment)
        old = old_loader.build_example(*args, np.random.default_rng([seed, 0, sample.image_id]),
                                       augment)
        assert_identical(new, old)


@pytest.mark.parametrize("sample", SAMPLES[:2], ids=lambda s: f"{s.width}x{s.height}")
def test_unaugmented_examples_are_identical(sample):
    for size in (S, 65, 256):
        assert_identical(build_example(sample, size, None, 8, (23.0, 6.0), None, None, 50),
                         old_loader.build_example(sample, size, None, 8, (23.0, 6.0), None,
                                                  None, 50))


def test_warp_is_identical_to_the_old_warp():
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 40), np.uint8)
    mask[5:33, :] = 1
    for _ in range(20):
        affine = Affine.zoom_pan(40, *rng.uniform(1.0, 2.0, 1), *rng.uniform(-10, 10, 2))
        for array in (rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
                      rng.random((40, 40)).astype(np.float32) * 65535,
                      rng.integers(0, 2**11, (40, 40)).astype(np.uint16)):
            for mode, m in (("nearest", None), ("bilinear", None), ("bilinear", mask)):
                new = warp(array, affine, mode, m)  # type: ignore[arg-type]
                old = old_loader.warp(array, affine, mode, m)  # type: ignore[arg-type]
                assert new.dtype == old.dtype and np.array_equal(new, old), (mode, m is None)
                if mode == "bilinear" and array.ndim == 3:  # the loader's (C, H, W) layout
                    planes = Resampler(affine, 40, 40).bilinear(
                        np.ascontiguousarray(array.transpose(2, 0, 1)), m, channels_first=True)
                    assert planes.dtype == old.dtype
                    assert np.array_equal(planes, old.transpose(2, 0, 1)), m is None


def _pillow_encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """A PNG as Pillow writes it (its own filter per row), as shards written before
    `encode_png`'s Up-filter layout hold: the loader decodes those through Pillow."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG",
                                                      compress_level=compress_level)
    return buf.getvalue()


@pytest.mark.parametrize("encoder", ["own", "pillow"])
def test_the_stream_reading_fewer_columns_yields_the_old_examples(tmp_path, monkeypatch,
                                                                  encoder):
    if encoder == "pillow":
        monkeypatch.setattr("distill.layers.codec.encode_png", _pillow_encode_png)
    path = tmp_path / shard_name("train2017", 0)
    with ShardWriter(path, make_metadata("f", {}), row_group_size=2) as writer:
        for sample in SAMPLES:
            writer.write(sample)
    cfg = TrainConfig()
    stream = ShardStream(tmp_path, S, VOCAB, cfg, train=True, shuffle_buffer=1, seed=3)
    rows = {r["image_id"]: r for r in open_shard(path).read().to_pylist()}
    pngs = [r[c] for r in rows.values() for c in ("depth_png", "normals_png", "groups_png",
                                                   "text_png") if r[c] is not None]
    own = [decode_own_png(png) is not None for png in pngs]
    assert all(own) if encoder == "own" else not any(own)  # the path under test is taken
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        seen = 0
        for item in stream:
            sample = decode_row(rows[int(item["image_id"])])  # every column, as before
            old = old_loader.build_example(
                sample, S, VOCAB, 8, (23.0, 6.0),
                np.random.default_rng([3, epoch, sample.image_id]), cfg.augment)
            assert np.array_equal(item["image"].numpy(), old.image)
            assert np.array_equal(item["target"].numpy(), old.target)
            assert np.array_equal(item["tokens"].numpy(), old.tokens)
            assert np.array_equal(item["present"].numpy(), old.present_vector())
            seen += 1
        assert seen == len(SAMPLES)


@pytest.mark.parametrize("cfg", [AugmentConfig(), ALWAYS, AugmentConfig(color=0.0, noise=0.0),
                                 AugmentConfig(color=1.0, noise=0.0, burned_pixels=0.0),
                                 AugmentConfig(replace_with_noise=1.0)], ids=str)
def test_augment_pixels_is_identical_to_the_old_one(cfg):
    image = np.asarray(Image.open(io.BytesIO(photo(48, 64, 7))).convert("RGB"))
    for seed in range(30):
        for has_person in (True, False):
            new, replaced = augment_pixels(image, cfg, np.random.default_rng(seed), has_person)
            old, was = old_loader.augment_pixels(image, cfg, np.random.default_rng(seed),
                                                 has_person)
            assert replaced == was and new.dtype == old.dtype and np.array_equal(new, old)
            planes, replaced = augment_pixels(np.ascontiguousarray(image.transpose(2, 0, 1)),
                                              cfg, np.random.default_rng(seed), has_person,
                                              channels_first=True)
            assert replaced == was and planes.dtype == old.dtype
            assert np.array_equal(planes, old.transpose(2, 0, 1))
