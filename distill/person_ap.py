"""COCO's person protocol as HCQ judges it (Son et al., "Object-centric multi-task learning for
human instances", §4.3): box AP, mask AP and OKS AP of one category, person, by pycocotools'
`COCOeval`, each under two rules:

* `all`: COCO's own evaluation, every person counts;
* `no_small`: "the instances with a small size (< 32 × 32 pixels) are excluded in computing
  mAP" (HCQ §4.3, after PosePlusSeg, PETR and Pose2Seg, for every task that includes pose).
  Excluded the way COCOeval's own area ranges exclude (the mechanism of its APm/APl columns):
  the `all` range becomes [32², ∞), so a ground-truth person whose `area` is under 32² is
  ignored (missing it costs nothing, a detection matched to it counts neither way) and an
  unmatched detection under 32² is ignored too. The area is COCOeval's: the annotation's `area`
  field for ground truth (the segment's pixels, not the box), the result's for detections
  (mask pixels for segm, box w·h for bbox and keypoints).

One table, COCO's standard columns AP, AP50, AP75, APm, APl (APm and APl are the same under
both rules: their ranges lie above 32² already). A value COCOeval gives as -1 (no ground truth
in that range) is None.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["AP_COLUMNS", "RULES", "SMALL_AREA", "ap_columns", "coco_stats", "format_person_table",
           "person_category"]

IouType = Literal["bbox", "segm", "keypoints"]

SMALL_AREA = 32.0 ** 2  # COCO's small/medium boundary, HCQ's "32 × 32 pixels"
RULES: dict[str, float] = {"all": 0.0, "no_small": SMALL_AREA}  # rule → least area that counts
AP_COLUMNS = ("AP", "AP50", "AP75", "APm", "APl")
# Where each column sits in COCOeval.stats: bbox/segm have APs at 3, keypoints have no APs.
_STATS_AT: dict[str, tuple[int, ...]] = {"bbox": (0, 1, 2, 4, 5), "segm": (0, 1, 2, 4, 5),
                                         "keypoints": (0, 1, 2, 3, 4)}


def person_category(keypoints: Sequence[str] = (), skeleton: Sequence[Sequence[int]] = ()
                    ) -> dict[str, Any]:
    """COCO's person category (id 1), with keypoint names and skeleton for OKS."""
    return {"id": 1, "name": "person", "supercategory": "person",
            "keypoints": list(keypoints), "skeleton": [list(s) for s in skeleton]}


def coco_stats(dataset: dict[str, Any], results: Sequence[dict[str, Any]], iou_type: IouType,
               *, min_area: float = 0.0) -> list[float]:
    """COCOeval's `stats` (its 12 or 10 summary numbers, -1 where undefined) of `results`
    against the ground truth `dataset` (a COCO dict: images, annotations, categories), with the
    `all` area range starting at `min_area` (0: COCO's own evaluation). Images are the
    dataset's; results for other images are refused by pycocotools. No results: every AP 0
    where ground truth counts (nothing found), as COCOeval would score an empty detector."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # pycocotools 2.0.x decodes masks through an `__array__` without numpy 2's copy keyword
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        # loadRes refuses an empty list; an empty detector's AP is 0 wherever a person counts.
        dt = gt.loadRes([dict(r) for r in results]) if results else COCO()
        if not results:
            dt.dataset = {"images": dataset["images"], "annotations": [],
                          "categories": dataset["categories"]}
            dt.createIndex()
        ev = COCOeval(gt, dt, iouType=iou_type)
        ev.params.areaRng[0] = [float(min_area), 1e10]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


def ap_columns(stats: Sequence[float], iou_type: IouType) -> dict[str, float | None]:
    """AP, AP50, AP75, APm, APl out of COCOeval's `stats` (-1 → None)."""
    return {name: (None if stats[i] < 0 else stats[i])
            for name, i in zip(AP_COLUMNS, _STATS_AT[iou_type], strict=True)}


def format_person_table(rows: Sequence[dict[str, Any]], indent: str = "  ") -> list[str]:
    """Plain-text lines of the person table: one row per (what, rule) with the AP columns and
    the counts (`rows` items: what, rule, gt, detections and the AP columns)."""
    head = (f"{indent}{'':<18} {'rule':<9} " + " ".join(f"{c:>6}" for c in AP_COLUMNS)
            + f" {'GT':>5} {'dets':>5}")
    lines = [head]
    for row in rows:
        lines.append(f"{indent}{row['what']:<18} {_rule(row['rule']):<9} "
                     + " ".join(f"{_f(row.get(c)):>6}" for c in AP_COLUMNS)
                     + f" {_n(row.get('gt')):>5} {_n(row.get('detections')):>5}")
    return lines


def _rule(rule: str) -> str:
    return "all" if rule == "all" else "≥32²"


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _n(value: float | int | None) -> str:
    return "-" if value is None else str(int(value))
