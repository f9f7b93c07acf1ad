"""mediapipe's BlazePose CPU graph (0.10.21, model_complexity=1) around its two TFLite models,
reproduced in numpy: what `teachers.blazepose` runs with LiteRT.

Each function names the mediapipe graph (`mediapipe/modules/...pbtxt`) or calculator
(`mediapipe/calculators/...cc`) it reproduces; the constants are those graphs' options.

- Detector input (`pose_detection_cpu.pbtxt`, ImageToTensorCalculator): the whole image,
  letterboxed to a square (BORDER_ZERO), 224×224, values in [-1, 1].
- Detections: SSD anchors (`ssd_anchors_calculator.cc`), box and keypoint decoding
  (`tensors_to_detections_calculator.cc`), weighted NMS (`non_max_suppression_calculator.cc`),
  letterbox removal. Each detection has 4 keypoints: hip centre, a point on the full-body
  circle, shoulder centre, a point on the upper-body circle.
- ROI (`pose_detection_to_roi.pbtxt`): centred on the hip centre, side twice the distance to the
  full-body point, rotated so that point is straight up, then squared and scaled by 1.25.
- Landmark input (`pose_landmark_by_roi_cpu.pbtxt`): the rotated ROI warped to 256×256
  (BORDER_REPLICATE, OpenCV's `warpPerspective` geometry), values in [0, 1].
- Landmarks (`tensors_to_pose_landmarks_and_segmentation.pbtxt`): 39 × (x, y, z, visibility,
  presence) in ROI pixels, sigmoid on the last two, refined on the 64×64 heatmap
  (`refine_landmarks_from_heatmap_calculator.cc`, kernel 7) and projected back through the ROI
  (`landmark_projection_calculator.cc`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["DETECTOR_SIZE", "LANDMARK_SIZE", "Detections", "Roi", "box_roi", "decode_detections",
           "detection_rois", "detector_input", "landmark_input", "landmarks_from_outputs",
           "ssd_anchors", "warp_rect", "weighted_nms"]

DETECTOR_SIZE = 224
LANDMARK_SIZE = 256
# pose_detection_cpu.pbtxt
_ANCHOR_STRIDES = (8, 16, 32, 32, 32)
_ANCHORS_PER_LAYER = 2  # aspect ratio 1.0 plus the interpolated scale (its default 1.0)
_SCORE_CLIP = 100.0
MIN_DETECTION_SCORE = 0.5
_NMS_IOU = 0.3
# pose_detection_to_roi.pbtxt
_ROI_SCALE = 1.25
_TARGET_ANGLE = math.pi / 2  # 90°: the hip-centre → full-body-point vector points up
# tensors_to_pose_landmarks_and_segmentation.pbtxt
NUM_LANDMARKS = 39  # 33 body landmarks + 6 auxiliary
_HEATMAP_KERNEL = 7
_MIN_CONFIDENCE_TO_REFINE = 0.5


@dataclass
class Detections:
    """Detector output in original pixels: scores (N,), boxes (N, 4) xyxy, keypoints (N, 4, 2)."""

    scores: np.ndarray
    boxes: np.ndarray
    keypoints: np.ndarray


@dataclass
class Roi:
    """A rotated square region in original pixels: centre, side, rotation (radians)."""

    cx: float
    cy: float
    side: float
    rotation: float


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))  # clipped: no overflow warning


def ssd_anchors() -> np.ndarray:
    """(2254, 2) anchor centres in [0, 1] (fixed anchor size 1), in the model's output order:
    per stride group, row by row, column by column, anchor by anchor."""
    centres = []
    layer = 0
    while layer < len(_ANCHOR_STRIDES):
        stride = _ANCHOR_STRIDES[layer]
        same = sum(1 for s in _ANCHOR_STRIDES[layer:] if s == stride)  # layers merged per stride
        size = math.ceil(DETECTOR_SIZE / stride)
        ys, xs = np.meshgrid((np.arange(size) + 0.5) / size, (np.arange(size) + 0.5) / size,
                             indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(grid, _ANCHORS_PER_LAYER * same, axis=0))
        layer += same
    return np.concatenate(centres).astype(np.float32)


def letterbox(height: int, width: int) -> Roi:
    """The detector's ROI: the whole image padded to a square about its centre."""
    return Roi(width / 2.0, height / 2.0, float(max(height, width)), 0.0)


