"""`distill run evaluate`'s person-centric scores (issue 30):

* OKS AP of the people decoded from the student's joints and PAFs under HCQ's two rules, all
  persons and without persons under 32² (`distill.person_ap`);
* the Persons channel's IoU against the union of COCO's person masks (the dataset's
  `instances_<split>.json`, `annToMask`: polygons, RLE, crowd regions included; category →
  Persons by the labelling run's `GroupTable`, as the teacher audit's mask check), at the
  original resolution: the channel's [0, 1] value, the letterbox padding cut off, resized
  bilinearly to the image and thresholded at 0.5;
* OKS AP against input resolution (SASD, Fan et al.: 128, 192, 256; its test protocol resizes the
  longer side to the size and pads to a square). Y-MAP-Net's dense bridge fixes its input size,
  so the same checkpoint sees each resolution as its letterboxed input resized down to r × r
  (bilinear, antialiased) and back up to its own size (bilinear): the image holds r pixels'
  detail across, the geometry is unchanged. At r = the input size this is the plain pass; a
  resolution above it is not scored (the input has no more detail to give; listed as skipped).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distill.config import Config
from distill.labels.letterbox import Letterbox
from distill.person_ap import RULES, format_person_table
from distill.shards import Sample
from distill.student import layout
from distill.student.pose import decode_letterboxed
from distill.student.pose_ap import keypoint_ap, to_coco_results

__all__ = ["RESOLUTIONS", "PersonEval", "PersonMasks", "decode_people", "degrade",
           "format_persons", "person_masks"]

logger = logging.getLogger(__name__)

RESOLUTIONS = (128, 192, 256)  # SASD's inference resolutions for AP against resolution
_AP = ("AP", "AP50", "AP75", "APm", "APl")

Model = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@dataclass
class PersonMasks:
    """COCO's instances (a pycocotools COCO, None when the dataset has none: `reason`) and the
    labelling run's group table, for the Persons IoU."""

    coco: Any
    table: Any
    path: str
    reason: str | None = None


def person_masks(labels: Any) -> PersonMasks | None:
    """The instances of the label run `labels` (a `distill.runfolder.LabelRun`; None: unknown,
    no IoU) by its config's `data.root`, `data.split` and `labels.group_overrides`."""
    from distill.audit_masks import _load_instances
    from distill.config import load_config
    from distill.labels.groups import GroupTable
    from distill.storage import Location

    if labels is None or not labels.config.is_file():
        return None
    config = load_config(None, [labels.config], [])
    coco, path, reason = _load_instances(Location(config.data.root), config.data.split)
    return PersonMasks(coco, GroupTable.load(config.labels.group_overrides), path, reason)


def degrade(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """(B, 3, S, S) images as seen at `resolution`: down to it and back up to S (bilinear)."""
    size = image.shape[-1]
    if resolution == size:
        return image
    small = F.interpolate(image, size=(resolution, resolution), mode="bilinear",
                          align_corners=False, antialias=resolution < size)
    return F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)


def decode_people(maps: torch.Tensor, image_ids: Sequence[int], truth: dict[int, Sample],
                  config: Config) -> list[dict[str, Any]]:
    """COCO keypoint results (original pixels) of the people decoded from a batch's maps."""
    heat = ((maps[:, : layout.PAFS.stop].float() + 1) / 2).cpu().numpy()
    out: list[dict[str, Any]] = []
    for i, image_id in enumerate(image_ids):
        gt = truth[image_id]
        lb = Letterbox.fit(gt.width, gt.height, config.student.input_size)
        people = decode_letterboxed(heat[i, layout.JOINTS], heat[i, layout.PAFS], lb,
                                    peak_threshold=config.predict.peak_threshold,
                                    paf_threshold=config.predict.paf_threshold)
        out.extend(to_coco_results(people, image_id, lb))
    return out


@dataclass
class _Iou:
    intersection: int = 0
    union: int = 0
    gt_pixels: int = 0
    pred_pixels: int = 0
    images: int = 0
    iou_sum: float = 0.0
    scored: int = 0

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        inter, union = int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))
        self.intersection += inter
        self.union += union
        self.gt_pixels += int(np.count_nonzero(gt))
        self.pred_pixels += int(np.count_nonzero(pred))
        self.images += 1
        if union:
            self.scored += 1
            self.iou_sum += inter / union


