"""Poseur (Mao et al., ECCV 2022; code `aim-uofa/Poseur` on mmpose): the "poseur" pose teacher.

Top-down: each person box is cropped with upstream's affine (`bbox_xywh2cs` with padding 1.25 and
the crop's aspect ratio, `get_affine_transform` + `cv2.warpAffine` bilinear with a black border),
normalised with ImageNet statistics (`ToTensor` + `NormalizeTensor`), run through `PoseurNet`
with upstream's flip test (`Poseur.forward_test`, `flip_test=True`, 'default' fusion: the mean
of both passes), and mapped back with `keypoints_from_regression` / `transform_preds`.

Scores are upstream's: a joint's is 1 - mean(sigma) of the last decoder layer
(`PoseurHead.forward`, `scores = 1 - outputs_sigmas[-1]`), and a person's is upstream's
evaluation rescoring with `rle_score=True` (`TopDownCocoDataset.evaluate`: box score + mean +
max of the joint scores) divided by 3 to lie in [0, 1]; a given box scores 1.

Variants: "tiny" (random, small), "random" (ResNet-50 layout, random init) and "pretrained": an
upstream mmpose checkpoint (`.pth`, read with `torch.load(weights_only=True)`, or safetensors)
whose backbone (ResNet-50 or MobileNetV2) and decoder depth are read from its keys, renamed by
`map_upstream_keys`. `input_size` is the crop height: 256 (192×256, default) or 384 (288×384).
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distill.config import TeacherConfig
from teachers.base import PosePerson, PoseResult, Provenance, Teacher, TeacherError, check_images
from teachers.poseur_net import ARCHS, PoseurNet
from teachers.registry import register
from teachers.runtime import (
    load_state_dict,
    load_strict,
    make_provenance,
    rename_key,
    resolve_device,
    resolve_dtype,
    seeded,
)

__all__ = ["Poseur", "box_to_center_scale", "crop_person", "map_upstream_keys", "to_original"]

logger = logging.getLogger(__name__)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PADDING = 1.25  # TopDownGetBboxCenterScale(padding=1.25)
PIXEL_STD = 200.0
FLIP_TEST = True  # upstream's test_cfg; doubles the crops per person
# COCO's left/right joint pairs (the dataset's flip_pairs)
FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
INPUT_SIZES = {256: (192, 256), 384: (288, 384)}  # crop height → (width, height)
# Training-only parts of an upstream checkpoint (the RLE loss's RealNVP flows).
_TRAINING_ONLY = ("keypoint_head.enc_flow.", "keypoint_head.dec_flow.")
_MOBILENET_STARTS = (1, 2, 4, 7, 11, 14, 17)  # torchvision feature index of mmpose's layerN.0
_T = "keypoint_head.transformer."
_RULES: list[tuple[str, str]] = [  # (upstream regex, replacement), first match wins
    (r"neck\.convs\.(\d+)\.conv\.", r"neck.convs.\1."),
    (r"neck\.convs\.(\d+)\.gn\.", r"neck.norms.\1."),
    (_T + r"level_embeds$", "level_embeds"),
    (_T + r"(fc_coord|fc_sigma)\.linear\.", r"\1."),
    (_T + r"(pos_trans|pos_trans_norm)\.", r"\1."),
    (_T + r"pos_embed\.", "joint_embed."),
    (_T + r"decoder\.layers\.(\d+)\.attentions\.0\.attn\.", r"layers.\1.self_attn."),
    (_T + r"decoder\.layers\.(\d+)\.attentions\.1\.(value_proj_weight|value_proj_bias)\.weight$",
     r"layers.\1.cross_attn.\2"),
    (_T + r"decoder\.layers\.(\d+)\.attentions\.1\.", r"layers.\1.cross_attn."),
    (_T + r"decoder\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.", r"layers.\1.ffn.0."),
    (_T + r"decoder\.layers\.(\d+)\.ffns\.0\.layers\.1\.", r"layers.\1.ffn.2."),
    (r"keypoint_head\.fc_coord_branches\.", "coord_branches."),
    (r"keypoint_head\.fc_coord_output_branches\.", "coord_output_branches."),
    (r"keypoint_head\.fc_sigma_branches\.(\d+)\.(\d+)\.linear\.", r"sigma_branches.\1.\2."),
    (r"keypoint_head\.fc_sigma_branches\.", "sigma_branches."),
]


def _mobilenet_key(key: str) -> str:
    """mmpose MobileNetV2 (ConvModule conv/bn) → torchvision `features` names."""
    if m := re.fullmatch(r"backbone\.(conv1|conv2)\.(conv|bn)\.(.+)", key):
        return f"backbone.features.{0 if m[1] == 'conv1' else 18}.{0 if m[2] == 'conv' else 1}.{m[3]}"
    if m := re.fullmatch(r"backbone\.layer(\d)\.(\d+)\.conv\.(\d)\.(conv|bn)\.(.+)", key):
        layer, block, j, part, rest = int(m[1]), int(m[2]), int(m[3]), m[4], m[5]
        last = 1 if layer == 1 else 2  # layer1 has no expansion conv
        index = _MOBILENET_STARTS[layer - 1] + block
        if j < last:
            return f"backbone.features.{index}.conv.{j}.{0 if part == 'conv' else 1}.{rest}"
        return f"backbone.features.{index}.conv.{j if part == 'conv' else j + 1}.{rest}"
    return key


def map_upstream_keys(state: dict[str, torch.Tensor], backbone: str) -> dict[str, torch.Tensor]:
    """Upstream mmpose `Poseur` state-dict names → `PoseurNet`'s. Keys that match no rule are
    kept (a checkpoint already in `PoseurNet` names loads as is); the RLE flows are dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(_TRAINING_ONLY):
            continue
        if key.startswith("backbone.") and backbone == "mobilenetv2":
            new = _mobilenet_key(key)
        elif m := re.match(_T + r"decoder\.layers\.(\d+)\.norms\.(\d+)\.", key):
            new = f"layers.{m[1]}.norm{int(m[2]) + 1}.{key[m.end():]}"
        else:
            new = rename_key(key, _RULES)
        out[new] = value
    return out


