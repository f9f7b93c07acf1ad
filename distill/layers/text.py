"""The text layer: the text teacher's mask (uint8 PNG, 255 = text) and its regions above
`labels.text_score_threshold`, learned as one student channel."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from distill.labels.text import rasterize_polygons
from distill.layers.codec import png_value, unpng
from distill.layers.registry import Column, LabelLayer, Modality, PanelSpec, pixel_share, png_column

if TYPE_CHECKING:
    from distill.layers.form import LabelledImage
    from distill.paint import Painter, Panel
    from distill.shards import Sample

TEXT_COLOR = (255, 214, 0)

TEXT_REGION = pa.struct([
    ("points", pa.list_(pa.float32())),  # x0, y0, x1, y1, ... in original pixels
    ("score", pa.float32()),
])  # fmt: skip


class TextLayer(LabelLayer):
    name = "text"
    columns = (
        png_column("text_png"),  # uint8 PNG, 255 = text
        Column(pa.field("text_regions", pa.list_(TEXT_REGION))),
    )
    roles = ("text",)
    modalities = (Modality("text", 1),)
    layout_rank = 30
    loader_columns = card_columns = ("text_png",)
    moved = "nearest"
    stat_columns = ("text_png",)
    statistic_names = ("text_share",)

    def encode(self, sample: Sample, compress_level: int,
               wanted: Collection[str]) -> dict[str, Any]:
        regions = sample.text_regions
        out: dict[str, Any] = {"text_regions": None if regions is None else [
            {"points": np.asarray(r.points, np.float32).reshape(-1).tolist(), "score": r.score}
            for r in regions]}
        if "text_png" in wanted:
            mask = sample.text_mask
            out["text_png"] = png_value(sample, "text mask", None if mask is None
                                        else mask.astype(np.uint8) * 255, compress_level)
        return out

    def decode(self, row: Mapping[str, Any]) -> dict[str, Any]:
        from distill.shards import TextRegion

        mask, regions = unpng(row["text_png"]), row["text_regions"]
        return {"text_mask": None if mask is None else mask > 0,
                "text_regions": None if regions is None else [
                    TextRegion(np.asarray(r["points"], np.float32).reshape(-1, 2), r["score"])
                    for r in regions]}

    def fill(self, sample: Sample, outputs: Mapping[str, Any], ctx: Any,
             scratch: dict[str, Any]) -> None:
        result = outputs.get("text")
        if result is None:
            return
        kept = [r for r in result.regions if r.score >= ctx.text_score_threshold]
        sample.text_regions = kept
        # The teacher's mask already covers its regions; redraw only if the threshold dropped some.
        sample.text_mask = result.mask if len(kept) == len(result.regions) else \
            rasterize_polygons([r.points for r in kept], sample.height, sample.width)

    def target(self, sample: Sample, warp: Any) -> np.ndarray | None:
        if sample.text_mask is None:
            return None
        return warp.nearest(sample.text_mask)[None].astype(np.uint8) * 255

    def statistics(self, row: Mapping[str, Any]) -> dict[str, float] | None:
        mask = unpng(row["text_png"])
        if mask is None:
            return None
        return {"text_share": pixel_share(mask)}

    # -- the decoded form and its pictures ------------------------------------------------

    def decode_labels(self, sample: Sample) -> dict[str, Any]:
        mask = sample.text_mask
        return {"text": None if mask is None else mask.astype(np.float32)}

    def predicted(self, channels: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {"text": channels["text"][0]} if "text" in channels else {}

    def sheet_panels(self) -> tuple[PanelSpec, ...]:
        return (PanelSpec("text", "text mask", rank=3, compare_rank=4),)

    def draw_panel(self, key: str, painter: Painter, panel: Panel,
                   labelled: LabelledImage) -> None:
        if labelled.text is None:
            painter.missing(panel, "no text label")
            return
        share = pixel_share(labelled.text)  # the figure `statistics` gives a row
        # the pixels the share counts, no tint below 0.5 (a student's low probabilities)
        painter.overlay(panel, (labelled.text > 0.5).astype(np.float32), TEXT_COLOR,
                        f"text {100 * share:.1f} % of pixels")

    def view_layers(self, labelled: LabelledImage) -> list[tuple[int, str]]:
        return [(3, "text")] if labelled.text is not None else []

    def view_layer(self, labelled: LabelledImage, name: str,
                   size: tuple[int, int]) -> np.ndarray:
        from distill.paint import flat, resize_map, rgba

        assert labelled.text is not None
        prob = np.clip(resize_map(labelled.text.astype(np.float32), size), 0.0, 1.0)
        return rgba(flat(TEXT_COLOR, size), prob * 0.9)


LAYER = TextLayer()
