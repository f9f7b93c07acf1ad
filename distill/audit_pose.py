"""The teacher audit's pose check (`distill.audit`, issue 28): the pose teacher's people against
COCO's keypoint ground truth, as COCO OKS AP (AP, AP50, AP75, ...) by pycocotools through the
student's own evaluation path (`distill.student.pose_ap.keypoint_ap`: crowd people and people
with fewer than 5 labelled joints are ignored), on the rows whose image has annotated people and
where the pose teacher ran. A detection's keypoints are its 17 (x, y) whatever their scores (COCO
ignores a detection's visibilities); its score is the teacher's person score."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distill.coco import Person
from distill.shards import Sample

__all__ = ["PoseAudit", "teacher_results"]


def teacher_results(sample: Sample) -> list[dict[str, Any]]:
    """The pose teacher's people of one row as COCO keypoint results (original pixels)."""
    return [{"image_id": int(sample.image_id), "category_id": 1,
             "keypoints": [float(v) for v in np.asarray(p.keypoints, np.float64).reshape(-1)],
             "score": float(p.score)}
            for p in sample.teacher_persons or []]


@dataclass
class _Truth:
    """What `keypoint_ap` reads of an image (a row without its pixels and other labels)."""

    image_id: int
    width: int
    height: int
    persons: list[Person]


@dataclass
class PoseAudit:
    """Pose teacher vs COCO keypoints, row by row; `report` runs pycocotools once."""

    truth: list[_Truth] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    sources: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, sample: Sample) -> None:
        if sample.teacher_persons is None:
            self.skipped["no_teacher"] += 1
            return
        if not sample.persons:
            self.skipped["no_ground_truth"] += 1
            return
        self.truth.append(_Truth(int(sample.image_id), int(sample.width), int(sample.height),
                                 list(sample.persons)))
        self.results += teacher_results(sample)
        self.sources.update(p.box_source for p in sample.teacher_persons)

    def report(self) -> dict[str, Any]:
        from distill.student.pose_ap import keypoint_ap

        out: dict[str, Any] = {"rows": len(self.truth), "skipped": dict(self.skipped),
                               "box_sources": dict(self.sources)}
        if not self.truth:
            return {**out, "available": False,
                    "reason": "no row has both the pose teacher's people and annotated people"}
        return {**out, "available": True, **keypoint_ap(self.truth, self.results)}
