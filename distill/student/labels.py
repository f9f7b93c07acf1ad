"""One image's labels in one common form, whoever made them: the teachers (a shard row) or the
student (a prediction). `distill show` draws it, `distill predict` writes it, and comparing a
student to its teachers is comparing two of these.

Everything is at the image's ORIGINAL resolution (H, W) and in [0, 1] unless stated, with the
conventions of DESIGN.md §4 and §6: depth is relative inverse depth (near = 1), normals are unit
vectors (x right, y down, z towards the camera), groups are the 10 class groups in student layout
order (`CLASS_GROUPS`: the 11 groups of `distill.labels.groups` without Text, which has its own
map).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from distill.labels.depth import DEPTH_LEVELS
from distill.labels.groups import GROUP_NAMES, TEXT_GROUP, decode_group_mask
from distill.labels.keypoints import NUM_JOINTS
from distill.labels.normals import decode_normals8
from distill.layers.groups import CLASS_GROUPS
from distill.layers.registry import plugin_layers
from distill.shards import Sample

__all__ = ["CLASS_GROUPS", "Labels", "labels_from_sample"]



@dataclass
class Labels:
    """Dense maps (None where that teacher did not run), people, words and captions."""

    source: str  # "teachers" or "student"
    width: int
    height: int
    depth: np.ndarray | None = None  # float32 (H, W), near = 1
    normals: np.ndarray | None = None  # float32 (H, W, 3) in [-1, 1]
    text: np.ndarray | None = None  # float32 (H, W): text probability / mask
    groups: np.ndarray | None = None  # float32 (10, H, W), CLASS_GROUPS order
    joints: np.ndarray | None = None  # float32 (17, H, W) heatmaps (the student's; None for GT)
    pafs: np.ndarray | None = None  # float32 (12, H, W) limb PAFs (the student's)
    # (P, 17, 3): x, y in original pixels and a confidence (COCO visibility v for ground truth,
    # the decoded peak value for the student); 0 = absent.
    people: np.ndarray = field(default_factory=lambda: np.zeros((0, NUM_JOINTS, 3), np.float32))
    words: list[str] = field(default_factory=list)  # caption tokens (the student's: decoded)
    captions: list[str] | None = None  # teacher captions; None: no caption teacher ran
    depth_raw: np.ndarray | None = None  # the student's depth before refinement
    # A registered plug-in label layer's maps by layer name: float32 (C, H, W) in [0, 1]
    # (`LabelLayer.label_map` for the teachers', its output channels for the student's).
    layers: dict[str, np.ndarray] = field(default_factory=dict)


def labels_from_sample(sample: Sample) -> Labels:
    """A shard row's teacher labels (and COCO people) in the common form."""
    h, w = sample.height, sample.width
    groups = None
    if sample.groups is not None:
        bits = decode_group_mask(sample.groups)
        groups = bits[[k for k in range(len(GROUP_NAMES)) if k != TEXT_GROUP]].astype(np.float32)
    people = (np.stack([np.asarray(p.keypoints, np.float32) for p in sample.persons])
              if sample.persons else np.zeros((0, NUM_JOINTS, 3), np.float32))
    return Labels(
        source="teachers", width=w, height=h,
        depth=(sample.depth16.astype(np.float32) / DEPTH_LEVELS
               if sample.depth16 is not None else None),
        normals=decode_normals8(sample.normals) if sample.normals is not None else None,
        text=sample.text_mask.astype(np.float32) if sample.text_mask is not None else None,
        groups=groups,
        people=people,
        words=list(sample.tokens or []),
        captions=(list(sample.teacher_captions) if sample.teacher_captions is not None
                  else None),
        layers={layer.name: m for layer in plugin_layers()
                if (m := layer.label_map(sample)) is not None},
    )
