"""The groups layer: the 11 class groups (distill.labels.groups) as bits of a uint16 PNG, from
the panoptic map plus the text mask (the Text bit), learned as 10 student channels (Text has its
own, the text layer's)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from distill.labels.groups import encode_group_mask
from distill.layers.registry import LabelLayer, Modality, png_column, png_value, unpng

if TYPE_CHECKING:
    from distill.shards import Sample


class GroupsLayer(LabelLayer):
    name = "groups"
    columns = (png_column("groups_png"),)  # uint16 PNG, bit k = group k (distill.labels.groups)
    roles = ("panoptic", "text")
    needs = ("panoptic", "text")
    modalities = (Modality("segmentation", 10),)
    layout_rank = 40

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


LAYER = GroupsLayer()
