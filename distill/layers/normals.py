"""The normals layer: surface normals from the depth teacher's map by Sobel gradients, stored as
an RGB8 PNG (DESIGN.md §4), learned as three student channels (x, y, z)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from distill.labels.normals import decode_normals8, encode_normals8, normals_from_unit
from distill.layers.codec import png_value, unpng
from distill.layers.registry import LabelLayer, Modality, PanelSpec, png_column

if TYPE_CHECKING:
    from distill.layers.form import LabelledImage
    from distill.paint import Painter, Panel
    from distill.shards import Sample


def _rgb8(normals: np.ndarray) -> np.ndarray:
    """Unit normals as uint8 RGB, (n + 1) / 2 * 255."""
    return np.clip(np.rint((np.clip(normals, -1.0, 1.0) + 1.0) * 127.5), 0, 255).astype(np.uint8)


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
    # -- the decoded form and its pictures ------------------------------------------------

    def decode_labels(self, sample: Sample) -> dict[str, Any]:
        return {"normals": None if sample.normals is None else decode_normals8(sample.normals)}

    def predicted(self, channels: Mapping[str, np.ndarray]) -> dict[str, Any]:
        if "normals" not in channels:
            return {}
        normals = np.moveaxis(channels["normals"] * 2 - 1, 0, -1)
        normals /= np.linalg.norm(normals, axis=-1, keepdims=True) + 1e-6
        return {"normals": normals}

    def sheet_panels(self) -> tuple[PanelSpec, ...]:
        return (PanelSpec("normals", "normals", rank=2, compare_rank=2),)

    def draw_panel(self, key: str, painter: Painter, panel: Panel,
                   labelled: LabelledImage) -> None:
        from distill.paint import resize_map

        if labelled.normals is None:
            painter.missing(panel, "no normals label")
            return
        painter.paste(panel, resize_map(_rgb8(labelled.normals), painter.content_size(panel)))

    def view_layers(self, labelled: LabelledImage) -> list[tuple[int, str]]:
        return [(1, "normals")] if labelled.normals is not None else []

    def view_layer(self, labelled: LabelledImage, name: str,
                   size: tuple[int, int]) -> np.ndarray:
        from distill.paint import resize_map, rgba

        assert labelled.normals is not None
        return rgba(resize_map(_rgb8(labelled.normals), size).astype(np.float32), 1.0)


LAYER = NormalsLayer()
