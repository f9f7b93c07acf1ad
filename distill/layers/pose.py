"""The pose layer (issue 28): the pose teacher's people beside COCO's, in the `teacher_persons`
column (null: the pose teacher did not run). The student learns them through the persons
layer's joints and PAFs (`train.pose_source`, `distill.labels.pose.training_persons`), so this
layer has no channels of its own. It draws the teacher's people in their own panel and viewer
layer ("teacher-people"), beside the persons layer's ground truth: one colour for every limb,
hollow joints (those scored at least `DRAWN_SCORE`), and each person's box in the colour of
where the box came from.

Its column is in a shard only when the run has the pose teacher (`only_when_run`): the shards
of every other run keep the schema and the bytes they had before the layer existed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from distill.config import TrainConfig
from distill.labels.keypoints import NUM_JOINTS
from distill.labels.pose import BOX_SOURCES, TeacherPerson
from distill.layers.registry import Column, LabelLayer, PanelSpec

if TYPE_CHECKING:
    from PIL import ImageDraw

    from distill.layers.form import LabelledImage
    from distill.paint import Painter, Panel
    from distill.shards import Sample

# The teacher's people, drawn apart from ground truth's hue-per-joint skeletons: white limbs and
# hollow joints; a box's colour says where it came from (`BOX_SOURCES` order).
TEACHER_COLOR = (255, 255, 255)
BOX_COLORS = dict(zip(BOX_SOURCES, [(40, 210, 90), (255, 200, 0), (0, 190, 255),
                                    (170, 170, 170)], strict=True))
# Joints scored under the default `train.pose_score_threshold` are not drawn: what the student
# learns from them by default.
DRAWN_SCORE = TrainConfig.pose_score_threshold
VIEW_NAME = "teacher-people"

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

    # -- the decoded form and its pictures: the pose teacher's people ----------------------

    def decode_labels(self, sample: Sample) -> dict[str, Any]:
        return {"teacher_people": sample.teacher_persons}

    def sheet_panels(self) -> tuple[PanelSpec, ...]:
        return (PanelSpec("teacher_people", "people: pose teacher", rank=8, compare_rank=7,
                          field="teacher_people", when_present=True),)

    def panel_caption(self, key: str, labelled: LabelledImage,
                      compare: bool) -> tuple[str, str, bool]:
        return "people: pose teacher", labelled.source, compare

    def draw_panel(self, key: str, painter: Painter, panel: Panel,
                   labelled: LabelledImage) -> None:
        from distill.paint import u8

        if labelled.teacher_people is None:  # the student's side of a comparison
            painter.missing(panel, "no pose teacher people")
            return
        size = painter.content_size(panel)
        painter.paste(panel, u8(painter.image_at(size).astype(np.float32) * 0.6))
        x0, y0, _, _ = painter.content_box(panel)
        n = draw_teacher_people(painter.draw, labelled, size, (x0, y0))
        counts: dict[str, int] = {}
        for p in labelled.teacher_people:
            counts[p.box_source] = counts.get(p.box_source, 0) + 1
        boxes = ", ".join(f"{source} {k}" for source, k in sorted(counts.items()))
        painter.badge(panel, f"{n} {'person' if n == 1 else 'people'}"
                      + (f" · boxes: {boxes}" if boxes else ""))

    def view_layers(self, labelled: LabelledImage) -> list[tuple[int, str]]:
        return [(4, VIEW_NAME)] if labelled.teacher_people is not None else []

    def view_layer(self, labelled: LabelledImage, name: str,
                   size: tuple[int, int]) -> np.ndarray:
        from PIL import Image, ImageDraw

        canvas = Image.new("RGBA", size, (0, 0, 0, 0))
        draw_teacher_people(ImageDraw.Draw(canvas), labelled, size)
        return np.asarray(canvas)


def draw_teacher_people(draw: ImageDraw.ImageDraw, labelled: LabelledImage,
                        size: tuple[int, int], offset: tuple[int, int] = (0, 0)) -> int:
    """Draw the pose teacher's people of `labelled` (boxes, then skeletons) scaled to `size`
    (width, height) at `offset`; returns how many."""
    from distill.layers.persons import draw_people

    people = labelled.teacher_people or []
    scale = size[0] / labelled.width
    for p in people:
        x0, y0, x1, y1 = (float(v) * scale for v in p.box)
        draw.rectangle((x0 + offset[0], y0 + offset[1], x1 + offset[0], y1 + offset[1]),
                       outline=BOX_COLORS.get(p.box_source, TEACHER_COLOR),
                       width=max(1, round(size[0] / 240)))
    if people:
        keypoints = np.stack([np.asarray(p.keypoints, np.float32) for p in people])
        keypoints[..., 2] = keypoints[..., 2] >= DRAWN_SCORE
        draw_people(draw, keypoints, scale, size[0], offset, color=TEACHER_COLOR)
    return len(people)


LAYER = PoseLayer()
