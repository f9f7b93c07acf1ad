"""The joints no limb connects (steps 5–7 of `distill.student.pose`): head joints given to body
people, orphan arm and leg fragments merged into the person whose chain they continue, and
head-only people.

The anthropometric constants below (limb/torso ratios, head offset) were measured on the
coco-mini *train2017* annotations, not on the val2017 images the tests score.
"""

from __future__ import annotations

import numpy as np

from distill.labels.keypoints import LIMBS, NUM_JOINTS

__all__: list[str] = []

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
