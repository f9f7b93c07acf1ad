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

The anthropometric constants below (limb/torso ratios, head offset) were measured on the
coco-mini *train2017* annotations, not on the val2017 images the tests score.

`keypoint_ap` scores decoded people with the official COCO OKS AP (pycocotools) against
in-memory ground truth.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from distill.coco import Person
from distill.errors import LabelError
from distill.labels.keypoints import JOINT_NAMES, LIMBS, NUM_JOINTS
from distill.labels.letterbox import Letterbox

__all__ = [
    "DecodedPerson",
    "GroundTruthImage",
    "decode_letterboxed",
    "decode_people",
    "find_peaks",
    "keypoint_ap",
    "to_coco_results",
]

_HEAD_JOINTS: tuple[int, ...] = (0, 1, 2, 3, 4)  # nose, left/right eye, left/right ear
_NOSE = 0
_L_SHOULDER, _R_SHOULDER, _L_HIP, _R_HIP = 5, 6, 11, 12
# Limb length ÷ torso length (shoulder to hip), about the 75th percentile over COCO people: the
# body scale of a person is the largest length / ratio among its limbs (foreshortening only ever
# shortens a limb, so the largest estimate is the most reliable one).
_LIMB_TORSO_RATIO: tuple[float, ...] = (
    0.65, 0.65, 0.5, 0.5,  # upper arms, forearms
    0.85, 0.85, 0.9, 0.9,  # thighs, shins
    0.7, 0.45, 1.0, 1.0,  # shoulders, hips, torso sides
)  # fmt: skip
# The nose sits about 0.3 body scales "up" from the shoulder midpoint (COCO median).
_HEAD_OFFSET = 0.3
# Arm and leg chains (shoulder/hip outwards) and their segments in torso lengths, for orphans.
_CHAINS: tuple[tuple[int, ...], ...] = ((5, 7, 9), (6, 8, 10), (11, 13, 15), (12, 14, 16))
_CHAIN_SEGMENTS: dict[tuple[int, ...], float] = {
    (5, 7): 0.65, (7, 9): 0.5, (6, 8): 0.65, (8, 10): 0.5,
    (11, 13): 0.85, (13, 15): 0.9, (12, 14): 0.85, (14, 16): 0.9,
}  # fmt: skip
_ORPHAN_REACH = 1.2
# A lone shoulder joins a head-only person up to this many head sizes from its head centre.
_SHOULDER_HEAD_SIZES = 4.0
_MIN_SCALE = 2.0  # pixels: floor of a body scale
_EPS = 1e-6


@dataclass
class DecodedPerson:
    """One decoded person in the heatmap (letterbox) frame."""

    keypoints: np.ndarray  # (17, 3) float32: x, y, confidence; confidence 0 → absent, x = y = 0
    score: float

    @property
    def num_joints(self) -> int:
        return int((self.keypoints[:, 2] > 0).sum())


class GroundTruthImage(Protocol):
    """What `keypoint_ap` needs of an image: `distill.coco.ImageRecord`, `distill.shards.Sample`."""

    @property
    def image_id(self) -> int: ...

    @property
    def width(self) -> int | None: ...

    @property
    def height(self) -> int | None: ...

    @property
    def persons(self) -> list[Person]: ...


# --- peaks -----------------------------------------------------------------------------------

# Raster tie rule: a peak is > its neighbours before it in raster order and ≥ those after it,
# so a plateau gives one peak, its first pixel (exactly one for any convex plateau).
_BEFORE = ((-1, -1), (-1, 0), (-1, 1), (0, -1))
_AFTER = ((0, 1), (1, -1), (1, 0), (1, 1))
_MAX_RUN = 8  # pixels: how far a plateau's extent is followed


