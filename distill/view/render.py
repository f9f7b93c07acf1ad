"""Pictures for `distill view`: grid thumbnails, the sample page's image and its layers.

A layer is an RGBA PNG at the displayed size (the image's, at most `DISPLAY_MAX` on a side),
transparent where it says nothing, so the browser stacks layers over the image and sets each
one's opacity. Teachers' layers come from the shard row; with a student, the same layers of its
prediction (`distill.student.predict.Predictor`). Each label layer draws its own
(`LabelLayer.view_layer`) in the colours of its `distill show` panel.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from distill.images import decode_image
from distill.labels.groups import GroupTable
from distill.layers.form import LabelledImage
from distill.layers.registry import get_layer, layers

__all__ = ["DISPLAY_MAX", "display_size", "image_jpeg", "layer_names", "layer_png",
           "thumbnail_jpeg"]

DISPLAY_MAX = 1024
THUMB = 224


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


def _drawn_by(labels: LabelledImage) -> dict[str, tuple[int, str]]:
    """Each layer `labels` can draw → (its place in the list, the label layer that draws it)."""
    return {name: (rank, layer.name) for layer in layers()
            for rank, name in layer.view_layers(labels)}


def layer_names(labels: LabelledImage) -> list[str]:
    """The layers `labels` can draw (`LabelLayer.view_layers`), in the viewer's order."""
    drawn = _drawn_by(labels)
    return sorted(drawn, key=lambda name: drawn[name][0])


def layer_png(labels: LabelledImage, name: str, size: tuple[int, int]) -> bytes:
    """Layer `name` of `labels` drawn at `size` (width, height) as an RGBA PNG (by the label
    layer that declares it: `LabelLayer.view_layer`)."""
    drawn = _drawn_by(labels)
    if name not in drawn:
        raise KeyError(name)
    return _png(get_layer(drawn[name][1]).view_layer(labels, name, size))


def segment_names() -> dict[int, str]:
    """COCO-panoptic category id → name."""
    return {c.id: c.name for c in GroupTable.load().categories}
