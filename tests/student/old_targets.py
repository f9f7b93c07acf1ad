"""`distill.student.targets` as it was before the built-in layers built their own targets
(issue 27: main at ae97550), frozen here so `test_targets_registry.py` can check that the
registry-driven `build_example` gives IDENTICAL examples. Test-only: nothing in distill imports
it; do not edit it to follow the loader (that would defeat the check)."""

# ruff: noqa
# mypy: ignore-errors

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

from distill.config import AugmentConfig, HeatmapScheduleConfig
from distill.images import decode_image, decode_own_png, decode_png, image_size
from distill.labels.depth import DEPTH_LEVELS
from distill.labels.groups import NUM_GROUPS, TEXT_GROUP
from distill.labels.keypoints import NUM_JOINTS, heatmap_windows, paf_windows
from distill.labels.letterbox import Letterbox
from distill.labels.tokens import Vocabulary, token_targets
from distill.layers.registry import plugin_layers
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

# Modalities in the order of the `present` flags (the loss gains' order, train.loss_gains);
# `present_keys()` adds a registered plug-in layer's.
PRESENT_KEYS: tuple[str, ...] = ("tokens", *layout.MODALITIES)


def present_keys() -> tuple[str, ...]:
    """The `present` flags' names: `PRESENT_KEYS`, then the plug-in layers' modalities."""
    return ("tokens", *layout.modalities())


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


def _to_u8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] → uint8, rounded half up, clipped. In place on one float32 copy: this runs on
    ~2M values per example and was the loader's second cost after PNG/JPEG decoding."""
    scaled = np.multiply(unit, 255.0, dtype=np.float32)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    scaled += 0.5
    return scaled.astype(np.uint8)


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


@dataclass
class Warp:
    """How one example moves a label from the original resolution to the student's S×S: the
    letterbox, then the augmentation (when any). Handed to a plug-in layer's `target`."""

    letterbox: Letterbox
    resampler: Resampler | None

    def nearest(self, labels: np.ndarray) -> np.ndarray:
        """An (H, W) label map at the original resolution → (S, S), nearest neighbour (0 on
        the letterbox padding and where the augmentation leaves the image)."""
        return _label_map(labels, self.letterbox, self.resampler)


# The PNG mode of each map `_letterboxed_png` letterboxes straight from Pillow, and the mode
# it is resized in (what `Letterbox.float_map` / `Letterbox.image` resize the array in).
_PIL_MODES = {"depth": ("I;16", "F"), "normals": ("RGB", "RGB")}


def _letterboxed_png(encoded: Mapping[str, bytes | None] | None, name: str,
                     lb: Letterbox) -> np.ndarray | None:
    """The letterbox of a row's `<name>_png`: the pixels of decoding it into the sample first
    (`decode_row`) and letterboxing that. A PNG in `encode_png`'s layout is decoded by zlib and
    numpy (`decode_own_png`); any other goes straight from Pillow's decoder into its resize,
    without a round trip through numpy. None when `encoded` lacks it."""
    data = None if encoded is None else encoded.get(f"{name}_png")
    if data is None:
        return None
    array = decode_own_png(data)  # encode_png's layout: zlib + numpy, faster than Pillow
    if array is not None:
        return _letterboxed_array(array, name, lb)
    stored, resized = _PIL_MODES[name]
    with Image.open(io.BytesIO(data)) as img:
        if img.mode == stored:
            return lb.pil_image(img.convert(resized) if resized != stored else img)
    return _letterboxed_array(decode_png(data), name, lb)  # another mode: as decode_row reads it


def _letterboxed_array(array: np.ndarray, name: str, lb: Letterbox) -> np.ndarray:
    """The letterbox of a decoded depth (bilinear in float32, 0..65535) or normals map."""
    return lb.float_map(array.astype(np.float32)) if name == "depth" else lb.image(array)


def _dense_maps(sample: Sample, lb: Letterbox, resampler: Resampler | None,
                encoded: Mapping[str, bytes | None] | None = None) -> dict[str, np.ndarray]:
    """Every dense label the sample has, letterboxed and, with a `resampler`, moved by the
    augmentation. Depth and normals are letterboxed (bilinear, antialiased; from `encoded`
    PNGs when given) and then warped (bilinear, blending only pixels of the image area); text
    and groups go from the decoded map to the output in one nearest gather (`_label_map`)."""
    maps: dict[str, np.ndarray] = {}
    content = np.zeros((lb.dst_h, lb.dst_w), np.uint8)  # 1 on the image area
    content[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w] = 1
    for name in ("depth", "normals"):
        letterboxed = _letterboxed_png(encoded, name, lb)
        decoded = sample.depth16 if name == "depth" else sample.normals
        if letterboxed is None and decoded is not None:
            letterboxed = _letterboxed_array(decoded, name, lb)  # bilinear, as stored
        if letterboxed is not None and letterboxed.ndim == 3:  # normals: channels first
            letterboxed = np.ascontiguousarray(letterboxed.transpose(2, 0, 1))
        if letterboxed is not None:
            maps[name] = letterboxed if resampler is None else \
                resampler.bilinear(letterboxed, content, channels_first=True)
    if sample.text_mask is not None:
        maps["text"] = _label_map(sample.text_mask, lb, resampler)
    if sample.groups is not None:
        maps["groups"] = _label_map(sample.groups, lb, resampler)  # nearest: bits must not blend
    return maps