def _peaks_of(maps: np.ndarray, threshold: float) -> list[np.ndarray]:
    """Peaks of every channel of a (C, H, W) stack: a list of C (N, 3) float32 arrays of x, y,
    value, highest value first."""
    maps = np.asarray(maps, dtype=np.float32)
    channels, height, width = maps.shape
    pad = np.pad(maps, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)

    def shifted(dy: int, dx: int) -> np.ndarray:
        return pad[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    peak = maps > threshold
    for dy, dx in _BEFORE:
        peak &= maps > shifted(dy, dx)
    for dy, dx in _AFTER:
        peak &= maps >= shifted(dy, dx)
    ch, ys, xs = np.nonzero(peak)
    values = maps[ch, ys, xs]
    fx, fy = xs.astype(np.float64), ys.astype(np.float64)

    # Per axis: a plateau peak moves to the middle of its run of equal pixels (right, down);
    # a single-pixel peak to the vertex of the parabola through the logs of its two neighbours
    # and itself (exact for a Gaussian), within ±0.5 px; none against the border.
    logc = np.log(np.maximum(values, _EPS))
    for dy, dx in ((0, 1), (1, 0)):
        lo = pad[ch, ys + 1 - dy, xs + 1 - dx]
        hi = pad[ch, ys + 1 + dy, xs + 1 + dx]
        run = np.zeros(len(ch), np.int64)
        going = hi == values
        for step in range(1, _MAX_RUN + 1):
            run += going
            if step == _MAX_RUN or not going.any():
                break
            y = np.minimum(ys + 1 + dy * (step + 1), height + 1)
            x = np.minimum(xs + 1 + dx * (step + 1), width + 1)
            going &= pad[ch, y, x] == values
        inside = np.isfinite(lo) & np.isfinite(hi) & (run == 0)
        logl = np.log(np.maximum(np.where(inside, lo, 1.0), _EPS))
        logh = np.log(np.maximum(np.where(inside, hi, 1.0), _EPS))
        denom = logl - 2.0 * logc + logh
        ok = inside & (denom < -_EPS)
        shift = np.where(ok, 0.5 * (logl - logh) / np.where(ok, denom, -1.0), 0.0)
        shift = np.where(run > 0, run / 2.0, np.clip(shift, -0.5, 0.5))
        if dx:
            fx = fx + shift
        else:
            fy = fy + shift

    out = np.stack([fx, fy, values.astype(np.float64)], axis=1).astype(np.float32)
    order = np.argsort(-out[:, 2], kind="stable")
    out, ch = out[order], ch[order]
    return [out[ch == c] for c in range(channels)]


def find_peaks(heatmap: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """Local maxima of an (H, W) map above `threshold`: an (N, 3) float32 array of x, y, value,
    highest value first.

    A peak is a pixel greater than its 3×3 neighbours that come before it in raster order and
    at least equal to those after it (pixels outside the map count as −∞), so a plateau of equal
    values gives one peak (exactly one when the plateau is convex), placed in the middle of the
    plateau's run of equal pixels to the right and downwards. A single-pixel peak is refined per
    axis by the parabola through the logs of its two neighbours (exact for a Gaussian).
    Pixel (row i, column j) has its centre at (x = j, y = i).
    """
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2:
        raise LabelError(f"find_peaks takes an (H, W) map, got shape {heatmap.shape}")
    return _peaks_of(heatmap[None], threshold)[0]


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


def _body_scale(person: np.ndarray, xy: np.ndarray) -> float:
    """Torso-length estimate (pixels) of a person (17 peak ids, −1 absent) from its limbs."""
    scale = 0.0
    for k, (a, b) in enumerate(LIMBS):
        if person[a] >= 0 and person[b] >= 0:
            length = float(np.linalg.norm(xy[person[a]] - xy[person[b]]))
            scale = max(scale, length / _LIMB_TORSO_RATIO[k])
    return max(scale, _MIN_SCALE)


def _head_anchor(person: np.ndarray, xy: np.ndarray, scale: float) -> np.ndarray | None:
    """Where the nose of a body person is expected (None without a shoulder)."""
    shoulders = [xy[person[j]] for j in (_L_SHOULDER, _R_SHOULDER) if person[j] >= 0]
    if not shoulders:
        return None
    mid = np.mean(shoulders, axis=0)
    hips = [xy[person[j]] for j in (_L_HIP, _R_HIP) if person[j] >= 0]
    up = np.array([0.0, -1.0])
    if hips:
        v = mid - np.mean(hips, axis=0)
        if np.linalg.norm(v) > _EPS:
            up = v / np.linalg.norm(v)
    elif len(shoulders) == 2:
        d = shoulders[1] - shoulders[0]
        perp = np.array([d[1], -d[0]])
        if np.linalg.norm(perp) > _EPS:
            perp = perp / np.linalg.norm(perp)
            up = perp if perp[1] <= 0 else -perp
    return np.asarray(mid + _HEAD_OFFSET * scale * up, np.float64)


def _greedy(cost: np.ndarray, limit: float) -> list[tuple[int, int]]:
    """(row, column) pairs by ascending cost up to `limit`, each row and column used once."""
    rows, cols = np.nonzero(cost <= limit)
    used_r: set[int] = set()
    used_c: set[int] = set()
    out = []
    for n in np.argsort(cost[rows, cols], kind="stable"):
        r, c = int(rows[n]), int(cols[n])
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            out.append((r, c))
    return out


def _attach_heads(
    people: list[np.ndarray],
    joint_of: np.ndarray,
    xy: np.ndarray,
    taken: np.ndarray,
    max_distance: float,
) -> None:
    """Give body people a nose, then eyes and ears, greedily by distance ÷ body scale: the nose
    from the head anchor, eyes and ears from the person's nose (else the anchor)."""
    scales = np.array([_body_scale(p, xy) for p in people])
    anchors: dict[int, np.ndarray] = {}
    for n, (person, scale) in enumerate(zip(people, scales, strict=True)):
        anchor = _head_anchor(person, xy, float(scale))
        if anchor is not None:
            anchors[n] = anchor
    with_anchor = list(anchors)
    if not with_anchor:
        return
    for joint in _HEAD_JOINTS:
        free = np.nonzero(~taken & (joint_of == joint))[0]
        hosts = [n for n in with_anchor if people[n][joint] < 0]
        if not len(free) or not hosts:
            continue
        refs = np.stack([
            xy[people[n][_NOSE]] if people[n][_NOSE] >= 0 else anchors[n] for n in hosts
        ])
        cost = np.linalg.norm(refs[:, None] - xy[free][None], axis=-1) / scales[hosts][:, None]
        for h, f in _greedy(cost, max_distance):
            people[hosts[h]][joint] = free[f]
            taken[free[f]] = True


def _chain_reach(ja: int, jb: int) -> float:
    """Expected distance (torso lengths) between two joints of one arm or leg chain; 0 if they
    are not in one chain."""
    for chain in _CHAINS:
        if ja in chain and jb in chain and ja != jb:
            lo, hi = sorted((chain.index(ja), chain.index(jb)))
            return sum(_CHAIN_SEGMENTS[chain[n : n + 2]] for n in range(lo, hi))
    return 0.0


_REACH = np.array([[_chain_reach(a, b) for b in range(NUM_JOINTS)] for a in range(NUM_JOINTS)])


def _attach_orphans(
    bodies: list[np.ndarray],
    body_links: list[list[float]],
    joint_of: np.ndarray,
    xy: np.ndarray,
    taken: np.ndarray,
    min_joints: int,
) -> tuple[list[np.ndarray], list[list[float]]]:
    """Merge orphans — body fragments too small to be people, and body peaks no limb
    connected — into the person whose arm or leg chain they continue.

    COCO often leaves an occluded elbow or knee unlabelled; the wrist or ankle beyond it then
    has no limb to its person. An orphan joins a host that has none of its joints when one of
    its peaks is within `_ORPHAN_REACH` × the expected chain length × the host's body scale of a
    host joint of the same chain; nearest (normalised) first."""
    hosts = [n for n, p in enumerate(bodies) if int((p >= 0).sum()) >= min_joints]
    groups = [n for n, p in enumerate(bodies) if int((p >= 0).sum()) < min_joints]
    for peak in np.nonzero(~taken & ~np.isin(joint_of, _HEAD_JOINTS))[0]:
        person = np.full(NUM_JOINTS, -1, np.int64)
        person[joint_of[peak]] = peak
        groups.append(len(bodies))
        bodies.append(person)
        body_links.append([])
    if not hosts or not groups:
        return bodies, body_links
    host = np.stack([bodies[h] for h in hosts])  # (H, 17)
    host_xy = np.where((host >= 0)[..., None], xy[np.maximum(host, 0)], np.nan)
    scales = np.array([_body_scale(bodies[h], xy) for h in hosts])
    members = [bodies[g][bodies[g] >= 0] for g in groups]
    peaks = np.concatenate(members)
    owner = np.repeat(np.arange(len(groups)), [len(m) for m in members])
    reach = _REACH[joint_of[peaks]][:, None, :] * scales[None, :, None]  # (P, H, 17)
    dist = np.linalg.norm(xy[peaks][:, None, None] - host_xy[None], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cost = np.where(reach > 0, dist / np.where(reach > 0, reach, 1.0), np.nan)
    per_peak = np.nanmin(np.where(np.isnan(cost), np.inf, cost), axis=-1)  # (P, H)
    group_cost = np.full((len(groups), len(hosts)), np.inf)
    np.minimum.at(group_cost, owner, per_peak)
    gi, hi = np.nonzero(group_cost <= _ORPHAN_REACH)
    merged: set[int] = set()
    for n in np.argsort(group_cost[gi, hi], kind="stable"):
        g, h = groups[gi[n]], hosts[hi[n]]
        if g in merged or np.any((bodies[g] >= 0) & (bodies[h] >= 0)):
            continue
        bodies[h][bodies[g] >= 0] = bodies[g][bodies[g] >= 0]
        body_links[h] += body_links[g]
        taken[members[gi[n]]] = True
        merged.add(g)
    keep = [n for n in range(len(bodies)) if n not in merged]
    return [bodies[n] for n in keep], [body_links[n] for n in keep]


def _head_groups(
    joint_of: np.ndarray, xy: np.ndarray, taken: np.ndarray, max_link: float
) -> list[np.ndarray]:
    """Group the head peaks no body took (single linkage by ascending distance, at most one of
    each joint per group, links up to `max_link` pixels), then give each group of two or more
    the nearest lone shoulder within `_SHOULDER_HEAD_SIZES` head sizes."""
    free = np.nonzero(~taken & np.isin(joint_of, _HEAD_JOINTS))[0]
    if len(free) < 2:
        return []
    group = {int(p): i for i, p in enumerate(free)}
    members: dict[int, list[int]] = {i: [int(p)] for i, p in enumerate(free)}
    d = np.linalg.norm(xy[free][:, None] - xy[free][None], axis=-1)
    ii, jj = np.nonzero(np.triu(d <= max_link, k=1))
    for k in np.argsort(d[ii, jj], kind="stable"):
        gp, gq = group[int(free[ii[k]])], group[int(free[jj[k]])]
        if gp == gq:
            continue
        if set(joint_of[members[gp]].tolist()) & set(joint_of[members[gq]].tolist()):
            continue
        for m in members[gq]:
            group[m] = gp
        members[gp] += members.pop(gq)
    groups = [peaks for peaks in members.values() if len(peaks) >= 2]

    shoulders = np.nonzero(~taken & np.isin(joint_of, (_L_SHOULDER, _R_SHOULDER)))[0]
    if groups and len(shoulders):
        cost = np.full((len(groups), len(shoulders)), np.inf)
        for g, peaks in enumerate(groups):
            pts = xy[peaks]
            size = max(float(np.linalg.norm(pts[:, None] - pts[None], axis=-1).max()), 1.0)
            cost[g] = np.linalg.norm(xy[shoulders] - pts.mean(axis=0), axis=-1) / size
        # Up to two shoulders per group (one of each side): two greedy rounds.
        for _ in range(2):
            for g, s in _greedy(cost, _SHOULDER_HEAD_SIZES):
                peak = int(shoulders[s])
                if not taken[peak] and joint_of[peak] not in joint_of[groups[g]]:
                    groups[g].append(peak)
                    taken[peak] = True
                    cost[:, s] = np.inf

    out = []
    for peaks in groups:
        person = np.full(NUM_JOINTS, -1, np.int64)
        person[joint_of[peaks]] = peaks
        out.append(person)
    return out


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


# --- COCO results and AP -----------------------------------------------------------------------


def to_coco_results(
    people: Sequence[DecodedPerson], image_id: int, letterbox: Letterbox
) -> list[dict[str, Any]]:
    """COCO keypoint result dicts for one image, in ORIGINAL pixels (absent joints are 0, 0, 0;
    a present joint's third value is its peak confidence, which COCO evaluation ignores). The
    people must be in the letterbox's destination frame."""
    results = []
    for person in people:
        kp = np.asarray(person.keypoints, dtype=np.float32)
        present = kp[:, 2] > 0
        flat = np.zeros((NUM_JOINTS, 3), np.float64)
        flat[present, :2] = letterbox.inverse_points(kp[present, :2])
        flat[present, 2] = kp[present, 2]
        results.append({
            "image_id": int(image_id),
            "category_id": 1,
            "keypoints": [float(v) for v in flat.reshape(-1)],
            "score": float(person.score),
        })
    return results


_SKELETON = [[a + 1, b + 1] for a, b in LIMBS]
_AP_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def keypoint_ap(
    images: Iterable[GroundTruthImage],
    results: Sequence[dict[str, Any]],
    *,
    min_visible: int = 5,
) -> dict[str, float | None]:
    """COCO OKS keypoint AP of `results` (see `to_coco_results`) against the images' persons.

    Crowd persons and persons with fewer than `min_visible` labelled joints (v > 0) are ignored:
    they are given `iscrowd = 1`, which pycocotools turns into `ignore` (its `_prepare` rewrites
    `ignore` from `iscrowd`), so they need not be found and a detection matched to one is neither
    a true nor a false positive. Returns AP, AP50, AP75, APm, APl, AR (also AR50, AR75, ARm,
    ARl), None when no ground-truth person counts, 0.0 for no detections or no ground truth in
    an area range, plus
    `gt_persons` (persons that count) and `detections`.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    counted = 0
    for image in images:
        gt_images.append({"id": int(image.image_id), "width": int(image.width or 0),
                          "height": int(image.height or 0)})
        for person in image.persons:
            kp = np.asarray(person.keypoints, dtype=np.float64).reshape(NUM_JOINTS, 3)
            visible = int((kp[:, 2] > 0).sum())
            ignored = bool(person.iscrowd) or visible < min_visible
            counted += not ignored
            x, y, w, h = (float(v) for v in person.bbox)
            area = float(person.area) if person.area > 0 else w * h
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": int(image.image_id),
                "category_id": 1,
                "keypoints": [float(v) for v in kp.reshape(-1)],
                "num_keypoints": visible,
                "bbox": [x, y, w, h],
                "area": area,
                "iscrowd": int(ignored),
            })
    stats: dict[str, float | None] = dict.fromkeys(_AP_NAMES, 0.0)
    stats.update(gt_persons=float(counted), detections=float(len(results)))
    known = {img["id"] for img in gt_images}
    unknown = sorted({int(r["image_id"]) for r in results} - known)
    if unknown:
        raise LabelError(f"results for image ids not in the ground truth: {unknown[:10]}")
    if not counted:  # nothing to find: AP is undefined, not zero
        return {**stats, **dict.fromkeys(_AP_NAMES)}
    if not results:
        return stats

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": gt_images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "person", "supercategory": "person",
                            "keypoints": list(JOINT_NAMES), "skeleton": _SKELETON}],
        }
        gt.createIndex()
        dt = gt.loadRes([dict(r, keypoints=list(r["keypoints"])) for r in results])
        ev = COCOeval(gt, dt, iouType="keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for name, value in zip(_AP_NAMES, ev.stats, strict=True):
        stats[name] = max(float(value), 0.0)
    return stats
