"""HCQ's person protocol (issue 30): box, mask and OKS AP with and without persons under 32²,
on crafted ground truth and detections whose AP can be counted by hand, checked against
pycocotools' own COCOeval where the rule is COCO's own."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from distill.annotations import Person
from distill.audit_persons import (
    PersonAudit,
    format_persons,
    panoptic_person_instances,
    persons_report,
)
from distill.audit_pose import PoseAudit
from distill.labels.groups import GroupTable, Segment
from distill.labels.keypoints import NUM_JOINTS
from distill.person_ap import ap_columns, coco_stats, person_category
from distill.shards import Sample

# COCO's 101-point interpolated AP of a ranking that finds half the people, all of them first:
# precision 1 at recalls 0..0.5 (51 of the 101 points), nothing beyond.
HALF = 51 / 101
# ... and when one false positive outranks the one true positive: precision 0.5 up to 0.5.
HALF_AT_HALF = 51 * 0.5 / 101


def _square(x: int, y: int, side: int) -> list[list[float]]:
    return [[x, y, x + side, y, x + side, y + side, x, y + side]]


def _ann(i: int, image_id: int, x: int, y: int, side: int, **extra) -> dict:
    return {"id": i, "image_id": image_id, "category_id": 1, "bbox": [x, y, side, side],
            "area": float(side * side), "iscrowd": 0, "segmentation": _square(x, y, side),
            **extra}


def _dataset() -> dict:
    """Two images: a large person (100², image 1) and a small one (20², image 2)."""
    return {"images": [{"id": 1, "width": 200, "height": 200},
                       {"id": 2, "width": 200, "height": 200}],
            "annotations": [_ann(1, 1, 10, 10, 100), _ann(2, 2, 50, 50, 20)],
            "categories": [person_category()]}


def _cocoeval_stats(dataset: dict, results: list, iou_type: str) -> list[float]:
    """pycocotools' own numbers, COCO's standard evaluation, nothing of ours in between."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), iouType=iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


def test_box_ap_without_small_ignores_small_people_and_small_false_positives():
    found = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 100, 100], "score": 0.9}
    ghost = {"image_id": 1, "category_id": 1, "bbox": [150, 150, 10, 10], "score": 0.95}
    data = _dataset()

    stats = coco_stats(data, [found], "bbox")
    assert stats == _cocoeval_stats(data, [found], "bbox")  # the rule "all" is COCO's own
    table = ap_columns(stats, "bbox")
    assert table["AP"] == pytest.approx(HALF) and table["AP50"] == pytest.approx(HALF)
    assert table["APm"] is None and table["APl"] == pytest.approx(1.0)  # no medium person: -1

    # without persons under 32²: the small person is not there to be missed
    alone = coco_stats(data, [found], "bbox", min_area=32 ** 2)
    assert ap_columns(alone, "bbox")["AP"] == pytest.approx(1.0)

    # a small false positive ranked first halves precision, unless small ones are excluded
    both = [found, ghost]
    assert coco_stats(data, both, "bbox") == _cocoeval_stats(data, both, "bbox")
    assert ap_columns(coco_stats(data, both, "bbox"), "bbox")["AP"] == pytest.approx(HALF_AT_HALF)
    large = coco_stats(data, both, "bbox", min_area=32 ** 2)
    assert ap_columns(large, "bbox")["AP"] == pytest.approx(1.0)


def test_no_detections_score_zero_and_no_people_in_range_score_none():
    data = _dataset()
    assert ap_columns(coco_stats(data, [], "bbox"), "bbox")["AP"] == 0.0
    data["annotations"] = data["annotations"][1:]  # the small person alone
    stats = coco_stats(data, [], "bbox", min_area=32 ** 2)
    assert ap_columns(stats, "bbox")["AP"] is None


def _person(x: float, y: float, side: float) -> Person:
    kp = np.zeros((NUM_JOINTS, 3), np.float32)
    kp[:, 0] = x + np.linspace(0.1, 0.9, NUM_JOINTS) * side
    kp[:, 1] = y + np.linspace(0.9, 0.1, NUM_JOINTS) * side
    kp[:, 2] = 2
    return Person(keypoints=kp, bbox=(x, y, side, side), area=side * side, iscrowd=False,
                  num_keypoints=NUM_JOINTS)


def _sample(image_id: int, persons: list[Person], width: int = 200, height: int = 200,
            **extra) -> Sample:
    return Sample(image_id=image_id, file_name=f"{image_id}.jpg", split="val2017", width=width,
                  height=height, image=b"", persons=persons, **extra)


def test_oks_ap_under_both_rules_matches_cocoeval():
    from distill.labels.keypoints import JOINT_NAMES
    from distill.student.pose_ap import keypoint_ap

    big, small = _person(10, 10, 100), _person(50, 50, 20)
    images = [_sample(1, [big]), _sample(2, [small])]
    found = [{"image_id": 1, "category_id": 1, "score": 0.9,
              "keypoints": big.keypoints.reshape(-1).tolist()}]
    everyone = keypoint_ap(images, found)
    assert everyone["AP"] == pytest.approx(HALF) and everyone["gt_persons"] == 2

    data = {"images": [{"id": i, "width": 200, "height": 200} for i in (1, 2)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "iscrowd": 0,
                             "bbox": list(p.bbox), "area": p.area, "num_keypoints": 17,
                             "keypoints": p.keypoints.reshape(-1).tolist()}
                            for i, p in ((1, big), (2, small))],
            "categories": [person_category(JOINT_NAMES)]}
    assert everyone["AP"] == pytest.approx(_cocoeval_stats(data, found, "keypoints")[0])

    large_only = keypoint_ap(images, found, min_area=32 ** 2)
    assert large_only["AP"] == pytest.approx(1.0) and large_only["gt_persons"] == 1


