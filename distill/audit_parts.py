"""`distill run audit --parts-gt DIR`: the parts teacher scored against CIHP/MHP-style ground
truth a user has (issue 29), as AP^p_50, AP^p_vol and PCP_50 (`distill.parts_metrics`).

The ground truth is one of the two layouts those datasets ship, found by the row's file stem:

- **MHP v2.0** (`parsing_annos/`): one PNG per person, `DIR/<stem>_<NN>_<KK>.png` (NN people in
  the image, KK = 01 … NN), its pixels the person's part ids (0 background);
- **CIHP** (`Category_ids/`, `Human_ids/`): `DIR/Category_ids/<stem>.png` the image's part ids
  and `DIR/Human_ids/<stem>.png` its person ids (0 none, k person k), split into people here.

A PNG with three channels is read by its first (as upstream's loader does). Only images with
ground truth are scored; the teacher's people of each are its instances, scored by their
center locator's score.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from distill.errors import DistillError
from distill.labels.parts import label_names
from distill.parts_metrics import parsing_scores, persons_of
from distill.shards import Sample

__all__ = ["PartsAudit", "load_parts_gt"]

logger = logging.getLogger(__name__)


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        array = np.asarray(img)
    return array[..., 0] if array.ndim == 3 else array


def load_parts_gt(root: Path, file_name: str) -> list[np.ndarray] | None:
    """The ground-truth people of image `file_name` under `root` (either layout), one part map
    each; None when `root` has none for it."""
    stem = Path(file_name).stem
    cihp = root / "Category_ids" / f"{stem}.png", root / "Human_ids" / f"{stem}.png"
    if cihp[0].is_file() and cihp[1].is_file():
        parts, humans = _read(cihp[0]), _read(cihp[1])
        return persons_of(parts, humans, int(humans.max()))
    found = sorted(root.glob(f"{stem}_[0-9][0-9]_[0-9][0-9].png"))
    return [_read(p) for p in found] if found else None


class PartsAudit:
    """Collects the teacher's people and the ground truth's, image by image."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DistillError(f"--parts-gt: {self.root} is no folder (CIHP Category_ids/ and "
                               "Human_ids/, or MHP v2.0 parsing_annos/)")
        self.predictions: list[list[tuple[np.ndarray, float]]] = []
        self.truths: list[list[np.ndarray]] = []
        self.label_set: str | None = None
        self.no_gt = 0
        self.not_run = 0

    def add(self, sample: Sample) -> None:
        found = sample.plugins
        if found.get("part_map") is None or found.get("part_instances") is None:
            self.not_run += 1
            return
        truth = load_parts_gt(self.root, sample.file_name)
        if truth is None:
            self.no_gt += 1
            return
        self.label_set = found.get("parts_label_set") or "cihp"
        people = found.get("part_persons") or []
        masks = persons_of(found["part_map"], found["part_instances"], len(people))
        self.predictions.append([(m, float(p["score"])) for m, p in zip(masks, people,
                                                                          strict=True)])
        self.truths.append(truth)

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ground_truth": str(self.root), "images": len(self.truths),
                               "images_without_gt": self.no_gt, "rows_without_parts": self.not_run}
        if not self.truths:
            return {**out, "available": False}
        label_set = self.label_set or "cihp"
        scores = parsing_scores(self.predictions, self.truths, len(label_names(label_set)))
        return {**out, "available": True, "label_set": label_set, **scores.report()}
