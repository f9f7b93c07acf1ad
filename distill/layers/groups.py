"""The groups layer: the 11 class groups (distill.labels.groups) as bits of a uint16 PNG, from
the panoptic map plus the text mask (the Text bit), learned as 10 student channels (Text has its
own, the text layer's)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from distill.labels.groups import (
    GROUP_NAMES,
    NUM_GROUPS,
    TEXT_GROUP,
    decode_group_mask,
    encode_group_mask,
)
from distill.layers.codec import png_value, unpng
from distill.layers.registry import LabelLayer, Modality, PanelSpec, pixel_share, png_column

if TYPE_CHECKING:
    from distill.layers.form import LabelledImage
    from distill.paint import Painter, Panel
    from distill.shards import Sample

# The 10 class groups the student learns as the groups layer's channels, in layout order (the
# Text bit has its own channel, the text layer's), and their planes in GROUP_NAMES order.
CLASS_GROUPS: tuple[str, ...] = tuple(g for k, g in enumerate(GROUP_NAMES) if k != TEXT_GROUP)
# The group bits of those 10 channels.
_CLASS_BITS = np.array([k for k in range(NUM_GROUPS) if k != TEXT_GROUP], np.uint16)
CLASS_PLANES: list[int] = [k for k in range(NUM_GROUPS) if k != TEXT_GROUP]

# One distinct colour per class group, CLASS_GROUPS order.
GROUP_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),  # Persons: red
    (0, 130, 200),  # Vehicles: blue
    (245, 130, 48),  # Animals: orange
    (255, 225, 25),  # Objects: yellow
    (145, 30, 180),  # Furniture: purple
    (70, 240, 240),  # Appliances: cyan
    (170, 110, 40),  # Materials: brown
    (240, 50, 230),  # Obstacles: magenta
    (0, 128, 128),  # Building: teal
    (60, 180, 75),  # Nature: green
)  # fmt: skip


def group_shares(mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Each of the 11 groups' share of the pixels of a group-bit mask (a pixel can be in
    several), and the share no class group covers: one histogram of the 16-bit values, then a
    sum per bit."""
    counts = np.bincount(mask.ravel(), minlength=1 << NUM_GROUPS).astype(np.float64)
    values = np.arange(counts.size)
    total = float(mask.size) or 1.0
    shares = np.array([counts[(values >> k) & 1 == 1].sum() for k in range(NUM_GROUPS)]) / total
    void = float(counts[(values & ((1 << TEXT_GROUP) - 1)) == 0].sum()) / total
    return shares, void


def class_planes(groups: np.ndarray) -> np.ndarray:
    """The 10 class-group planes (CLASS_GROUPS order) of the form's 11 (GROUP_NAMES order)."""
    return groups[CLASS_PLANES]


def plane_shares(groups: np.ndarray) -> list[float]:
    """Each plane's share of the pixels (above 0.5; a pixel can be in several): of a teacher's
    0/1 planes, the `group:<name>` figures `statistics` gives its row."""
    return [pixel_share(plane) for plane in groups]


def group_index(groups: np.ndarray) -> np.ndarray:
    """(G, H, W) maps → (H, W) int: the first group present at each pixel, -1 for none."""
    present = groups > 0.5
    first = np.argmax(present, axis=0)
    return np.where(present.any(axis=0), first, -1)


