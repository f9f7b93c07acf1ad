"""The depth layer: relative inverse depth from the depth teacher, stored as a 16-bit PNG over
its own min..max (DESIGN.md §4), learned as one student channel."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from distill.labels.depth import DEPTH_LEVELS, normalize_depth, quantize_unit
from distill.layers.registry import (
    Column,
    LabelLayer,
    Modality,
    png_column,
    png_value,
    unit_u8,
    unpng,
)

if TYPE_CHECKING:
    from distill.shards import Sample


class DepthLayer(LabelLayer):
    name = "depth"
    columns = (
        png_column("depth_png"),  # uint16 PNG: round((d - min) / (max - min) * 65535)
        Column(pa.field("depth_min", pa.float64())),
        Column(pa.field("depth_max", pa.float64())),
    )
    roles = ("depth",)
    modalities = (Modality("depth", 1),)
    layout_rank = 10
    loader_columns = undecoded = ("depth_png",)
    moved = "bilinear"
    on_noise = "absent"

    def encode(self, sample: Sample, compress_level: int,
               wanted: Collection[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"depth_min": sample.depth_min, "depth_max": sample.depth_max}
        if "depth_png" in wanted:
            out["depth_png"] = png_value(sample, "depth", sample.depth16, compress_level)
        return out

    def decode(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {"depth16": unpng(row["depth_png"]), "depth_min": row["depth_min"],
                "depth_max": row["depth_max"]}

    def fill(self, sample: Sample, outputs: Mapping[str, Any], ctx: Any,
             scratch: dict[str, Any]) -> None:
        result = outputs.get("depth")
        if result is None:
            return
        # Normalised once: the normals layer reads the same unit map (scratch["depth_unit"]).
        unit, sample.depth_min, sample.depth_max = normalize_depth(result.depth)
        scratch["depth_unit"] = unit
        sample.depth16 = quantize_unit(unit)

    def target(self, sample: Sample, warp: Any) -> np.ndarray | None:
        # The 16-bit PNG resized in float32 ("F"); relative inverse depth: near is already high.
        moved = warp.bilinear(sample.depth16, "depth_png", ("I;16", "F"))
        return None if moved is None else unit_u8(moved / DEPTH_LEVELS)[None]


LAYER = DepthLayer()