def warp_rect(image: np.ndarray, roi: Roi, size: int, zero_border: bool) -> np.ndarray:
    """OpenCV's `warpPerspective` (INTER_LINEAR) of `roi` onto a size×size uint8 image, with the
    corner mapping of mediapipe's `image_to_tensor_converter_opencv.cc`: the ROI's corners go to
    the output's corners (0 and `size`), output pixel (u, v) samples the source at
    centre + R · ((u / size − ½) side, (v / size − ½) side). Outside the image: zeros
    (BORDER_ZERO) or the nearest edge pixel (BORDER_REPLICATE)."""
    h, w = image.shape[:2]
    t = (np.arange(size, dtype=np.float64) / size - 0.5) * roi.side
    lu, lv = np.meshgrid(t, t, indexing="xy")
    c, s = math.cos(roi.rotation), math.sin(roi.rotation)
    sx = roi.cx + c * lu - s * lv
    sy = roi.cy + s * lu + c * lv
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    x0i, y0i = x0.astype(np.int64), y0.astype(np.int64)
    out = np.zeros((size, size, 3), dtype=np.float64)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xi, yi = x0i + dx, y0i + dy
            pix = image[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)].astype(np.float64)
            if zero_border:
                pix *= ((xi >= 0) & (xi < w) & (yi >= 0) & (yi < h))[..., None]
            out += wx * wy * pix
    return np.floor(out + 0.5).clip(0, 255).astype(np.uint8)  # warped as uint8, as OpenCV does


def detector_input(image: np.ndarray) -> tuple[np.ndarray, Roi]:
    """(1, 224, 224, 3) float32 in [-1, 1] and the letterbox ROI it was cut from."""
    roi = letterbox(*image.shape[:2])
    pixels = warp_rect(image, roi, DETECTOR_SIZE, zero_border=True)
    return (pixels.astype(np.float32) * (2.0 / 255.0) - 1.0)[None], roi


def landmark_input(image: np.ndarray, roi: Roi) -> np.ndarray:
    """(1, 256, 256, 3) float32 in [0, 1]: the rotated ROI, replicate border."""
    pixels = warp_rect(image, roi, LANDMARK_SIZE, zero_border=False)
    return (pixels.astype(np.float32) / 255.0)[None]


def decode_detections(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray,
                      letterbox_roi: Roi) -> Detections:
    """Scores ≥ 0.5, boxes and keypoints decoded against the anchors (x before y: the graph's
    `reverse_output_order`), in original pixels. Boxes of negative size are dropped, as
    mediapipe drops them."""
    raw_boxes = raw_boxes.reshape(-1, 12).astype(np.float32)
    scores = _sigmoid(np.clip(raw_scores.reshape(-1).astype(np.float32), -_SCORE_CLIP,
                              _SCORE_CLIP))
    keep = scores >= MIN_DETECTION_SCORE
    raw_boxes, scores, anc = raw_boxes[keep], scores[keep], anchors[keep]
    centre = raw_boxes[:, 0:2] / DETECTOR_SIZE + anc
    half = raw_boxes[:, 2:4] / DETECTOR_SIZE / 2.0
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    keypoints = raw_boxes[:, 4:12].reshape(-1, 4, 2) / DETECTOR_SIZE + anc[:, None, :]
    valid = (half >= 0).all(axis=1)
    # from the 224×224 square back to original pixels (letterbox removal)
    origin = np.array([letterbox_roi.cx, letterbox_roi.cy]) - letterbox_roi.side / 2.0
    boxes = boxes[valid] * letterbox_roi.side + np.tile(origin, 2)
    keypoints = keypoints[valid] * letterbox_roi.side + origin
    return Detections(scores[valid], boxes.astype(np.float32), keypoints.astype(np.float32))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def weighted_nms(dets: Detections) -> Detections:
    """mediapipe's WEIGHTED non-max suppression (IoU > 0.3): each kept detection is the
    score-weighted mean of the boxes and keypoints it suppresses (itself included), with the
    top score. Every cluster is kept (mediapipe's pose graph then uses only the first).
    IoU is taken in pixels: a common scale of both axes leaves it unchanged."""
    order = np.argsort(-dets.scores, kind="stable")
    remaining = list(order)
    scores, boxes, keypoints = [], [], []
    while remaining:
        top = remaining[0]
        rest = np.array(remaining)
        similar = _iou(dets.boxes[top], dets.boxes[rest]) > _NMS_IOU
        members = rest[similar]
        if len(members) == 0:  # a degenerate box overlaps nothing, not even itself
            members = np.array([top])
        weights = dets.scores[members].astype(np.float64)
        total = weights.sum()
        scores.append(dets.scores[top])
        boxes.append((dets.boxes[members] * weights[:, None]).sum(0) / total)
        keypoints.append((dets.keypoints[members] * weights[:, None, None]).sum(0) / total)
        remaining = [int(i) for i in rest[~similar] if i != top]
    if not scores:
        return dets
    return Detections(np.array(scores, dtype=np.float32), np.array(boxes, dtype=np.float32),
                      np.array(keypoints, dtype=np.float32))


