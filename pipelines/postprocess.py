"""Post-processing stage (CPU, DESIGN.md §4): one image's teacher outputs → one shard `Sample`.

Pure label math over `distill.labels`; no Ray, no torch. The generate-labels graph builds one
`LabelContext` per worker and calls `build_sample` per image.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from distill.coco import ImageRecord
from distill.config import LabelsConfig
from distill.labels.depth import normalize_depth, quantize_unit
from distill.labels.glove import load_glove_words
from distill.labels.groups import GroupTable, encode_group_mask
from distill.labels.normals import encode_normals8, normals_from_unit
from distill.labels.text import rasterize_polygons
from distill.labels.tokens import load_stop_words, tokenize
from distill.shards import Sample
from teachers.base import CaptionResult, DepthResult, PanopticResult, TextResult

__all__ = ["ROLE_COLUMNS", "LabelContext", "apply_outputs", "build_sample", "changed_columns"]

logger = logging.getLogger(__name__)


# The shard columns each teacher's output decides (the group mask needs panoptic and text).
ROLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "depth": ("depth_png", "depth_min", "depth_max", "normals_png"),
    "panoptic": ("panoptic_png", "segments", "groups_png"),
    "text": ("text_png", "text_regions", "groups_png"),
    "caption": ("teacher_captions", "tokens"),
}


def changed_columns(roles: Iterable[str]) -> set[str]:
    """The columns that `apply_outputs` rewrites for these roles."""
    return {c for r in roles for c in ROLE_COLUMNS[r]}


@dataclass
class LabelContext:
    """What post-processing needs, loaded once per worker."""

    groups: GroupTable
    stop_words: frozenset[str]
    known_words: Mapping[str, Any] | frozenset[str]  # words GloVe has a vector for
    gradient_scale: float
    text_score_threshold: float

    @classmethod
    def from_config(cls, labels: LabelsConfig) -> LabelContext:
        return cls(
            groups=GroupTable.load(labels.group_overrides),
            stop_words=load_stop_words(labels.stop_words, labels.stop_words_file),
            known_words=load_glove_words(labels.glove),
            gradient_scale=labels.normals_gradient_scale,
            text_score_threshold=labels.text_score_threshold,
        )


def build_sample(
    record: ImageRecord,
    split: str,
    image_bytes: bytes,
    size: tuple[int, int],
    outputs: Mapping[str, Any],
    ctx: LabelContext,
) -> Sample:
    """Combine the teachers' outputs for one image (keyed by role; a role that did not run is
    absent) with its ground truth into a `Sample`. `size` is the decoded (width, height), with
    the record's EXIF orientation applied when it says so (a plain folder); the row records that
    choice for every later decoder of its `image`."""
    width, height = size
    sample = Sample(
        image_id=record.image_id, file_name=record.file_name, split=split, width=width,
        height=height, image=image_bytes, coco_captions=list(record.captions),
        persons=list(record.persons), exif_transpose=record.exif_transpose,
    )
    return apply_outputs(sample, outputs, ctx)


def apply_outputs(sample: Sample, outputs: Mapping[str, Any], ctx: LabelContext) -> Sample:
    """Fill `sample`'s label fields from teacher outputs (keyed by role), in place.

    `sample` may already hold other teachers' labels (a teacher added to a finished run): the
    group mask is then rebuilt from the stored class map and the stored or new text mask, so it
    always reflects every teacher that ran."""
    height, width = sample.height, sample.width
    depth = outputs.get("depth")
    if isinstance(depth, DepthResult):
        unit, sample.depth_min, sample.depth_max = normalize_depth(depth.depth)  # once for both
        sample.depth16 = quantize_unit(unit)
        sample.normals = encode_normals8(normals_from_unit(unit, ctx.gradient_scale))
    text = outputs.get("text")
    if isinstance(text, TextResult):
        kept = [r for r in text.regions if r.score >= ctx.text_score_threshold]
        sample.text_regions = kept
        # The teacher's mask already covers its regions; redraw only if the threshold dropped some.
        sample.text_mask = text.mask if len(kept) == len(text.regions) else \
            rasterize_polygons([r.points for r in kept], height, width)
    panoptic = outputs.get("panoptic")
    if isinstance(panoptic, PanopticResult):
        sample.panoptic, sample.segments = panoptic.class_map, list(panoptic.segments)
    if sample.panoptic is not None and (isinstance(panoptic, PanopticResult)
                                        or isinstance(text, TextResult)):
        # The group mask needs the class map; the Text bit joins when the text teacher ran.
        sample.groups = encode_group_mask(ctx.groups, sample.panoptic, sample.text_mask)
    caption = outputs.get("caption")
    if isinstance(caption, CaptionResult):
        sample.teacher_captions = [caption.caption]
        # Tokens come from the teacher's caption: the student distils the captioner (paper
        # §3.4); COCO's human captions stay in their own column for audits.
        sample.tokens = tokenize(caption.caption, ctx.stop_words, ctx.known_words)
    return sample
