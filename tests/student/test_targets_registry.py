"""Every label layer builds its own student target (issue 27): `build_example` iterates the
registry, and gives examples IDENTICAL to the code before, where the built-in layers' targets
were written by hand (`tests.student.old_targets`, a frozen copy), on the shard oracle's rows,
COCO-like rows and the session's labelled coco7 rows; and the loader's and the viewer's grid
columns come from the layers."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from distill.config import AugmentConfig, TrainConfig
from distill.layers import LabelLayer, LayerError, Modality, get_layer, register, unregister
from distill.shards import decode_row
from distill.student.data import ShardStream, loader_columns
from distill.student.targets import build_example
from tests.oracle.build import SHARD
from tests.student import old_targets
from tests.student.test_loader_identical import ALWAYS, SAMPLES, VOCAB, assert_identical

NOISE = AugmentConfig(pan_zoom=1.0, replace_with_noise=1.0)  # every person-free picture


def _rows() -> list[dict]:
    """The shard oracle's rows (every teacher, some, none) as the writer stored them."""
    return pq.read_table(SHARD).to_pylist()


def _both(sample, size, augment, seed, encoded=None):
    args = (sample, size, VOCAB, 8, (23.0 - seed % 4 * 5, 6.0 - seed % 3 * 2))
    rng = (None if augment is None else np.random.default_rng([seed, 0, sample.image_id]))
    new = build_example(*args, rng, augment, encoded=encoded)
    rng = (None if augment is None else np.random.default_rng([seed, 0, sample.image_id]))
    old = old_targets.build_example(*args, rng, augment, encoded=encoded)
    return new, old


@pytest.mark.parametrize("augment", [None, AugmentConfig(), ALWAYS, NOISE],
                         ids=["plain", "paper", "always", "noise"])
def test_targets_are_identical_to_the_old_code_on_the_oracle_rows(augment):
    for row in _rows():
        full = decode_row(row)
        # as `ShardStream` builds it: depth and normals still encoded, the rest decoded
        encoded = {c: row[c] for c in ("depth_png", "normals_png")}
        lean = decode_row({k: v for k, v in row.items() if k not in encoded})
        for seed in range(4):
            for size in (32, 48):
                assert_identical(*_both(full, size, augment, seed))
                assert_identical(*_both(lean, size, augment, seed, encoded))


@pytest.mark.parametrize("augment", [None, ALWAYS, NOISE], ids=["plain", "always", "noise"])
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"{s.width}x{s.height}")
def test_targets_are_identical_to_the_old_code_on_coco_like_rows(sample, augment):
    for seed in range(4):
        assert_identical(*_both(sample, 64, augment, seed))


@pytest.mark.slow
def test_the_stream_gives_the_old_examples_on_the_labelled_coco7_rows(labelled_coco7):
    _, run, _ = labelled_coco7  # the real pipeline's rows: tiny teachers, real CRAFT
    rows = {r["image_id"]: r for p in sorted((run / "shards").glob("*.parquet"))
            for r in pq.read_table(p).to_pylist()}
    cfg = TrainConfig()
    stream = ShardStream(run / "shards", 48, VOCAB, cfg, train=True, shuffle_buffer=1, seed=5)
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        seen = 0
        for item in stream:
            sample = decode_row(rows[int(item["image_id"])])
            old = old_targets.build_example(
                sample, 48, VOCAB, 8, (23.0, 6.0),
                np.random.default_rng([5, epoch, sample.image_id]), cfg.augment)
            assert np.array_equal(item["image"].numpy(), old.image)
            assert np.array_equal(item["target"].numpy(), old.target)
            assert np.array_equal(item["tokens"].numpy(), old.tokens)
            assert np.array_equal(item["present"].numpy(), old.present_vector())
            seen += 1
        assert seen == len(rows)


def test_a_built_in_layers_target_is_its_own(monkeypatch):
    """The text channel is what the text layer's `target` returns, and its `moved`/`on_noise`
    say how augmentation treats it."""
    text = get_layer("text")
    assert (text.moved, get_layer("depth").moved, get_layer("persons").moved,
            get_layer("tokens").moved) == ("nearest", "bilinear", "keypoints", "tokens")
    assert get_layer("depth").on_noise == get_layer("normals").on_noise == "absent"
    with pytest.raises(LayerError, match="moved must be one of"):
        register(type("Rotated", (_Extra,), {"name": "rotated", "moved": "rotate"})())
    monkeypatch.setattr(type(text), "target",
                        lambda self, sample, warp: np.full((1, warp.size, warp.size), 7, np.uint8))
    example = build_example(SAMPLES[0], 32, None, 4, (5.0, 2.0), None, None)
    assert (example.target[33] == 7).all() and example.present["text"]


class _Extra(LabelLayer):
    """A plug-in whose target reads a column of its own and whose card shows another."""

    name = "extra"
    modalities = (Modality("extra", 1),)
    loader_columns = ("extra_png",)
    undecoded = ("extra_png",)
    card_columns = ("extra_count",)


def test_a_layers_columns_reach_the_loader_and_the_grid_with_no_edit_there():
    from distill.layers.registry import undecoded_columns
    from distill.view.index import grid_columns

    before = loader_columns()
    assert {"depth_png", "normals_png", "groups_png", "text_png", "tokens", "persons",
            "image"} <= set(before)
    register(_Extra())
    try:
        assert loader_columns() == (*before, "extra_png")
        assert "extra_png" in undecoded_columns()
        assert "extra_count" in grid_columns()
    finally:
        unregister("extra")
    assert "extra_count" not in grid_columns() and loader_columns() == before
