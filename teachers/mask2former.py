"""Panoptic teacher "mask2former": transformers' `Mask2FormerForUniversalSegmentation` labelling the
133 COCO-panoptic categories (DESIGN.md §3), the installable alternative to Detectron2.

Pre-processing is the checkpoint's own `Mask2FormerImageProcessor` (the hub COCO-panoptic
processors resize to a fixed 384 × 384); `input_size = N` switches to the original Mask2Former test
resize instead: shortest edge N, longest edge ≤ N · 1333 / 800. Each image is padded to a multiple
of 32 on its own, never to its batch's largest image, so a label never depends on its batch.

Post-processing follows the original `MaskFormer.panoptic_inference` (facebookresearch/Mask2Former)
rather than transformers' `post_process_panoptic_segmentation`, which rescales padded mask logits
without cropping the padding away and compares a query's surviving area with its score-weighted
mask instead of its own. Mask logits are cropped to the image's valid region and resized to its
ORIGINAL size before the merge, so segment areas are original-pixel counts.

Label ids are indices into `config.id2label`, whose order for COCO-panoptic checkpoints is the 133
categories sorted by id (80 things, then 53 stuff): index i ↦ the i-th category of the group table,
BY ID, never by name (DESIGN.md §3).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distill.config import TeacherConfig
from distill.labels.groups import VOID, Category, GroupTable
from distill.shards import Segment
from teachers import runtime
from teachers.base import PanopticResult, Provenance, Teacher, TeacherError, check_images
from teachers.registry import register

__all__ = [
    "HUB_PROCESSOR_SIZE",
    "NUM_CATEGORIES",
    "OBJECT_MASK_THRESHOLD",
    "OVERLAP_THRESHOLD",
    "Mask2FormerTeacher",
    "coco_panoptic_categories",
    "merge_segments",
    "resize_mask_logits",
    "select_queries",
    "swin_large_coco_panoptic_config",
    "tiny_config",
    "to_panoptic_result",
]

logger = logging.getLogger(__name__)

NUM_CATEGORIES = 133
# Mask2Former's COCO-panoptic test settings (configs/coco/panoptic-segmentation/*.yaml:
# TEST.OBJECT_MASK_THRESHOLD, TEST.OVERLAP_THRESHOLD).
OBJECT_MASK_THRESHOLD = 0.8
OVERLAP_THRESHOLD = 0.8
SIZE_DIVISIBILITY = 32
# Detectron2's test resize: shortest edge 800, longest edge at most 1333.
_LONGEST_PER_SHORTEST = 1333 / 800
# What the hub's facebook/mask2former-swin-* COCO processors do (transformers' integration test
# gets 384 × 384 pixel values for a 480 × 640 COCO image). Used by the random variant; pretrained
# checkpoints bring their own processor.
HUB_PROCESSOR_SIZE = {"height": 384, "width": 384}
TINY_INPUT_SIZE = 64
# Random init gives near-uniform class scores (≈ 1/134) that never pass the 0.8 object threshold;
# the tiny and random variants re-draw the class head so that class logits have this spread and
# a few queries per image survive, exercising post-processing as a trained model does.
_RANDOM_CLASS_LOGIT_STD = 6.0


def coco_panoptic_categories() -> list[Category]:
    """The 133 COCO-panoptic categories sorted by id: contiguous label index i ↦ element i."""
    return sorted(GroupTable.load().categories, key=lambda c: c.id)


def _id2label() -> dict[int, str]:
    return {i: c.name for i, c in enumerate(coco_panoptic_categories())}


def _mask2former_config(backbone: dict[str, Any], **kwargs: Any) -> Any:
    from transformers import Mask2FormerConfig, SwinConfig

    stages: dict[str, Any] = {"out_features": ["stage1", "stage2", "stage3", "stage4"]}
    id2label = _id2label()
    return Mask2FormerConfig(
        backbone_config=SwinConfig(**backbone, **stages),
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
        **kwargs,
    )


def swin_large_coco_panoptic_config() -> Any:
    """The architecture of facebook/mask2former-swin-large-coco-panoptic (Mask2Former's
    maskformer2_swin_large_IN21k_384_bs16_100ep.yaml): Swin-L/12 at 384, 200 queries, 133 labels;
    the pixel and transformer decoders keep Mask2FormerConfig's defaults, which are that config's."""
    swin_large = {
        "image_size": 384,
        "embed_dim": 192,
        "depths": [2, 2, 18, 2],
        "num_heads": [6, 12, 24, 48],
        "window_size": 12,
        "drop_path_rate": 0.3,
    }
    return _mask2former_config(swin_large, num_queries=200)


def tiny_config() -> Any:
    """A ~0.4M-parameter Mask2Former with the same label space, for tests and the demo."""
    swin_tiny = {
        "image_size": TINY_INPUT_SIZE,
        "embed_dim": 16,
        "depths": [1, 1, 1, 1],
        "num_heads": [1, 2, 2, 4],
        "window_size": 4,
        "drop_path_rate": 0.0,
    }
    return _mask2former_config(
        swin_tiny,
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=64,
        encoder_layers=1,
        decoder_layers=3,
        num_attention_heads=2,
        dim_feedforward=64,
        num_queries=16,
    )


def _redraw_class_head(model: Any) -> None:
    """Re-draw the class head of a random-initialised model (see _RANDOM_CLASS_LOGIT_STD)."""
    head = model.class_predictor
    torch.nn.init.normal_(head.weight, std=_RANDOM_CLASS_LOGIT_STD / math.sqrt(head.in_features))
    torch.nn.init.zeros_(head.bias)


def _check_labels(model_config: Any, categories: Sequence[Category]) -> None:
    """The checkpoint must predict the 133 COCO-panoptic categories; names are only compared to
    warn about a suspicious order, the mapping itself is by index."""
    id2label = {int(k): str(v) for k, v in (model_config.id2label or {}).items()}
    if len(id2label) != NUM_CATEGORIES or sorted(id2label) != list(range(NUM_CATEGORIES)):
        raise TeacherError(
            f"a mask2former panoptic teacher needs a checkpoint trained on the {NUM_CATEGORIES} "
            f"COCO-panoptic categories, but this one has {len(id2label)} labels; use a "
            "facebook/mask2former-swin-*-coco-panoptic checkpoint"
        )
    differ = [(i, id2label[i], c.name) for i, c in enumerate(categories) if id2label[i] != c.name]
    if differ:
        logger.warning(
            "%d of the checkpoint's label names differ from the COCO-panoptic names at the same "
            "index (first: %s); labels are still mapped by index", len(differ), differ[:3]
        )


_EXAMPLE = "facebook/mask2former-swin-large-coco-panoptic"
_HOLDS = "its config.json, weights and preprocessor_config.json"


def _load_error(config: TeacherConfig, exc: Exception) -> TeacherError:
    return runtime.missing_weights("Mask2Former", config.checkpoint,
                                   f"{type(exc).__name__}: {exc}", _EXAMPLE, _HOLDS)


def _build_processor(config: TeacherConfig) -> Any:
    """The checkpoint's processor, or one made in code; `input_size` > 0 switches it to the
    original shortest-edge resize (padding to a multiple of 32 happens in `predict`)."""
    from transformers import Mask2FormerImageProcessor

    size: dict[str, int] | None = None
    if config.input_size > 0 or config.variant == "tiny":
        shortest = config.input_size if config.input_size > 0 else TINY_INPUT_SIZE
        size = {"shortest_edge": shortest,
                "longest_edge": round(shortest * _LONGEST_PER_SHORTEST)}
    overrides: dict[str, Any] = {} if size is None else {"size": size, "size_divisor": 0}
    if config.variant == "pretrained":
        try:
            source = runtime.pretrained_source(config, "Mask2Former", _EXAMPLE, _HOLDS)
            return Mask2FormerImageProcessor.from_pretrained(
                source, **overrides, **runtime.hub_kwargs(config)
            )
        except OSError as exc:
            raise _load_error(config, exc) from exc
    defaults: dict[str, Any] = {"size": HUB_PROCESSOR_SIZE, "size_divisor": SIZE_DIVISIBILITY}
    return Mask2FormerImageProcessor(
        **{**defaults, **overrides}, ignore_index=VOID, num_labels=NUM_CATEGORIES
    )


def _build_model(config: TeacherConfig) -> Any:
    from transformers import Mask2FormerForUniversalSegmentation

    if config.variant == "pretrained":
        try:
            source = runtime.pretrained_source(config, "Mask2Former", _EXAMPLE, _HOLDS)
            return Mask2FormerForUniversalSegmentation.from_pretrained(
                source, **runtime.hub_kwargs(config)
            )
        except OSError as exc:
            raise _load_error(config, exc) from exc
    model_config = tiny_config() if config.variant == "tiny" else swin_large_coco_panoptic_config()
    with runtime.seeded():
        model = Mask2FormerForUniversalSegmentation(model_config)
        _redraw_class_head(model)
    return model


def select_queries(
    class_logits: torch.Tensor, threshold: float = OBJECT_MASK_THRESHOLD
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q, C + 1) class logits (last = no object) → (kept query indices, their scores, their label
    indices): queries whose best class is an object with probability above `threshold`."""
    scores, labels = class_logits.float().softmax(-1).max(-1)
    keep = labels.ne(class_logits.shape[-1] - 1) & (scores > threshold)
    index = keep.nonzero().flatten()
    return index, scores[index], labels[index]


