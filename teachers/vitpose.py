"""Pose teacher: ViTPose through transformers' `VitPoseForPoseEstimation` (issue 28).

Top-down, as ViTPose is evaluated: each person box is cropped by transformers' own image
processor (`VitPoseImageProcessor`: the box is padded by 1.25 and widened to the network's
aspect ratio, then an unbiased affine warp to 256x192), the network predicts 17 COCO heatmaps
per crop, and the processor's `post_process_pose_estimation` takes each heatmap's argmax,
refines it with DARK (Gaussian-modulated Taylor step) and maps it back to original pixels. A
joint's score is its heatmap's peak (clipped to [0, 1]); the person's score is the mean of its
17 joint scores.

ViTPose has no person detector: an image given no boxes is taken as one box (box_source
"image"). Pretrained weights come from the hub (`usyd-community/vitpose-base-simple`, Apache-2.0),
never with remote code; `tiny` is a 2-layer, 32-wide ViTPose at 64x48 for CPU tests.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from transformers import (
    VitPoseBackboneConfig,
    VitPoseConfig,
    VitPoseForPoseEstimation,
    VitPoseImageProcessor,
)
from transformers.models.vitpose.modeling_vitpose import VitPoseEstimatorOutput

from distill.config import TeacherConfig
from teachers import runtime
from teachers.base import (
    PosePerson,
    PoseResult,
    Provenance,
    Teacher,
    TeacherError,
    check_images,
)
from teachers.registry import register

__all__ = ["NUM_KEYPOINTS", "VitPoseTeacher", "base_config", "check_boxes", "tiny_config"]

logger = logging.getLogger(__name__)

NUM_KEYPOINTS = 17  # COCO's joints, in COCO order (the checkpoint's id2label)
_EXAMPLE = "usyd-community/vitpose-base-simple"
_HOLDS = "config.json, model.safetensors and preprocessor_config.json"


def tiny_config() -> VitPoseConfig:
    """A small ViTPose for CPU tests and the demo: 2 layers, 32 wide, a 64x48 input (4x3
    patches of 16), the simple decoder (4x upsampling: 16x12 heatmaps). With transformers'
    initialisation the random heatmaps peak at 0.14-0.39 (10th-90th percentile), so about a
    third of the joints pass the default score threshold (0.3): the tests' targets are neither
    empty nor full."""
    backbone = VitPoseBackboneConfig(
        image_size=(64, 48), patch_size=(16, 16), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, mlp_ratio=2,
        out_indices=[2],  # type: ignore[call-arg]
    )
    return VitPoseConfig(backbone_config=backbone, use_simple_decoder=True,
                         num_labels=NUM_KEYPOINTS)  # type: ignore[call-arg]


def base_config() -> VitPoseConfig:
    """The architecture of usyd-community/vitpose-base-simple (ViT-B/16 at 256x192, simple
    decoder), for `variant = "random"`."""
    backbone = VitPoseBackboneConfig(out_indices=[12])  # type: ignore[call-arg]
    return VitPoseConfig(backbone_config=backbone, use_simple_decoder=True,
                         num_labels=NUM_KEYPOINTS)  # type: ignore[call-arg]


def _build(config: TeacherConfig) -> tuple[VitPoseForPoseEstimation, VitPoseImageProcessor]:
    if config.variant == "pretrained":
        source = runtime.pretrained_source(config, "ViTPose", _EXAMPLE, _HOLDS)
        kwargs = runtime.hub_kwargs(config)
        try:
            model = VitPoseForPoseEstimation.from_pretrained(source, **kwargs)
            processor = VitPoseImageProcessor.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as exc:  # not cached / offline / not a ViTPose folder
            raise runtime.missing_weights("ViTPose", config.checkpoint,
                                          f"{type(exc).__name__}: {exc}", _EXAMPLE,
                                          _HOLDS) from exc
        if model.config.num_labels != NUM_KEYPOINTS:
            raise TeacherError(f"checkpoint {config.checkpoint!r} predicts "
                               f"{model.config.num_labels} keypoints; the pose teacher needs "
                               f"COCO's {NUM_KEYPOINTS}")
        return model, processor
    if config.variant not in ("tiny", "random"):
        raise TeacherError(f"unknown variant {config.variant!r}; choose pretrained, tiny or random")
    arch = tiny_config() if config.variant == "tiny" else base_config()
    with runtime.seeded():
        model = VitPoseForPoseEstimation(arch)
    height, width = getattr(arch.backbone_config, "image_size")  # noqa: B009 (a union type)
    return model, VitPoseImageProcessor(size={"height": height, "width": width})


def check_boxes(images: Sequence[np.ndarray], boxes: Sequence[np.ndarray | None] | None,
                box_sources: Sequence[Sequence[str]] | None) -> list[tuple[np.ndarray, list[str]]]:
    """Each image's float32 (N, 4) xyxy boxes and their sources, as the pose contract says:
    no boxes (None, or a None entry) → the whole image, source "image"; given boxes → their
    `box_sources` entry, "gt" by default. Raises `TeacherError` on a malformed entry."""
    if boxes is not None and len(boxes) != len(images):
        raise TeacherError(f"{len(boxes)} box lists for {len(images)} images")
    out = []
    for i, image in enumerate(images):
        given = None if boxes is None else boxes[i]
        if given is None:
            h, w = image.shape[:2]
            out.append((np.array([[0, 0, w, h]], np.float32), ["image"]))
            continue
        array = np.asarray(given, np.float32)
        if array.size == 0:
            array = np.zeros((0, 4), np.float32)
        elif array.ndim != 2 or array.shape[1] != 4:
            raise TeacherError(f"boxes of image {i} must be an (N, 4) array, got "
                               f"{array.shape}")
        sources = list(box_sources[i]) if box_sources is not None else ["gt"] * len(array)
        if len(sources) != len(array):
            raise TeacherError(f"image {i}: {len(array)} boxes but {len(sources)} box sources")
        out.append((array, sources))
    return out


@register
class VitPoseTeacher(Teacher[PoseResult]):
    """ViTPose → 17 COCO keypoints (x, y, score) per person box, in original pixels."""

    name = "vitpose"
    role = "pose"

    def __init__(self, config: TeacherConfig) -> None:
        super().__init__(config)
        if config.input_size:
            raise TeacherError("teachers.pose.input_size must be 0 for vitpose: its crop size "
                               "is the checkpoint's (256x192 for the released models)")
        self.device = runtime.resolve_device(config)
        self.dtype = runtime.resolve_dtype(config, self.device)
        model: torch.nn.Module
        model, self.processor = _build(config)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()  # type: ignore[call-arg]
        files = runtime.weight_files(config.checkpoint, config.revision) \
            if config.variant == "pretrained" else []
        size = self.processor.size
        rule = {"crop": [int(size["height"]), int(size["width"])], "box_padding": 1.25,
                "affine": "unbiased (transformers VitPoseImageProcessor)",
                "keypoints": "heatmap argmax + DARK (kernel 11)", "normalize": "imagenet"}
        self._provenance = runtime.make_provenance(self.role, self.name, config, self.device,
                                                   self.dtype, input_size=rule, files=files,
                                                   hub=True)
        logger.info("vitpose %s: %.1fM parameters on %s (%s), crops %dx%d", config.variant,
                    sum(p.numel() for p in self.model.parameters()) / 1e6, self.device,
                    self._provenance.dtype, size["height"], size["width"])

    @property
    def provenance(self) -> Provenance:
        return self._provenance

    def predict(self, images: list[np.ndarray], boxes: Sequence[np.ndarray | None] | None = None,
                box_sources: Sequence[Sequence[str]] | None = None) -> list[PoseResult]:
        """RGB uint8 images and, per image, None or float32 (N, 4) xyxy person boxes → one
        `PoseResult` per image (one person per box; none for an empty box array)."""
        check_images(images)
        per_image = check_boxes(images, boxes, box_sources)
        xywh = [[self._xywh(b) for b in image_boxes] for image_boxes, _ in per_image]
        heatmaps = [self._heatmaps(image, image_boxes)
                    for image, image_boxes in zip(images, xywh, strict=True) if image_boxes]
        if not heatmaps:
            return [PoseResult(persons=[]) for _ in images]
        output = VitPoseEstimatorOutput(heatmaps=torch.cat(heatmaps))
        kept = [b for b in xywh if b]  # the processor pairs crops with boxes image by image
        poses = iter(self.processor.post_process_pose_estimation(output, boxes=kept))
        results = []
        for (image_boxes, sources), box_list in zip(per_image, xywh, strict=True):
            found = next(poses) if box_list else []
            persons = []
            for box, source, pose in zip(image_boxes, sources, found, strict=True):
                keypoints = np.zeros((NUM_KEYPOINTS, 3), np.float32)
                keypoints[:, :2] = pose["keypoints"].numpy()
                keypoints[:, 2] = np.clip(pose["scores"].numpy(), 0.0, 1.0)
                persons.append(PosePerson(box=box.astype(np.float32), keypoints=keypoints,
                                          score=float(keypoints[:, 2].mean()),
                                          box_source=source))
            results.append(PoseResult(persons=persons))
        return results

    @staticmethod
    def _xywh(box: np.ndarray) -> list[float]:
        x0, y0, x1, y1 = (float(v) for v in box)
        return [x0, y0, max(x1 - x0, 1.0), max(y1 - y0, 1.0)]

    def _heatmaps(self, image: np.ndarray, boxes: list[list[float]]) -> torch.Tensor:
        """float32 (N, 17, h, w) heatmaps of one image's N boxes, `batch_size` crops at a time.
        An image's crops never share a batch with another image's, so its labels do not depend
        on its neighbours in a block (a resumed run reproduces them)."""
        crops = self.processor.preprocess(images=[image], boxes=[boxes],
                                          return_tensors="pt")["pixel_values"]
        out = []
        step = max(1, self.config.batch_size)
        with torch.inference_mode():
            for start in range(0, len(crops), step):
                batch = crops[start:start + step].to(self.device, self.dtype)
                out.append(self.model(pixel_values=batch).heatmaps.float().cpu())
        return torch.cat(out)
