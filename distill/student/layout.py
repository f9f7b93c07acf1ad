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

from distill.layers.registry import Modality, builtin_layers, plugin_layers

__all__ = [
    "CHANNELS",
    "DEPTH",
    "GROUPS",
    "JOINTS",
    "MODALITIES",
    "NORMALS",
    "PAFS",
    "TEXT",
    "channels",
    "modalities",
    "modality_gain",
]


def _modalities(plugins: bool) -> dict[str, slice]:
    """Each label layer's student channels (`LabelLayer.modalities`), the built-in layers in
    `layout_rank` order, then (with `plugins`) the registered plug-ins': modality name (as in
    train.loss_gains) → its channels."""
    out: dict[str, slice] = {}
    start = 0
    ranked = sorted(builtin_layers(), key=lambda layer: layer.layout_rank)
    for layer in (*ranked, *(plugin_layers() if plugins else ())):
        for modality in layer.modalities:
            out[modality.key] = slice(start, start + modality.channels)
            start += modality.channels
    return out


# Modality name (as in train.loss_gains) → its channels.
MODALITIES: dict[str, slice] = _modalities(plugins=False)
JOINTS = MODALITIES["joints"]
PAFS = MODALITIES["pafs"]
DEPTH = MODALITIES["depth"]
NORMALS = MODALITIES["normals"]
TEXT = MODALITIES["text"]
GROUPS = MODALITIES["segmentation"]
CHANNELS = max(s.stop for s in MODALITIES.values())
assert (  # the paper's layout
    slice(0, 17), slice(17, 29), slice(29, 30), slice(30, 33), slice(33, 34), slice(34, 44), 44) == (JOINTS, PAFS, DEPTH, NORMALS, TEXT, GROUPS, CHANNELS)


def modalities() -> dict[str, slice]:
    """`MODALITIES` and, after channel 43, every registered plug-in layer's channels."""
    return _modalities(plugins=True)


def channels() -> int:
    """The student's output channels: `CHANNELS` plus the registered plug-ins'."""
    return max(s.stop for s in modalities().values())


def modality_gain(key: str) -> float:
    """A plug-in modality's loss gain (the built-in ones are `train.loss_gains.<key>`)."""
    found: list[Modality] = [m for layer in plugin_layers() for m in layer.modalities
                             if m.key == key]
    return found[0].gain if found else 1.0
