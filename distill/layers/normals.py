"""The normals layer: surface normals from the depth teacher's map by Sobel gradients, stored as
an RGB8 PNG (DESIGN.md §4), learned as three student channels (x, y, z)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from distill.labels.normals import encode_normals8, normals_from_unit
from distill.layers.registry import LabelLayer, Modality, png_column, png_value, unpng

if TYPE_CHECKING:
    from distill.shards import Sample


class NormalsLayer(LabelLayer):
    name = "normals"
    columns = (png_column("normals_png"),)  # RGB8 PNG: (n + 1) / 2 * 255
    roles = ("depth",)
    needs = ("depth",)
    modalities = (Modality("normals", 3),)
    layout_rank = 20
    loader_columns = undecoded = ("normals_png",)
    moved = "bilinear"
    on_noise = "absent"

    def encode(self, sample: Sample, compress_level: int,
               wanted: Collection[str]) -> dict[str, Any]:
        if "normals_png" not in wanted:
            return {}
        return {"normals_png": png_value(sample, "normals", sample.normals, compress_level)}

    def decode(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {"normals": unpng(row["normals_png"])}

    def fill(self, sample: Sample, outputs: Mapping[str, Any], ctx: Any,
             scratch: dict[str, Any]) -> None:
        unit = scratch.get("depth_unit")  # the depth layer's, when the depth teacher ran
        if unit is not None:
            sample.normals = encode_normals8(normals_from_unit(unit, ctx.gradient_scale))

    def target(self, sample: Sample, warp: Any) -> np.ndarray | None:
        # The stored 8-bit values, as they are: (n + 1) / 2 * 255 is already the target's unit.
        moved: np.ndarray | None = warp.bilinear(sample.normals, "normals_png", ("RGB", "RGB"))
        return moved


LAYER = NormalsLayer()
