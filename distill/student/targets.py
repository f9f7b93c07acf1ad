"""One shard sample → the student's input and uint8 targets (DESIGN.md §6; paper §3.5, §3.6).

Order of work: decode, letterbox everything to S×S, apply the augmentation geometry to the
image, the dense maps and the keypoints alike, then render heatmaps and PAFs from the moved
keypoints at the output resolution (a rendered heatmap is never resampled), then the
photometric augmentation. Each label layer (`distill.layers`) builds its own target through a
`Warp`, which moves its label as the layer's `moved` says. Targets are uint8 in the order of `distill.student.layout`; 0 is
"no label" (letterbox padding, absent masks) and maps to −1 on the device.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from distill.config import AugmentConfig, HeatmapScheduleConfig
from distill.images import decode_image, decode_own_png, decode_png, image_size
from distill.labels.keypoints import NUM_JOINTS
from distill.labels.letterbox import Letterbox
from distill.labels.tokens import Vocabulary
from distill.layers.registry import LabelLayer, builtin_layers, layers
from distill.shards import Sample
from distill.student import layout
from distill.student.augment import Resampler, augment_pixels, sample_pan_zoom

__all__ = [
    "PRESENT_KEYS",
    "Example",
    "Warp",
    "build_example",
    "heatmap_schedule",
    "present_keys",
    "student_image",
]

logger = logging.getLogger(__name__)



def _token_keys(of: tuple[LabelLayer, ...]) -> tuple[str, ...]:
    """The layers learned as caption tokens (`moved = "tokens"`): their `present` flags."""
    return tuple(layer.name for layer in of if layer.moved == "tokens")


# Modalities in the order of the `present` flags (the loss gains' order, train.loss_gains):
# the caption tokens, then the channels' modalities; `present_keys()` adds a plug-in layer's.
PRESENT_KEYS: tuple[str, ...] = (*_token_keys(builtin_layers()), *layout.MODALITIES)


def present_keys() -> tuple[str, ...]:
    """The `present` flags' names: `PRESENT_KEYS`, then the plug-in layers' modalities."""
    return (*_token_keys(layers()), *layout.modalities())


def heatmap_schedule(epoch: int, cfg: HeatmapScheduleConfig) -> tuple[float, float]:
    """(joint Gaussian size, PAF line width) at `epoch`: both shrink by one step (one pixel)
    every `cfg.step_epochs` epochs, from their start values, and stop at their end values."""
    steps = max(epoch, 0) // cfg.step_epochs
    joint = max(cfg.joint_size_start - steps, cfg.joint_size_end)
    paf = max(cfg.paf_width_start - steps, cfg.paf_width_end)
    return float(joint), float(paf)


@dataclass
class Example:
    """One training example, ready to become tensors."""

    image_id: int
    image: np.ndarray  # uint8 (3, S, S)
    target: np.ndarray  # uint8 (44, S, S), layout order
    tokens: np.ndarray  # float32 (max_tokens, D)
    has_person: bool
    present: dict[str, bool]  # PRESENT_KEYS → whether that modality has a label to learn from
    keypoints: np.ndarray  # float32 (people, 17, 3) in output pixels, after augmentation

    @property
    def valid(self) -> np.ndarray:
        """(44,) bool: the target channels whose modality is present."""
        out = np.zeros(layout.channels(), bool)
        for name, channels in layout.modalities().items():
            out[channels] = self.present[name]
        return out

    def present_vector(self) -> np.ndarray:
        """The `present` flags as a (len(present_keys()),) bool array."""
        return np.array([self.present[k] for k in present_keys()], bool)


def student_image(data: bytes, size: int, width: int | None = None,
                  height: int | None = None, *,
                  exif_transpose: bool = False) -> tuple[np.ndarray, Letterbox]:
    """How the student sees an encoded image, in training and in `distill predict` alike: the
    uint8 (S, S, 3) letterbox and its `Letterbox`. A JPEG is decoded at the smallest DCT scale
    (1/2, 1/4, 1/8) still larger than the letterboxed content — several times faster than a
    full decode, and the resize from there is smaller too. `exif_transpose`: decode with the
    EXIF orientation applied, as a shard row says (`Sample.exif_transpose`). `width`/`height`
    are the decoded size when known (a row's; read from the header otherwise)."""
    if width is None or height is None:
        width, height = image_size(data, exif_transpose=exif_transpose)
    lb = Letterbox.fit(width, height, size)
    return lb.image_scaled(decode_image(data, at_least=(lb.new_w, lb.new_h),
                                        exif_transpose=exif_transpose)), lb


def _label_map(labels: np.ndarray, lb: Letterbox, resampler: Resampler | None) -> np.ndarray:
    """`lb.label_map(labels)`, then `resampler.nearest` of it when given, in ONE gather from the
    source: both are nearest-neighbour, so composing their taps is exact."""
    rows, cols = lb.label_indices()
    if resampler is not None:
        (r, rok), (c, cok) = resampler.nearest_rows, resampler.nearest_cols
        rows = np.where(rok, rows[r], -1)
        cols = np.where(cok, cols[c], -1)
    out = labels.take(np.maximum(rows, 0), axis=0).take(np.maximum(cols, 0), axis=1)
    out[rows < 0] = 0
    out[:, cols < 0] = 0
    return out


def _letterboxed_array(array: np.ndarray, lb: Letterbox) -> np.ndarray:
    """The letterbox of a decoded continuous map: an (H, W) one bilinearly in float32 (depth,
    0..65535), an (H, W, C) uint8 one as an image (normals)."""
    return lb.float_map(array.astype(np.float32)) if array.ndim == 2 else lb.image(array)


@dataclass
class Warp:
    """How one example moves a label from the original resolution to the student's S×S (the
    letterbox, then the augmentation when any), and what its targets are made with. Handed to
    each label layer's `target` (`distill.layers`)."""

    letterbox: Letterbox
    resampler: Resampler | None
    encoded: Mapping[str, bytes] = field(default_factory=dict)  # the row's undecoded PNGs
    keypoints: dict[str, np.ndarray] = field(default_factory=dict)  # layer → moved, output px
    schedule: tuple[float, float] = (0.0, 0.0)  # `heatmap_schedule` of the epoch
    vocab: Vocabulary | None = None
    max_tokens: int = 0

    @property
    def size(self) -> int:
        return self.letterbox.dst_h

    def nearest(self, labels: np.ndarray) -> np.ndarray:
        """An (H, W) label map at the original resolution → (S, S), nearest neighbour (0 on
        the letterbox padding and where the augmentation leaves the image)."""
        return _label_map(labels, self.letterbox, self.resampler)

    @functools.cached_property
    def _content(self) -> np.ndarray:
        """1 on the letterbox's image area (one array, so the resampler's weights of it are
        computed once per example)."""
        lb = self.letterbox
        content = np.zeros((lb.dst_h, lb.dst_w), np.uint8)
        content[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w] = 1
        return content

    def bilinear(self, decoded: np.ndarray | None, column: str,
                 modes: tuple[str, str]) -> np.ndarray | None:
        """A continuous map (depth, normals) → (S, S) float32 or (C, S, S): letterboxed
        bilinearly (antialiased), from the row's still-encoded `column` when the loader kept it
        (`encoded`), otherwise from `decoded` at the original resolution; then moved by the
        augmentation, blending only pixels of the image area. `modes`: the PNG's Pillow mode
        and the mode it is resized in (what the decoded array's letterbox resizes in). None
        when the row has neither."""
        letterboxed = self._letterboxed_png(column, modes)
        if letterboxed is None and decoded is not None:
            letterboxed = _letterboxed_array(decoded, self.letterbox)  # bilinear, as stored
        if letterboxed is None:
            return None
        if letterboxed.ndim == 3:  # channels first
            letterboxed = np.ascontiguousarray(letterboxed.transpose(2, 0, 1))
        if self.resampler is None:
            return letterboxed
        return self.resampler.bilinear(letterboxed, self._content, channels_first=True)

    def _letterboxed_png(self, column: str, modes: tuple[str, str]) -> np.ndarray | None:
        """The letterbox of the row's PNG `column`: the pixels of decoding it into the sample
        first (`decode_row`) and letterboxing that. A PNG in `encode_png`'s layout is decoded by
        zlib and numpy (`decode_own_png`); any other goes straight from Pillow's decoder into
        its resize, without a round trip through numpy."""
        data = self.encoded.get(column)
        if data is None:
            return None
        lb = self.letterbox
        array = decode_own_png(data)  # encode_png's layout: zlib + numpy, faster than Pillow
        if array is not None:
            return _letterboxed_array(array, lb)
        stored, resized = modes
        with Image.open(io.BytesIO(data)) as img:
            if img.mode == stored:
                return lb.pil_image(img.convert(resized) if resized != stored else img)
        return _letterboxed_array(decode_png(data), lb)  # another mode: as decode_row reads it


def _channels(sample: Sample, warp: Warp, target: np.ndarray, present: dict[str, bool],
              replaced: bool) -> None:
    """Each label layer's target channels (`LabelLayer.target`), in place, and its `present`
    flags; on a picture replaced by noise, as its `on_noise` says."""
    channels = layout.modalities()
    for layer in layers():
        if not layer.modalities or layer.modalities[0].key not in channels:
            continue  # no channels, or an opt-in layer this student does not have
        first, last = channels[layer.modalities[0].key], channels[layer.modalities[-1].key]
        out = layer.target(sample, warp)
        absent = out is None or (replaced and layer.on_noise == "absent")
        if out is not None and not replaced:
            target[first.start : last.stop] = out
        for m in layer.modalities:
            present[m.key] = not absent


def build_example(
    sample: Sample,
    size: int,
    vocab: Vocabulary | None,
    max_tokens: int,
    epoch_schedule: tuple[float, float],
    rng: np.random.Generator | None,
    augment: AugmentConfig | None,
    token_dim: int = 0,
    *,
    encoded: Mapping[str, bytes | None] | None = None,
) -> Example:
    """Decode, letterbox, augment (when both `rng` and `augment` are given) and encode one sample.

    Every label layer builds its own target (`LabelLayer.target`, moved as its `moved` says):
    its channels in layout order, or the caption tokens. `epoch_schedule` is
    `heatmap_schedule(epoch, ...)`. Tokens are zeros when the row has no words, and of width
    `token_dim` with no `vocab`. A label the sample lacks leaves its channels 0 and its
    `present` flag False. When augmentation replaces a person-free image by noise, every target
    becomes empty and a layer that noise has none of (`on_noise = "absent"`: depth, normals) is
    marked absent.

    `encoded`: the row's undecoded PNG columns (`undecoded_columns()`: depth and normals) for a
    `sample` decoded without them (`decode_row` of the other columns, as `ShardStream` does):
    they are decoded straight into the letterbox, the same pixels as decoding them into the
    sample.
    """
    pngs = {k: v for k, v in (encoded or {}).items() if v is not None}
    image, lb = student_image(sample.image, size, sample.width, sample.height,
                              exif_transpose=sample.exif_transpose)
    kp_layers = [layer for layer in layers() if layer.moved == "keypoints"]
    points = {layer.name: lb.keypoints(_points(layer, sample)) for layer in kp_layers}
    has_person = bool(sample.persons)
    replaced = False
    affine = None
    if rng is not None and augment is not None:
        anchors = np.concatenate([p.reshape(-1, 3) for p in points.values()]) if points \
            else np.zeros((0, 3), np.float32)
        affine = sample_pan_zoom(anchors, size, augment, rng)
    # The geometry once per sample: one resampler's taps for the image and every map.
    resampler = None if affine is None else Resampler(affine, size, size)
    image = np.ascontiguousarray(image.transpose(2, 0, 1))  # (3, S, S) from here on
    if affine is not None and resampler is not None:
        image = resampler.bilinear(image, channels_first=True)
        points = {name: affine.keypoints(p, size) for name, p in points.items()}
    if rng is not None and augment is not None:
        image, replaced = augment_pixels(image, augment, rng, has_person, channels_first=True)
    warp = Warp(lb, resampler, pngs, points, epoch_schedule, vocab, max_tokens)
    target = np.zeros((layout.channels(), size, size), np.uint8)
    present: dict[str, bool] = {}
    _channels(sample, warp, target, present, replaced)
    tokens = np.zeros((max_tokens, token_dim if vocab is None else vocab.dim), np.float32)
    for layer in layers():
        if layer.moved == "tokens":  # noise has no words: zeros, still present
            words = layer.target(sample, warp)
            present[layer.name] = words is not None
            if words is not None and not replaced:
                tokens = words
    return Example(
        image_id=int(sample.image_id),
        image=image,
        target=target,
        tokens=tokens,
        has_person=has_person,
        present=present,
        # the first keypoint layer's (the people's, a built-in)
        keypoints=next(iter(points.values()), np.zeros((0, NUM_JOINTS, 3), np.float32)),
    )


def _points(layer: LabelLayer, sample: Sample) -> np.ndarray:
    """A keypoint layer's keypoints of `sample` (none: an empty (0, joints, 3))."""
    points = layer.keypoints(sample)
    return np.zeros((0, NUM_JOINTS, 3), np.float32) if points is None else points
