"""Multi-human parsing metrics (issue 29): AP^p at IoU thresholds 0.1 … 0.9, their mean AP^p_vol,
and PCP, as the MHP v2.0 / CIHP protocols define them.

The semantics are upstream's evaluation, `mmdet/core/evaluation/eval_mhp.py` of
cjm-sfw/Uniparser (`eval_parsing_ap`, `cal_one_mean_iou`, and `voc_ap` of
`mmdet/utils/voc_eval.py`), itself the MHP v2.0 toolkit's:

- A person is a full-image map of part ids (0 = background). A predicted person's overlap with
  a ground-truth person is the **mean over the label set's classes of the per-class IoU**,
  background included, classes absent from both maps left out (`np.nanmean`).
- Predicted people of all images are ranked by score (descending; ties keep input order here,
  upstream's `np.argsort` does not promise an order). Each is matched to the ground-truth person
  of its image it overlaps most; at threshold t it is a true positive when that overlap is
  **above** t (strictly) and that person is not matched yet at t, otherwise a false positive (a
  second prediction of a matched person is not moved to the next best: VOC's rule).
- AP^p at t: VOC's area under the interpolated precision-recall curve (`voc_ap`, not the
  11-point form), recall over every ground-truth person with at least one part pixel.
- PCP at t: for each ground-truth person, the share of its part classes (1 … C−1 present in its
  map) whose IoU with its true-positive match is above t; 0 for a person no prediction matched;
  averaged over all ground-truth people.

AP^p_50 and PCP_50 are the values at t = 0.5; AP^p_vol the mean AP^p over the nine thresholds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["THRESHOLDS", "ParsingScores", "parsing_scores", "part_ious", "persons_of", "voc_ap"]

logger = logging.getLogger(__name__)

THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class ParsingScores:
    """AP^p and PCP at each of `THRESHOLDS`, and the mean best overlap of the predictions."""

    ap: tuple[float, ...]
    pcp: tuple[float, ...]
    mean_iou: float  # upstream's "instance miou": each prediction's best overlap, averaged
    people: int  # ground-truth people (with a part pixel)
    predictions: int

    @property
    def ap50(self) -> float:
        return self.ap[THRESHOLDS.index(0.5)]

    @property
    def ap_vol(self) -> float:
        return float(np.mean(self.ap))

    @property
    def pcp50(self) -> float:
        return self.pcp[THRESHOLDS.index(0.5)]

    def report(self) -> dict[str, float | int]:
        return {"AP^p_50": self.ap50, "AP^p_vol": self.ap_vol, "PCP_50": self.pcp50,
                "mean_iou": self.mean_iou, "people": self.people,
                "predictions": self.predictions}


def part_ious(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """float64 (num_classes,) IoU of each class between two part-id maps; NaN for a class in
    neither (upstream's `cal_one_mean_iou`; ids outside [0, num_classes) of `gt` are ignored)."""
    gt = np.asarray(gt).astype(np.int64).reshape(-1)
    pred = np.asarray(pred).astype(np.int64).reshape(-1)
    keep = (gt >= 0) & (gt < num_classes) & (pred >= 0) & (pred < num_classes)
    hist = np.bincount(num_classes * gt[keep] + pred[keep],
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)
    hist = hist.astype(np.float64)
    inter = np.diag(hist)
    union = hist.sum(1) + hist.sum(0) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC's area under the precision envelope (upstream `voc_ap`, use_07_metric=False)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def persons_of(part_map: np.ndarray, instance_map: np.ndarray, count: int) -> list[np.ndarray]:
    """Per-person full-image part maps from a part map and a person-instance map (instance k is
    person k − 1): person k's parts where the instance map is k, background elsewhere."""
    return [np.where(instance_map == k, part_map, 0).astype(np.uint8)
            for k in range(1, count + 1)]


def parsing_scores(predictions: Sequence[Sequence[tuple[np.ndarray, float]]],
                   truths: Sequence[Sequence[np.ndarray]], num_classes: int) -> ParsingScores:
    """AP^p and PCP of `predictions` (per image: (part map, score) per predicted person) against
    `truths` (per image, the same order: one part map per ground-truth person) over a label set
    of `num_classes` ids, background included (CIHP 20, MHP v2.0 59)."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} images of predictions, {len(truths)} of truth")
    gts = [[g for g in image if np.any(np.asarray(g) > 0)] for image in truths]
    people = sum(len(image) for image in gts)
    flat = [(score, i, mask) for i, image in enumerate(predictions) for mask, score in image]
    order = sorted(range(len(flat)), key=lambda k: -flat[k][0])  # stable
    nt = len(THRESHOLDS)
    tp = np.zeros((nt, len(flat)))
    fp = np.zeros((nt, len(flat)))
    taken = [[np.zeros(len(image), bool) for image in gts] for _ in THRESHOLDS]
    pcp: list[list[float]] = [[] for _ in THRESHOLDS]
    best_ious: list[float] = []
    for d, k in enumerate(order):
        _, image, mask = flat[k]
        best, best_j, best_ious_of = -np.inf, -1, np.zeros(0)
        for j, gt in enumerate(gts[image]):
            ious = part_ious(mask, gt, num_classes)
            overlap = float(np.nanmean(ious)) if np.any(~np.isnan(ious)) else np.nan
            if overlap > best:
                best, best_j, best_ious_of = overlap, j, ious
        best_ious.append(best)
        for t, threshold in enumerate(THRESHOLDS):
            if best > threshold and not taken[t][image][best_j]:
                tp[t, d] = 1.0
                taken[t][image][best_j] = True
                gt_parts = np.unique(gts[image][best_j])
                parts = int(np.count_nonzero((gt_parts > 0) & (gt_parts < num_classes)))
                with np.errstate(invalid="ignore"):
                    hits = float(np.sum(best_ious_of[1:] > threshold))
                pcp[t].append(hits / parts if parts else 0.0)
            else:
                fp[t, d] = 1.0
    aps, pcps = [], []
    for t in range(nt):
        ctp, cfp = np.cumsum(tp[t]), np.cumsum(fp[t])
        recall = ctp / people if people else np.zeros_like(ctp)
        precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        aps.append(voc_ap(recall, precision) if people else 0.0)
        pcps.append(float(np.sum(pcp[t]) / people) if people else 0.0)
    finite = [v for v in best_ious if np.isfinite(v)]
    return ParsingScores(ap=tuple(aps), pcp=tuple(pcps),
                         mean_iou=float(np.mean(finite)) if finite else 0.0,
                         people=people, predictions=len(flat))