def _people(sample: Sample) -> np.ndarray:
    if not sample.persons:
        return np.zeros((0, NUM_JOINTS, 3), np.float32)
    return np.stack([np.asarray(p.keypoints, np.float32) for p in sample.persons])


def _tokens(sample: Sample, vocab: Vocabulary | None, max_tokens: int,
            token_dim: int) -> np.ndarray:
    if vocab is None:
        return np.zeros((max_tokens, token_dim), np.float32)
    if not sample.tokens:
        return np.zeros((max_tokens, vocab.dim), np.float32)
    return token_targets(sample.tokens, vocab, max_tokens)


# The group bits of the 10 class channels, in layout order (the Text bit has its own channel).
_CLASS_BITS = np.array([k for k in range(NUM_GROUPS) if k != TEXT_GROUP], np.uint16)


def _assemble(maps: dict[str, np.ndarray], kp: np.ndarray, size: int,
              schedule: tuple[float, float]) -> np.ndarray:
    target = np.zeros((layout.channels(), size, size), np.uint8)
    joint_size, paf_width = schedule
    # Rendered window by window straight into uint8: `_to_u8` is monotone, so the max over
    # people of the converted windows is the conversion of the float maps' max.
    joints = target[layout.JOINTS]
    for j, (r0, r1, c0, c1), values in heatmap_windows(kp, size, size, joint_size):
        window = joints[j, r0:r1, c0:c1]
        np.maximum(window, _to_u8(values), out=window)
    pafs = target[layout.PAFS]
    for k, (r0, r1, c0, c1), on in paf_windows(kp, size, size, paf_width):
        pafs[k, r0:r1, c0:c1][on] = 255
    if "depth" in maps:
        # Stored depth is relative inverse depth spread over 0..65535: near is already high.
        target[layout.DEPTH] = _to_u8(maps["depth"] / DEPTH_LEVELS)[None]
    if "normals" in maps:
        target[layout.NORMALS] = maps["normals"]  # (3, S, S)
    if "text" in maps:
        target[layout.TEXT] = maps["text"][None].astype(np.uint8) * 255
    if "groups" in maps:
        bits = (maps["groups"][None] >> _CLASS_BITS[:, None, None]) & 1
        np.multiply(bits, 255, out=target[layout.GROUPS], casting="unsafe")
    return target


def _plugin_targets(sample: Sample, warp: Warp, target: np.ndarray,
                    present: dict[str, bool]) -> None:
    """Each registered plug-in layer's target channels (`LabelLayer.target`), in place."""
    channels = layout.modalities()
    for layer in plugin_layers():
        if not layer.modalities:
            continue
        first, last = channels[layer.modalities[0].key], channels[layer.modalities[-1].key]
        out = layer.target(sample, warp)
        if out is not None:
            target[first.start : last.stop] = out
        for m in layer.modalities:
            present[m.key] = out is not None


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

    `epoch_schedule` is `heatmap_schedule(epoch, ...)`. Tokens are `token_targets` of the
    sample's tokens, zeros when it has none; with no `vocab` they are zeros of width
    `token_dim`. A teacher column the sample lacks leaves its channels 0 and its `present` flag
    False. When augmentation replaces a person-free image by noise, its targets become empty
    (no joints, text, objects or words) and depth and normals, which noise has none of, are
    marked absent.

    `encoded`: the row's `depth_png` and `normals_png` for a `sample` decoded without them
    (`decode_row` of the other columns, as `ShardStream` does): they are decoded straight into
    the letterbox, the same pixels as decoding them into the sample.
    """
    encoded = {k: v for k, v in (encoded or {}).items() if v is not None}
    image, lb = student_image(sample.image, size, sample.width, sample.height,
                              exif_transpose=sample.exif_transpose)
    kp = lb.keypoints(_people(sample))
    has_person = bool(sample.persons)
    present = {
        "tokens": vocab is not None and sample.tokens is not None,
        "joints": True,
        "pafs": True,
        "depth": sample.depth16 is not None or "depth_png" in encoded,
        "normals": sample.normals is not None or "normals_png" in encoded,
        "text": sample.text_mask is not None,
        "segmentation": sample.groups is not None,
    }
    replaced = False
    affine = None
    if rng is not None and augment is not None:
        affine = sample_pan_zoom(kp, size, augment, rng)
    # The geometry once per sample: one resampler's taps for the image and every map.
    resampler = None if affine is None else Resampler(affine, size, size)
    maps = _dense_maps(sample, lb, resampler, encoded)
    image = np.ascontiguousarray(image.transpose(2, 0, 1))  # (3, S, S) from here on
    if affine is not None and resampler is not None:
        image = resampler.bilinear(image, channels_first=True)
        kp = affine.keypoints(kp, size)
    if rng is not None and augment is not None:
        image, replaced = augment_pixels(image, augment, rng, has_person, channels_first=True)
    target = _assemble(maps, kp, size, epoch_schedule)
    _plugin_targets(sample, Warp(lb, resampler), target, present)
    tokens = _tokens(sample, vocab, max_tokens, token_dim)
    if replaced:
        target[layout.DEPTH.start:] = 0  # noise has no depth, normals, text or objects
        tokens[:] = 0.0
        present["depth"] = present["normals"] = False
    return Example(
        image_id=int(sample.image_id),
        image=image,
        target=target,
        tokens=tokens,
        has_person=has_person,
        present=present,
        keypoints=kp,
    )