@dataclass
class PersonEval:
    """The person-centric scores, batch by batch (`add`); `report` runs pycocotools."""

    config: Config
    masks: PersonMasks | None = None
    resolutions: Sequence[int] = RESOLUTIONS
    results: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    iou: _Iou = field(default_factory=_Iou)
    skipped: dict[str, int] = field(default_factory=lambda: {"not_in_instances": 0})

    def add(self, model: Model, image: torch.Tensor, maps: torch.Tensor,
            image_ids: list[int], truth: dict[int, Sample]) -> list[dict[str, Any]]:
        """Score one batch (`image`: the model's input, `maps` its output); returns the
        people decoded from `maps` (the plain pass)."""
        size = self.config.student.input_size
        plain = decode_people(maps, image_ids, truth, self.config)
        for r in self.resolutions:
            if r > size:
                continue
            found = plain if r == size else decode_people(
                model(degrade(image, r))["maps"], image_ids, truth, self.config)
            self.results.setdefault(r, []).extend(found)
        if self.masks is not None and self.masks.coco is not None:
            self._add_iou(maps, image_ids, truth)
        return plain

    def _add_iou(self, maps: torch.Tensor, image_ids: list[int],
                 truth: dict[int, Sample]) -> None:
        from distill.audit_masks import instance_group_masks
        from distill.labels.groups import GROUP_NAMES
        from distill.layers.groups import CLASS_GROUPS

        assert self.masks is not None
        persons = GROUP_NAMES.index("Persons")
        channel = layout.GROUPS.start + CLASS_GROUPS.index("Persons")
        size = self.config.student.input_size
        for i, image_id in enumerate(image_ids):
            if image_id not in self.masks.coco.imgs:
                self.skipped["not_in_instances"] += 1
                continue
            gt = truth[image_id]
            lb = Letterbox.fit(gt.width, gt.height, size)
            prob = (maps[i, channel].float() + 1) / 2
            crop = prob[lb.pad_y:lb.pad_y + lb.new_h, lb.pad_x:lb.pad_x + lb.new_w]
            full = F.interpolate(crop[None, None], size=(gt.height, gt.width), mode="bilinear",
                                 align_corners=False)[0, 0]
            want = instance_group_masks(self.masks.coco, image_id, self.masks.table, [persons])
            self.iou.add((full > 0.5).cpu().numpy(), want[persons])

    def report(self, images: list[Sample]) -> dict[str, Any]:
        size = self.config.student.input_size
        oks = []
        for rule, least in RULES.items():
            ap = keypoint_ap(images, self.results.get(size, []), min_area=least)
            oks.append({"what": f"student OKS @{size}", "rule": rule, "gt": ap["gt_persons"],
                        "detections": ap["detections"], **{k: ap[k] for k in _AP}})
        sweep = []
        for r in (r for r in self.resolutions if r <= size):
            ap = keypoint_ap(images, self.results.get(r, []))
            sweep.append({"what": f"student OKS @{r}", "rule": "all", "gt": ap["gt_persons"],
                          "detections": ap["detections"], **{k: ap[k] for k in _AP}})
        return {"oks": oks, "resolutions": sweep, "input_size": size,
                "resolutions_skipped": [r for r in self.resolutions if r > size],
                "persons_iou": self._iou_report()}

    def _iou_report(self) -> dict[str, Any]:
        m = self.masks
        if m is None or m.coco is None:
            reason = m.reason if m is not None else "no labelling run config to find the instances"
            return {"available": False, "reason": reason}
        t = self.iou
        return {"available": True, "instances": m.path, "images": t.images,
                "iou": t.intersection / t.union if t.union else None,
                "mean_image_iou": t.iou_sum / t.scored if t.scored else None,
                "precision": t.intersection / t.pred_pixels if t.pred_pixels else None,
                "recall": t.intersection / t.gt_pixels if t.gt_pixels else None,
                "gt_pixels": t.gt_pixels, "pred_pixels": t.pred_pixels,
                "skipped": dict(self.skipped)}


def format_persons(report: dict[str, Any]) -> list[str]:
    """The person-centric scores as plain-text lines."""
    lines = ["people vs COCO, person protocol (HCQ; ≥32² = without persons under 32×32 px)"]
    lines += format_person_table(report["oks"])
    lines += ["AP against input resolution (SASD; the input resized to r and back)"]
    lines += format_person_table(report["resolutions"])
    if report["resolutions_skipped"]:
        lines.append(f"  not scored (above the input size {report['input_size']}): "
                     + ", ".join(map(str, report["resolutions_skipped"])))
    iou = report["persons_iou"]
    if not iou["available"]:
        lines.append(f"Persons channel vs COCO person masks: not available ({iou['reason']})")
    else:
        lines.append(f"Persons channel vs COCO person masks ({iou['images']} images): IoU "
                     f"{_f(iou['iou'])} · mean image IoU {_f(iou['mean_image_iou'])} · "
                     f"precision {_f(iou['precision'])} · recall {_f(iou['recall'])}")
    return lines


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
