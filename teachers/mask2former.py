"""Panoptic teacher "mask2former": transformers' `Mask2FormerForUniversalSegmentation` labelling the
133 COCO-panoptic categories (DESIGN.md §3), the installable alternative to Detectron2.

Pre-processing is Mask2Former's own test pipeline (detectron2's `DefaultPredictor` with the COCO
configs), not the hub processor (which resizes to a fixed 384 × 384): the uint8 RGB image is
resized with detectron2's `ResizeShortestEdge` (shortest edge 800, longest ≤ 1333, aspect kept,
`int(x + 0.5)` rounding; PIL bilinear on uint8 as `ResizeTransform.apply_image` does), then
normalised as `MaskFormer.forward` does, `(x - PIXEL_MEAN) / PIXEL_STD` on the 0–255 scale, and
padded with zeros to a multiple of 32. `input_size = N` sets the shortest edge to N and the longest
to at most N · 1333 / 800 (`runtime.max_size_for`; upstream keeps 1333 whatever MIN_SIZE_TEST is,
we scale it so a small N really shrinks the input); the tiny variant uses 64. Each image is padded
on its own, never to its batch's largest image, so a label never depends on its batch.

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
from distill.labels.groups import VOID, Category, GroupTable, Segment
from teachers import runtime
from teachers.base import PanopticResult, Provenance, Teacher, TeacherError, check_images
from teachers.registry import register

__all__ = [
    "NUM_CATEGORIES",
    "OBJECT_MASK_THRESHOLD",
    "OVERLAP_THRESHOLD",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "Mask2FormerTeacher",
    "coco_panoptic_categories",
    "merge_segments",
    "preprocess",
    "resize_mask_logits",
    "resize_shortest_edge",
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
SIZE_DIVISIBILITY = 32  # MODEL.MASK_FORMER.SIZE_DIVISIBILITY of the COCO-panoptic configs
# MODEL.PIXEL_MEAN / PIXEL_STD of the COCO-panoptic configs (RGB, 0–255 scale; INPUT.FORMAT "RGB").
# The hub checkpoints' processors hold the same numbers / 255 (transformers' conversion script).
PIXEL_MEAN = (123.675, 116.280, 103.530)
PIXEL_STD = (58.395, 57.120, 57.375)
TINY_INPUT_SIZE = 64
RESIZE_RULE = ("detectron2 ResizeShortestEdge (int(x + 0.5) rounding), PIL bilinear on uint8; "
               "(x - pixel_mean) / pixel_std; zero-padded to a multiple of 32 per image")
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


def _input_size(config: TeacherConfig) -> tuple[int, int]:
    """(shortest edge, longest-edge cap) of the test resize: upstream's 800 / 1333 by default."""
    shortest = config.input_size or (TINY_INPUT_SIZE if config.variant == "tiny" else 0)
    if shortest <= 0:
        return runtime.TEST_MIN_SIZE, runtime.TEST_MAX_SIZE
    return shortest, runtime.max_size_for(shortest)


