"""The pose layer (issue 28): the pose teacher's people beside COCO's, in the `teacher_persons`
column (null: the pose teacher did not run). The student learns them through the persons
layer's joints and PAFs (`train.pose_source`, `distill.labels.pose.training_persons`), so this
layer has no channels of its own.

Its column is in a shard only when the run has the pose teacher (`only_when_run`): the shards
of every other run keep the schema and the bytes they had before the layer existed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from distill.labels.keypoints import NUM_JOINTS
from distill.labels.pose import TeacherPerson
from distill.layers.registry import Column, LabelLayer

if TYPE_CHECKING:
    from distill.shards import Sample

TEACHER_PERSON = pa.struct([
    ("box", pa.list_(pa.float32(), 4)),  # x0, y0, x1, y1, original pixels
    ("keypoints", pa.list_(pa.float32(), 3 * NUM_JOINTS)),  # x, y, score for the 17 COCO joints
    ("score", pa.float32()),  # the person's score
    ("box_source", pa.string()),  # gt | panoptic | detector | image (distill.labels.pose)
])  # fmt: skip


class PoseLayer(LabelLayer):
    name = "pose"
    columns = (Column(pa.field("teacher_persons", pa.list_(TEACHER_PERSON))),)
    roles = ("pose",)
    only_when_run = True
    loader_columns = ("teacher_persons",)

    def encode(self, sample: Sample, compress_level: int,
               wanted: Collection[str]) -> dict[str, Any]:
        people = sample.teacher_persons
        return {"teacher_persons": None if people is None else [
            {"box": np.asarray(p.box, np.float32).tolist(),
             "keypoints": np.asarray(p.keypoints, np.float32).reshape(-1).tolist(),
             "score": float(p.score), "box_source": p.box_source}
            for p in people]}

    def decode(self, row: Mapping[str, Any]) -> dict[str, Any]:
        people = row["teacher_persons"]
        return {"teacher_persons": None if people is None else [
            TeacherPerson(box=np.asarray(p["box"], np.float32),
                          keypoints=np.asarray(p["keypoints"], np.float32).reshape(NUM_JOINTS, 3),
                          score=p["score"], box_source=p["box_source"])
            for p in people]}

    def fill(self, sample: Sample, outputs: Mapping[str, Any], ctx: Any,
             scratch: dict[str, Any]) -> None:
        result = outputs.get("pose")
        if result is not None:
            sample.teacher_persons = [
                TeacherPerson(box=np.asarray(p.box, np.float32),
                              keypoints=np.asarray(p.keypoints, np.float32),
                              score=float(p.score), box_source=str(p.box_source))
                for p in result.persons]


LAYER = PoseLayer()
