"""Pose decoding from the student's joint heatmaps and limb PAFs, and COCO keypoint AP (§3.1).

The student predicts, per image, 17 joint heatmaps and 12 limb part-affinity maps in the
letterboxed S×S frame (paper §3.1, DESIGN.md §6). People are recovered bottom-up as OpenPose
does (Cao et al., "Realtime Multi-Person 2D Pose Estimation using Part Affinity Fields",
CVPR 2017, §2.2–2.4), adapted to our *scalar* PAFs (a limb channel is a mask around the
segment, not a 2-D vector field):

1. **Peaks** (`find_peaks`): 3×3 local maxima above a threshold, with a raster-order tie rule
   so a plateau gives one peak, refined to sub-pixel precision by a parabola fitted to the logs
   of the 3 pixels in x and in y (exact for a Gaussian, which is what the targets are).
2. **Limb candidates**: for every limb, every (peak of joint a, peak of joint b) pair is scored
   by sampling the limb's PAF channel at `samples` points along the segment (nearest pixel).
   A pair is kept when at least `min_paf_fraction` of the samples exceed `paf_threshold` and
   its score is positive: the mean sample, plus OpenPose's mild length prior
   min(0.5·max(H, W)/length − 1, 0), minus `through_penalty` for every other peak of joint a
   or b that the segment runs over. A scalar PAF says "a limb passes here", not "in this
   direction": the segment from one person's shoulder to the far shoulder of a neighbour
   standing in line is fully supported too, but it runs over the two near shoulders.
3. **Matching per limb**: each peak is used at most once per limb. OpenPose matches greedily,
   best score first; with scalar PAFs a short pair made of two neighbours' joints scores as
   well as either true limb and would take both peaks, so we take the one-to-one matching of
   largest total score instead (the Hungarian algorithm, `scipy.optimize.linear_sum_assignment`;
   on COCO ground-truth maps this lifts OKS AP from 0.94 to 0.98 on coco-mini val2017).
4. **Assembly**: all matched connections, best first, merge peaks into people (union of the
   connections); a connection that would give a person two peaks of one joint is dropped, so
   every person has at most one peak per joint.
5. **Head joints** (nose, eyes, ears) have no PAF (`distill.labels.keypoints.LIMBS` never
   touches them). Each body person with a shoulder gets a head anchor: the shoulder midpoint
   moved "up" (from the hip midpoint towards the shoulders, else perpendicular to the shoulder
   line, pointing up the image) by `_HEAD_OFFSET` × its body scale (the torso length estimated
   from its limbs). Noses are attached first, greedily by ascending distance to the anchor
   divided by the body scale, up to `head_max_distance`; then eyes and ears likewise, measured
   from the person's nose when it has one, else from the anchor. A person gets at most one of
   each joint.
6. **Orphans**: COCO often leaves an occluded elbow or knee unlabelled, so the wrist or ankle
   beyond it has no limb to its person. Body fragments too small to be people and body peaks
   no limb connected join the person (lacking those joints) whose arm or leg chain they
   continue, within `_ORPHAN_REACH` × the expected chain length. Extra joints cost nothing in
   OKS when the ground truth lacks them.
7. **Head-only people**: head peaks that no body took are grouped greedily by ascending
   distance (at most one of each joint per group, links up to `head_group_distance` × max(H, W)
   pixels), and a group takes the nearest lone shoulders; a group becomes a person when it has
   at least `min_joints` joints, since a face whose body is hidden or cropped is a real COCO
   person. Lone head peaks are dropped.
8. People with fewer than `min_joints` joints are dropped. A person's score is the mean of its
   joints' peak values × the mean score of its limb connections (1 for head-only people) ×
   sqrt(joints / 17), so that, at equal confidence, fuller skeletons rank first (fragments are
   the usual false positives).

Step 1 lives in `distill.student.pose_peaks`; steps 5–7 (the joints no limb connects) in
`distill.student.pose_joints`, with the anthropometric constants they use.
`distill.student.pose_ap` scores decoded people with the official COCO OKS AP (pycocotools)
against in-memory ground truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from distill.errors import LabelError
from distill.labels.keypoints import LIMBS, NUM_JOINTS
from distill.labels.letterbox import Letterbox
from distill.student.pose_joints import _attach_heads, _attach_orphans, _head_groups
from distill.student.pose_peaks import _peaks_of

__all__ = ["DecodedPerson", "decode_letterboxed", "decode_people"]

_EPS = 1e-6


@dataclass
class DecodedPerson:
    """One decoded person in the heatmap (letterbox) frame."""

    keypoints: np.ndarray  # (17, 3) float32: x, y, confidence; confidence 0 → absent, x = y = 0
    score: float

    @property
    def num_joints(self) -> int:
        return int((self.keypoints[:, 2] > 0).sum())


# --- decoding ---------------------------------------------------------------------------------


@dataclass
class _Connection:
    limb: int
    a: int  # global peak ids
    b: int
    score: float
    length: float


def _limb_candidates(
    paf: np.ndarray,
    pa: np.ndarray,
    pb: np.ndarray,
    *,
    samples: int,
    paf_threshold: float,
    min_paf_fraction: float,
    through_penalty: float,
    through_radius: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scored (i, j) pairs of peaks pa[i] – pb[j] that the PAF channel supports."""
    height, width = paf.shape
    t = np.linspace(0.0, 1.0, max(samples, 2), dtype=np.float32)
    ends_a = pa[:, None, None, :2]
    ends_b = pb[None, :, None, :2]
    points = ends_a + (ends_b - ends_a) * t[None, None, :, None]  # (na, nb, samples, 2)
    cols = np.clip(np.rint(points[..., 0]).astype(np.int64), 0, width - 1)
    rows = np.clip(np.rint(points[..., 1]).astype(np.int64), 0, height - 1)
    values = paf[rows, cols]
    i, j = np.nonzero((values > paf_threshold).mean(axis=-1) >= min_paf_fraction)
    mean = values[i, j].mean(axis=-1)
    a, b = pa[i, :2].astype(np.float64), pb[j, :2].astype(np.float64)  # (K, 2)
    ab = b - a
    length = np.linalg.norm(ab, axis=-1)
    prior = np.minimum(0.5 * max(height, width) / np.maximum(length, _EPS) - 1.0, 0.0)
    # A segment that runs over another peak of joint a or b (away from its own ends) is better
    # explained by two shorter limbs: colinear neighbours, e.g. side-by-side shoulders.
    others = np.concatenate([pa[:, :2], pb[:, :2]]).astype(np.float64)  # (Q, 2)
    rel = others[None] - a[:, None]  # (K, Q, 2)
    along = (rel * ab[:, None]).sum(-1) / np.maximum(length**2, _EPS)[:, None]
    foot = a[:, None] + np.clip(along, 0.0, 1.0)[..., None] * ab[:, None]
    near = np.linalg.norm(others[None] - foot, axis=-1) <= through_radius
    near &= np.linalg.norm(rel, axis=-1) > through_radius
    near &= np.linalg.norm(others[None] - b[:, None], axis=-1) > through_radius
    score = mean + prior - through_penalty * near.sum(-1)
    ok = score > 0
    return i[ok], j[ok], score[ok], length[ok]


