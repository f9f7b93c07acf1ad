"""Human body-part label sets (issue 29) and their regrouping into the student's part channels.

The parts teacher (`parts` role, UniParser) labels every pixel of a person with a part id of
its label set; the label set is data:

- `CIHP_PARTS`: CIHP's 20 labels, 0 = background then the 19 parts in upstream order
  (cjm-sfw/Uniparser `mmdet/datasets/CHIP.py` `PARSING_CLASSES`, `tools/test_chip.py`
  `parsing_name`; the CIHP/LIP `human_colormap` order; upstream spells Torso-skin "Tosor-skin").
- `MHP_PARTS`: MHP v2.0's 58 part classes + background = 59 (cjm-sfw/Uniparser
  `demo/visual.py` `compare_part`, the MHP v2 `parsing_annos` ids 1..58).

The student learns a few coarse part groups (`PART_GROUPS`), each part id of either set mapped
to one group or to none (`group_table`). Neither CIHP nor MHP splits an arm or a leg at the
elbow or knee (CIHP: Left-arm / Right-arm skin, sleeves inside Upper-clothes; MHP the same plus
hands and feet), so the groups are the ones both label sets determine: head, torso (with the
clothes over it), arms, hands, legs (with the clothes over them), feet (with shoes, socks).
Left and right share a group: the student's picture may be flipped, and UniParser's own
category space treats the pairs as separate only because the datasets do. MHP's carried objects
(ball, bottle, umbrella, bags ...) are no body part: they belong to no group.
"""

from __future__ import annotations

import numpy as np

from distill.errors import DistillError

__all__ = ["CIHP_PARTS", "LABEL_SETS", "MHP_PARTS", "PART_GROUPS", "group_map", "group_table",
           "label_names"]

CIHP_PARTS: tuple[str, ...] = (
    "background", "hat", "hair", "glove", "sunglasses", "upper-clothes", "dress", "coat",
    "socks", "pants", "torso-skin", "scarf", "skirt", "face", "left-arm", "right-arm",
    "left-leg", "right-leg", "left-shoe", "right-shoe",
)  # fmt: skip

MHP_PARTS: tuple[str, ...] = (
    "background", "cap/hat", "helmet", "face", "hair", "left-arm", "right-arm", "left-hand",
    "right-hand", "protector", "bikini/bra", "jacket/windbreaker/hoodie", "t-shirt",
    "polo-shirt", "sweater", "singlet", "torso-skin", "pants", "shorts/swim-shorts", "skirt",
    "stockings", "socks", "left-boot", "right-boot", "left-shoe", "right-shoe", "left-highheel",
    "right-highheel", "left-sandal", "right-sandal", "left-leg", "right-leg", "left-foot",
    "right-foot", "coat", "dress", "robe", "jumpsuits", "other-full-body-clothes", "headwear",
    "backpack", "ball", "bats", "belt", "bottle", "carrybag", "cases", "sunglasses", "eyewear",
    "gloves", "scarf", "umbrella", "wallet/purse", "watch", "wristband", "tie",
    "other-accessaries", "other-upper-body-clothes", "other-lower-body-clothes",
)  # fmt: skip

LABEL_SETS: dict[str, tuple[str, ...]] = {"cihp": CIHP_PARTS, "mhp": MHP_PARTS}

# The student's part channels, in channel order, and the part names of each (either set).
PART_GROUPS: tuple[str, ...] = ("head", "torso", "arms", "hands", "legs", "feet")
_MEMBERS: dict[str, tuple[str, ...]] = {
    "head": ("hat", "cap/hat", "helmet", "headwear", "hair", "face", "sunglasses", "eyewear"),
    "torso": ("upper-clothes", "dress", "coat", "torso-skin", "scarf", "bikini/bra",
              "jacket/windbreaker/hoodie", "t-shirt", "polo-shirt", "sweater", "singlet",
              "robe", "jumpsuits", "other-full-body-clothes", "other-upper-body-clothes", "tie",
              "belt"),
    "arms": ("left-arm", "right-arm"),
    "hands": ("glove", "gloves", "left-hand", "right-hand", "watch", "wristband"),
    "legs": ("pants", "skirt", "left-leg", "right-leg", "shorts/swim-shorts", "stockings",
             "other-lower-body-clothes"),
    "feet": ("socks", "left-shoe", "right-shoe", "left-boot", "right-boot", "left-highheel",
             "right-highheel", "left-sandal", "right-sandal", "left-foot", "right-foot"),
}  # fmt: skip


def label_names(label_set: str) -> tuple[str, ...]:
    """The part names of `label_set` ("cihp" or "mhp"), id order."""
    try:
        return LABEL_SETS[label_set]
    except KeyError:
        raise DistillError(f"parts label set {label_set!r} is unknown; known: "
                           f"{', '.join(LABEL_SETS)}") from None


def group_table(label_set: str) -> np.ndarray:
    """uint8 (256,) lookup: part id of `label_set` → 1 + its index in `PART_GROUPS`, 0 for
    background, a part of no group and an id outside the set."""
    table = np.zeros(256, np.uint8)
    group_of = {name: g + 1 for g, group in enumerate(PART_GROUPS) for name in _MEMBERS[group]}
    for part_id, name in enumerate(label_names(label_set)):
        table[part_id] = group_of.get(name, 0)
    return table


def group_map(part_map: np.ndarray, label_set: str) -> np.ndarray:
    """A uint8 (H, W) part-id map → uint8 (H, W) group map (0: none, g: `PART_GROUPS[g - 1]`)."""
    return group_table(label_set)[np.asarray(part_map, np.uint8)]