def resize_mask_logits(
    mask_logits: torch.Tensor,
    padded_size: tuple[int, int],
    valid_size: tuple[int, int],
    output_size: tuple[int, int],
) -> torch.Tensor:
    """(K, h, w) mask logits over the padded network input → (K, H, W) at the original size:
    upsample to the padded input, crop the image's valid (unpadded) region, resize to the output
    (detectron2's `sem_seg_postprocess`, as Mask2Former does)."""
    if mask_logits.shape[0] == 0:
        return mask_logits.new_zeros((0, *output_size))
    x = F.interpolate(mask_logits[None].float(), size=padded_size, mode="bilinear",
                      align_corners=False)
    x = x[:, :, : valid_size[0], : valid_size[1]]
    return F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)[0]


def merge_segments(
    scores: torch.Tensor,
    labels: torch.Tensor,
    mask_probs: torch.Tensor,
    is_thing: Sequence[bool],
    overlap_threshold: float = OVERLAP_THRESHOLD,
) -> tuple[torch.Tensor, list[tuple[int, float]]]:
    """Mask2Former's panoptic merge of K kept queries (scores, label indices, (K, H, W) mask
    probabilities): a pixel goes to the query with the highest score × probability; a query keeps
    those of its pixels where its own probability is ≥ 0.5, and only when at least
    `overlap_threshold` of its own mask survives; stuff queries of one label fuse into one segment.

    Returns int32 (H, W) segment ids (0 = void) and, for ids 1..N, (label index, score); a fused
    stuff segment keeps its best query's score."""
    seg = torch.zeros(mask_probs.shape[-2:], dtype=torch.int32, device=mask_probs.device)
    segments: list[tuple[int, float]] = []
    if scores.numel() == 0:
        return seg, segments
    owner = (scores.view(-1, 1, 1) * mask_probs).argmax(0)
    stuff_segment: dict[int, int] = {}
    for k in range(scores.shape[0]):
        label, score = int(labels[k]), float(scores[k])
        won = owner == k
        own = mask_probs[k] >= 0.5
        mask = won & own
        won_area, own_area = int(won.sum()), int(own.sum())
        if won_area == 0 or own_area == 0 or not bool(mask.any()):
            continue
        if won_area / own_area < overlap_threshold:
            continue
        if not is_thing[label] and label in stuff_segment:
            sid = stuff_segment[label]
            segments[sid - 1] = (label, max(segments[sid - 1][1], score))
        else:
            segments.append((label, score))
            sid = len(segments)
            if not is_thing[label]:
                stuff_segment[label] = sid
        seg[mask] = sid
    return seg, segments


