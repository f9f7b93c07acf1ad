"""The label registry: the built-in layers in shard-schema order, each role's columns as before
the registry, post-processing after the layers a layer needs, loud failures."""

import pytest

from distill.layers import LayerError, get_layer, layers, unregister
from distill.layers.registry import fill_order, role_markers
from distill.shards import SCHEMA
from pipelines.postprocess import role_columns

# Shard schema version 1, column for column.
V1 = ["image_id", "file_name", "split", "width", "height", "image", "depth_png", "depth_min",
      "depth_max", "normals_png", "panoptic_png", "segments", "groups_png", "text_png",
      "text_regions", "teacher_captions", "coco_captions", "tokens", "persons", "exif_transpose"]


def test_the_builtin_layers_give_schema_version_1():
    assert [layer.name for layer in layers()][:7] == [
        "depth", "normals", "panoptic", "groups", "text", "tokens", "persons"]
    assert SCHEMA.names == V1


def test_each_teacher_role_rewrites_the_columns_it_did_before_the_registry():
    assert role_columns() == {
        "depth": ("depth_png", "depth_min", "depth_max", "normals_png"),
        "panoptic": ("panoptic_png", "segments", "groups_png"),
        "text": ("groups_png", "text_png", "text_regions"),
        "caption": ("teacher_captions", "tokens"),
        "pose": ("teacher_persons",),  # issue 28, after the registry
        "parts": ("parts_png", "part_instances_png", "part_persons", "parts_label_set"),  # 29
    }
    assert role_markers() == {"depth": "depth_min", "panoptic": "segments",
                              "text": "text_regions", "caption": "teacher_captions",
                              "pose": "teacher_persons", "parts": "part_persons"}


def test_a_layer_fills_after_the_layers_it_needs():
    order = [layer.name for layer in fill_order()]
    assert order.index("normals") > order.index("depth")
    assert order.index("groups") > max(order.index("panoptic"), order.index("text"))


def test_unknown_or_builtin_names_fail_loudly():
    with pytest.raises(LayerError, match="no label layer 'gait'; registered: depth, normals"):
        get_layer("gait")
    with pytest.raises(LayerError, match="built in"):
        unregister("depth")
