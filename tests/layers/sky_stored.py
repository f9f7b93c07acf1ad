"""A toy plug-in label layer that writes a shard column of its own while `generate-labels`
runs (issue 27): "sky_stored", the sky pixels of the panoptic teacher's map as a uint8 PNG
(`sky_png`, 255 = sky), filled in post-processing on the Ray workers.

A run names it in its config, `labels.plugins = ["tests.layers.sky_stored"]`: the driver and
every worker import this module before post-processing, and `LAYER` is registered then.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from distill.layers import LabelLayer
from distill.layers.codec import png_value, unpng
from distill.layers.registry import png_column
from distill.shards import Sample
from tests.layers.sky_layer import sky_mask


class SkyStoredLayer(LabelLayer):
    name = "sky_stored"
    columns = (png_column("sky_png"),)  # uint8 PNG, 255 = sky; null: no panoptic teacher ran
    roles = ("panoptic",)  # rewritten whenever the panoptic teacher runs
    needs = ("panoptic",)  # fills after the panoptic layer, from its class map

    def encode(self, sample: Sample, compress_level: int,
               wanted: Collection[str]) -> dict[str, Any]:
        if "sky_png" not in wanted:
            return {}
        sky = sample.plugins.get("sky")
        return {"sky_png": png_value(sample, "sky", None if sky is None
                                     else sky.astype(np.uint8) * 255, compress_level)}

    def decode(self, row: Mapping[str, Any]) -> dict[str, Any]:
        png = unpng(row["sky_png"])
        return {"sky": None if png is None else png > 0}  # a plug-in's value: Sample.plugins

    def fill(self, sample: Sample, outputs: Mapping[str, Any], ctx: Any,
             scratch: dict[str, Any]) -> None:
        if outputs.get("panoptic") is not None and sample.panoptic is not None:
            sample.plugins["sky"] = sky_mask(sample.panoptic)


LAYER = SkyStoredLayer()
