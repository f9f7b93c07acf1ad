"""Post-processing stage (CPU, DESIGN.md §4): one image's teacher outputs → one shard `Sample`.

Each label layer computes its own fields (`distill.layers`, `LabelLayer.fill`); no Ray, no torch. The generate-labels graph builds one
`LabelContext` per worker and calls `build_sample` per image.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from distill.coco import ImageRecord
from distill.config import LabelsConfig
from distill.errors import ConfigError, LayerError
from distill.labels.glove import load_glove_words
from distill.labels.groups import GroupTable
from distill.labels.tokens import load_stop_words
from distill.layers import registry
from distill.layers.registry import fill_order, layers
from distill.shards import Sample

__all__ = ["LabelContext", "apply_outputs", "build_sample", "changed_columns", "import_plugins",
           "role_columns"]

logger = logging.getLogger(__name__)


def import_plugins(labels: LabelsConfig) -> None:
    """Import and register the plug-in label layers of `labels.plugins` in this process (the
    driver, and each worker before post-processing); one that cannot be imported or gives no
    layer is a one-line `ConfigError` naming the setting."""
    try:
        registry.import_plugins(labels.plugins)
    except LayerError as exc:
        raise ConfigError(f"labels.plugins: {exc}") from None


def role_columns() -> dict[str, tuple[str, ...]]:
    """The shard columns each teacher role's output decides: the columns that the label layers
    it fills rewrite (the group mask needs panoptic and text)."""
    out: dict[str, tuple[str, ...]] = {}
    for layer in layers():
        for role in layer.roles:
            out[role] = tuple(dict.fromkeys((*out.get(role, ()), *layer.rewritten)))
    return out


def changed_columns(roles: Iterable[str]) -> set[str]:
    """The columns that `apply_outputs` rewrites for these roles."""
    columns = role_columns()
    return {c for r in roles for c in columns[r]}


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
        """Loaded once per worker, after importing the plug-in layers (`labels.plugins`): a
        Ray worker is a process of its own, and a layer it does not know is neither filled
        nor encoded."""
        import_plugins(labels)
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
    scratch: dict[str, Any] = {}  # one image's values that later layers share
    for layer in fill_order():
        layer.fill(sample, outputs, ctx, scratch)
    return sample
