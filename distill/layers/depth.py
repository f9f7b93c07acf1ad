"""The depth layer: relative inverse depth from the depth teacher, stored as a 16-bit PNG over
its own min..max (DESIGN.md §4), learned as one student channel."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from distill.labels.depth import DEPTH_LEVELS, normalize_depth, quantize_unit
from distill.layers.codec import png_value, unit_u8, unpng
from distill.layers.registry import Column, LabelLayer, Modality, PanelSpec, png_column

if TYPE_CHECKING:
    from distill.layers.form import LabelledImage
    from distill.paint import Painter, Panel
    from distill.shards import Sample

# Magma-like anchors: far (0) dark, near (1) bright.
_DEPTH_ANCHORS = np.array([
    (0, 0, 4), (59, 15, 112), (140, 41, 129), (222, 73, 104), (254, 159, 109), (252, 253, 191),
], np.float32)  # fmt: skip


def depth_colormap(depth: np.ndarray) -> np.ndarray:
    """(H, W) depth in [0, 1] (near = 1) → (H, W, 3) uint8, dark far and bright near."""
    d = np.nan_to_num(np.clip(depth.astype(np.float32), 0.0, 1.0), nan=0.0)
    pos = d * (len(_DEPTH_ANCHORS) - 1)
    lo = np.minimum(pos.astype(np.int64), len(_DEPTH_ANCHORS) - 2)
    t = (pos - lo)[..., None]
    rgb = _DEPTH_ANCHORS[lo] * (1.0 - t) + _DEPTH_ANCHORS[lo + 1] * t
    return np.rint(rgb).astype(np.uint8)


def _colorbar(painter: Painter, panel: Panel) -> None:
    """A small far → near colour bar in the bottom-left corner of a depth panel."""
    from PIL import Image

    from distill.paint import FG

    draw, small = painter.draw, painter.small
    left, _, right, bottom = painter.content_box(panel)
    bar_w = max(24, min(120, (right - left) // 3))
    bar_h = max(4, painter.layout.font_size // 2)
    ramp = depth_colormap(np.tile(np.linspace(0.0, 1.0, bar_w, dtype=np.float32), (bar_h, 1)))
    far_w = int(draw.textlength("far", font=small))
    x, y = left + 6, bottom - 6 - bar_h
    box = (x - 3, y - 3, x + far_w + bar_w + 4 + 6
           + int(draw.textlength("near", font=small)) + 3, y + bar_h + 3)
    draw.rectangle(box, fill=(0, 0, 0))
    draw.text((x, y + bar_h / 2), "far", fill=FG, font=small, anchor="lm")
    painter.canvas.paste(Image.fromarray(ramp), (x + far_w + 4, y))
    draw.text((x + far_w + bar_w + 8, y + bar_h / 2), "near", fill=FG, font=small, anchor="lm")


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
    # -- the decoded form and its pictures ------------------------------------------------

    def decode_labels(self, sample: Sample) -> dict[str, Any]:
        d16, lo, hi = sample.depth16, sample.depth_min, sample.depth_max
        return {"depth": None if d16 is None else d16.astype(np.float32) / DEPTH_LEVELS,
                "depth_range": None if lo is None or hi is None else (float(lo), float(hi))}

    def predicted(self, channels: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {"depth": channels["depth"][0]} if "depth" in channels else {}

    def sheet_panels(self) -> tuple[PanelSpec, ...]:
        return (PanelSpec("depth", "depth (near = bright)", rank=1, compare_rank=1),
                PanelSpec("depth_raw", "raw depth (unrefined)", rank=1, compare_rank=0,
                          student_first=True, field="depth_raw"))

    def draw_panel(self, key: str, painter: Painter, panel: Panel,
                   labelled: LabelledImage) -> None:
        from distill.paint import resize_map

        depth = labelled.depth if key == "depth" else labelled.depth_raw
        if depth is None:
            painter.missing(panel, "no depth label" if key == "depth" else "no raw depth label")
            return
        painter.paste(panel, depth_colormap(resize_map(depth, painter.content_size(panel))))
        _colorbar(painter, panel)

    def view_layers(self, labelled: LabelledImage) -> list[tuple[int, str]]:
        return [(0, "depth")] if labelled.depth is not None else []

    def view_layer(self, labelled: LabelledImage, name: str,
                   size: tuple[int, int]) -> np.ndarray:
        from distill.paint import resize_map, rgba

        assert labelled.depth is not None
        return rgba(depth_colormap(resize_map(labelled.depth, size)).astype(np.float32), 1.0)


LAYER = DepthLayer()
