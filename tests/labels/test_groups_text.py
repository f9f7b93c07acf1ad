"""The 133 → 11 group table, the group bit mask and text polygons."""

import json

import numpy as np
import pytest

from distill.errors import ConfigError
from distill.labels.groups import (
    GROUP_NAMES,
    NUM_GROUPS,
    TEXT_GROUP,
    VOID,
    GroupTable,
    decode_group_mask,
    encode_group_mask,
)
from distill.labels.text import rasterize_polygons


def test_every_category_maps_to_exactly_one_class_group():
    table = GroupTable.load()
    assert len(table.categories) == 133
    ids = [c.id for c in table.categories]
    assert len(set(ids)) == 133 and len({c.name for c in table.categories}) == 133
    assert all(0 <= c.group < TEXT_GROUP for c in table.categories)  # Text is never a class
    assert len(table.thing_ids()) == 80 and len(table.stuff_ids()) == 53
    assert {c.group for c in table.categories} == set(range(10))  # no group is empty
    assert GROUP_NAMES[table.by_id[1].group] == "Persons"
    assert GROUP_NAMES[table.by_id[187].group] == "Nature"  # sky-other-merged
    assert table.lut[VOID] == -1


def test_table_agrees_with_the_shared_panoptic_categories(coco_mini):
    cats = json.loads((coco_mini.parent / "categories" / "panoptic_coco_categories.json").read_text())
    table = GroupTable.load()
    assert {c["id"]: (c["name"], bool(c["isthing"])) for c in cats} == {
        c.id: (c.name, c.isthing) for c in table.categories
    }


def test_overrides_move_a_category_and_bad_ones_name_the_choices():
    table = GroupTable.load({"stairs": "Building"})
    stairs = next(c for c in table.categories if c.name == "stairs")
    assert GROUP_NAMES[stairs.group] == "Building"
    with pytest.raises(ConfigError, match="allowed: Persons, Vehicles"):
        GroupTable.load({"stairs": "Stairs"})
    with pytest.raises(ConfigError, match="unknown category 'stair'"):
        GroupTable.load({"stair": "Building"})


def test_group_mask_encodes_classes_and_text_and_decodes_back():
    table = GroupTable.load()
    class_map = np.array([[1, 3, 17], [187, VOID, 1]], np.uint8)  # person car cat / sky void person
    text = np.array([[0, 1, 0], [0, 1, 0]], bool)
    mask = encode_group_mask(table, class_map, text)
    assert mask.dtype == np.uint16
    groups = decode_group_mask(mask)
    assert groups.shape == (NUM_GROUPS, 2, 3)
    assert groups[GROUP_NAMES.index("Persons")].tolist() == [[1, 0, 0], [0, 0, 1]]
    assert groups[GROUP_NAMES.index("Vehicles")].tolist() == [[0, 1, 0], [0, 0, 0]]
    assert groups[GROUP_NAMES.index("Animals")].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert groups[TEXT_GROUP].tolist() == text.tolist()
    assert groups[:, 1, 1].sum() == 1  # void pixel: text only
    assert (groups[:TEXT_GROUP].sum(0) == (class_map != VOID)).all()  # one class group per pixel


def test_polygon_rasterisation_covers_the_inside_only():
    square = np.array([[10, 5], [29, 5], [29, 14], [10, 14]], np.float32)
    tri = np.array([[40, 0], [49, 0], [40, 9]], np.float32)
    mask = rasterize_polygons([square, tri, np.zeros((2, 2))], 20, 50)
    assert mask.shape == (20, 50) and mask.dtype == bool
    assert mask[5:15, 10:30].all() and mask[:5].sum() == 10 + 9 + 8 + 7 + 6  # triangle rows 0..4
    assert mask[15:, :].sum() == 0 and mask[:, :10].sum() == 0
    assert mask.sum() == 20 * 10 + 55  # 10+9+...+1 pixels in the triangle