def to_panoptic_result(
    seg_map: np.ndarray, segments: Sequence[tuple[int, float]], categories: Sequence[Category]
) -> PanopticResult:
    """Segment-id map (0 = void) + (label index, score) for ids 1..N → class map of COCO-panoptic
    ids (255 = void) and segments with areas counted in `seg_map`. Label index i is
    `categories[i]` (mapping by id, DESIGN.md §3)."""
    lut = np.full(len(segments) + 1, VOID, np.uint8)
    for sid, (label, _) in enumerate(segments, start=1):
        lut[sid] = categories[label].id
    areas = np.bincount(seg_map.ravel(), minlength=len(lut))
    out = [
        Segment(categories[label].id, score, categories[label].isthing, int(areas[sid]))
        for sid, (label, score) in enumerate(segments, start=1)
        if areas[sid] > 0
    ]
    return PanopticResult(class_map=lut[seg_map], segments=out)


def _pad_to_multiple(
    pixel_values: torch.Tensor, pixel_mask: torch.Tensor, multiple: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (B, 3, H, W) bottom/right with zeros (the normalised mean) to a multiple of `multiple`,
    as detectron2's `ImageList.from_tensors(size_divisibility=32)` does."""
    h, w = pixel_values.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return pixel_values, pixel_mask
    return (F.pad(pixel_values, (0, pad_w, 0, pad_h)), F.pad(pixel_mask, (0, pad_w, 0, pad_h)))


@register
class Mask2FormerTeacher(Teacher[PanopticResult]):
    """Mask2Former panoptic segmentation → COCO-panoptic class map + segments per image."""

    name = "mask2former"
    role = "panoptic"

    def __init__(self, config: TeacherConfig) -> None:
        super().__init__(config)
        self.device = runtime.resolve_device(config)
        self.dtype = runtime.resolve_dtype(config, self.device)
        self.categories = coco_panoptic_categories()
        self._is_thing = [c.isthing for c in self.categories]
        self.processor = _build_processor(config)
        model = _build_model(config)
        _check_labels(model.config, self.categories)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        files = (runtime.weight_files(config.checkpoint, config.revision)
                 if config.variant == "pretrained" else [])
        self._provenance = runtime.make_provenance(
            self.role, self.name, config, self.device, self.dtype,
            input_size=dict(self.processor.size), files=files, hub=True,
            extra={
                "num_queries": int(model.config.num_queries),
                "object_mask_threshold": OBJECT_MASK_THRESHOLD,
                "overlap_threshold": OVERLAP_THRESHOLD,
                "label_order": "id2label index i = i-th COCO-panoptic category by id",
            },
        )

    @property
    def provenance(self) -> Provenance:
        return self._provenance

    def predict(self, images: list[np.ndarray]) -> list[PanopticResult]:
        """RGB uint8 (H_i, W_i, 3) images → one `PanopticResult` per image at (H_i, W_i)."""
        check_images(images)
        return runtime.predict_in_chunks(images, self.config.batch_size, self._predict_batch)

    @torch.inference_mode()
    def _predict_batch(self, images: list[np.ndarray]) -> list[PanopticResult]:
        inputs = self.processor(images=images, return_tensors="pt",
                                input_data_format="channels_last")
        pixel_values, pixel_mask = _pad_to_multiple(
            inputs["pixel_values"], inputs["pixel_mask"], SIZE_DIVISIBILITY
        )
        valid = [(int(m.any(1).sum()), int(m.any(0).sum())) for m in pixel_mask]
        results: dict[int, PanopticResult] = {}
        padded = [runtime.padded_size(h, w, SIZE_DIVISIBILITY) for h, w in valid]
        for index in runtime.batches_by_size(padded, len(valid)):
            h, w = padded[index[0]]
            outputs = self.model(
                pixel_values=pixel_values[index, :, :h, :w].to(self.device, self.dtype),
                pixel_mask=pixel_mask[index, :h, :w].to(self.device),
            )
            for j, i in enumerate(index):
                results[i] = self._postprocess(
                    outputs.class_queries_logits[j], outputs.masks_queries_logits[j],
                    (h, w), valid[i], (images[i].shape[0], images[i].shape[1]),
                )
        return [results[i] for i in range(len(images))]

    def _postprocess(
        self,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        padded_size: tuple[int, int],
        valid_size: tuple[int, int],
        output_size: tuple[int, int],
    ) -> PanopticResult:
        """One image's network outputs → its `PanopticResult` at `output_size`."""
        index, scores, labels = select_queries(class_logits)
        logits = resize_mask_logits(mask_logits[index], padded_size, valid_size, output_size)
        seg, segments = merge_segments(scores, labels, logits.sigmoid(), self._is_thing)
        return to_panoptic_result(seg.cpu().numpy(), segments, self.categories)