def arch_of_checkpoint(state: dict[str, torch.Tensor]) -> tuple[str, int]:
    """(backbone name, decoder layers) read from an upstream or `PoseurNet` state dict."""
    if any(k.startswith("backbone.layer4.") for k in state):
        backbone = "resnet50"
    elif any(k.startswith(("backbone.conv2.conv.", "backbone.features.")) for k in state):
        backbone = "mobilenetv2"
    else:
        backbone = ""
    layers = {int(m[1]) for k in state
              if (m := re.match(r"(?:keypoint_head\.fc_coord_branches|coord_branches)\.(\d+)\.", k))}
    return backbone, len(layers)


def box_to_center_scale(box: np.ndarray, aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """Upstream's `bbox_xywh2cs` (padding 1.25, pixel_std 200) of an x0, y0, x1, y1 box (w = x1 -
    x0, as a detector's COCO box): the centre, and the scale widened to the crop's aspect."""
    x, y, w, h = float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    if w > aspect * h:
        h = w * 1.0 / aspect
    elif w < aspect * h:
        w = h * aspect
    return center, np.array([w, h], dtype=np.float32) / PIXEL_STD * PADDING


def crop_person(image: torch.Tensor, center: np.ndarray, scale: np.ndarray,
                size: tuple[int, int]) -> torch.Tensor:
    """`cv2.warpAffine(img, get_affine_transform(center, scale, 0, size), size, INTER_LINEAR)`
    on a (3, H, W) float 0..255 image → (3, h, w), rounded like the uint8 original (bilinear
    with the black constant border; cv2's 1/32-pixel fixed point is not reproduced)."""
    w, h = size
    k = float(scale[0]) * PIXEL_STD / w  # source pixels per crop pixel (rotation 0)
    xs = (torch.arange(w, dtype=torch.float32, device=image.device) - w * 0.5) * k + float(center[0])
    ys = (torch.arange(h, dtype=torch.float32, device=image.device) - h * 0.5) * k + float(center[1])
    height, width = image.shape[1:]
    gx = (2 * xs + 1) / width - 1  # pixel centres, align_corners=False
    gy = (2 * ys + 1) / height - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
    out = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)[0]
    return out.round().clamp(0, 255)


def to_original(coords: np.ndarray, center: np.ndarray, scale: np.ndarray,
                size: tuple[int, int]) -> np.ndarray:
    """`keypoints_from_regression` + `transform_preds`: (K, 2) crop-normalised → original pixels."""
    preds = coords * np.asarray(size, dtype=np.float32)
    s = scale * PIXEL_STD
    return preds * (s / np.asarray(size, dtype=np.float32)) + center - s * 0.5


