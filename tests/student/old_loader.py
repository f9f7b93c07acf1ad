"""The training loader's example builder as it was before issue 16.4 sped it up (distill
main at c3c89cc: `distill.student.targets.build_example` and the numpy `augment.warp` it used),
frozen here so `test_loader_identical.py` can check that the fast loader builds IDENTICAL
examples for the same seed. Test-only: nothing in distill imports it; do not edit it to follow
the loader (that would defeat the check)."""

# ruff: noqa

from __future__ import annotations

from typing import Literal

import numpy as np

from distill.config import AugmentConfig
from distill.labels.depth import DEPTH_LEVELS
from distill.labels.groups import TEXT_GROUP, decode_group_mask
from distill.labels.keypoints import NUM_JOINTS, render_heatmaps, render_pafs
from distill.labels.letterbox import Letterbox
from distill.labels.tokens import Vocabulary, token_targets
from distill.shards import Sample
from distill.student import layout
from distill.student.augment import Affine, sample_pan_zoom
from distill.student.targets import Example, student_image

_NOISE_STD_MIN = 2.0
NOISE_STD_MAX = 12.0


def _taps(n: int, scale: float, shift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source coordinates of the `n` output pixels along one axis: (floor index, weight of the
    next index, nearest index)."""
    src = (np.arange(n, dtype=np.float64) - shift) / scale
    lo = np.floor(src)
    return lo.astype(np.int64), (src - lo).astype(np.float32), np.floor(src + 0.5).astype(np.int64)


def _gather(array: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """array[rows, cols] on a grid, with out-of-range taps clamped; and which taps were valid."""
    h, w = array.shape[:2]
    ok = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    vals = array[np.clip(rows, 0, h - 1)[:, None], np.clip(cols, 0, w - 1)[None, :]]
    return vals, ok


def warp(
    array: np.ndarray,
    affine: Affine,
    mode: Literal["bilinear", "nearest"] = "bilinear",
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Resample an (H, W) or (H, W, C) map under `affine` onto the same canvas; what falls
    outside the source becomes 0, the letterbox padding value.

    `nearest` takes the source pixel an output centre falls in (class ids, bit masks).
    `bilinear` interpolates; with a `mask` of labelled source pixels it blends only labelled
    neighbours, and output pixels whose nearest source pixel is unlabelled become 0 (so depth or
    normals never fade into the padding). Integer arrays are rounded back to their dtype."""
    h, w = array.shape[:2]
    r0, ry, rn = _taps(h, affine.scale, affine.ty)
    c0, cx, cn = _taps(w, affine.scale, affine.tx)
    if mode == "nearest":
        vals, ok = _gather(array, rn, cn)
        ok_b = ok.reshape(ok.shape + (1,) * (array.ndim - 2))
        return np.where(ok_b, vals, np.zeros((), array.dtype)).astype(array.dtype)
    m = np.ones((h, w), np.float32) if mask is None else mask.astype(np.float32)
    num = np.zeros(array.shape, np.float32)
    den = np.zeros((h, w), np.float32)
    wy = (1.0 - ry, ry)
    wx = (1.0 - cx, cx)
    for dy in (0, 1):
        for dx in (0, 1):
            vals, ok = _gather(array, r0 + dy, c0 + dx)
            mv, _ = _gather(m, r0 + dy, c0 + dx)
            weight = wy[dy][:, None] * wx[dx][None, :] * ok * mv
            den += weight
            num += vals.astype(np.float32) * weight.reshape(weight.shape + (1,) * (array.ndim - 2))
    if mask is None:
        out = num  # taps outside the source count as 0: the image fades into black padding
    else:
        nearest, ok = _gather(m, rn, cn)
        labelled = (nearest > 0) & ok & (den > 0)
        safe = np.where(den > 0, den, 1.0).reshape(den.shape + (1,) * (array.ndim - 2))
        out = np.where(labelled.reshape(safe.shape), num / safe, 0.0)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(array.dtype)
    return out.astype(array.dtype)


def augment_pixels(
    image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator, has_person: bool
) -> tuple[np.ndarray, bool]:
    """The photometric augmentations of an (H, W, 3) uint8 image, each with its own chance.

    Returns the new image and whether it was replaced by noise (then its targets no longer
    describe it; the caller decides what they become)."""
    out = image.astype(np.float64)
    if rng.random() < cfg.color:
        # Contrast about the channel mean and a brightness shift, each up to ±color_max_change:
        # one pair for all channels, or (with chance color_per_channel) one pair per channel.
        channels = 3 if rng.random() < cfg.color_per_channel else 1
        contrast = 1.0 + rng.uniform(-cfg.color_max_change, cfg.color_max_change, channels)
        brightness = 255.0 * rng.uniform(-cfg.color_max_change, cfg.color_max_change, channels)
        mean = out.mean(axis=(0, 1))
        out = (out - mean) * contrast + mean + brightness
    if rng.random() < cfg.noise:
        out = out + rng.normal(0.0, rng.uniform(_NOISE_STD_MIN, NOISE_STD_MAX), out.shape)
    if rng.random() < cfg.burned_pixels and cfg.max_burned_pixels > 0:
        n = int(rng.integers(1, cfg.max_burned_pixels + 1))
        flat = rng.choice(out.shape[0] * out.shape[1], size=n, replace=False)
        out[np.unravel_index(flat, out.shape[:2])] = 255.0  # saturated in every channel
    replaced = not has_person and rng.random() < cfg.replace_with_noise
    if replaced:
        return rng.integers(0, 256, image.shape, dtype=np.uint8), True
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), False


