"""The persons layer: COCO's ground-truth people (keypoints, box, area), copied from the
annotations, learned as 17 joint heatmaps and 12 limb PAFs rendered after augmentation."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from distill.coco import Person
from distill.labels.keypoints import NUM_JOINTS
from distill.layers.registry import Column, LabelLayer, Modality

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
    modalities = (Modality("joints", NUM_JOINTS), Modality("pafs", 12))
    layout_rank = 0

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


LAYER = PersonsLayer()