def flip_back(coords: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upstream's `fliplr_rle_regression` (center_x 0.5): swap left/right joints, x → 1 - x."""
    coords, scores = coords.copy(), scores.copy()
    for a, b in FLIP_PAIRS:
        coords[..., [a, b], :] = coords[..., [b, a], :]
        scores[..., [a, b]] = scores[..., [b, a]]
    coords[..., 0] = 1.0 - coords[..., 0]
    return coords, scores


@register
class Poseur(Teacher[PoseResult]):
    """Poseur top-down pose estimator. It has no person detector: an image without boxes is
    one person box covering the whole image (box_source "image")."""

    name = "poseur"
    role = "pose"

    def __init__(self, config: TeacherConfig) -> None:
        super().__init__(config)
        self.device = resolve_device(config)
        self.dtype = resolve_dtype(config, self.device)
        files: list[Path] = []
        state: dict[str, torch.Tensor] | None = None
        arch = ARCHS["tiny" if config.variant == "tiny" else "resnet50"]
        if config.variant == "pretrained":
            path = Path(config.checkpoint).expanduser()
            if not path.is_file():
                raise TeacherError(f"teachers.pose.checkpoint {config.checkpoint!r} is not a file; "
                                   "give a local upstream Poseur .pth/.safetensors path")
            files = [path]
            state = load_state_dict(path)
            backbone, layers = arch_of_checkpoint(state)
            if not backbone or not layers:
                raise TeacherError(f"{path} is not a Poseur checkpoint: no ResNet-50/MobileNetV2 "
                                   "backbone or decoder coordinate branches among its keys "
                                   f"(first keys: {', '.join(list(state)[:4])})")
            arch = replace(ARCHS[backbone], num_layers=layers)
        if config.input_size and config.variant != "tiny":
            if config.input_size not in INPUT_SIZES:
                raise TeacherError(f"teachers.pose.input_size = {config.input_size}: poseur takes "
                                   "256 (192×256 crops) or 384 (288×384), or 0 for 256")
            arch = replace(arch, input_size=INPUT_SIZES[config.input_size])
        self.arch = arch
        with seeded():
            self.model = PoseurNet(arch)
        if state is not None:
            load_strict(self.model, map_upstream_keys(state, arch.backbone), files[0],
                        f"Poseur ({arch.backbone})")
        self.model.to(device=self.device, dtype=self.dtype).eval()
        self._provenance = make_provenance(
            self.role, self.name, config, self.device, self.dtype,
            input_size={"width": arch.input_size[0], "height": arch.input_size[1],
                        "padding": PADDING}, files=files,
            extra={"backbone": arch.backbone, "decoder_layers": arch.num_layers,
                   "flip_test": FLIP_TEST, "person_score": "(1 + mean + max joint score) / 3"})

    @property
    def provenance(self) -> Provenance:
        return self._provenance

    def predict(self, images: list[np.ndarray], boxes: list[np.ndarray | None] | None = None,
                box_sources: list[list[str]] | None = None) -> list[PoseResult]:
        """One `PoseResult` per image: a person per given box (xyxy, original pixels), or one
        whole-image person where an image's boxes are None; an empty (0, 4) array → none."""
        check_images(images)
        if boxes is not None and len(boxes) != len(images):
            raise TeacherError(f"pose teacher got {len(boxes)} box arrays for {len(images)} images")
        jobs: list[tuple[int, np.ndarray, str]] = []  # (image, box, source)
        for i, img in enumerate(images):
            given = None if boxes is None else boxes[i]
            if given is None:
                h, w = img.shape[:2]
                jobs.append((i, np.array([0, 0, w, h], dtype=np.float32), "image"))
                continue
            arr = np.asarray(given, dtype=np.float32).reshape(-1, 4)
            sources = box_sources[i] if box_sources is not None else ["gt"] * len(arr)
            jobs.extend((i, b, s) for b, s in zip(arr, sources, strict=True))
        results = [PoseResult(persons=[]) for _ in images]
        step = max(1, self.config.batch_size)
        with torch.inference_mode():
            for start in range(0, len(jobs), step):
                chunk = jobs[start:start + step]
                for (i, box, source), person in zip(chunk, self._run(images, chunk), strict=True):
                    results[i].persons.append(replace(person, box=box.copy(), box_source=source))
        return results

    def _run(self, images: list[np.ndarray], jobs: list[tuple[int, np.ndarray, str]]
             ) -> list[PosePerson]:
        size = self.arch.input_size
        mean = torch.tensor(MEAN, device=self.device).view(3, 1, 1) * 255.0
        std = torch.tensor(STD, device=self.device).view(3, 1, 1) * 255.0
        tensors: dict[int, torch.Tensor] = {}
        crops, frames = [], []
        for i, box, _ in jobs:
            if i not in tensors:
                tensors[i] = torch.from_numpy(images[i]).to(self.device).permute(2, 0, 1).float()
            center, scale = box_to_center_scale(box, size[0] / size[1])
            crops.append((crop_person(tensors[i], center, scale, size) - mean) / std)
            frames.append((center, scale))
        batch = torch.stack(crops)
        if FLIP_TEST:
            batch = torch.cat([batch, batch.flip(3)])
        out = self.model(batch.to(self.dtype))
        coords = out.keypoints.float().cpu().numpy()
        scores = out.scores.float().cpu().numpy()
        if FLIP_TEST:
            n = len(jobs)
            flipped, flipped_scores = flip_back(coords[n:], scores[n:])
            coords = (coords[:n] + flipped) * 0.5
            scores = (scores[:n] + flipped_scores) * 0.5
        persons = []
        for (center, scale), xy, sc in zip(frames, coords, scores, strict=True):
            kpts = np.concatenate([to_original(xy, center, scale, size), sc[:, None]], axis=1)
            person = float((1.0 + sc.mean() + sc.max()) / 3.0)
            persons.append(PosePerson(box=np.zeros(4, np.float32), keypoints=kpts.astype(np.float32),
                                      score=person, box_source=""))
        return persons
