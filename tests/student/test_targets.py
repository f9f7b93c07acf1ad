"""Targets (DESIGN.md §6): the 44 channels land in layout order with the right encodings, the
heatmap schedule decays as the paper says, tokens come from the vocabulary, a missing teacher
column is flagged absent."""

import numpy as np
import pytest

from distill.coco import Person
from distill.config import AugmentConfig, HeatmapScheduleConfig
from distill.images import encode_png
from distill.labels.groups import GROUP_NAMES, TEXT_GROUP
from distill.labels.tokens import Vocabulary
from distill.shards import Sample
from distill.student import layout
from distill.student.targets import PRESENT_KEYS, build_example, heatmap_schedule
from tests.test_shards import make_sample

W, H, S = 64, 32, 32  # letterboxed at scale 0.5 into rows 8..23 of a 32×32 canvas
ROWS = slice(8, 24)


def test_heatmap_schedule_steps_down_every_20_epochs_and_clamps():
    cfg = HeatmapScheduleConfig()
    assert heatmap_schedule(0, cfg) == (23.0, 6.0)
    assert heatmap_schedule(19, cfg) == (23.0, 6.0)
    assert heatmap_schedule(20, cfg) == (22.0, 5.0)
    assert heatmap_schedule(40, cfg) == (21.0, 4.0)
    assert heatmap_schedule(80, cfg) == (19.0, 2.0)  # PAF width clamps at 2 ...
    assert heatmap_schedule(17 * 20, cfg) == (6.0, 2.0)  # ... joints reach 6 at epoch 340
    assert heatmap_schedule(10_000, cfg) == (6.0, 2.0)
    assert heatmap_schedule(30, HeatmapScheduleConfig(step_epochs=10)) == (20.0, 3.0)


