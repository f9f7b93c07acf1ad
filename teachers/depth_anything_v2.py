"""Depth teacher: Depth Anything V2 through transformers, with the original repo's resize rule.

DESIGN §3: relative inverse depth (larger = nearer) from `DepthAnythingForDepthEstimation`.
The preprocessing follows the ORIGINAL `DepthAnythingV2.image2tensor`, not transformers' image
processor: the short side is scaled to at least `input_size` (518) keeping the aspect ratio,
each side is rounded to a multiple of 14, the resize is bicubic, then ImageNet normalisation.
The prediction is upsampled back bilinearly (align_corners=True) as `infer_image` does.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

from distill.config import TeacherConfig
from teachers import runtime
from teachers.base import DepthResult, Provenance, Teacher, TeacherError, check_images
from teachers.registry import register

__all__ = [
    "DEFAULT_INPUT_SIZE",
    "PATCH_SIZE",
    "DepthAnythingV2Teacher",
    "dav2_input_size",
    "large_config",
    "tiny_config",
]

logger = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = 518  # the original `infer_image(raw_image, input_size=518)`
PATCH_SIZE = 14  # DINOv2 ViT patch; network inputs are multiples of it
_MEAN = (0.485, 0.456, 0.406)  # ImageNet, as the original `NormalizeImage`
_STD = (0.229, 0.224, 0.225)


def _constrain_to_multiple_of(x: float, multiple: int, min_val: int) -> int:
    """The original `Resize.constrain_to_multiple_of` for 'lower_bound': nearest multiple
    (round half to even, like np.round), or the next one up when that falls below `min_val`."""
    y = round(x / multiple) * multiple
    if y < min_val:
        y = int(np.ceil(x / multiple)) * multiple
    return int(y)


def dav2_input_size(
    height: int, width: int, target: int = DEFAULT_INPUT_SIZE, multiple: int = PATCH_SIZE
) -> tuple[int, int]:
    """Network input (h, w) for an image of (height, width): DAv2's `Resize(keep_aspect_ratio=
    True, resize_method='lower_bound', ensure_multiple_of=14)`. The larger of the two scales
    wins, so the short side becomes >= `target`; 427x640 (HxW) -> (518, 770)."""
    if height < 1 or width < 1 or target < 1 or multiple < 1:
        raise ValueError(f"sizes must be positive, got {height}x{width}, target {target}, "
                         f"multiple {multiple}")
    scale = max(target / height, target / width)
    return (_constrain_to_multiple_of(scale * height, multiple, target),
            _constrain_to_multiple_of(scale * width, multiple, target))


def tiny_config() -> DepthAnythingConfig:
    """A small DAv2 for CPU tests and the demo (DESIGN §3 `tiny`): a 4-layer, 32-wide DINOv2
    with patch 14 and a narrow DPT neck; same code path as the real model."""
    backbone = Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
        image_size=DEFAULT_INPUT_SIZE, patch_size=PATCH_SIZE,
        # `out_indices` is consumed by Dinov2Config.__post_init__, not a dataclass field.
        out_indices=[1, 2, 3, 4],  # type: ignore[call-arg]
        apply_layernorm=True, reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone, patch_size=PATCH_SIZE, reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
        depth_estimation_type="relative",
        # With the default std 0.02 the narrow neck shrinks the output to ~1e-7; 0.1 keeps
        # the random depth map at a readable scale for the demo and the tests.
        initializer_range=0.1,
    )


def large_config() -> DepthAnythingConfig:
    """The architecture of depth-anything/Depth-Anything-V2-Large-hf (ViT-L/14, 335M), as
    transformers' conversion script builds it: DINOv2-L, features from blocks 4/11/17/23 of
    the original (`intermediate_layer_idx['vitl']`, HF stages 5/12/18/24), DPT features 256,
    out_channels [256, 512, 1024, 1024]."""
    backbone = Dinov2Config(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4,
        image_size=DEFAULT_INPUT_SIZE, patch_size=PATCH_SIZE, layerscale_value=1.0,
        out_indices=[5, 12, 18, 24],  # type: ignore[call-arg]
        apply_layernorm=True, reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone, patch_size=PATCH_SIZE, reassemble_hidden_size=1024,
        neck_hidden_sizes=[256, 512, 1024, 1024], fusion_hidden_size=256, head_hidden_size=32,
        depth_estimation_type="relative",
    )


def _load_pretrained(config: TeacherConfig) -> DepthAnythingForDepthEstimation:
    example, holds = "depth-anything/Depth-Anything-V2-Large-hf", "config.json and model.safetensors"
    source = runtime.pretrained_source(config, "Depth Anything V2", example, holds)
    try:
        model = DepthAnythingForDepthEstimation.from_pretrained(source, **runtime.hub_kwargs(config))
    except (OSError, ValueError) as exc:  # not cached / offline / not a DAv2 folder
        raise runtime.missing_weights("Depth Anything V2", config.checkpoint,
                                      f"{type(exc).__name__}: {exc}", example, holds) from exc
    if model.config.depth_estimation_type != "relative":
        # A metric head predicts depth in metres (larger = farther), not relative inverse depth.
        raise TeacherError(f"checkpoint {config.checkpoint!r} is a "
                           f"{model.config.depth_estimation_type} depth model; the depth teacher "
                           "needs a relative one")
    return model


def _build_model(config: TeacherConfig) -> DepthAnythingForDepthEstimation:
    """The network for `config.variant`: real weights, or a seeded random init (DESIGN §3)."""
    if config.variant == "pretrained":
        return _load_pretrained(config)
    if config.variant not in ("tiny", "random"):
        raise TeacherError(f"unknown variant {config.variant!r}; choose pretrained, tiny or random")
    arch = tiny_config() if config.variant == "tiny" else large_config()
    with runtime.seeded():
        return DepthAnythingForDepthEstimation(arch)


@register
class DepthAnythingV2Teacher(Teacher[DepthResult]):
    """Depth Anything V2 (relative) → float32 (H, W) inverse depth at each image's own size."""

    name = "depth-anything-v2"
    role = "depth"

    def __init__(self, config: TeacherConfig) -> None:
        super().__init__(config)
        if config.batch_size < 1:
            raise TeacherError(f"batch_size must be >= 1, got {config.batch_size}")
        if config.input_size < 0:
            raise TeacherError(f"input_size must be >= 0 (0 = {DEFAULT_INPUT_SIZE}), "
                               f"got {config.input_size}")
        self.input_size = config.input_size or DEFAULT_INPUT_SIZE
        self.device = runtime.resolve_device(config)
        self.dtype = runtime.resolve_dtype(config, self.device)
        model: torch.nn.Module = _build_model(config)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        files = runtime.weight_files(config.checkpoint, config.revision) \
            if config.variant == "pretrained" else []
        rule = {"short_side_min": self.input_size, "multiple_of": PATCH_SIZE,
                "resize": "bicubic lower_bound", "normalize": "imagenet",
                "upsample": "bilinear align_corners"}
        self._provenance = runtime.make_provenance(self.role, self.name, config, self.device,
                                           self.dtype, input_size=rule, files=files, hub=True)
        logger.info("depth-anything-v2 %s: %.1fM parameters on %s (%s), short side >= %d",
                    config.variant, sum(p.numel() for p in self.model.parameters()) / 1e6,
                    self.device, self._provenance.dtype, self.input_size)

    @property
    def provenance(self) -> Provenance:
        return self._provenance

    def predict(self, images: list[np.ndarray]) -> list[DepthResult]:
        """RGB uint8 (H_i, W_i, 3) images → one float32 (H_i, W_i) relative inverse depth each.
        Images that share a network input size run together, `batch_size` at a time."""
        check_images(images)
        sizes = [dav2_input_size(img.shape[0], img.shape[1], target=self.input_size)
                 for img in images]
        results: dict[int, DepthResult] = {}
        with torch.inference_mode():
            for idx in runtime.batches_by_size(sizes, self.config.batch_size):
                size = sizes[idx[0]]
                logger.debug("depth-anything-v2: %d image(s) at %dx%d", len(idx), *size)
                batch = torch.stack([self._preprocess(images[i], size) for i in idx])
                out = self.model(pixel_values=batch.to(self.dtype)).predicted_depth.float()
                for i, depth in zip(idx, out, strict=True):
                    results[i] = DepthResult(depth=self._postprocess(depth, images[i].shape[:2]))
        return [results[i] for i in range(len(images))]

    def _preprocess(self, image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """uint8 (H, W, 3) → normalised float32 (3, h, w) on the device, as `image2tensor`:
        [0, 1] RGB, bicubic resize (cv2 INTER_CUBIC ≈ torch bicubic, a = -0.75, no antialias),
        then ImageNet mean/std. Kept in float32 whatever the model dtype."""
        pixels = torch.from_numpy(np.require(image, requirements="W"))  # read-only → copy
        x = pixels.to(self.device).permute(2, 0, 1)[None].float() / 255.0
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=False)
        mean = torch.tensor(_MEAN, device=self.device).view(3, 1, 1)
        std = torch.tensor(_STD, device=self.device).view(3, 1, 1)
        return (x[0] - mean) / std

    @staticmethod
    def _postprocess(depth: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
        """Network-size (h, w) depth → float32 (H, W) numpy, bilinear with align_corners=True
        as the original `infer_image`."""
        up = F.interpolate(depth[None, None], size=(int(shape[0]), int(shape[1])),
                           mode="bilinear", align_corners=True)
        out: np.ndarray = up[0, 0].cpu().numpy().astype(np.float32, copy=False)
        return out
