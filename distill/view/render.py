"""Pictures for `distill view`: grid thumbnails, the sample page's image and its layers.

A layer is an RGBA PNG at the displayed size (the image's, at most `DISPLAY_MAX` on a side),
transparent where it says nothing, so the browser stacks layers over the image and sets each
one's opacity. Teachers' layers come from the shard row; with a student, the same layers of its
prediction (`distill.student.predict.Predictor`). Colours are `distill.viz`'s, so a layer looks
like the matching `distill show` panel.
"""

from __future__ import annotations

import colorsys
import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from distill.images import decode_image
from distill.labels.groups import GroupTable
from distill.layers.registry import get_layer
from distill.student.labels import CLASS_GROUPS, Labels
from distill.viz import (
    GROUP_COLORS,
    HEAT_COLOR,
    PAF_COLOR,
    TEXT_COLOR,
    depth_colormap,
    draw_skeletons,
    group_index,
    people_maps,
    resize_map,
)

__all__ = ["DISPLAY_MAX", "LAYERS", "display_size", "image_jpeg", "layer_names", "layer_png",
           "thumbnail_jpeg"]

DISPLAY_MAX = 1024
THUMB = 224
# Layers every row may have (those whose teacher did not run are left out of `layer_names`),
# then one per class group.
LAYERS = ("depth", "normals", "groups", "text", "people", "panoptic",
          *(f"group:{g}" for g in CLASS_GROUPS))


def display_size(width: int, height: int, limit: int = DISPLAY_MAX) -> tuple[int, int]:
    scale = min(1.0, limit / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _jpeg(rgb: np.ndarray | Image.Image, quality: int = 85) -> bytes:
    img = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def thumbnail_jpeg(data: bytes, width: int, height: int, exif_transpose: bool,
                   size: int = THUMB) -> bytes:
    """A JPEG thumbnail (longer side `size`), decoding a JPEG at a reduced DCT scale."""
    w, h = display_size(width, height, size)
    rgb = decode_image(data, max_pixels=max(width * height, 1), at_least=(w, h),
                       exif_transpose=exif_transpose)
    img = Image.fromarray(rgb)
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return _jpeg(img, 80)


def image_jpeg(data: bytes, width: int, height: int, exif_transpose: bool) -> bytes:
    """The image at its displayed size, as JPEG."""
    size = display_size(width, height)
    rgb = decode_image(data, max_pixels=max(width * height, 1), at_least=size,
                       exif_transpose=exif_transpose)
    if rgb.shape[1::-1] != size:
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    return _jpeg(rgb)


def layer_names(labels: Labels, panoptic: bool) -> list[str]:
    """The layers `labels` can draw."""
    have = {"depth": labels.depth is not None, "normals": labels.normals is not None,
            "groups": labels.groups is not None, "text": labels.text is not None,
            "people": True, "panoptic": panoptic}
    names = [n for n in LAYERS[:6] if have[n]]
    if labels.groups is not None:
        names += [f"group:{g}" for g in CLASS_GROUPS]
    return names + list(labels.layers)  # a plug-in label layer's maps


def _rgba(rgb: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    h, w = rgb.shape[:2]
    a = np.broadcast_to(np.asarray(alpha, np.float32), (h, w))
    out = np.empty((h, w, 4), np.uint8)
    out[..., :3] = np.clip(np.rint(rgb), 0, 255)
    out[..., 3] = np.clip(np.rint(a * 255.0), 0, 255)
    return out


def _flat(color: Any, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    return np.broadcast_to(np.asarray(color, np.float32), (h, w, 3))


def _panoptic_palette() -> np.ndarray:
    """A fixed colour per category id (golden-ratio hues), black for void."""
    palette = np.zeros((256, 3), np.float32)
    for i in range(256):
        hue = (i * 0.618033988749895) % 1.0
        palette[i] = np.array(colorsys.hsv_to_rgb(hue, 0.65, 0.95)) * 255
    return palette


_PALETTE = _panoptic_palette()


def layer_png(labels: Labels, name: str, size: tuple[int, int],
              panoptic: np.ndarray | None = None) -> bytes:
    """Layer `name` of `labels` drawn at `size` (width, height) as an RGBA PNG."""
    if name == "depth" and labels.depth is not None:
        rgba = _rgba(depth_colormap(resize_map(labels.depth, size)).astype(np.float32), 1.0)
    elif name == "normals" and labels.normals is not None:
        rgb = (np.clip(labels.normals, -1.0, 1.0) + 1.0) * 127.5
        rgba = _rgba(resize_map(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), size)
                     .astype(np.float32), 1.0)
    elif name == "groups" and labels.groups is not None:
        index = resize_map(group_index(labels.groups).astype(np.float32), size,
                           nearest=True).astype(np.int64)
        palette = np.array([*GROUP_COLORS, (0, 0, 0)], np.float32)
        rgba = _rgba(palette[index], (index >= 0) * 0.85)
    elif name.startswith("group:") and labels.groups is not None:
        k = CLASS_GROUPS.index(name.split(":", 1)[1])
        mask = resize_map(labels.groups[k].astype(np.float32), size) > 0.5
        rgba = _rgba(_flat(GROUP_COLORS[k], size), mask * 0.85)
    elif name == "text" and labels.text is not None:
        prob = np.clip(resize_map(labels.text.astype(np.float32), size), 0.0, 1.0)
        rgba = _rgba(_flat(TEXT_COLOR, size), prob * 0.9)
    elif name == "panoptic" and panoptic is not None:
        ids = resize_map(panoptic.astype(np.float32), size, nearest=True).astype(np.int64)
        rgba = _rgba(_PALETTE[ids], (ids != 255) * 0.8)
    elif name in labels.layers:  # a plug-in label layer: its first channel in its colour
        prob = np.clip(resize_map(labels.layers[name][0].astype(np.float32), size), 0.0, 1.0)
        rgba = _rgba(_flat(get_layer(name).color, size), prob * 0.85)
    elif name == "people":
        heat, paf, heat_alpha, paf_alpha = people_maps(labels, size)
        paf_a = np.clip(paf, 0, 1) * paf_alpha
        heat_a = np.clip(heat, 0, 1) * heat_alpha
        alpha = 1.0 - (1.0 - paf_a) * (1.0 - heat_a)  # heat over PAFs, as the sheet draws
        rgb = (PAF_COLOR * (paf_a * (1 - heat_a))[..., None] + HEAT_COLOR * heat_a[..., None])
        rgb = rgb / np.maximum(alpha, 1e-6)[..., None]
        canvas = Image.fromarray(_rgba(rgb, alpha), "RGBA")
        draw_skeletons(ImageDraw.Draw(canvas), labels, size)
        return _png(np.asarray(canvas))
    else:
        raise KeyError(name)
    return _png(rgba)


def segment_names() -> dict[int, str]:
    """COCO-panoptic category id → name."""
    return {c.id: c.name for c in GroupTable.load().categories}