def full_sample(tokens: list[str] | None = None) -> Sample:
    rgb = np.full((H, W, 3), 200, np.uint8)
    d16 = np.zeros((H, W), np.uint16)
    d16[:, : W // 2] = 65535  # left half nearest (relative inverse depth: high = near)
    groups = np.full((H, W), (1 << 2) | (1 << TEXT_GROUP), np.uint16)  # Animals + Text bit
    kp = np.zeros((17, 3), np.float32)
    kp[5] = (20.0, 10.0, 2)  # left shoulder
    kp[7] = (30.0, 20.0, 2)  # left elbow
    kp[9] = (40.0, 24.0, 1)  # left wrist (occluded but labelled)
    return Sample(
        image_id=4, file_name="x.png", split="t", width=W, height=H, image=encode_png(rgb),
        depth16=d16, depth_min=0.0, depth_max=1.0,
        normals=np.broadcast_to(np.array([10, 128, 250], np.uint8), (H, W, 3)).copy(),
        groups=groups, text_mask=np.ones((H, W), bool), tokens=tokens,
        persons=[Person(kp, (0.0, 0.0, 50.0, 30.0), 100.0, False, 3)],
    )


def test_channels_follow_the_layout():
    ex = build_example(full_sample(), S, None, 8, (5.0, 2.0), None, None)
    t = ex.target
    assert ex.image.shape == (3, S, S) and ex.image.dtype == np.uint8
    assert t.shape == (layout.CHANNELS, S, S) and t.dtype == np.uint8
    pad = np.ones(S, bool)
    pad[ROWS] = False
    # text: 255 on the image area, 0 in the padding
    assert (t[33][ROWS] == 255).all() and (t[33][pad] == 0).all()
    # groups: only Animals (group 2 → channel 36); the Text bit never leaks into a class channel
    assert GROUP_NAMES[2] == "Animals"
    assert (t[36][ROWS] == 255).all() and (t[36][pad] == 0).all()
    assert not np.delete(t[layout.GROUPS], 2, axis=0).any()
    # depth: near = 255, far = 0, padding = 0
    assert (t[29][ROWS, : S // 2 - 1] == 255).all() and (t[29][ROWS, S // 2 + 1 :] == 0).all()
    assert (t[29][pad] == 0).all()
    # normals: the stored 8-bit values, as they are
    assert (t[30:33][:, ROWS] == np.array([10, 128, 250])[:, None, None]).all()
    assert not t[30:33][:, pad].any()
    # joints: shoulder, elbow, wrist channels peak at their letterboxed spots; others are empty
    for j in (5, 7, 9):
        x, y = ex.keypoints[0, j, :2]
        peak = np.unravel_index(np.argmax(t[j]), (S, S))
        assert abs(peak[1] - x) <= 0.5 and abs(peak[0] - y) <= 0.5 and t[j].max() >= 200
    assert not np.delete(t[layout.JOINTS], [5, 7, 9], axis=0).any()
    # PAFs: left upper arm (17) and left forearm (19) only
    assert t[17].max() == 255 and t[19].max() == 255
    assert not np.delete(t[layout.PAFS], [0, 2], axis=0).any()
    assert ex.has_person
    assert [k for k, v in ex.present.items() if not v] == ["tokens"]  # no vocabulary given


def test_heatmap_size_follows_the_schedule():
    wide = build_example(full_sample(), S, None, 8, (23.0, 6.0), None, None).target
    narrow = build_example(full_sample(), S, None, 8, (6.0, 2.0), None, None).target
    assert (wide[5] > 0).sum() > 4 * (narrow[5] > 0).sum()
    assert (wide[17] > 0).sum() > 2 * (narrow[17] > 0).sum()


def test_missing_teacher_columns_are_zero_and_flagged_absent():
    sample = make_sample(3, h=24, w=32, full=False)  # keypoints and captions only
    ex = build_example(sample, S, None, 8, (23.0, 6.0), None, None)
    assert ex.present == {"tokens": False, "joints": True, "pafs": True, "depth": False,
                          "normals": False, "text": False, "segmentation": False}
    assert not ex.target[layout.DEPTH.start :].any()
    assert ex.valid.tolist() == [True] * 29 + [False] * 15
    assert ex.present_vector().tolist() == [ex.present[k] for k in PRESENT_KEYS]
    assert ex.target[5].max() > 0  # the shoulder joint of make_sample is still a target


def test_tokens_come_from_the_vocabulary():
    vectors = np.array([[1, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, -1, 0.25]], np.float32)
    vocab = Vocabulary(["cat", "mat", "sitting"], [5, 3, 2], vectors, 2.0)
    ex = build_example(full_sample(["dog", "sitting", "cat", "mat", "cat"]), S, vocab, 3,
                       (23.0, 6.0), None, None)
    assert ex.tokens.dtype == np.float32 and ex.tokens.shape == (3, 4)
    np.testing.assert_array_equal(ex.tokens, vectors[[2, 0, 1]])  # caption order, first 3
    assert ex.present["tokens"]
    short = build_example(full_sample(["mat"]), S, vocab, 8, (23.0, 6.0), None, None)
    np.testing.assert_array_equal(short.tokens[0], vectors[1])
    assert short.tokens.shape == (8, 4) and not short.tokens[1:].any()
    untokenized = build_example(full_sample(None), S, vocab, 8, (23.0, 6.0), None, None)
    assert untokenized.tokens.shape == (8, 4) and not untokenized.tokens.any()
    assert not untokenized.present["tokens"]
    no_vocab = build_example(full_sample(["cat"]), S, None, 8, (23.0, 6.0), None, None,
                             token_dim=50)
    assert no_vocab.tokens.shape == (8, 50) and not no_vocab.tokens.any()


def test_noise_replacement_blanks_targets_and_marks_depth_absent():
    sample = full_sample(["cat"])
    sample.persons = []
    cfg = AugmentConfig(pan_zoom=0.0, color=0.0, noise=0.0, burned_pixels=0.0,
                        replace_with_noise=1.0)
    ex = build_example(sample, S, None, 8, (23.0, 6.0), np.random.default_rng(0), cfg)
    assert not ex.has_person and ex.image.std() > 30
    assert not ex.target.any()
    assert not ex.present["depth"] and not ex.present["normals"] and ex.present["text"]


@pytest.mark.parametrize("seed", range(6))
def test_augmented_dense_maps_keep_padding_unlabelled(seed):
    cfg = AugmentConfig(pan_zoom=1.0)
    ex = build_example(full_sample(), S, None, 8, (23.0, 6.0), np.random.default_rng(seed), cfg)
    # Text is all on inside the image: after the warp, text and depth/normals/groups are
    # labelled on exactly the same pixels.
    text = ex.target[33] > 0
    assert text.any() and not text.all()
    for c in (30, 31, 32, 36):
        assert np.array_equal(ex.target[c] > 0, text)


def test_student_image_decodes_jpegs_at_dct_scale_without_moving_content():
    """A JPEG is decoded at a reduced DCT scale for the student; the letterbox it yields puts
    every feature where the full-resolution path does (a marker to within a pixel) and looks
    the same (mean difference of a few levels)."""
    import io

    from PIL import Image

    from distill.images import decode_image
    from distill.labels.letterbox import Letterbox
    from distill.student.targets import student_image

    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(110, 20, (480, 640, 3)), 0, 255).astype(np.uint8)
    img[300:316, 500:516] = 255  # a marker centred at x = 507.5, y = 307.5
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    assert decode_image(data, at_least=(256, 192)).shape[:2] == (240, 320)  # 1/2 scale
    fast, lb = student_image(data, 256)
    full = Letterbox.fit(640, 480, 256).image(decode_image(data))
    assert fast.shape == full.shape == (256, 256, 3)

    def centre(a: np.ndarray) -> np.ndarray:
        ys, xs = np.nonzero(a.mean(-1) > 200)
        return np.array([xs.mean(), ys.mean()])

    expected = lb.points(np.array([507.5, 307.5]))
    assert np.abs(centre(fast) - expected).max() < 1.0
    assert np.abs(centre(fast) - centre(full)).max() < 1.0
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 6


def test_student_image_of_a_turned_photo_is_upright_when_asked():
    """`exif_transpose` (a shard row's flag, or `distill predict` on a photo): the size comes
    from the header turned (none given), the DCT-scaled decode is turned, and the letterbox is
    that of the picture a viewer shows; without it, the stored pixels."""
    import io

    from PIL import Image, ImageOps

    from distill.images import image_size
    from distill.labels.letterbox import Letterbox
    from distill.student.targets import student_image

    stored = np.full((240, 320, 3), 60, np.uint8)
    stored[:40, :40] = 250  # stored top-left; a viewer turns it 90° clockwise (orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    data = buf.getvalue()
    assert image_size(data) == (320, 240) and image_size(data, exif_transpose=True) == (240, 320)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    fast, lb = student_image(data, 64, exif_transpose=True)  # decoded at 1/4 scale
    assert (lb.src_w, lb.src_h) == (240, 320)
    assert np.abs(fast.astype(int) - Letterbox.fit(240, 320, 64).image(shown)).mean() < 4
    # content at columns 8..56; the marker now top right (columns 48..56)
    assert fast[1:7, 49:55].mean() > 200 > 100 > fast[1:7, 9:20].mean()
    as_stored, lb = student_image(data, 64)
    assert (lb.src_w, lb.src_h) == (320, 240) and as_stored[9:15, 1:7].mean() > 200
