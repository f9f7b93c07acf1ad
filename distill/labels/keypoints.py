"""COCO body joints, the 12 limbs, joint heatmaps and limb PAFs (paper §3.1, §3.6).

Coordinates follow COCO: pixel (row i, column j) has its centre at (x = j, y = i). Heatmaps are
Gaussians in a `size`×`size` window (σ = size / 6, so the window spans ±3σ), peak 1 at the
keypoint; a limb PAF is one channel, 1 within `width`/2 pixels of the segment between its two
joints and 0 elsewhere. Joints with v = 0 (not labelled) are skipped; v = 1 and v = 2 are drawn.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from distill.errors import LabelError

__all__ = [
    "JOINT_NAMES",
    "LIMBS",
    "LIMB_NAMES",
    "NUM_JOINTS",
    "heatmap_windows",
    "paf_windows",
    "render_heatmaps",
    "render_pafs",
]

JOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
NUM_JOINTS = len(JOINT_NAMES)

_J = {name: i for i, name in enumerate(JOINT_NAMES)}
# Channel 17 + k of the student output is limb k (DESIGN.md §6).
LIMB_NAMES: tuple[str, ...] = (
    "left_upper_arm", "right_upper_arm", "left_forearm", "right_forearm",
    "left_thigh", "right_thigh", "left_shin", "right_shin",
    "shoulders", "hips", "left_torso", "right_torso",
)  # fmt: skip
LIMBS: tuple[tuple[int, int], ...] = (
    (_J["left_shoulder"], _J["left_elbow"]), (_J["right_shoulder"], _J["right_elbow"]),
    (_J["left_elbow"], _J["left_wrist"]), (_J["right_elbow"], _J["right_wrist"]),
    (_J["left_hip"], _J["left_knee"]), (_J["right_hip"], _J["right_knee"]),
    (_J["left_knee"], _J["left_ankle"]), (_J["right_knee"], _J["right_ankle"]),
    (_J["left_shoulder"], _J["right_shoulder"]), (_J["left_hip"], _J["right_hip"]),
    (_J["left_shoulder"], _J["left_hip"]), (_J["right_shoulder"], _J["right_hip"]),
)  # fmt: skip


def _check_people(keypoints: np.ndarray) -> np.ndarray:
    kp = np.asarray(keypoints, dtype=np.float32)
    if kp.size == 0:
        return kp.reshape(0, NUM_JOINTS, 3)
    if kp.ndim != 3 or kp.shape[1:] != (NUM_JOINTS, 3):
        raise LabelError(f"keypoints must be (people, 17, 3) as (x, y, v), got {kp.shape}")
    return kp


Window = tuple[int, int, int, int]  # rows r0:r1, columns c0:c1 (ends exclusive)


def heatmap_windows(
    keypoints: np.ndarray, height: int, width: int, size: float = 23.0
) -> Iterator[tuple[int, Window, np.ndarray]]:
    """(joint, window, float32 Gaussian values) of each labelled joint's footprint in the frame,
    person by person: what `render_heatmaps` takes the max of."""
    kp = _check_people(keypoints)
    sigma = size / 6.0
    half = size / 2.0
    inv = -1.0 / (2.0 * sigma * sigma)
    for person in kp:
        for j, (x, y, v) in enumerate(person):
            if v <= 0:
                continue
            c0, c1 = max(int(np.ceil(x - half)), 0), min(int(np.floor(x + half)), width - 1)
            r0, r1 = max(int(np.ceil(y - half)), 0), min(int(np.floor(y + half)), height - 1)
            if c0 > c1 or r0 > r1:
                continue
            gx = np.exp((np.arange(c0, c1 + 1, dtype=np.float32) - x) ** 2 * inv)
            gy = np.exp((np.arange(r0, r1 + 1, dtype=np.float32) - y) ** 2 * inv)
            yield j, (r0, r1 + 1, c0, c1 + 1), gy[:, None] * gx[None, :]


def render_heatmaps(
    keypoints: np.ndarray, height: int, width: int, size: float = 23.0
) -> np.ndarray:
    """(17, H, W) float32 in [0, 1]: one Gaussian per labelled joint, max over people."""
    out = np.zeros((NUM_JOINTS, height, width), np.float32)
    for j, (r0, r1, c0, c1), values in heatmap_windows(keypoints, height, width, size):
        window = out[j, r0:r1, c0:c1]
        np.maximum(window, values, out=window)
    return out


def paf_windows(
    keypoints: np.ndarray, height: int, width: int, line_width: float = 6.0
) -> Iterator[tuple[int, Window, np.ndarray]]:
    """(limb, window, bool mask of the pixels within `line_width`/2 of the segment) of each
    limb with both joints labelled, person by person: what `render_pafs` unites."""
    kp = _check_people(keypoints)
    r = line_width / 2.0
    for person in kp:
        for k, (a, b) in enumerate(LIMBS):
            if person[a, 2] <= 0 or person[b, 2] <= 0:
                continue
            ax, ay = float(person[a, 0]), float(person[a, 1])
            bx, by = float(person[b, 0]), float(person[b, 1])
            c0 = max(int(np.ceil(min(ax, bx) - r)), 0)
            c1 = min(int(np.floor(max(ax, bx) + r)), width - 1)
            r0 = max(int(np.ceil(min(ay, by) - r)), 0)
            r1 = min(int(np.floor(max(ay, by) + r)), height - 1)
            if c0 > c1 or r0 > r1:
                continue
            px = np.arange(c0, c1 + 1, dtype=np.float32)[None, :] - ax
            py = np.arange(r0, r1 + 1, dtype=np.float32)[:, None] - ay
            dx, dy = bx - ax, by - ay
            length2 = dx * dx + dy * dy
            t = np.clip((px * dx + py * dy) / length2, 0.0, 1.0) if length2 > 0 else 0.0
            dist2 = (px - t * dx) ** 2 + (py - t * dy) ** 2
            yield k, (r0, r1 + 1, c0, c1 + 1), dist2 <= r * r


def render_pafs(
    keypoints: np.ndarray, height: int, width: int, line_width: float = 6.0
) -> np.ndarray:
    """(12, H, W) float32: limb k is 1 where a pixel centre is within `line_width`/2 of the
    segment between its two joints (both labelled), 0 elsewhere; union over people."""
    out = np.zeros((len(LIMBS), height, width), np.float32)
    for k, (r0, r1, c0, c1), on in paf_windows(keypoints, height, width, line_width):
        out[k, r0:r1, c0:c1][on] = 1.0
    return out
