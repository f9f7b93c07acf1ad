"""The persons layer: COCO's ground-truth people (keypoints, box, area), copied from the
annotations, learned as 17 joint heatmaps and 12 limb PAFs rendered after augmentation."""

from __future__ import annotations

import colorsys
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from distill.coco import Person
from distill.labels.keypoints import (
    LIMB_NAMES,
    LIMBS,
    NUM_JOINTS,
    heatmap_windows,
    paf_windows,
    render_heatmaps,
    render_pafs,
)
from distill.layers.codec import unit_u8
from distill.layers.registry import Column, LabelLayer, Modality, PanelSpec

if TYPE_CHECKING:
    from PIL import ImageDraw

    from distill.layers.form import LabelledImage
    from distill.paint import Painter, Panel
    from distill.shards import Sample

GROUND_TRUTH = "COCO ground truth"  # whose people a shard row holds
HEAT_COLOR = np.array([255, 96, 0], np.float32)
PAF_COLOR = np.array([0, 200, 255], np.float32)

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
    # -- the decoded form and its pictures: the people panel -------------------------------

    def decode_labels(self, sample: Sample) -> dict[str, Any]:
        if not sample.persons:
            return {}
        return {"people": np.stack([np.asarray(p.keypoints, np.float32)
                                    for p in sample.persons])}

    def predicted(self, channels: Mapping[str, np.ndarray]) -> dict[str, Any]:
        # the student's people are decoded from these maps (`distill.student.pose`)
        return {key: channels[m] for key, m in (("joints", "joints"), ("pafs", "pafs"))
                if m in channels}

    def sheet_panels(self) -> tuple[PanelSpec, ...]:
        return (PanelSpec("people", "people: joints + PAFs", rank=4, compare_rank=5),)

    def panel_caption(self, key: str, labelled: LabelledImage,
                      compare: bool) -> tuple[str, str, bool]:
        if labelled.source == "teachers":  # a shard's people are COCO's, not a teacher's
            return "people", GROUND_TRUTH, True
        return "people: joints + PAFs", labelled.source, compare

    def draw_panel(self, key: str, painter: Painter, panel: Panel,
                   labelled: LabelledImage) -> None:
        from distill.paint import blend, u8

        size = painter.content_size(panel)
        heat, paf, heat_alpha, paf_alpha = people_maps(labelled, size)
        base = painter.image_at(size).astype(np.float32) * 0.6
        rgb = blend(base, PAF_COLOR, np.clip(paf, 0, 1) * paf_alpha)
        rgb = blend(rgb, HEAT_COLOR, np.clip(heat, 0, 1) * heat_alpha)
        painter.paste(panel, u8(rgb))
        x0, y0, _, _ = painter.content_box(panel)
        n = draw_skeletons(painter.draw, labelled, size, (x0, y0))
        painter.badge(panel, f"{n} {'person' if n == 1 else 'people'}")

    def view_layers(self, labelled: LabelledImage) -> list[tuple[int, str]]:
        return [(4, "people")]

    def view_layer(self, labelled: LabelledImage, name: str,
                   size: tuple[int, int]) -> np.ndarray:
        from PIL import Image, ImageDraw

        from distill.paint import rgba

        heat, paf, heat_alpha, paf_alpha = people_maps(labelled, size)
        paf_a = np.clip(paf, 0, 1) * paf_alpha
        heat_a = np.clip(heat, 0, 1) * heat_alpha
        alpha = 1.0 - (1.0 - paf_a) * (1.0 - heat_a)  # heat over PAFs, as the sheet draws
        rgb = (PAF_COLOR * (paf_a * (1 - heat_a))[..., None] + HEAT_COLOR * heat_a[..., None])
        rgb = rgb / np.maximum(alpha, 1e-6)[..., None]
        canvas = Image.fromarray(rgba(rgb, alpha), "RGBA")
        draw_skeletons(ImageDraw.Draw(canvas), labelled, size)
        return np.asarray(canvas)


def _joint_colors() -> list[tuple[int, int, int]]:
    """One saturated hue per joint, round the colour wheel."""
    out = []
    for j in range(NUM_JOINTS):
        r, g, b = colorsys.hsv_to_rgb(j / NUM_JOINTS, 0.86, 1.0)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out


_JOINT_COLORS = _joint_colors()


def people_maps(labelled: LabelledImage, size: tuple[int, int]) -> tuple[
        np.ndarray, np.ndarray, float, float]:
    """Joint heat and PAF strength (H, W) at `size` (width, height) and the opacity each is
    drawn with: the student's own maps, or faint renderings of ground-truth people."""
    from distill.paint import resize_map

    w, h = size
    if labelled.joints is not None or labelled.pafs is not None:  # the student's maps
        heat = (resize_map(np.max(labelled.joints, axis=0), size)
                if labelled.joints is not None else np.zeros((h, w), np.float32))
        paf = (resize_map(np.max(np.abs(labelled.pafs), axis=0), size)
               if labelled.pafs is not None else np.zeros((h, w), np.float32))
        return heat, paf, 0.8, 0.6
    scale = w / labelled.width
    scaled = np.asarray(labelled.people, np.float32).reshape(-1, NUM_JOINTS, 3).copy()
    scaled[..., :2] *= scale
    heat = render_heatmaps(scaled, h, w, size=max(23.0 * scale, 5.0)).max(axis=0)
    paf = render_pafs(scaled, h, w, line_width=max(6.0 * scale, 2.0)).max(axis=0)
    return heat, paf, 0.45, 0.3


def draw_skeletons(draw: ImageDraw.ImageDraw, labelled: LabelledImage, size: tuple[int, int],
                   offset: tuple[int, int] = (0, 0)) -> int:
    """Draw each person's limbs and joints of `labelled`, scaled to `size` (width, height) and
    placed at `offset`; returns the number of people."""
    return draw_people(draw, labelled.people, size[0] / labelled.width, size[0], offset)


def draw_people(draw: ImageDraw.ImageDraw, people: np.ndarray, scale: float, width: int,
                offset: tuple[int, int] = (0, 0),
                color: tuple[int, int, int] | None = None) -> int:
    """Draw (P, 17, 3) people (x, y in original pixels, joints with a third value > 0 drawn),
    scaled by `scale` and placed at `offset` on a picture `width` pixels wide. `color`: every
    limb in it and hollow joints (the pose teacher's people); None: a hue per joint, filled
    (ground truth's and the student's). Returns the number of people."""
    people = np.asarray(people, np.float32).reshape(-1, NUM_JOINTS, 3)
    lw = max(2, round(width / 120))
    radius = max(2.5, width / 100)
    for person in people:
        pts = person[:, :2] * scale + offset
        seen = person[:, 2] > 0
        for k, (a, b) in enumerate(LIMBS):
            if seen[a] and seen[b]:
                fill = color or _JOINT_COLORS[(3 * k) % NUM_JOINTS]
                draw.line([tuple(pts[a]), tuple(pts[b])], fill=fill, width=lw)
        for j in np.flatnonzero(seen):
            x, y = pts[j]
            box = (x - radius, y - radius, x + radius, y + radius)
            if color is None:
                draw.ellipse(box, fill=_JOINT_COLORS[j], outline=(0, 0, 0))
            else:
                draw.ellipse(box, outline=color, width=max(1, lw // 2 + 1))
    return len(people)


LAYER = PersonsLayer()
