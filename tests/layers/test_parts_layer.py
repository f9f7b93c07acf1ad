"""The body-part layer (issue 29): the parts teacher's result through post-processing, the shard
codec, the student's opt-in channels, inspect's statistic and the pictures; crafted results
(the PartsResult of the parts role's contract), no teacher."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from distill.errors import ConfigError
from distill.labels.parts import PART_GROUPS
from distill.layers import get_layer
from distill.shards import SCHEMA, decode_row, encode_sample, schema
from distill.student import layout
from tests.test_shards import make_sample

H, W = 24, 32
HEAD, TORSO = PART_GROUPS.index("head"), PART_GROUPS.index("torso")


def parts_result() -> SimpleNamespace:
    """Two people: the left one's head (CIHP face 13) over its torso (upper-clothes 5); the
    right one all torso, with two unlabelled pixels."""
    part_map = np.zeros((H, W), np.uint8)
    instances = np.zeros((H, W), np.uint8)
    part_map[4:8, 2:10], part_map[8:20, 2:10] = 13, 5
    instances[4:20, 2:10] = 1
    part_map[4:20, 16:24], instances[4:20, 16:24] = 5, 2
    part_map[4, 16:18] = 0
    person = SimpleNamespace
    return SimpleNamespace(part_map=part_map, instance_map=instances, persons=[
        person(box=np.array([2, 4, 10, 20], np.float32), score=0.9),
        person(box=np.array([16, 4, 24, 20], np.float32), score=0.6)])


@pytest.fixture
def extra_off():
    yield
    layout.use_extra_layers(())


def filled():
    sample = make_sample(3, h=H, w=W)
    get_layer("parts").fill(sample, {"parts": parts_result()}, None, {})
    return sample


def test_a_run_without_the_parts_teacher_keeps_schema_version_1():
    assert schema(["depth", "panoptic", "text", "caption"]) == SCHEMA
    assert schema(["parts"]).names[-4:] == ["parts_png", "part_instances_png", "part_persons",
                                            "parts_label_set"]


def test_the_teachers_result_round_trips_through_the_shard_codec():
    sample = filled()
    row = encode_sample(sample, columns=None)
    assert row["parts_label_set"] == "cihp" and row["part_persons"][1]["score"] == 0.6
    back = decode_row(row).plugins
    assert (back["part_map"] == parts_result().part_map).all()
    assert (back["part_instances"] == parts_result().instance_map).all()
    assert back["part_persons"][0]["box"].tolist() == [2, 4, 10, 20]
    empty = decode_row(encode_sample(make_sample(4, h=H, w=W), columns=None)).plugins
    assert "part_map" not in empty and "part_persons" not in empty  # no parts label: no value


def test_inspect_counts_the_share_of_person_pixels_with_a_part():
    row = encode_sample(filled(), columns=None)
    assert get_layer("parts").statistics(row) == {"part_share": pytest.approx(254 / 256)}
    assert get_layer("parts").statistics({"parts_png": None, "part_instances_png": None}) is None


def test_the_part_channels_are_opt_in(extra_off):
    from distill.student.targets import build_example, present_keys

    sample = filled()
    assert layout.channels() == 44 and "parts" not in present_keys()
    assert build_example(sample, 32, None, 4, (3.0, 1.0), None, None).target.shape[0] == 44
    layout.use_extra_layers(["parts"])
    assert layout.modalities()["parts"] == slice(44, 44 + len(PART_GROUPS))
    ex = build_example(sample, 32, None, 4, (3.0, 1.0), None, None)
    assert ex.target.shape[0] == 50 and ex.present["parts"]
    # the letterbox (32x24 into 32x32) pads 4 rows above: the head is rows 8..11, cols 2..9
    assert (ex.target[44 + HEAD, 8:12, 2:10] == 255).all() and ex.target[44 + HEAD].sum() == 255 * 32
    assert (ex.target[44 + TORSO, 12:24, 2:10] == 255).all()
    assert not build_example(make_sample(4, h=H, w=W), 32, None, 4, (3.0, 1.0), None,
                             None).present["parts"]


def test_extra_layers_names_only_opt_in_layers(extra_off):
    from distill.config import load_config

    with pytest.raises(ConfigError, match=r"student.extra_layers: 'depth' is no opt-in"):
        load_config("demo", overrides=['student.extra_layers=["depth"]'])
    cfg = load_config("demo", overrides=['student.extra_layers=["parts"]'])
    assert cfg.student.extra_layers == ["parts"]


def test_a_student_with_part_channels_predicts_and_draws_them(extra_off):
    from distill.config import load_config
    from distill.student.model import build_student

    cfg = load_config("demo", overrides=['student.extra_layers=["parts"]',
                                         "student.input_size=64"])
    model = build_student(cfg.student)
    assert model.head[-2].out_channels == 50
    probs = np.zeros((len(PART_GROUPS), H, W), np.float32)
    probs[HEAD, :4] = 0.9
    found = get_layer("parts").predicted({"parts": probs})
    assert found["layers"]["parts"].shape == (len(PART_GROUPS), H, W)
    layout.use_extra_layers(())
    assert build_student(load_config("demo").student).head[-2].out_channels == 44


def test_pictures_colour_each_part_and_outline_each_person():
    from distill.layers.form import from_sample
    from distill.layers.parts import OUTLINE, PART_COLORS

    labelled = from_sample(filled(), image=False)
    layer = get_layer("parts")
    assert layer.view_layers(labelled) == [(60, "parts")]
    rgba = layer.view_layer(labelled, "parts", (W, H))
    assert tuple(rgba[6, 5, :3]) == PART_COLORS[HEAD] and tuple(rgba[12, 20, :3]) == PART_COLORS[TORSO]
    assert tuple(rgba[4, 5, :3]) == OUTLINE and rgba[4, 5, 3] == 255  # the left person's top edge
    assert rgba[0, 0, 3] == 0  # nobody: transparent


def test_evaluate_scores_each_part_group_by_hdm_and_iou(extra_off):
    import torch

    from distill.student.metrics import Meter, measure, part_group_report

    assert part_group_report({}) is None  # the paper's student has no part channels
    layout.use_extra_layers(["parts"])
    from distill.student.targets import present_keys

    target = torch.zeros(1, 50, 4, 4, dtype=torch.uint8)
    target[0, 44 + HEAD, :2] = 255  # the teacher's head: 8 pixels
    maps = -torch.ones(1, 50, 4, 4)
    maps[0, 44 + HEAD, :1] = 1.0  # the student's: 4 of them
    maps[0, 44 + TORSO, 3, 3] = 1.0  # a torso pixel the teacher has not
    present = torch.tensor([[k == "parts" for k in present_keys()]])
    meter = Meter()
    measure(meter, {"maps": maps, "tokens": torch.zeros(1, 8, 300)}, target,
            torch.zeros(1, 8, 300), present)
    groups = part_group_report(meter.means())
    assert groups is not None
    assert groups["head"]["iou"] == pytest.approx(0.5) and groups["torso"]["iou"] == 0.0
    assert groups["head"]["hdm@0.1"] == pytest.approx(12 / 16) and groups["legs"]["iou"] is None


def test_show_draws_a_parts_panel_and_random_parts_teachers_carry_the_banner():
    from distill.layers.form import from_sample
    from distill.provenance import random_weight_roles, random_weights_warning
    from distill.viz import panel_boxes

    assert "parts" in panel_boxes(from_sample(filled()))
    roles = random_weight_roles({"parts": {"backend": "uniparser", "variant": "tiny"}})
    assert roles == ["parts"] and "the parts teacher was not pretrained" in \
        random_weights_warning(roles)


@pytest.mark.slow
def test_tiny_uniparser_flows_from_labelling_to_the_students_part_channels(tmp_path, ray_address,
                                                                            extra_off):
    """Issue 29's "done when", end to end: generate-labels with the tiny UniParser writes the
    parts columns (plain pyarrow reads them), a student with `student.extra_layers = ["parts"]`
    trains on them (its `loss/parts` logged), `evaluate` scores each part group and `show`
    draws the teacher's and the student's parts panels."""
    import json

    import pyarrow.parquet as pq

    from distill.api_labels import show
    from distill.api_student import evaluate
    from distill.config import load_config
    from distill.student.train import TrainOptions, train_student
    from pipelines.generate_labels import RunOptions, generate_labels
    from tests.conftest import label_config, make_coco7

    root = make_coco7(tmp_path / "coco")
    out = tmp_path / "labels"
    # only the parts teacher runs: the cheapest run that writes the layer
    off = [f"teachers.{role}.enabled=false" for role in ("depth", "panoptic", "text", "caption",
                                                          "pose")]
    cfg = label_config(root, "teachers.parts.enabled=true", "teachers.parts.variant=tiny", *off)
    generate_labels(cfg, RunOptions(out=out, live=False, limit=3))
    table = pq.read_table(out / "shards")
    assert {"parts_png", "part_instances_png", "part_persons", "parts_label_set"} \
        <= set(table.column_names)
    assert table.num_rows == 3 and set(table.column("parts_label_set").to_pylist()) == {"cihp"}

    train = load_config("demo", overrides=["train.epochs=1", 'student.extra_layers=["parts"]'])
    student = tmp_path / "student"
    train_student(train, TrainOptions(shards=out / "shards", out=student, progress=False))
    logged = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/parts" in entry["train"] for entry in logged)
    report = evaluate(student / "checkpoints" / "last", out / "shards").report
    assert set(report["parts"]) == set(PART_GROUPS)
    assert all(0.0 <= group["iou"] <= 1.0 for group in report["parts"].values())
    shard = sorted((out / "shards").glob("*.parquet"))[0]
    show(shard, row=0, checkpoint=str(student / "checkpoints" / "last"),
         out=tmp_path / "sheet.png")
    assert (tmp_path / "sheet.png").stat().st_size > 0
