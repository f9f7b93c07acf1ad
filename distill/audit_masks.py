"""The teacher audit's mask check (`distill.audit`): the panoptic teacher's group bits (Persons,
Vehicles, Animals) against the union of COCO's instance masks of those groups
(`annotations/instances_<split>.json`, polygons and RLE, crowd regions included; category →
group by the run's `GroupTable`)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from distill.coco import resolve_inside
from distill.errors import StorageError, UnsafePathError
from distill.labels.groups import GROUP_NAMES, GroupTable, decode_group_mask
from distill.shards import Sample
from distill.storage import Location

__all__ = ["AUDIT_GROUPS", "instance_group_masks"]

logger = logging.getLogger(__name__)

AUDIT_GROUPS = ("Persons", "Vehicles", "Animals")  # the groups COCO's 80 things fully cover


def instance_group_masks(coco: Any, image_id: int, table: GroupTable,
                         groups: Iterable[int]) -> dict[int, np.ndarray]:
    """Group index → bool (H, W) union of the image's COCO instance masks (`annToMask`: polygons,
    RLE, crowd included) whose category falls in that group. `coco` is a pycocotools `COCO`;
    instance category ids equal the panoptic thing ids, so `table` maps them."""
    info = coco.imgs[image_id]
    shape = (int(info["height"]), int(info["width"]))
    out = {g: np.zeros(shape, bool) for g in groups}
    with warnings.catch_warnings():
        # pycocotools 2.0.x decodes through an `__array__` without numpy 2's copy keyword
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")
        for ann in coco.imgToAnns.get(image_id, []):
            category = table.by_id.get(int(ann["category_id"]))
            if category is not None and category.group in out:
                out[category.group] |= coco.annToMask(ann).astype(bool)
    return out


@dataclass
class _GroupTally:
    """Pixel counts of one group, summed over images."""

    gt_images: int = 0
    pred_images: int = 0
    scored_images: int = 0  # GT or prediction non-empty: the images the mean IoU averages
    intersection: int = 0
    union: int = 0
    gt_pixels: int = 0
    pred_pixels: int = 0
    iou_sum: float = 0.0

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        inter, union = int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))
        gt_n, pred_n = int(np.count_nonzero(gt)), int(np.count_nonzero(pred))
        self.gt_images += gt_n > 0
        self.pred_images += pred_n > 0
        self.intersection += inter
        self.union += union
        self.gt_pixels += gt_n
        self.pred_pixels += pred_n
        if union:
            self.scored_images += 1
            self.iou_sum += inter / union

    def report(self) -> dict[str, Any]:
        return {
            "iou": _ratio(self.intersection, self.union),
            "mean_image_iou": _ratio(self.iou_sum, self.scored_images),
            "precision": _ratio(self.intersection, self.pred_pixels),
            "recall": _ratio(self.intersection, self.gt_pixels),
            "images_with_gt": self.gt_images,
            "images_with_prediction": self.pred_images,
            "images_scored": self.scored_images,
            "gt_pixels": self.gt_pixels,
            "pred_pixels": self.pred_pixels,
            "intersection": self.intersection,
            "union": self.union,
        }


class _MaskAudit:
    """Panoptic group bits vs COCO instance masks, row by row."""

    def __init__(self, root: Location, split: str, table: GroupTable) -> None:
        self.table = table
        self.groups = {GROUP_NAMES.index(name): name for name in AUDIT_GROUPS}
        self.tallies = {name: _GroupTally() for name in AUDIT_GROUPS}
        self.rows = 0
        self.skipped = {"no_panoptic": 0, "not_in_instances": 0, "size_mismatch": 0}
        self.coco, self.path, self.reason = _load_instances(root, split)

    def add(self, sample: Sample) -> None:
        if self.coco is None:
            return
        if sample.groups is None:
            self.skipped["no_panoptic"] += 1
            return
        if sample.image_id not in self.coco.imgs:
            self.skipped["not_in_instances"] += 1
            return
        info = self.coco.imgs[sample.image_id]
        if sample.groups.shape != (int(info["height"]), int(info["width"])):
            logger.warning("image %d: group mask is %s, instances_*.json says %sx%s; skipped",
                           sample.image_id, sample.groups.shape, info["height"], info["width"])
            self.skipped["size_mismatch"] += 1
            return
        bits = decode_group_mask(sample.groups)
        gts = instance_group_masks(self.coco, sample.image_id, self.table, self.groups)
        for index, name in self.groups.items():
            self.tallies[name].add(bits[index], gts[index])
        self.rows += 1

    def report(self) -> dict[str, Any]:
        if self.coco is None:
            return {"available": False, "instances": self.path, "reason": self.reason}
        return {
            "available": True,
            "instances": self.path,
            "rows": self.rows,
            "skipped": dict(self.skipped),
            "groups": {name: t.report() for name, t in self.tallies.items()},
        }


def _load_instances(root: Location, split: str) -> tuple[Any, str, str | None]:
    """(pycocotools COCO or None, the file's path or URI, why it is None). The JSON is read
    through `distill.storage` (so `data.root` may be a URI) and handed to COCO as a dict."""
    ann_dir = root / "annotations"
    try:
        loc = Location(resolve_inside(ann_dir, f"instances_{split}.json"))
        exists = loc.is_file()
    except (UnsafePathError, StorageError) as exc:
        return None, str(ann_dir), str(exc)
    if not exists:
        return None, str(loc), (f"{loc} does not exist: this dataset has no COCO instance "
                                "masks, so the panoptic teacher cannot be audited")
    from pycocotools.coco import COCO

    try:
        doc = json.loads(loc.read_bytes())
        if not isinstance(doc, dict):
            raise TypeError(f"the file holds a JSON {type(doc).__name__}, not an object")
        coco = COCO()
        coco.dataset = doc
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints its progress
            coco.createIndex()
    except (OSError, ValueError, KeyError, TypeError, AssertionError, StorageError) as exc:
        return None, str(loc), f"cannot read {loc}: {exc!r}"
    return coco, str(loc), None


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None