def _normalize_radians(angle: float) -> float:
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def detection_rois(dets: Detections) -> list[Roi]:
    """AlignmentPointsRectsCalculator (keypoints 0 → 1, target 90°) then RectTransformation
    (square_long, × 1.25), one ROI per detection."""
    rois = []
    for kp in dets.keypoints.astype(np.float64):
        (x0, y0), (x1, y1) = kp[0], kp[1]
        side = 2.0 * math.hypot(x1 - x0, y1 - y0) * _ROI_SCALE
        rotation = _normalize_radians(_TARGET_ANGLE - math.atan2(-(y1 - y0), x1 - x0))
        rois.append(Roi(float(x0), float(y0), side, rotation))
    return rois


def box_roi(box: np.ndarray) -> Roi:
    """A given person box as the landmark model's ROI: RectTransformation's square_long and
    × 1.25 applied to the box, upright (a box carries no rotation)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return Roi((x0 + x1) / 2.0, (y0 + y1) / 2.0, max(x1 - x0, y1 - y0) * _ROI_SCALE, 0.0)


def _refine_from_heatmap(xy: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """RefineLandmarksFromHeatmapCalculator: each landmark (normalised to the ROI) moves to the
    sigmoid-weighted mean position of a 7×7 window of its heatmap channel, when the window's
    peak confidence is ≥ 0.5. C++ truncation toward zero picks the window's centre cell."""
    hm_h, hm_w, _ = heatmap.shape
    out = xy.copy()
    off = (_HEATMAP_KERNEL - 1) // 2
    for i in range(xy.shape[0]):
        col, row = int(xy[i, 0] * hm_w), int(xy[i, 1] * hm_h)  # int(): toward zero, as C++
        if not (0 <= col < hm_w and 0 <= row < hm_h):
            continue
        r0, r1 = max(0, row - off), min(hm_h, row + off + 1)
        c0, c1 = max(0, col - off), min(hm_w, col + off + 1)
        conf = _sigmoid(heatmap[r0:r1, c0:c1, i].astype(np.float64))
        total = conf.sum()
        if conf.max() >= _MIN_CONFIDENCE_TO_REFINE and total > 0:
            rows, cols = np.mgrid[r0:r1, c0:c1]
            out[i, 0] = (cols * conf).sum() / hm_w / total
            out[i, 1] = (rows * conf).sum() / hm_h / total
    return out


def landmarks_from_outputs(raw_landmarks: np.ndarray, heatmap: np.ndarray,
                           roi: Roi) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The landmark model's outputs → (33, 2) x, y in original pixels, (33,) visibility and
    (33,) presence in [0, 1]."""
    raw = raw_landmarks.reshape(NUM_LANDMARKS, 5).astype(np.float64)
    xy = _refine_from_heatmap(raw[:, :2] / LANDMARK_SIZE, heatmap.reshape(heatmap.shape[-3:]))
    c, s = math.cos(roi.rotation), math.sin(roi.rotation)
    lx, ly = xy[:, 0] - 0.5, xy[:, 1] - 0.5
    px = roi.cx + (c * lx - s * ly) * roi.side
    py = roi.cy + (s * lx + c * ly) * roi.side
    pixels = np.stack([px, py], axis=1)[:33]
    return pixels, _sigmoid(raw[:33, 3]), _sigmoid(raw[:33, 4])
