"""The panoptic layer: the panoptic teacher's map of COCO-panoptic category ids (255 = void) as
a uint8 PNG, and its segments. The student learns it through the groups layer."""

from __future__ import annotations

import colorsys
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from distill.layers.codec import png_value, unpng
from distill.layers.registry import Column, LabelLayer, png_column

if TYPE_CHECKING:
    from distill.layers.form import LabelledImage
    from distill.layers.registry import PanelSpec
    from distill.shards import Sample

SEGMENT = pa.struct([
    ("category_id", pa.int32()),  # COCO-panoptic category id
    ("score", pa.float32()),
    ("isthing", pa.bool_()),
    ("area", pa.int64()),  # pixels at the original resolution
])  # fmt: skip


def _palette() -> np.ndarray:
    """A fixed colour per category id (golden-ratio hues), black for void."""
    palette = np.zeros((256, 3), np.float32)
    for i in range(256):
        hue = (i * 0.618033988749895) % 1.0
        palette[i] = np.array(colorsys.hsv_to_rgb(hue, 0.65, 0.95)) * 255
    return palette


_PALETTE = _palette()


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

    # -- the decoded form and its pictures: the viewer's segments layer (the sheets draw the
    #    class groups it gives) -------------------------------------------------------------

    def decode_labels(self, sample: Sample) -> dict[str, Any]:
        return {"panoptic": sample.panoptic}

    def predicted(self, channels: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {}

    def sheet_panels(self) -> tuple[PanelSpec, ...]:
        return ()

    def view_layers(self, labelled: LabelledImage) -> list[tuple[int, str]]:
        return [(5, "panoptic")] if labelled.panoptic is not None else []

    def view_layer(self, labelled: LabelledImage, name: str,
                   size: tuple[int, int]) -> np.ndarray:
        from distill.paint import resize_map, rgba

        assert labelled.panoptic is not None
        ids = resize_map(labelled.panoptic.astype(np.float32), size, nearest=True).astype(np.int64)
        return rgba(_PALETTE[ids], (ids != 255) * 0.8)


LAYER = PanopticLayer()