class GroupsLayer(LabelLayer):
    name = "groups"
    columns = (png_column("groups_png"),)  # uint16 PNG, bit k = group k (distill.labels.groups)
    roles = ("panoptic", "text")
    needs = ("panoptic", "text")
    modalities = (Modality("segmentation", 10),)
    layout_rank = 40
    loader_columns = ("groups_png",)
    moved = "nearest"  # bits must not blend
    stat_columns = ("groups_png",)
    statistic_names = ("no_class_share", *(f"group:{g}" for g in CLASS_GROUPS))

    def encode(self, sample: Sample, compress_level: int,
               wanted: Collection[str]) -> dict[str, Any]:
        if "groups_png" not in wanted:
            return {}
        return {"groups_png": png_value(sample, "groups", sample.groups, compress_level)}

    def decode(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {"groups": unpng(row["groups_png"])}

    def fill(self, sample: Sample, outputs: Mapping[str, Any], ctx: Any,
             scratch: dict[str, Any]) -> None:
        # Rebuilt from the (stored or new) class map whenever the panoptic or the text teacher
        # ran, so it always reflects every teacher: the Text bit joins when text ran.
        if sample.panoptic is not None and any(outputs.get(r) is not None for r in self.roles):
            sample.groups = encode_group_mask(ctx.groups, sample.panoptic, sample.text_mask)

    def target(self, sample: Sample, warp: Any) -> np.ndarray | None:
        if sample.groups is None:
            return None
        bits = (warp.nearest(sample.groups)[None] >> _CLASS_BITS[:, None, None]) & 1
        return (bits * 255).astype(np.uint8)

    def statistics(self, row: Mapping[str, Any]) -> dict[str, float] | None:
        """`group:<name>` for each of the 11 groups and `no_class_share`."""
        mask = unpng(row["groups_png"])
        if mask is None:
            return None
        shares, void = group_shares(mask)
        return {"no_class_share": void,
                **{f"group:{g}": float(v) for g, v in zip(GROUP_NAMES, shares, strict=True)}}

    # -- the decoded form and its pictures ------------------------------------------------

    def decode_labels(self, sample: Sample) -> dict[str, Any]:
        mask = sample.groups
        return {"groups": None if mask is None else decode_group_mask(mask).astype(np.float32)}

    def predicted(self, channels: Mapping[str, np.ndarray]) -> dict[str, Any]:
        if "segmentation" not in channels or "text" not in channels:
            return {}
        # the student's Text plane is its text channel
        return {"groups": np.insert(channels["segmentation"], TEXT_GROUP, channels["text"][0],
                                    axis=0)}

    def sheet_panels(self) -> tuple[PanelSpec, ...]:
        return (PanelSpec("groups", "class groups", rank=5, compare_rank=3),
                PanelSpec("legend", "class groups", rank=6, compare_rank=0, dense=False))

    def draw_panel(self, key: str, painter: Painter, panel: Panel,
                   labelled: LabelledImage) -> None:
        if labelled.groups is None:
            painter.missing(panel, "no groups label")
            return
        if key == "legend":
            _legend(painter, panel, plane_shares(class_planes(labelled.groups)))
            return
        from distill.paint import blend, dim, resize_map, u8

        size = painter.content_size(panel)
        index = group_index(class_planes(labelled.groups)).astype(np.float32)
        index = resize_map(index, size, nearest=True).astype(np.int64)
        palette = np.array([*GROUP_COLORS, (0, 0, 0)], np.float32)
        painter.paste(panel, u8(blend(dim(painter.image_at(size)), palette[index],
                                      (index >= 0) * 0.65)))

    def view_layers(self, labelled: LabelledImage) -> list[tuple[int, str]]:
        if labelled.groups is None:
            return []
        return [(2, "groups"), *((10 + k, f"group:{g}") for k, g in enumerate(CLASS_GROUPS))]

    def view_layer(self, labelled: LabelledImage, name: str,
                   size: tuple[int, int]) -> np.ndarray:
        from distill.paint import flat, resize_map, rgba

        assert labelled.groups is not None
        if name == "groups":
            index = resize_map(group_index(class_planes(labelled.groups)).astype(np.float32),
                               size, nearest=True).astype(np.int64)
            palette = np.array([*GROUP_COLORS, (0, 0, 0)], np.float32)
            return rgba(palette[index], (index >= 0) * 0.85)
        k = CLASS_GROUPS.index(name.split(":", 1)[1])
        mask = resize_map(labelled.groups[CLASS_PLANES[k]].astype(np.float32), size) > 0.5
        return rgba(flat(GROUP_COLORS[k], size), mask * 0.85)


def _legend(painter: Painter, panel: Panel, shares: list[float]) -> None:
    """The class groups present, each with its colour and share of the pixels."""
    from distill.paint import FG, MUTED, PANEL_BG

    draw = painter.draw
    left, top, right, bottom = panel.box
    draw.rectangle(panel.box, fill=PANEL_BG)
    pad = max(6, painter.layout.font_size // 2)
    present = [(k, s) for k, s in enumerate(shares) if s > 0]
    y = top + pad
    draw.text((left + pad, y), "share of pixels", fill=MUTED, font=painter.small)
    y += painter.line
    if not present:
        draw.text((left + pad, y), "no class-group pixels", fill=FG, font=painter.font)
        return
    sw = painter.layout.font_size
    total = sum(shares)
    # Groups are multi-label: a pixel counts in every group it is in, so the shares can add up
    # to more than 100 %; the note says so rather than leave a sum that looks wrong.
    note = (painter.wrap(f"sum {100 * total:.0f} %: a pixel can be in several groups",
                         right - left - 2 * pad, painter.small) if total > 1.0 + 1e-9 else [])
    for i, (k, share) in enumerate(present):
        if y + painter.line * (1 + len(note)) > bottom - pad and i < len(present) - 1:
            draw.text((left + pad, y), "…", fill=FG, font=painter.font)
            y += painter.line
            break
        draw.rectangle((left + pad, y + 1, left + pad + sw, y + 1 + sw), fill=GROUP_COLORS[k],
                       outline=(0, 0, 0))
        draw.text((left + 2 * pad + sw, y), CLASS_GROUPS[k], fill=FG, font=painter.font)
        draw.text((right - pad, y), f"{100 * share:.1f} %", fill=FG, font=painter.font,
                  anchor="ra")
        y += painter.line
    for text in note:
        draw.text((left + pad, y), text, fill=MUTED, font=painter.small)
        y += painter.line


LAYER = GroupsLayer()
