"""The student's output layout (DESIGN.md §6): 44 image channels, then the caption tokens.

    0–16   joint heatmaps, COCO order (distill.labels.keypoints.JOINT_NAMES)
    17–28  the 12 limb PAFs (distill.labels.keypoints.LIMB_NAMES)
    29     depth
    30–32  surface normals (x, y, z)
    33     text
    34–43  the 10 class groups (distill.labels.groups.GROUP_NAMES without Text)

Every target travels as uint8 and maps to [-1, 1] on the device, v / 127.5 - 1 (inactive = -1,
the paper's INT8 transfer); HDM and pictures use (x + 1) / 2.
"""

from __future__ import annotations

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

JOINTS = slice(0, 17)
PAFS = slice(17, 29)
DEPTH = slice(29, 30)
NORMALS = slice(30, 33)
TEXT = slice(33, 34)
GROUPS = slice(34, 44)
CHANNELS = 44

# Modality name (as in train.loss_gains) → its channels.
MODALITIES: dict[str, slice] = {
    "joints": JOINTS,
    "pafs": PAFS,
    "depth": DEPTH,
    "normals": NORMALS,
    "text": TEXT,
    "segmentation": GROUPS,
}
