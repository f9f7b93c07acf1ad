"""Depth teacher: Depth Anything V2 through transformers, with the original repo's resize rule.

DESIGN §3: relative inverse depth (larger = nearer) from `DepthAnythingForDepthEstimation`.
The preprocessing follows the ORIGINAL `DepthAnythingV2.image2tensor`, not transformers' image
processor: the short side is scaled to at least `input_size` (518) keeping the aspect ratio,
each side is rounded to a multiple of 14, the resize is bicubic, then ImageNet normalisation.
The prediction is upsampled back bilinearly (align_corners=True) as `infer_image` does.

Position embeddings follow the ORIGINAL too (`DinoVisionTransformer.interpolate_pos_encoding`
in depth_anything_v2/dinov2.py), not transformers' `Dinov2Embeddings`: the 37x37 grid is
resized bicubically (no antialias, in float32) by `scale_factor = ((rows + 0.1) / 37,
(cols + 0.1) / 37)` for a rows x cols patch grid rather than to `size = (rows, cols)`. The two sample different points (4-9 % relative L2 apart on the
37x55 grid of a 518x770 input), and the released weights were trained and evaluated with the
former. Every variant's model gets it (`use_upstream_pos_encoding`); the native square 37x37
grid uses the stored embeddings unchanged in both.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

from distill.config import TeacherConfig
from teachers import runtime
from teachers.base import DepthResult, Provenance, Teacher, TeacherError, check_images
from teachers.registry import register

__all__ = [
    "DEFAULT_INPUT_SIZE",
    "PATCH_SIZE",
    "POS_EMBED_OFFSET",
    "DepthAnythingV2Teacher",
    "UpstreamPosEmbeddings",
    "dav2_input_size",
    "interpolate_pos_encoding",
    "large_config",
    "tiny_config",
    "use_upstream_pos_encoding",
]

logger = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = 518  # the original `infer_image(raw_image, input_size=518)`
PATCH_SIZE = 14  # DINOv2 ViT patch; network inputs are multiples of it
# The original `DINOv2(...)` passes interpolate_offset=0.1 ("a small number to avoid floating
# point error", facebookresearch/dino#8) and interpolate_antialias=False.
POS_EMBED_OFFSET = 0.1
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


def interpolate_pos_encoding(position_embeddings: torch.Tensor, num_patches: int, height: int,
                             width: int, patch_size: int = PATCH_SIZE,
                             offset: float = POS_EMBED_OFFSET) -> torch.Tensor:
    """(1, 1 + N, C) stored position embeddings (CLS first, a square sqrt(N) grid) -> those for a
    `height` x `width` pixel input with `num_patches` patches, by the original
    `DinoVisionTransformer.interpolate_pos_encoding`. There `B, nc, w, h = x.shape`, so its `w`
    is the pixel HEIGHT and `sx` the height factor: `scale_factor=(sx, sy)` does go (rows,
    columns) and a non-square grid comes out the right way round; we name them as they are.
    The bicubic resize runs in float32 with the factors, not the target size, so the sampling
    points are those of a (grid + offset) grid; the output is cast to the embeddings' dtype."""
    n_stored = position_embeddings.shape[1] - 1
    if num_patches == n_stored and height == width:  # the original's early return, as is
        return position_embeddings
    grid = math.sqrt(n_stored)
    side = int(grid)
    pos = position_embeddings.float()
    cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
    dim = pos.shape[-1]
    rows, cols = height // patch_size, width // patch_size
    scale = ((rows + offset) / grid, (cols + offset) / grid)
    patch_pos = F.interpolate(patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2),
                              scale_factor=scale, mode="bicubic", antialias=False)
    if tuple(patch_pos.shape[-2:]) != (rows, cols):  # the original asserts the same
        raise ValueError(f"position embeddings resized to {tuple(patch_pos.shape[-2:])}, "
                         f"not the {rows}x{cols} patch grid")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat((cls_pos, patch_pos), dim=1).to(position_embeddings.dtype)


class UpstreamPosEmbeddings(Dinov2Embeddings):
    """transformers' `Dinov2Embeddings` with the original DAv2 position-embedding interpolation
    (`interpolate_pos_encoding` above); parameters, state-dict keys and forward are unchanged."""

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int,
                                 width: int) -> torch.Tensor:
        patch = self.patch_embeddings.patch_size  # (h, w); DINOv2's patches are square
        return interpolate_pos_encoding(self.position_embeddings, embeddings.shape[1] - 1,
                                        height, width, int(patch[0]))


def use_upstream_pos_encoding(model: DepthAnythingForDepthEstimation) -> None:
    """Give `model`'s DINOv2 backbone the original position-embedding rule, in place (the
    module's class becomes `UpstreamPosEmbeddings`; no weights are touched or re-initialised)."""
    embeddings = model.backbone.embeddings
    if not isinstance(embeddings, Dinov2Embeddings):
        raise TeacherError(f"expected a DINOv2 backbone, got {type(embeddings).__name__}")
    embeddings.__class__ = UpstreamPosEmbeddings


def tiny_config() -> DepthAnythingConfig:
    """A small DAv2 for CPU tests and the demo (DESIGN §3 `tiny`): a 4-layer, 32-wide DINOv2
    with patch 14 and a narrow DPT neck; same code path as the real model. The head's hidden
    width is 32 as in every original DPTHead (`head_features_2 = 32`), so these weights also
    load into the original code built at these sizes (the parity check does)."""
    backbone = Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
        image_size=DEFAULT_INPUT_SIZE, patch_size=PATCH_SIZE,
        # `out_indices` is consumed by Dinov2Config.__post_init__, not a dataclass field.
        out_indices=[1, 2, 3, 4],  # type: ignore[call-arg]
        apply_layernorm=True, reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone, patch_size=PATCH_SIZE, reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=32,
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
    """The network for `config.variant`: real weights, or a seeded random init (DESIGN §3),
    with the original position-embedding interpolation."""
    if config.variant == "pretrained":
        model = _load_pretrained(config)
    elif config.variant in ("tiny", "random"):
        arch = tiny_config() if config.variant == "tiny" else large_config()
        with runtime.seeded():
            model = DepthAnythingForDepthEstimation(arch)
    else:
        raise TeacherError(f"unknown variant {config.variant!r}; choose pretrained, tiny or random")
    use_upstream_pos_encoding(model)
    return model


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
                "upsample": "bilinear align_corners",
                "pos_embed": f"bicubic scale_factor (patches + {POS_EMBED_OFFSET}) / sqrt(N), no antialias "
                             "(original dinov2.py)"}
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
