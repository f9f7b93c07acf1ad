"""One image's labels in one decoded form, whoever made them: the teachers (a shard row,
`from_sample`) or the student (a prediction, `from_channels`). The Python API gives it
(`distill.LabelledImage`, `run.samples()`), `distill predict` and the viewer's student side
make it, `distill show` and the viewer draw it; comparing a student to its teachers is comparing
two of these. The stored form of a row stays `distill.shards.Sample` (`row`).

Each label layer contributes its fields (`LabelLayer.decode_labels`, `LabelLayer.predicted`);
a plug-in layer's maps go into `layers`. Everything is at the picture's resolution (H, W; the
image's own for a shard row) and in [0, 1] unless stated, with the conventions of DESIGN.md §4
and §6.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from distill.labels.groups import GROUP_NAMES
from distill.labels.keypoints import NUM_JOINTS
from distill.layers.registry import layers

if TYPE_CHECKING:
    from distill.shards import Sample

__all__ = ["LabelledImage", "from_channels", "from_sample"]


@dataclass
class LabelledImage:
    """One image's labels, decoded: label fields are None where that teacher did not run (or
    the student has no such output)."""

    source: str  # "teachers" or "student"
    width: int
    height: int
    image_id: int | None = None  # None: a student's prediction of a plain image
    file_name: str = ""
    split: str = ""
    # RGB uint8 (H, W, 3) as the teachers saw it (EXIF-oriented for a plain folder's photo, as
    # the row says); None where not decoded
    image: np.ndarray | None = field(default=None, repr=False)
    depth: np.ndarray | None = field(default=None, repr=False)  # float32 (H, W), near = 1
    depth_range: tuple[float, float] | None = None  # the teacher's raw (min, max)
    depth_raw: np.ndarray | None = field(default=None, repr=False)  # student's, unrefined
    # float32 (H, W, 3) unit vectors: x right, y down, z towards the camera
    normals: np.ndarray | None = field(default=None, repr=False)
    # float32 (11, H, W), `group_names` order: the teachers' 0/1, the student's probabilities
    # (its Text plane is its text map)
    groups: np.ndarray | None = field(default=None, repr=False)
    text: np.ndarray | None = field(default=None, repr=False)  # float32 (H, W): 0/1 or prob.
    panoptic: np.ndarray | None = field(default=None, repr=False)  # uint8 ids, 255 = void
    joints: np.ndarray | None = field(default=None, repr=False)  # float32 (17, H, W), student
    pafs: np.ndarray | None = field(default=None, repr=False)  # float32 (12, H, W), student
    # (P, 17, 3): x, y in pixels and a confidence (COCO visibility v for ground truth, the
    # decoded peak value for the student); 0 = absent
    people: np.ndarray = field(default_factory=lambda: np.zeros((0, NUM_JOINTS, 3), np.float32),
                               repr=False)
    # the pose teacher's people (`distill.labels.pose.TeacherPerson`: box, 17 × (x, y, score),
    # score, box source) in original pixels; None: the pose teacher did not run
    teacher_people: list[Any] | None = field(default=None, repr=False)
    # the caption words the student learns, caption order (the student's: its decoded words);
    # None: no caption teacher ran
    tokens: list[str] | None = None
    captions: list[str] | None = None  # the caption teacher's; None: it did not run
    coco_captions: list[str] = field(default_factory=list)
    # a registered plug-in label layer's maps by layer name: float32 (C, H, W) in [0, 1]
    layers: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    row: Sample | None = field(default=None, repr=False)  # the shard row as stored

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(GROUP_NAMES)


def _merge(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The layers' fields as one dict; their `layers` entries joined."""
    out: dict[str, Any] = {"layers": {}}
    for part in parts:
        for key, value in part.items():
            if key == "layers":
                out["layers"].update(value)
            else:
                out[key] = value
    return out


def from_sample(sample: Sample, *, image: bool = True) -> LabelledImage:
    """A decoded shard row (`distill.shards.Sample`) in the decoded form; with `image`, the
    image decoded as the row says."""
    from distill.images import decode_image

    pixels = None
    if image:  # the row was accepted under its run's data.max_image_pixels: decode it whatever
        pixels = decode_image(sample.image, max_pixels=max(sample.width * sample.height, 1),
                              exif_transpose=sample.exif_transpose)
    return LabelledImage(
        source="teachers", width=sample.width, height=sample.height,
        image_id=sample.image_id, file_name=sample.file_name, split=sample.split,
        image=pixels, row=sample, **_merge(layer.decode_labels(sample) for layer in layers()))


def from_channels(channels: Mapping[str, np.ndarray], width: int, height: int,
                  **fields: Any) -> LabelledImage:
    """A student's prediction in the decoded form, from its output channels at (height, width)
    (modality key → float32 (C, H, W) in [0, 1]); `fields` adds the rest (people, tokens,
    depth_raw, image)."""
    merged = _merge(layer.predicted(channels) for layer in layers())
    return LabelledImage(source="student", width=width, height=height, **(merged | fields))
