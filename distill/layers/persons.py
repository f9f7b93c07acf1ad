"""The persons layer: COCO's ground-truth people (keypoints, box, area), copied from the
annotations, learned as 17 joint heatmaps and 12 limb PAFs rendered after augmentation."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from distill.coco import Person
from distill.labels.keypoints import LIMB_NAMES, NUM_JOINTS, heatmap_windows, paf_windows
from distill.layers.registry import Column, LabelLayer, Modality, unit_u8

if TYPE_CHECKING:
    from distill.shards import Sample

PERSON = pa.struct([
    ("keypoints", pa.list_(pa.float32(), 3 * NUM_JOINTS)),  # x, y, v for the 17 COCO joints
    ("bbox", pa.list_(pa.float32(), 4)),  # x, y, w, h
    ("area", pa.float32()),
    ("iscrowd", pa.bool_()),
    ("num_keypoints", pa.int32()),
])  # fmt: skip


class PersonsLayer(LabelLayer):
    name = "persons"
    columns = (Column(pa.field("persons", pa.list_(PERSON))),)  # COCO ground truth, original px
    rewrites = ()  # annotations: no teacher rewrites them
    modalities = (Modality("joints", NUM_JOINTS), Modality("pafs", len(LIMB_NAMES)))
    layout_rank = 0
    loader_columns = card_columns = ("persons",)
    moved = "keypoints"

    def encode(self, sample: Sample, compress_level: int,
               wanted: Collection[str]) -> dict[str, Any]:
        return {"persons": [
            {"keypoints": p.keypoints.reshape(-1).tolist(), "bbox": list(p.bbox), "area": p.area,
             "iscrowd": p.iscrowd, "num_keypoints": p.num_keypoints}
            for p in sample.persons]}

    def decode(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {"persons": [
            Person(keypoints=np.asarray(p["keypoints"], np.float32).reshape(NUM_JOINTS, 3),
                   bbox=tuple(p["bbox"]), area=p["area"], iscrowd=p["iscrowd"],
                   num_keypoints=p["num_keypoints"])
            for p in row["persons"] or []]}

    def keypoints(self, sample: Sample) -> np.ndarray:
        if not sample.persons:
            return np.zeros((0, NUM_JOINTS, 3), np.float32)
        return np.stack([np.asarray(p.keypoints, np.float32) for p in sample.persons])

    def target(self, sample: Sample, warp: Any) -> np.ndarray:
        """Joint heatmaps and limb PAFs drawn from the moved keypoints at the output
        resolution (a drawn heatmap is never resampled), at the epoch's sizes
        (`warp.schedule`); empty, yet present, for an image without people."""
        kp, size = warp.keypoints[self.name], warp.size
        joint_size, paf_width = warp.schedule
        out = np.zeros((NUM_JOINTS + len(LIMB_NAMES), size, size), np.uint8)
        # Drawn window by window straight into uint8: `unit_u8` is monotone, so the max over
        # people of the converted windows is the conversion of the float maps' max.
        joints, pafs = out[:NUM_JOINTS], out[NUM_JOINTS:]
        for j, (r0, r1, c0, c1), values in heatmap_windows(kp, size, size, joint_size):
            window = joints[j, r0:r1, c0:c1]
            np.maximum(window, unit_u8(values), out=window)
        for k, (r0, r1, c0, c1), on in paf_windows(kp, size, size, paf_width):
            pafs[k, r0:r1, c0:c1][on] = 255
        return out


LAYER = PersonsLayer()
