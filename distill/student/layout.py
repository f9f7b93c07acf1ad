"""The student's output layout (DESIGN.md §6): 44 image channels, then the caption tokens.

    0–16   joint heatmaps, COCO order (distill.labels.keypoints.JOINT_NAMES)
    17–28  the 12 limb PAFs (distill.labels.keypoints.LIMB_NAMES)
    29     depth
    30–32  surface normals (x, y, z)
    33     text
    34–43  the 10 class groups (distill.labels.groups.GROUP_NAMES without Text)

Every target travels as uint8 and maps to [-1, 1] on the device, v / 127.5 - 1 (inactive = -1,
the paper's INT8 transfer); HDM and pictures use (x + 1) / 2.

The channels are the label layers' (`distill.layers`: each declares its `modalities`). An opt-in
layer's (`LabelLayer.opt_in`, the body parts') follow channel 43 only in a student whose
`student.extra_layers` names it: `build_student` selects them for the process
(`use_extra_layers`), so training, prediction, export and evaluation of that student see them.
"""

from __future__ import annotations

from collections.abc import Sequence

from distill.errors import ConfigError
from distill.layers.registry import Modality, builtin_layers, layers, plugin_layers

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
    "check_extra_layers",
    "extra_layers",
    "modalities",
    "modality_gain",
    "use_extra_layers",
]

# The opt-in layers whose channels this process's student has (`use_extra_layers`).
_extra: tuple[str, ...] = ()


def _modalities(plugins: bool) -> dict[str, slice]:
    """Each label layer's student channels (`LabelLayer.modalities`), the built-in layers in
    `layout_rank` order, then (with `plugins`) the selected opt-in layers' (`extra_layers`) and
    the registered plug-ins': modality name (as in train.loss_gains) → its channels."""
    out: dict[str, slice] = {}
    start = 0
    ranked = sorted((layer for layer in builtin_layers() if not layer.opt_in),
                    key=lambda layer: layer.layout_rank)
    extra = [layer for layer in layers() if layer.name in _extra] if plugins else []
    for layer in (*ranked, *extra, *(lay for lay in plugin_layers() if plugins and not lay.opt_in)):
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


def check_extra_layers(names: Sequence[str]) -> None:
    """Raise `ConfigError` for a name of `student.extra_layers` that is no opt-in layer."""
    known = {layer.name for layer in layers() if layer.opt_in}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"student.extra_layers: {unknown[0]!r} is no opt-in label layer "
                          f"(known: {', '.join(sorted(known)) or 'none'})")


def use_extra_layers(names: Sequence[str]) -> None:
    """Give this process's student the channels of the opt-in layers `names`
    (`student.extra_layers`) after channel 43, and none of the others' (`check_extra_layers`)."""
    global _extra
    check_extra_layers(names)
    _extra = tuple(dict.fromkeys(names))


def extra_layers() -> tuple[str, ...]:
    """The opt-in layers this process's student has (`use_extra_layers`)."""
    return _extra


def modalities() -> dict[str, slice]:
    """`MODALITIES` and, after channel 43, the selected opt-in layers' (`use_extra_layers`) and
    every registered plug-in layer's channels."""
    return _modalities(plugins=True)


def channels() -> int:
    """The student's output channels: `CHANNELS` plus the registered plug-ins'."""
    return max(s.stop for s in modalities().values())


def modality_gain(key: str) -> float:
    """A plug-in modality's loss gain (the built-in ones are `train.loss_gains.<key>`)."""
    found: list[Modality] = [m for layer in layers() for m in layer.modalities if m.key == key]
    return found[0].gain if found else 1.0
