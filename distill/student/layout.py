"""The student's output layout (DESIGN.md §6): 44 image channels, then the caption tokens.

    0–16   joint heatmaps, COCO order (distill.labels.keypoints.JOINT_NAMES)
    17–28  the 12 limb PAFs (distill.labels.keypoints.LIMB_NAMES)
    29     depth
    30–32  surface normals (x, y, z)
    33     text
    34–43  the 10 class groups (distill.labels.groups.GROUP_NAMES without Text)

Every target travels as uint8 and maps to [-1, 1] on the device, v / 127.5 - 1 (inactive = -1,
the paper's INT8 transfer); HDM and pictures use (x + 1) / 2.

The channels are the label layers' (`distill.layers`: each declares its `modalities`).
"""

from __future__ import annotations

from distill.layers.registry import builtin_layers

__all__ = [
    "CHANNELS",
    "DEPTH",
    "GROUPS",
    "JOINTS",
    "MODALITIES",
    "NORMALS",
    "PAFS",
    "TEXT",
]


def _modalities() -> dict[str, slice]:
    """Each label layer's student channels (`LabelLayer.modalities`), layers in `layout_rank`
    order: modality name (as in train.loss_gains) → its channels."""
    out: dict[str, slice] = {}
    start = 0
    for layer in sorted(builtin_layers(), key=lambda layer: layer.layout_rank):
        for modality in layer.modalities:
            out[modality.key] = slice(start, start + modality.channels)
            start += modality.channels
    return out


# Modality name (as in train.loss_gains) → its channels.
MODALITIES: dict[str, slice] = _modalities()
JOINTS = MODALITIES["joints"]
PAFS = MODALITIES["pafs"]
DEPTH = MODALITIES["depth"]
NORMALS = MODALITIES["normals"]
TEXT = MODALITIES["text"]
GROUPS = MODALITIES["segmentation"]
CHANNELS = max(s.stop for s in MODALITIES.values())
assert (  # the paper's layout
    slice(0, 17), slice(17, 29), slice(29, 30), slice(30, 33), slice(33, 34), slice(34, 44), 44) == (JOINTS, PAFS, DEPTH, NORMALS, TEXT, GROUPS, CHANNELS)