def _normalisation(config: TeacherConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(3,) mean and std on the 0–255 scale: upstream's PIXEL_MEAN / PIXEL_STD, or for a
    pretrained checkpoint its processor's image_mean / image_std over its rescale factor (the
    same numbers for the facebook/mask2former-* checkpoints)."""
    upstream_mean = torch.tensor(PIXEL_MEAN, dtype=torch.float64)
    upstream_std = torch.tensor(PIXEL_STD, dtype=torch.float64)
    if config.variant != "pretrained":
        return upstream_mean.float(), upstream_std.float()
    from transformers import Mask2FormerImageProcessor

    try:
        source = runtime.pretrained_source(config, "Mask2Former", _EXAMPLE, _HOLDS)
        processor = Mask2FormerImageProcessor.from_pretrained(source, **runtime.hub_kwargs(config))
    except OSError as exc:
        raise _load_error(config, exc) from exc
    # the processor computes (x · rescale_factor − image_mean) / image_std
    scale = float(processor.rescale_factor) if processor.do_rescale else 1.0
    normalise = bool(processor.do_normalize)
    mean = torch.tensor(processor.image_mean if normalise else [0.0] * 3,
                        dtype=torch.float64) / scale
    std = torch.tensor(processor.image_std if normalise else [1.0] * 3,
                       dtype=torch.float64) / scale
    if not (torch.allclose(mean, upstream_mean, atol=1e-3)
            and torch.allclose(std, upstream_std, atol=1e-3)):
        logger.warning("this checkpoint's processor normalises with mean %s, std %s (0-255), "
                       "not Mask2Former's COCO %s, %s; using the checkpoint's",
                       mean.tolist(), std.tolist(), PIXEL_MEAN, PIXEL_STD)
    return mean.float(), std.float()


def resize_shortest_edge(image: np.ndarray, shortest: int, max_size: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) → resized as detectron2's `ResizeShortestEdge` + `ResizeTransform`
    do at test time: output size `runtime.shortest_edge_size`, PIL bilinear on the uint8 image."""
    from PIL import Image

    h, w = image.shape[:2]
    new_h, new_w = runtime.shortest_edge_size(h, w, shortest, max_size)
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))


def preprocess(
    image: np.ndarray, shortest: int, max_size: int, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """RGB uint8 (H, W, 3) → (3, h, w) float32 network input before padding: resized
    (`resize_shortest_edge`), then `(x - mean) / std` per channel as `MaskFormer.forward` does."""
    resized = resize_shortest_edge(image, shortest, max_size)
    x = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()
    return (x - mean.view(3, 1, 1)) / std.view(3, 1, 1)


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


def _pad_to_multiple(pixel_values: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (3, h, w) bottom/right with zeros (the normalised mean) to a multiple of `multiple`,
    as detectron2's `ImageList.from_tensors(size_divisibility=32)` does for one image."""
    h, w = pixel_values.shape[-2:]
    return F.pad(pixel_values, (0, -w % multiple, 0, -h % multiple))


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
        self.shortest, self.max_size = _input_size(config)
        self.pixel_mean, self.pixel_std = _normalisation(config)
        model = _build_model(config)
        _check_labels(model.config, self.categories)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        files = (runtime.weight_files(config.checkpoint, config.revision)
                 if config.variant == "pretrained" else [])
        self._provenance = runtime.make_provenance(
            self.role, self.name, config, self.device, self.dtype,
            input_size={"shortest_edge": self.shortest, "longest_edge": self.max_size},
            files=files, hub=True,
            extra={
                "resize": RESIZE_RULE,
                "pixel_mean": [round(float(v), 4) for v in self.pixel_mean],
                "pixel_std": [round(float(v), 4) for v in self.pixel_std],
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
        inputs = [preprocess(image, self.shortest, self.max_size, self.pixel_mean, self.pixel_std)
                  for image in images]
        valid = [(int(x.shape[1]), int(x.shape[2])) for x in inputs]
        padded = [runtime.padded_size(h, w, SIZE_DIVISIBILITY) for h, w in valid]
        results: dict[int, PanopticResult] = {}
        for index in runtime.batches_by_size(padded, len(valid)):
            pixel_values = torch.stack([_pad_to_multiple(inputs[i], SIZE_DIVISIBILITY)
                                        for i in index])
            pixel_mask = torch.zeros(pixel_values.shape[0], *pixel_values.shape[-2:],
                                     dtype=torch.long)
            for j, i in enumerate(index):
                pixel_mask[j, : valid[i][0], : valid[i][1]] = 1
            outputs = self.model(pixel_values=pixel_values.to(self.device, self.dtype),
                                 pixel_mask=pixel_mask.to(self.device))
            for j, i in enumerate(index):
                results[i] = self._postprocess(
                    outputs.class_queries_logits[j], outputs.masks_queries_logits[j],
                    padded[i], valid[i], (images[i].shape[0], images[i].shape[1]),
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
