"""The pose teacher's people (issue 28): the boxes it is given, what it returns as a shard stores
it, and which people the student learns its joints and PAFs from.

Boxes, per image, in this order of preference (`pose_boxes`):

1. COCO's ground truth where the image has annotations: every non-crowd person's box
   (box_source "gt"; an annotated image without people gets no teacher people either);
2. the panoptic teacher's people where it ran on the image: the connected regions of its
   "person" pixels (its class map keeps categories, not instances, so people who touch share
   one box), each of at least `MIN_PANOPTIC_AREA` pixels (box_source "panoptic");
3. otherwise none: the backend's own person detector, or the whole image for a backend without
   one (box_source "detector" / "image").

`teachers.pose.boxes` narrows that: "gt" skips step 2, "detector" goes straight to step 3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from distill.coco import Person
from distill.labels.keypoints import NUM_JOINTS

__all__ = [
    "BOX_SOURCES",
    "MIN_PANOPTIC_AREA",
    "PERSON_CATEGORY",
    "TeacherPerson",
    "gt_boxes",
    "panoptic_boxes",
    "pose_boxes",
    "training_persons",
]

BOX_SOURCES = ("gt", "panoptic", "detector", "image")
PERSON_CATEGORY = 1  # COCO-panoptic's "person"
# COCO's "small" objects (area < 32²) carry almost no keypoint annotations; a person region of
# the panoptic map smaller than that is a fragment more often than a person.
MIN_PANOPTIC_AREA = 32 * 32


@dataclass
class TeacherPerson:
    """One person as the pose teacher saw it, in original pixels."""

    box: np.ndarray  # float32 (4,) x0, y0, x1, y1
    keypoints: np.ndarray  # float32 (17, 3) COCO order: x, y, score in [0, 1]
    score: float  # the person's score in [0, 1]
    box_source: str  # one of BOX_SOURCES


def gt_boxes(persons: Sequence[Person]) -> np.ndarray:
    """float32 (N, 4) x0, y0, x1, y1 of the non-crowd people of an image's annotations."""
    boxes = [(x, y, x + w, y + h) for p in persons if not p.iscrowd for x, y, w, h in [p.bbox]]
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def panoptic_boxes(class_map: np.ndarray, min_area: int = MIN_PANOPTIC_AREA) -> np.ndarray:
    """float32 (N, 4) x0, y0, x1, y1 (exclusive ends, pixel edges) of the 8-connected regions of
    person pixels in a panoptic class map that cover at least `min_area` pixels, largest
    first."""
    from scipy import ndimage

    regions, n = ndimage.label(class_map == PERSON_CATEGORY, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros((0, 4), np.float32)
    areas = np.bincount(regions.ravel(), minlength=n + 1)[1:]
    boxes = [(window[1].start, window[0].start, window[1].stop, window[0].stop, area)
             for window, area in zip(ndimage.find_objects(regions), areas, strict=True)
             if area >= min_area]
    boxes.sort(key=lambda b: -b[4])
    return np.asarray([b[:4] for b in boxes], np.float32).reshape(-1, 4)


def pose_boxes(annotated: bool, persons: Sequence[Person], class_map: np.ndarray | None,
               mode: str = "auto") -> tuple[np.ndarray | None, list[str]]:
    """The boxes the pose teacher is given for one image and their sources (module docstring):
    None when neither annotations nor a panoptic map are there (the backend decides).
    `mode` (`teachers.pose.boxes`): "auto" as above; "gt" skips the panoptic people (a random
    or weak panoptic teacher's person regions are no boxes); "detector" always leaves them to
    the backend, annotations or not."""
    if mode == "detector":
        return None, []
    if annotated:
        boxes = gt_boxes(persons)
        return boxes, ["gt"] * len(boxes)
    if class_map is not None and mode == "auto":
        boxes = panoptic_boxes(class_map)
        return boxes, ["panoptic"] * len(boxes)
    return None, []


def training_persons(persons: list[Person], teacher: list[TeacherPerson] | None, source: str,
                     threshold: float) -> list[Person]:
    """The people whose joints and PAFs the student learns (`train.pose_source`): COCO's
    (`gt`), the teacher's (`teacher`), or COCO's where the row has annotated people and the
    teacher's elsewhere (`gt+teacher`). A teacher's person becomes a ground-truth-like `Person`
    whose keypoints scored below `threshold` are absent (v = 0) and the others visible (v = 2),
    so both are drawn by the same code."""
    if source == "gt" or (source == "gt+teacher" and persons):
        return persons
    out = []
    for p in teacher or []:
        keypoints = np.zeros((NUM_JOINTS, 3), np.float32)
        seen = p.keypoints[:, 2] >= threshold
        keypoints[seen, :2] = p.keypoints[seen, :2]
        keypoints[seen, 2] = 2.0
        x0, y0, x1, y1 = (float(v) for v in p.box)
        out.append(Person(keypoints=keypoints, bbox=(x0, y0, x1 - x0, y1 - y0),
                          area=(x1 - x0) * (y1 - y0), iscrowd=False,
                          num_keypoints=int(seen.sum())))
    return out