def _max_weight_matching(weight: np.ndarray) -> list[tuple[int, int]]:
    """A one-to-one matching of rows to columns of a non-negative (n, m) weight matrix with the
    largest total weight (`scipy.optimize.linear_sum_assignment`, min(n, m) pairs); pairs of
    weight 0 may appear and mean "unmatched". Pairs come in the order of the shorter side."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(weight, maximize=True)
    order = np.argsort(cols, kind="stable") if weight.shape[0] <= weight.shape[1] else \
        np.arange(len(rows))
    return [(int(rows[k]), int(cols[k])) for k in order]


def _connect(
    per_joint: list[np.ndarray],
    starts: np.ndarray,
    pafs: np.ndarray,
    *,
    samples: int,
    paf_threshold: float,
    min_paf_fraction: float,
    through_penalty: float,
    through_radius: float,
) -> list[_Connection]:
    """The connections of every limb: scored candidates, then a one-to-one matching of largest
    total score (better than OpenPose's greedy pass for scalar PAFs, where a short spurious pair
    of neighbours' joints scores as well as either true limb)."""
    connections: list[_Connection] = []
    for k, (ja, jb) in enumerate(LIMBS):
        pa, pb = per_joint[ja], per_joint[jb]
        if not len(pa) or not len(pb):
            continue
        i, j, score, length = _limb_candidates(
            pafs[k], pa, pb, samples=samples, paf_threshold=paf_threshold,
            min_paf_fraction=min_paf_fraction, through_penalty=through_penalty,
            through_radius=through_radius,
        )
        if not len(i):
            continue
        rows, row_idx = np.unique(i, return_inverse=True)
        cols, col_idx = np.unique(j, return_inverse=True)
        weight = np.zeros((len(rows), len(cols)))
        weight[row_idx, col_idx] = score
        index = np.full((len(rows), len(cols)), -1, np.int64)
        index[row_idx, col_idx] = np.arange(len(i))
        for r, c in _max_weight_matching(weight):
            n = index[r, c]
            if n >= 0:
                connections.append(_Connection(
                    k, int(starts[ja] + i[n]), int(starts[jb] + j[n]), float(score[n]),
                    float(length[n]),
                ))
    return connections


def _assemble(
    connections: list[_Connection], num_peaks: int
) -> tuple[list[np.ndarray], list[list[float]], np.ndarray]:
    """Merge connections, best first, into people (17 peak ids each, −1 absent), never giving a
    person two peaks of one joint. Returns the people, their connection scores and which peaks
    they took."""
    owner = np.full(num_peaks, -1, np.int64)
    people: dict[int, np.ndarray] = {}
    links: dict[int, list[float]] = {}
    for c in sorted(connections, key=lambda c: (-c.score, c.length)):
        ja, jb = LIMBS[c.limb]
        oa, ob = int(owner[c.a]), int(owner[c.b])
        if oa < 0 and ob < 0:
            person = np.full(NUM_JOINTS, -1, np.int64)
            person[ja], person[jb] = c.a, c.b
            new = len(links)
            people[new], links[new] = person, [c.score]
            owner[[c.a, c.b]] = new
        elif oa >= 0 and ob >= 0:
            if oa == ob:
                links[oa].append(c.score)
                continue
            pa, pb = people[oa], people[ob]
            if np.any((pa >= 0) & (pb >= 0)):
                continue  # merging would give one person two peaks of a joint
            pa[pb >= 0] = pb[pb >= 0]
            owner[owner == ob] = oa
            links[oa] += [*links[ob], c.score]
            del people[ob]
        else:
            host, peak, joint = (oa, c.b, jb) if oa >= 0 else (ob, c.a, ja)
            if people[host][joint] >= 0:
                continue
            people[host][joint] = peak
            owner[peak] = host
            links[host].append(c.score)
    return list(people.values()), [links[i] for i in people], owner >= 0


def decode_people(
    joints: np.ndarray,
    pafs: np.ndarray,
    *,
    peak_threshold: float = 0.3,
    paf_threshold: float = 0.3,
    samples: int = 10,
    min_paf_fraction: float = 0.8,
    min_joints: int = 3,
    head_max_distance: float = 1.0,
    head_group_distance: float = 0.15,
    through_penalty: float = 0.25,
    through_radius: float = 2.0,
    max_peaks: int = 40,
) -> list[DecodedPerson]:
    """Decode people from (17, H, W) joint heatmaps and (12, H, W) scalar limb PAFs in [0, 1].

    Returns people in the heatmap frame, best score first (the algorithm is in the module
    docstring). `peak_threshold`: lowest joint peak; `paf_threshold`, `samples`,
    `min_paf_fraction`: a limb needs that fraction of its `samples` PAF samples above
    `paf_threshold`; `min_joints`: smallest person kept; `head_max_distance`: farthest head joint
    from its anchor, in body scales (torso lengths); `head_group_distance`: longest link inside a
    head-only person, as a fraction of max(H, W); `through_penalty`: score taken off a limb
    candidate for each other peak of its joints it runs over (within `through_radius` pixels);
    `max_peaks`: most peaks kept per joint (the highest), which bounds the time on noisy maps.
    """
    joints = np.asarray(joints, dtype=np.float32)
    pafs = np.asarray(pafs, dtype=np.float32)
    if joints.ndim != 3 or joints.shape[0] != NUM_JOINTS:
        raise LabelError(f"joints must be ({NUM_JOINTS}, H, W), got {joints.shape}")
    if pafs.shape != (len(LIMBS), *joints.shape[1:]):
        raise LabelError(
            f"pafs must be ({len(LIMBS)}, {joints.shape[1]}, {joints.shape[2]}), got {pafs.shape}"
        )
    height, width = joints.shape[1:]

    per_joint = [p[:max_peaks] for p in _peaks_of(joints, peak_threshold)]
    starts = np.cumsum([0] + [len(p) for p in per_joint])
    peaks = np.concatenate(per_joint).astype(np.float64)
    xy, value = peaks[:, :2], peaks[:, 2]
    joint_of = np.repeat(np.arange(NUM_JOINTS), np.diff(starts))

    connections = _connect(
        per_joint, starts, pafs, samples=samples, paf_threshold=paf_threshold,
        min_paf_fraction=min_paf_fraction, through_penalty=through_penalty,
        through_radius=through_radius,
    )
    bodies, body_links, taken = _assemble(connections, len(xy))
    _attach_heads(bodies, joint_of, xy, taken, head_max_distance)
    bodies, body_links = _attach_orphans(bodies, body_links, joint_of, xy, taken, min_joints)
    heads = _head_groups(joint_of, xy, taken, head_group_distance * max(height, width))

    out: list[DecodedPerson] = []
    link_scores = [float(np.mean(s)) if s else 1.0 for s in body_links] + [1.0] * len(heads)
    for person, link in zip(bodies + heads, link_scores, strict=True):
        present = person >= 0
        n = int(present.sum())
        if n < min_joints:
            continue
        kp = np.zeros((NUM_JOINTS, 3), np.float32)
        kp[present, :2] = xy[person[present]]
        kp[present, 2] = value[person[present]]
        conf = float(value[person[present]].mean())
        score = conf * min(max(link, 0.0), 1.0) * math.sqrt(n / NUM_JOINTS)
        out.append(DecodedPerson(kp, score))
    out.sort(key=lambda p: -p.score)
    return out


def decode_letterboxed(joints: np.ndarray, pafs: np.ndarray, letterbox: Letterbox,
                       **options: Any) -> list[DecodedPerson]:
    """`decode_people` on maps of a letterboxed image, looking only inside the image area (the
    padding holds no people; peaks there would map outside the image). People stay in the
    letterbox frame: map them back with `to_coco_results` or `letterbox.inverse_points`."""
    lb = letterbox
    inside = (slice(None), slice(lb.pad_y, lb.pad_y + lb.new_h),
              slice(lb.pad_x, lb.pad_x + lb.new_w))
    j = np.zeros_like(joints, dtype=np.float32)
    p = np.zeros_like(pafs, dtype=np.float32)
    j[inside] = joints[inside]
    p[inside] = pafs[inside]
    return decode_people(j, p, **options)
