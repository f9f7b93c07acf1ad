"""The 133 COCO-panoptic categories grouped into 10 class groups, plus Text: 11 groups (§3.3).

The table is package data (`panoptic_groups.json`); any category can be moved to another group
from config (`labels.group_overrides = {"stairs" = "Building"}`). Group k is bit k of the
uint16 group mask; bit 10 is Text, from the text teacher.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from distill.errors import ConfigError, LabelError

__all__ = [
    "GROUP_NAMES",
    "NUM_GROUPS",
    "TEXT_GROUP",
    "VOID",
    "Category",
    "GroupTable",
    "Segment",
    "decode_group_mask",
    "encode_group_mask",
]

logger = logging.getLogger(__name__)


@dataclass
class Segment:
    """One panoptic segment, as a panoptic teacher returns it and a shard stores it."""

    category_id: int
    score: float
    isthing: bool
    area: int

VOID = 255  # class-map value of pixels no segment covers


@lru_cache(maxsize=1)
def _table_doc() -> dict[str, Any]:
    text = resources.files("distill.labels").joinpath("panoptic_groups.json").read_text()
    doc: dict[str, Any] = json.loads(text)
    return doc


GROUP_NAMES: tuple[str, ...] = tuple(_table_doc()["groups"])
NUM_GROUPS = len(GROUP_NAMES)  # 11
TEXT_GROUP = GROUP_NAMES.index("Text")  # 10


@dataclass(frozen=True)
class Category:
    """One COCO-panoptic category."""

    id: int
    name: str
    isthing: bool
    group: int  # index into GROUP_NAMES


class GroupTable:
    """Category id → group index, with per-name overrides applied."""

    def __init__(self, categories: list[Category]) -> None:
        self.categories = categories
        self.by_id = {c.id: c for c in categories}
        # Lookup table over every uint8 class-map value; VOID and unknown ids map to -1.
        lut = np.full(256, -1, np.int16)
        for c in categories:
            lut[c.id] = c.group
        self.lut = lut

    @classmethod
    def load(cls, overrides: dict[str, str] | None = None) -> GroupTable:
        """The shipped table, with `overrides` (category name → group name) applied."""
        overrides = dict(overrides or {})
        names = {row["name"] for row in _table_doc()["categories"]}
        for cat, group in overrides.items():
            if cat not in names:
                raise ConfigError(
                    f"labels.group_overrides names unknown category {cat!r}; the categories are "
                    "the 133 COCO-panoptic names (see distill/labels/panoptic_groups.json)"
                )
            if group not in GROUP_NAMES or group == "Text":
                allowed = ", ".join(g for g in GROUP_NAMES if g != "Text")
                raise ConfigError(
                    f"labels.group_overrides[{cat!r}] = {group!r} is not a class group; "
                    f"allowed: {allowed}"
                )
        cats = [
            Category(
                id=row["id"],
                name=row["name"],
                isthing=row["isthing"],
                group=GROUP_NAMES.index(overrides.get(row["name"], row["group"])),
            )
            for row in _table_doc()["categories"]
        ]
        return cls(cats)

    def thing_ids(self) -> list[int]:
        """Category ids of the 80 things in id order (detectron2's contiguous order)."""
        return [c.id for c in self.categories if c.isthing]

    def stuff_ids(self) -> list[int]:
        """Category ids of the 53 stuff classes in id order (detectron2's contiguous order)."""
        return [c.id for c in self.categories if not c.isthing]

    def group_index_map(self, class_map: np.ndarray) -> np.ndarray:
        """Per-pixel group index (int16, -1 for void) of a uint8 category-id map."""
        if class_map.dtype != np.uint8:
            raise LabelError(f"a class map is uint8 category ids, got {class_map.dtype}")
        return self.lut[class_map]


def encode_group_mask(
    table: GroupTable, class_map: np.ndarray, text_mask: np.ndarray | None = None
) -> np.ndarray:
    """11-bit group mask (uint16, bit k = group k) from a class map and an optional text mask."""
    groups = table.group_index_map(class_map)
    out = np.where(groups >= 0, np.left_shift(1, np.maximum(groups, 0)), 0).astype(np.uint16)
    if text_mask is not None:
        if text_mask.shape != class_map.shape:
            raise LabelError(
                f"text mask {text_mask.shape} and class map {class_map.shape} differ in size"
            )
        out |= text_mask.astype(bool).astype(np.uint16) << TEXT_GROUP
    return out


def decode_group_mask(mask: np.ndarray) -> np.ndarray:
    """(11, H, W) bool masks from a uint16 group mask."""
    if mask.dtype != np.uint16:
        raise LabelError(f"a group mask is uint16, got {mask.dtype}")
    bits = np.arange(NUM_GROUPS, dtype=np.uint16)[:, None, None]
    return ((mask[None] >> bits) & 1).astype(bool)