def _to_u8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] → uint8, rounded half up, clipped. In place on one float32 copy: this runs on
    ~2M values per example and was the loader's second cost after PNG/JPEG decoding."""
    scaled = np.multiply(unit, 255.0, dtype=np.float32)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    scaled += 0.5
    return scaled.astype(np.uint8)


def _letterboxed(sample: Sample, lb: Letterbox) -> dict[str, np.ndarray]:
    """Every dense label the sample has, letterboxed; plus `content`, 1 on the image area."""
    ones = np.ones((sample.height, sample.width), np.uint8)
    maps = {"content": lb.label_map(ones)}
    if sample.depth16 is not None:
        maps["depth"] = lb.float_map(sample.depth16.astype(np.float32))  # bilinear, 0..65535
    if sample.normals is not None:
        maps["normals"] = lb.image(sample.normals)  # bilinear on the stored 8-bit encoding
    if sample.text_mask is not None:
        maps["text"] = lb.label_map(sample.text_mask.astype(np.uint8))
    if sample.groups is not None:
        maps["groups"] = lb.label_map(sample.groups)  # nearest: bits must not blend
    return maps


def _warp_maps(maps: dict[str, np.ndarray], affine: Affine) -> dict[str, np.ndarray]:
    content = maps["content"]
    out = {"content": warp(content, affine, "nearest")}
    for name in ("depth", "normals"):
        if name in maps:
            out[name] = warp(maps[name], affine, "bilinear", mask=content)
    for name in ("text", "groups"):
        if name in maps:
            out[name] = warp(maps[name], affine, "nearest")
    return out


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


def _assemble(maps: dict[str, np.ndarray], kp: np.ndarray, size: int,
              schedule: tuple[float, float]) -> np.ndarray:
    target = np.zeros((layout.CHANNELS, size, size), np.uint8)
    joint_size, paf_width = schedule
    target[layout.JOINTS] = _to_u8(render_heatmaps(kp, size, size, joint_size))
    target[layout.PAFS] = _to_u8(render_pafs(kp, size, size, paf_width))
    if "depth" in maps:
        # Stored depth is relative inverse depth spread over 0..65535: near is already high.
        target[layout.DEPTH] = _to_u8(maps["depth"] / DEPTH_LEVELS)[None]
    if "normals" in maps:
        target[layout.NORMALS] = maps["normals"].transpose(2, 0, 1)
    if "text" in maps:
        target[layout.TEXT] = (maps["text"] > 0)[None].astype(np.uint8) * 255
    if "groups" in maps:
        bits = decode_group_mask(maps["groups"])
        classes = [k for k in range(len(bits)) if k != TEXT_GROUP]
        target[layout.GROUPS] = bits[classes].astype(np.uint8) * 255
    return target


def build_example(
    sample: Sample,
    size: int,
    vocab: Vocabulary | None,
    max_tokens: int,
    epoch_schedule: tuple[float, float],
    rng: np.random.Generator | None,
    augment: AugmentConfig | None,
    token_dim: int = 0,
) -> Example:
    """Decode, letterbox, augment (when both `rng` and `augment` are given) and encode one sample.

    `epoch_schedule` is `heatmap_schedule(epoch, ...)`. Tokens are `token_targets` of the
    sample's tokens, zeros when it has none; with no `vocab` they are zeros of width
    `token_dim`. A teacher column the sample lacks leaves its channels 0 and its `present` flag
    False. When augmentation replaces a person-free image by noise, its targets become empty
    (no joints, text, objects or words) and depth and normals, which noise has none of, are
    marked absent.
    """
    image, lb = student_image(sample.image, size, sample.width, sample.height,
                              exif_transpose=sample.exif_transpose)
    kp = lb.keypoints(_people(sample))
    maps = _letterboxed(sample, lb)
    has_person = bool(sample.persons)
    present = {
        "tokens": vocab is not None and sample.tokens is not None,
        "joints": True,
        "pafs": True,
        "depth": sample.depth16 is not None,
        "normals": sample.normals is not None,
        "text": sample.text_mask is not None,
        "segmentation": sample.groups is not None,
    }
    replaced = False
    if rng is not None and augment is not None:
        affine = sample_pan_zoom(kp, size, augment, rng)
        if affine is not None:
            image = warp(image, affine, "bilinear")
            maps = _warp_maps(maps, affine)
            kp = affine.keypoints(kp, size)
        image, replaced = augment_pixels(image, augment, rng, has_person)
    target = _assemble(maps, kp, size, epoch_schedule)
    tokens = _tokens(sample, vocab, max_tokens, token_dim)
    if replaced:
        target[layout.DEPTH.start:] = 0  # noise has no depth, normals, text or objects
        tokens[:] = 0.0
        present["depth"] = present["normals"] = False
    return Example(
        image_id=int(sample.image_id),
        image=np.ascontiguousarray(image.transpose(2, 0, 1)),
        target=target,
        tokens=tokens,
        has_person=has_person,
        present=present,
        keypoints=kp,
    )
