"""A toy label layer, all of it in this one file (issue 27): "sky", the pixels of the panoptic
teacher's map whose category is a sky (COCO-panoptic `sky-other-merged`), learned by the student
as one channel, drawn by `distill show` and `distill view`, with a QA statistic (`sky_share`,
which `distill inspect` reports and the viewer sorts by).

It derives its label from the panoptic layer's column when read, so it adds no shard column:
shards stay as they are. `register(LAYER)` (or `distill.layers.register`) adds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from distill.images import decode_png
from distill.labels.groups import GroupTable
from distill.layers import LabelLayer, Modality
from distill.shards import Sample

SKY_IDS = np.array([c.id for c in GroupTable.load().categories if "sky" in c.name], np.uint8)


def sky_mask(panoptic: np.ndarray) -> np.ndarray:
    """bool (H, W): the pixels of a COCO-panoptic category map that are sky."""
    return np.isin(panoptic, SKY_IDS)


class SkyLayer(LabelLayer):
    name = "sky"
    needs = ("panoptic",)
    modalities = (Modality("sky", 1, gain=1.0),)  # one student channel, loss gain 1
    loader_columns = ("panoptic_png",)  # what `target` reads
    stat_columns = ("panoptic_png",)  # what `statistics` reads
    statistic_names = ("sky_share",)
    color = (110, 190, 255)
    caption = "sky (from panoptic)"

    def label_map(self, sample: Sample) -> np.ndarray | None:
        if sample.panoptic is None:
            return None
        return sky_mask(sample.panoptic)[None].astype(np.float32)

    def target(self, sample: Sample, warp: Any) -> np.ndarray | None:
        if sample.panoptic is None:
            return None
        return (warp.nearest(sky_mask(sample.panoptic)).astype(np.uint8) * 255)[None]

    def statistics(self, row: Mapping[str, Any]) -> dict[str, float] | None:
        png = row["panoptic_png"]
        if png is None:
            return None
        return {"sky_share": float(sky_mask(decode_png(png)).mean())}


LAYER = SkyLayer()