def test_panoptic_person_instances_are_components_scored_by_segment_area():
    cmap = np.full((40, 60), 255, np.uint8)
    cmap[2:12, 2:12] = 1  # a lone person: 100 px, the 0.9 segment's area
    cmap[20:30, 20:30] = 1  # two people touching: one 200-px blob, no segment has that area
    cmap[20:30, 30:40] = 1
    cmap[0:5, 50:60] = 3  # a car, not a person
    segments = [Segment(1, 0.9, True, 100), Segment(1, 0.7, True, 100),
                Segment(1, 0.6, True, 100), Segment(3, 0.99, True, 50)]
    found = panoptic_person_instances(cmap, segments)
    assert [(int(i.mask.sum()), i.score, i.matched) for i in found] == [
        (100, 0.9, True), (200, 0.6, False)]  # the unmatched blob: lowest unused score


class _Instances:
    """What `PersonAudit` reads of pycocotools' COCO: `imgs` and `dataset`."""

    def __init__(self, dataset: dict) -> None:
        self.dataset = dataset
        self.imgs = {i["id"]: i for i in dataset["images"]}


def test_audit_table_panoptic_masks_and_boxes_equal_cocoeval():
    """Image 1: the panoptic teacher finds the large person exactly; image 2: it finds a small
    blob where no one is. Box and mask AP: the false positive outranks (score 0.95) the hit."""
    data = _dataset()
    first = np.full((200, 200), 255, np.uint8)
    first[10:110, 10:110] = 1
    second = np.full((200, 200), 255, np.uint8)
    second[150:160, 150:160] = 1
    audit = PersonAudit(_Instances(data))
    audit.add(_sample(1, [], panoptic=first, segments=[Segment(1, 0.9, True, 10000)]))
    audit.add(_sample(2, [], panoptic=second, segments=[Segment(1, 0.95, True, 100)]))
    audit.add(_sample(3, []))  # no panoptic result: skipped
    rows = {(r["what"], r["rule"]): r for r in audit.rows()}
    for what, iou in (("panoptic box", "bbox"), ("panoptic mask", "segm")):
        expect = ap_columns(_cocoeval_stats(data, audit.results, iou), iou)
        assert {k: rows[what, "all"][k] for k in expect} == expect
        assert rows[what, "all"]["AP"] == pytest.approx(HALF_AT_HALF)
        assert rows[what, "no_small"]["AP"] == pytest.approx(1.0)
        assert rows[what, "no_small"]["gt"] == 1
    report = persons_report(audit, PoseAudit())
    assert report["panoptic"]["skipped"]["no_panoptic"] == 1
    text = "\n".join(format_persons(report))
    assert "panoptic mask" in text and "≥32²" in text and "APl" in text


def test_persons_channel_iou_in_original_pixels_and_degraded_inputs():
    """A 64×32 image in a 64-px student: letterboxed with 16 px of padding above and below.
    The Persons channel covers the left half of the picture; COCO's person the left quarter:
    IoU 1/2, precision 1/2, recall 1, whatever the padding holds."""
    from distill.config import load_config
    from distill.layers.groups import CLASS_GROUPS
    from distill.student import layout
    from distill.student.persons_eval import PersonEval, PersonMasks, degrade

    config = load_config("demo", overrides=["student.input_size=64"])
    coco = _Instances({"images": [{"id": 7, "width": 64, "height": 32}],
                       "annotations": [_ann(1, 7, 0, 0, 16) | {
                           "bbox": [0, 0, 16, 32], "area": 512.0,
                           "segmentation": [[0, 0, 16, 0, 16, 32, 0, 32]]}],
                       "categories": [person_category()]})
    coco.imgToAnns = {7: coco.dataset["annotations"]}  # type: ignore[attr-defined]

    def ann_to_mask(ann: dict) -> np.ndarray:
        from pycocotools import mask as mask_utils

        rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 32, 64))
        return mask_utils.decode(rle)

    coco.annToMask = ann_to_mask  # type: ignore[attr-defined]
    maps = -torch.ones(1, layout.CHANNELS, 64, 64)
    channel = layout.GROUPS.start + CLASS_GROUPS.index("Persons")
    maps[0, channel, :, :32] = 1.0  # left half, padding rows included
    ev = PersonEval(config, PersonMasks(coco, GroupTable.load({}), "instances.json"),
                    resolutions=(32, 64, 128))
    ev._add_iou(maps, [7], {7: _sample(7, [], 64, 32)})
    iou = ev.report([])["persons_iou"]
    assert iou["iou"] == pytest.approx(0.5) and iou["precision"] == pytest.approx(0.5)
    assert iou["recall"] == 1.0

    image = torch.zeros(1, 3, 64, 64)
    image[..., ::2] = 1.0  # one-pixel stripes: detail a 32-px input cannot hold
    assert torch.equal(degrade(image, 64), image)
    assert degrade(image, 32).std() < 0.1 * image.std()
