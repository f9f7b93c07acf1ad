"""The body-part layer (issue 29): the parts teacher's (`parts` role, UniParser) part-class map
and person-instance map, and the student's part-group channels.

Columns, written only by a run with the parts teacher (`only_when_run`: every other run's
shards keep their schema and bytes):

- `parts_png`: uint8 PNG (H, W), the part id of each pixel in the label set
  (`distill.labels.parts`; CIHP: 0 background, 1 … 19);
- `part_instances_png`: uint8 PNG (H, W), 0 = no person, k = the k-th of `part_persons`;
- `part_persons`: list of {box x0 y0 x1 y1 original pixels, score}, instance order (null: the
  parts teacher did not run; the column the viewer reads to know that);
- `parts_label_set`: "cihp" or "mhp", the ids' label set.

A decoded row keeps them in `Sample.plugins` (`part_map`, `part_instances`, `part_persons`,
`parts_label_set`). The student learns the part groups (`PART_GROUPS`, one channel each, loss
gain `train.loss_gains.parts`) only when asked: `student.extra_layers = ["parts"]`
(`opt_in`; the paper's 44 channels stay the default).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from distill.labels.parts import PART_GROUPS, group_map
from distill.layers.codec import png_value, unpng
from distill.layers.registry import Column, LabelLayer, Modality, PanelSpec, pixel_share, png_column

if TYPE_CHECKING:
    from distill.layers.form import LabelledImage
    from distill.paint import Painter, Panel
    from distill.shards import Sample

PART_PERSON = pa.struct([
    ("box", pa.list_(pa.float32(), 4)),  # x0, y0, x1, y1, original pixels
    ("score", pa.float32()),  # the center locator's score in [0, 1]
])  # fmt: skip
# One colour per part group (`PART_GROUPS` order); person outlines are white.
PART_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 200, 60), (60, 130, 255), (60, 220, 90), (230, 60, 220), (255, 90, 50),
    (60, 230, 230))  # fmt: skip
OUTLINE = (255, 255, 255)
INSTANCES = "part_instances"  # `LabelledImage.layers` key of the teachers' instance map


def part_index(planes: np.ndarray) -> np.ndarray:
    """(G, H, W) part-group planes (0/1 or probabilities) → int64 (H, W): the strongest group
    above 0.5, −1 where none is."""
    if not len(planes):
        return np.full(planes.shape[1:], -1, np.int64)
    best = planes.argmax(0)
    return np.where(planes.max(0) > 0.5, best, -1).astype(np.int64)


def outlines(instances: np.ndarray) -> np.ndarray:
    """bool (H, W): the pixels of a person (instance > 0) whose right or lower neighbour is
    another instance or none: each person's outline."""
    edge = np.zeros(instances.shape, bool)
    right = instances[:, :-1] != instances[:, 1:]
    down = instances[:-1] != instances[1:]
    edge[:, :-1] |= right
    edge[:, 1:] |= right
    edge[:-1] |= down
    edge[1:] |= down
    return edge & (instances > 0)


