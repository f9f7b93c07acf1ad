"""The groups layer: the 11 class groups (distill.labels.groups) as bits of a uint16 PNG, from
the panoptic map plus the text mask (the Text bit), learned as 10 student channels (Text has its
own, the text layer's)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from distill.labels.groups import GROUP_NAMES, NUM_GROUPS, TEXT_GROUP, encode_group_mask
from distill.layers.registry import LabelLayer, Modality, png_column, png_value, unpng

if TYPE_CHECKING:
    from distill.shards import Sample

# The 10 class groups the student learns as the groups layer's channels, in layout order (the
# Text bit has its own channel, the text layer's).
CLASS_GROUPS: tuple[str, ...] = tuple(g for k, g in enumerate(GROUP_NAMES) if k != TEXT_GROUP)
# The group bits of those 10 channels.
_CLASS_BITS = np.array([k for k in range(NUM_GROUPS) if k != TEXT_GROUP], np.uint16)


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


LAYER = GroupsLayer()
