"""The teacher audit's person table (`distill.audit`, issue 30): HCQ's person protocol
(`distill.person_ap`) on the teachers' people — the panoptic teacher's person instances as box
AP and mask AP against COCO's person instances (`instances_<split>.json`, category 1), the pose
teacher's people as OKS AP (`distill.audit_pose`), each with and without persons under 32².

Person instances from the panoptic teacher. A shard keeps the teacher's class map (COCO-panoptic
ids per pixel) and its segments (category, score, isthing, area), not its segment-id map, so
which pixels belong to which person segment is gone. The instances are rebuilt as the
8-connected components of the class map's person pixels; a component whose pixel count equals a
person segment's `area` (both counted at the original resolution) is that segment and takes its
score; any other component (people touching each other merge into one, a person cut in two by
an occluder splits) takes the lowest score among the person segments no component matched, so
it ranks below every matched one. Its limits: touching people are one instance (a merged blob
matches at most one ground-truth person, the others are misses), a split person is a miss plus
a false positive at IoU 0.5+. The numbers are therefore a lower bound on what the teacher's own
segment map would score; keeping that map in the shards would remove the approximation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distill.annotations import PERSON_CATEGORY
from distill.audit_pose import PoseAudit
from distill.person_ap import (
    RULES,
    IouType,
    ap_columns,
    coco_stats,
    format_person_table,
    person_category,
)
from distill.shards import Sample, Segment

__all__ = ["PanopticInstance", "PersonAudit", "format_persons", "panoptic_person_instances"]


@dataclass
class PanopticInstance:
    """One person instance rebuilt from a panoptic class map."""

    mask: np.ndarray  # bool (H, W)
    score: float
    matched: bool  # its pixel count equals a person segment's area


def panoptic_person_instances(class_map: np.ndarray, segments: list[Segment]
                              ) -> list[PanopticInstance]:
    """The person instances of one panoptic result (the module docstring has the rule)."""
    from scipy import ndimage

    labels, count = ndimage.label(class_map == PERSON_CATEGORY, structure=np.ones((3, 3), bool))
    people = [s for s in segments if s.isthing and s.category_id == PERSON_CATEGORY]
    unused = list(range(len(people)))
    areas = np.bincount(labels.reshape(-1), minlength=count + 1)
    out: list[PanopticInstance] = []
    for k in range(1, count + 1):
        match = next((i for i in unused if people[i].area == areas[k]), None)
        if match is not None:
            unused.remove(match)
        out.append(PanopticInstance(labels == k, float(people[match].score) if match is not None
                                    else np.nan, match is not None))
    floor = min((people[i].score for i in unused), default=min(
        (s.score for s in people), default=0.0))
    for inst in out:
        if not inst.matched:
            inst.score = float(floor)
    return out


def instance_results(image_id: int, instances: list[PanopticInstance]) -> list[dict[str, Any]]:
    """COCO results (bbox and segmentation both, each iouType reads its own) of one image."""
    from pycocotools import mask as mask_utils

    out = []
    for inst in instances:
        ys, xs = np.nonzero(inst.mask)
        x0, y0 = int(xs.min()), int(ys.min())
        box = [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")
            rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
        out.append({"image_id": int(image_id), "category_id": PERSON_CATEGORY, "bbox": box,
                    "segmentation": rle, "score": inst.score})
    return out


@dataclass
class PersonAudit:
    """Panoptic person instances vs COCO's person instances, row by row; `report` runs
    COCOeval per task and rule. `coco`: the instances file as a pycocotools COCO (None: the
    dataset has none, the panoptic rows are not scored)."""

    coco: Any
    reason: str | None = None
    images: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=lambda: {
        "no_panoptic": 0, "not_in_instances": 0, "size_mismatch": 0})
    merged: int = 0  # components that matched no segment's area

    def add(self, sample: Sample) -> None:
        if self.coco is None:
            return
        if sample.panoptic is None or sample.segments is None:
            self.skipped["no_panoptic"] += 1
            return
        info = self.coco.imgs.get(int(sample.image_id))
        if info is None:
            self.skipped["not_in_instances"] += 1
            return
        if sample.panoptic.shape != (int(info["height"]), int(info["width"])):
            self.skipped["size_mismatch"] += 1
            return
        self.images.append(info)
        instances = panoptic_person_instances(sample.panoptic, sample.segments)
        self.merged += sum(not i.matched for i in instances)
        self.results += instance_results(int(sample.image_id), instances)

    def rows(self) -> list[dict[str, Any]]:
        """The table's panoptic rows (box and mask, both rules); empty without scored rows."""
        if not self.images:
            return []
        ids = {int(i["id"]) for i in self.images}
        anns = [a for a in self.coco.dataset.get("annotations", [])
                if int(a["image_id"]) in ids and int(a["category_id"]) == PERSON_CATEGORY]
        dataset = {"images": self.images, "annotations": anns,
                   "categories": [person_category()]}
        out = []
        tasks: tuple[tuple[str, IouType], ...] = (("panoptic box", "bbox"),
                                                  ("panoptic mask", "segm"))
        for what, iou in tasks:
            for rule, least in RULES.items():
                gt = sum(not a.get("iscrowd") and float(a["area"]) >= least for a in anns)
                stats = coco_stats(dataset, self.results, iou, min_area=least)
                out.append({"what": what, "rule": rule, "gt": gt,
                            "detections": len(self.results), **ap_columns(stats, iou)})
        return out


def pose_rows(pose: PoseAudit) -> list[dict[str, Any]]:
    """The pose teacher's rows (OKS AP, both rules) from the pose check's people."""
    from distill.student.pose_ap import keypoint_ap

    if not pose.truth:
        return []
    out = []
    for rule, least in RULES.items():
        ap = keypoint_ap(pose.truth, pose.results, min_area=least)
        out.append({"what": "pose OKS", "rule": rule, "gt": ap["gt_persons"],
                    "detections": ap["detections"],
                    **{k: ap[k] for k in ("AP", "AP50", "AP75", "APm", "APl")}})
    return out


def persons_report(people: PersonAudit, pose: PoseAudit) -> dict[str, Any]:
    """The audit report's `persons` entry: the table and how its rows were formed."""
    return {
        "protocol": "HCQ (Son et al.) §4.3: COCO person AP, all and without persons under 32²",
        "instances": "8-connected components of the panoptic person pixels (audit_persons)",
        "panoptic": {"available": people.coco is not None, "reason": people.reason,
                     "rows": len(people.images), "skipped": dict(people.skipped),
                     "unmatched_components": people.merged},
        "table": [*people.rows(), *pose_rows(pose)],
    }


def format_persons(report: dict[str, Any]) -> list[str]:
    """The person table as plain-text lines."""
    pan = report["panoptic"]
    lines = ["person protocol (HCQ: COCO person AP; ≥32² = without persons under 32×32 px)"]
    if not pan["available"]:
        lines.append(f"  panoptic persons: not available ({pan['reason']})")
    else:
        lines.append(f"  panoptic persons: {pan['rows']} rows, instances = connected components "
                     f"of person pixels ({pan['unmatched_components']} matched no segment)")
    if report["table"]:
        lines += format_person_table(report["table"])
    else:
        lines.append("  no row to score")
    return lines