class PartsLayer(LabelLayer):
    name = "parts"
    columns = (png_column("parts_png"), png_column("part_instances_png"),
               Column(pa.field("part_persons", pa.list_(PART_PERSON))),
               Column(pa.field("parts_label_set", pa.string())))
    roles = ("parts",)
    only_when_run = True
    opt_in = True
    modalities = (Modality("parts", len(PART_GROUPS), gain=3.0),)
    layout_rank = 50
    loader_columns = ("parts_png", "parts_label_set")
    moved = "nearest"  # ids must not blend
    on_noise = "empty"  # noise has no people
    caption = "body parts"
    stat_columns = ("parts_png", "part_instances_png")
    statistic_names = ("part_share",)

    # -- shard codec ----------------------------------------------------------------------

    def encode(self, sample: Sample, compress_level: int,
               wanted: Collection[str]) -> dict[str, Any]:
        found = sample.plugins
        out: dict[str, Any] = {}
        if "parts_png" in wanted:
            out["parts_png"] = png_value(sample, "parts", found.get("part_map"), compress_level)
        if "part_instances_png" in wanted:
            out["part_instances_png"] = png_value(sample, "part instances",
                                                  found.get("part_instances"), compress_level)
        people = found.get("part_persons")
        out["part_persons"] = None if people is None else [
            {"box": np.asarray(p["box"], np.float32).tolist(), "score": float(p["score"])}
            for p in people]
        out["parts_label_set"] = found.get("parts_label_set")
        return out

    def decode(self, row: Mapping[str, Any]) -> dict[str, Any]:
        people = row.get("part_persons")
        return {
            "part_map": unpng(row.get("parts_png")),
            "part_instances": unpng(row.get("part_instances_png")),
            "part_persons": None if people is None else [
                {"box": np.asarray(p["box"], np.float32), "score": p["score"]} for p in people],
            "parts_label_set": row.get("parts_label_set"),
        }

    # -- post-processing ------------------------------------------------------------------

    def fill(self, sample: Sample, outputs: Mapping[str, Any], ctx: Any,
             scratch: dict[str, Any]) -> None:
        """From the parts teacher's `PartsResult` (teachers.base): its maps as they are, its
        people's boxes and scores, and its label set (the result's `label_set`, CIHP when it
        names none)."""
        result = outputs.get("parts")
        if result is None:
            return
        sample.plugins.update(
            part_map=np.asarray(result.part_map, np.uint8),
            part_instances=np.asarray(result.instance_map, np.uint8),
            part_persons=[{"box": np.asarray(p.box, np.float32), "score": float(p.score)}
                          for p in result.persons],
            parts_label_set=str(getattr(result, "label_set", None) or "cihp"),
        )

    # -- the student ----------------------------------------------------------------------

    @staticmethod
    def _groups(sample: Sample) -> np.ndarray | None:
        part_map = sample.plugins.get("part_map")
        if part_map is None:
            return None
        return group_map(part_map, sample.plugins.get("parts_label_set") or "cihp")

    def label_map(self, sample: Sample) -> np.ndarray | None:
        groups = self._groups(sample)
        if groups is None:
            return None
        ids = np.arange(1, len(PART_GROUPS) + 1, dtype=np.uint8)[:, None, None]
        return (groups[None] == ids).astype(np.float32)

    def target(self, sample: Sample, warp: Any) -> np.ndarray | None:
        groups = self._groups(sample)
        if groups is None:
            return None
        moved = warp.nearest(groups)
        ids = np.arange(1, len(PART_GROUPS) + 1, dtype=np.uint8)[:, None, None]
        return (moved[None] == ids).astype(np.uint8) * np.uint8(255)

    # -- QA -------------------------------------------------------------------------------

    def statistics(self, row: Mapping[str, Any]) -> dict[str, float] | None:
        """`part_share`: the share of the person pixels (instance map) that have a part."""
        parts, people = unpng(row.get("parts_png")), unpng(row.get("part_instances_png"))
        if parts is None or people is None:
            return None
        person = people > 0
        total = int(np.count_nonzero(person))
        share = float(np.count_nonzero(person & (parts > 0))) / total if total else 0.0
        return {"part_share": share}

    # -- the decoded form and its pictures ------------------------------------------------

    def decode_labels(self, sample: Sample) -> dict[str, Any]:
        planes = self.label_map(sample)
        if planes is None:
            return {}
        found = {self.name: planes}
        instances = sample.plugins.get("part_instances")
        if instances is not None:
            found[INSTANCES] = instances[None].astype(np.float32)
        return {"layers": found}

    def sheet_panels(self) -> tuple[PanelSpec, ...]:
        return (PanelSpec(self.name, self.caption, rank=100, compare_rank=100,
                          when_present=True),)

    def _picture(self, labelled: LabelledImage,
                 size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(h, w, 3) float colours and (h, w) opacity at `size`: each part group in its colour,
        each person's outline (the teachers', which have people) in white."""
        from distill.paint import resize_map

        index = part_index(labelled.layers[self.name])
        index = resize_map(index.astype(np.float32), size, nearest=True).astype(np.int64)
        palette = np.array([*PART_COLORS, (0, 0, 0)], np.float32)
        rgb, alpha = palette[index], (index >= 0) * 0.7
        instances = labelled.layers.get(INSTANCES)
        if instances is not None:
            people = resize_map(instances[0], size, nearest=True).astype(np.int64)
            edge = outlines(people)
            rgb[edge] = OUTLINE
            alpha = np.where(edge, 1.0, alpha)
        return rgb, alpha

    def draw_panel(self, key: str, painter: Painter, panel: Panel,
                   labelled: LabelledImage) -> None:
        if self.name not in labelled.layers:
            painter.missing(panel, "no body-part label")
            return
        from distill.paint import blend, dim, u8

        size = painter.content_size(panel)
        rgb, alpha = self._picture(labelled, size)
        painter.paste(panel, u8(blend(dim(painter.image_at(size)), rgb, alpha)))
        share = pixel_share(labelled.layers[self.name].max(0))
        painter.badge(panel, f"parts {100 * share:.1f} % of pixels")

    def view_layers(self, labelled: LabelledImage) -> list[tuple[int, str]]:
        return [(60, self.name)] if self.name in labelled.layers else []

    def view_layer(self, labelled: LabelledImage, name: str,
                   size: tuple[int, int]) -> np.ndarray:
        from distill.paint import rgba

        rgb, alpha = self._picture(labelled, size)
        return rgba(rgb, alpha)


LAYER = PartsLayer()
