"""The panoptic layer: the panoptic teacher's map of COCO-panoptic category ids (255 = void) as
a uint8 PNG, and its segments. The student learns it through the groups layer."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from distill.layers.registry import Column, LabelLayer, png_column, png_value, unpng

if TYPE_CHECKING:
    from distill.shards import Sample

SEGMENT = pa.struct([
    ("category_id", pa.int32()),  # COCO-panoptic category id
    ("score", pa.float32()),
    ("isthing", pa.bool_()),
    ("area", pa.int64()),  # pixels at the original resolution
])  # fmt: skip


class PanopticLayer(LabelLayer):
    name = "panoptic"
    columns = (
        png_column("panoptic_png"),  # uint8 PNG of COCO-panoptic category ids, 255 = void
        Column(pa.field("segments", pa.list_(SEGMENT))),
    )
    roles = ("panoptic",)

    def encode(self, sample: Sample, compress_level: int,
               wanted: Collection[str]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "segments": None if sample.segments is None else [vars(s) for s in sample.segments]}
        if "panoptic_png" in wanted:
            out["panoptic_png"] = png_value(sample, "panoptic", sample.panoptic, compress_level)
        return out

    def decode(self, row: Mapping[str, Any]) -> dict[str, Any]:
        from distill.shards import Segment

        segments = row["segments"]
        return {"panoptic": unpng(row["panoptic_png"]),
                "segments": None if segments is None else [Segment(**s) for s in segments]}

    def fill(self, sample: Sample, outputs: Mapping[str, Any], ctx: Any,
             scratch: dict[str, Any]) -> None:
        result = outputs.get("panoptic")
        if result is not None:
            sample.panoptic, sample.segments = result.class_map, list(result.segments)


LAYER = PanopticLayer()
