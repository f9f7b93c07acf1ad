"""People decoded by `distill.student.pose` as COCO keypoint results, and their COCO OKS AP
(pycocotools) against in-memory ground truth."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from distill.coco import Person
from distill.errors import LabelError
from distill.labels.keypoints import JOINT_NAMES, LIMBS, NUM_JOINTS
from distill.labels.letterbox import Letterbox
from distill.person_ap import coco_stats, person_category
from distill.student.pose import DecodedPerson

__all__ = ["GroundTruthImage", "keypoint_ap", "to_coco_results"]


class GroundTruthImage(Protocol):
    """What `keypoint_ap` needs of an image: `distill.coco.ImageRecord`, `distill.shards.Sample`."""

    @property
    def image_id(self) -> int: ...

    @property
    def width(self) -> int | None: ...

    @property
    def height(self) -> int | None: ...

    @property
    def persons(self) -> list[Person]: ...


def to_coco_results(
    people: Sequence[DecodedPerson], image_id: int, letterbox: Letterbox
) -> list[dict[str, Any]]:
    """COCO keypoint result dicts for one image, in ORIGINAL pixels (absent joints are 0, 0, 0;
    a present joint's third value is its peak confidence, which COCO evaluation ignores). The
    people must be in the letterbox's destination frame."""
    results = []
    for person in people:
        kp = np.asarray(person.keypoints, dtype=np.float32)
        present = kp[:, 2] > 0
        flat = np.zeros((NUM_JOINTS, 3), np.float64)
        flat[present, :2] = letterbox.inverse_points(kp[present, :2])
        flat[present, 2] = kp[present, 2]
        results.append({
            "image_id": int(image_id),
            "category_id": 1,
            "keypoints": [float(v) for v in flat.reshape(-1)],
            "score": float(person.score),
        })
    return results


_SKELETON = [[a + 1, b + 1] for a, b in LIMBS]
_AP_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def keypoint_ap(
    images: Iterable[GroundTruthImage],
    results: Sequence[dict[str, Any]],
    *,
    min_visible: int = 5,
    min_area: float = 0.0,
) -> dict[str, float | None]:
    """COCO OKS keypoint AP of `results` (see `to_coco_results`) against the images' persons.

    Crowd persons and persons with fewer than `min_visible` labelled joints (v > 0) are ignored:
    they are given `iscrowd = 1`, which pycocotools turns into `ignore` (its `_prepare` rewrites
    `ignore` from `iscrowd`), so they need not be found and a detection matched to one is neither
    a true nor a false positive. Returns AP, AP50, AP75, APm, APl, AR (also AR50, AR75, ARm,
    ARl), None when no ground-truth person counts, 0.0 for no detections or no ground truth in
    an area range, plus
    `gt_persons` (persons that count, `min_area` included) and `detections`. `min_area` > 0 starts COCOeval's `all`
    range there (`distill.person_ap`: HCQ's rule without persons under 32², `SMALL_AREA`).
    """
    gt_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    counted = 0
    for image in images:
        gt_images.append({"id": int(image.image_id), "width": int(image.width or 0),
                          "height": int(image.height or 0)})
        for person in image.persons:
            kp = np.asarray(person.keypoints, dtype=np.float64).reshape(NUM_JOINTS, 3)
            visible = int((kp[:, 2] > 0).sum())
            ignored = bool(person.iscrowd) or visible < min_visible
            x, y, w, h = (float(v) for v in person.bbox)
            area = float(person.area) if person.area > 0 else w * h
            counted += not ignored and area >= min_area
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": int(image.image_id),
                "category_id": 1,
                "keypoints": [float(v) for v in kp.reshape(-1)],
                "num_keypoints": visible,
                "bbox": [x, y, w, h],
                "area": area,
                "iscrowd": int(ignored),
            })
    stats: dict[str, float | None] = dict.fromkeys(_AP_NAMES, 0.0)
    stats.update(gt_persons=float(counted), detections=float(len(results)))
    known = {img["id"] for img in gt_images}
    unknown = sorted({int(r["image_id"]) for r in results} - known)
    if unknown:
        raise LabelError(f"results for image ids not in the ground truth: {unknown[:10]}")
    if not counted:  # nothing to find: AP is undefined, not zero
        return {**stats, **dict.fromkeys(_AP_NAMES)}
    if not results:
        return stats

    dataset = {"images": gt_images, "annotations": annotations,
               "categories": [person_category(JOINT_NAMES, _SKELETON)]}
    values = coco_stats(dataset, [dict(r, keypoints=list(r["keypoints"])) for r in results],
                        "keypoints", min_area=min_area)
    for name, value in zip(_AP_NAMES, values, strict=True):
        stats[name] = max(float(value), 0.0)
    return stats
