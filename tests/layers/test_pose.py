"""The pose layer (issue 28): which boxes the pose teacher gets, the `teacher_persons` column
(only in the shards of runs with the pose teacher), and the student's joints and PAFs drawn from
the teacher's people as `train.pose_source` says."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from distill.coco import Person
from distill.labels.pose import (
    TeacherPerson,
    gt_boxes,
    panoptic_boxes,
    pose_boxes,
    training_persons,
)
from distill.shards import Sample, ShardWriter, iter_samples, make_metadata
from distill.student.targets import build_example

S = 32


def _person(x0: float, y0: float, crowd: bool = False) -> Person:
    kp = np.zeros((17, 3), np.float32)
    kp[:5] = [[x0 + 5, y0 + 5, 2]] * 5
    return Person(keypoints=kp, bbox=(x0, y0, 20.0, 30.0), area=600.0, iscrowd=crowd,
                  num_keypoints=5)


def _seen(scores: list[float]) -> TeacherPerson:
    """A teacher's person in a 64 x 48 image, its joints spread over it with these scores."""
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0] = np.linspace(8, 56, 17)
    kp[:, 1] = np.linspace(6, 42, 17)
    kp[:, 2] = scores
    return TeacherPerson(box=np.array([4, 2, 60, 46], np.float32), keypoints=kp, score=0.5,
                         box_source="detector")


def _photo() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 150)).save(buffer, "PNG")
    return buffer.getvalue()


def test_boxes_come_from_annotations_else_panoptic_people_else_the_backend():
    people = [_person(4, 5), _person(30, 2, crowd=True)]
    assert gt_boxes(people).tolist() == [[4, 5, 24, 35]]  # crowd left out, xywh → xyxy
    class_map = np.full((80, 100), 255, np.uint8)
    class_map[10:50, 5:40] = 1  # a person, 40 x 35
    class_map[20:70, 60:90] = 1  # another, 50 x 30
    class_map[0:5, 95:100] = 1  # a 25-pixel fragment: too small to be a person
    class_map[60:80, 0:20] = 3  # a car
    # largest first: 1500 px, then 1400
    assert panoptic_boxes(class_map).tolist() == [[60, 20, 90, 70], [5, 10, 40, 50]]
    boxes, sources = pose_boxes(True, people, class_map)
    assert boxes.tolist() == [[4, 5, 24, 35]] and sources == ["gt"]
    boxes, sources = pose_boxes(True, [], class_map)  # annotated, nobody there: nobody
    assert boxes.shape == (0, 4) and sources == []
    boxes, sources = pose_boxes(False, [], class_map)
    assert len(boxes) == 2 and sources == ["panoptic", "panoptic"]
    assert pose_boxes(False, [], None) == (None, [])


def test_the_boxes_setting_skips_panoptic_people_or_every_given_box():
    """`teachers.pose.boxes`: "gt" never takes the panoptic teacher's people (the demo's is
    random), "detector" ignores the annotations too (the teacher judged on its own boxes)."""
    people = [_person(4, 5)]
    class_map = np.full((80, 100), 255, np.uint8)
    class_map[10:50, 5:40] = 1
    boxes, sources = pose_boxes(True, people, class_map, "gt")
    assert boxes.tolist() == [[4, 5, 24, 35]] and sources == ["gt"]
    assert pose_boxes(False, [], class_map, "gt") == (None, [])
    assert pose_boxes(True, people, class_map, "detector") == (None, [])
    assert pose_boxes(False, [], class_map, "detector") == (None, [])


def test_pose_source_picks_whose_people_are_learned():
    gt, seen = [_person(4, 5)], [_seen([0.9] * 4 + [0.1] * 13)]
    assert training_persons(gt, seen, "gt", 0.3) is gt
    assert training_persons(gt, seen, "gt+teacher", 0.3) is gt
    (taught,) = training_persons([], seen, "gt+teacher", 0.3)
    assert taught.num_keypoints == 4 and taught.keypoints[:4, 2].tolist() == [2] * 4
    assert not taught.keypoints[4:].any()  # below the threshold: absent
    assert len(training_persons(gt, seen, "teacher", 0.3)) == 1
    assert training_persons([], None, "gt+teacher", 0.3) == []  # the teacher did not run


@pytest.mark.parametrize(("source", "drawn"), [("gt+teacher", True), ("teacher", True),
                                                ("gt", False)])
def test_a_plain_image_has_joint_targets_from_the_teacher(source, drawn):
    """A plain folder's image has no annotated people: with the teacher's, its joint heatmaps
    and PAFs are drawn exactly as ground truth's would be; with `gt` they stay empty."""
    sample = Sample(image_id=1, file_name="a.png", split="val2017", width=64, height=48,
                    image=_photo(), teacher_persons=[_seen([0.8] * 17)])
    sample.persons = training_persons(sample.persons, sample.teacher_persons, source, 0.3)
    example = build_example(sample, S, None, 4, (5.0, 2.0), None, None)
    joints, pafs = example.target[:17], example.target[17:29]
    assert bool(joints.any()) is drawn and bool(pafs.any()) is drawn
    assert example.present["joints"]  # present either way: no people is a label too
    if drawn:  # the same targets as a ground-truth person with those joints visible
        (person,) = sample.persons
        truth = Sample(image_id=1, file_name="a.png", split="val2017", width=64, height=48,
                       image=_photo(), persons=[person])
        same = build_example(truth, S, None, 4, (5.0, 2.0), None, None)
        assert np.array_equal(same.target, example.target)


def test_the_column_is_written_only_by_runs_with_the_pose_teacher(tmp_path):
    sample = Sample(image_id=1, file_name="a.png", split="val2017", width=64, height=48,
                    image=_photo(), teacher_persons=[_seen([0.25] * 17)])
    with ShardWriter(tmp_path / "pose.parquet", make_metadata("f", {}), roles=("pose",)) as w:
        w.write(sample)
    with ShardWriter(tmp_path / "none.parquet", make_metadata("f", {}),
                     roles=("depth",)) as w:
        w.write(sample)
    assert pq.read_schema(tmp_path / "pose.parquet").names[-1] == "teacher_persons"
    assert "teacher_persons" not in pq.read_schema(tmp_path / "none.parquet").names
    (back,) = iter_samples(tmp_path / "pose.parquet")
    (person,) = back.teacher_persons
    assert person.box_source == "detector" and person.score == 0.5
    assert np.array_equal(person.keypoints, sample.teacher_persons[0].keypoints)
    assert np.array_equal(person.box, [4, 2, 60, 46])
    (without,) = iter_samples(tmp_path / "none.parquet")
    assert without.teacher_persons is None  # an older or pose-less shard reads as "not run"


def test_inspect_counts_people_per_source(tmp_path):
    from distill.inspect_qa import qa_statistics
    from distill.storage import Location

    rows = [Sample(image_id=i, file_name=f"{i}.png", split="val2017", width=64, height=48,
                   image=_photo()) for i in (1, 2, 3)]
    rows[0].persons = [_person(4, 5), _person(30, 2)]
    rows[0].teacher_persons = [_seen([0.5] * 17), _seen([0.5] * 17)]
    for p in rows[0].teacher_persons:
        p.box_source = "gt"
    rows[1].teacher_persons = [_seen([0.5] * 17)]  # "detector"
    rows[2].teacher_persons = []  # the teacher ran and saw nobody
    with ShardWriter(tmp_path / "pose.parquet", make_metadata("f", {}), roles=("pose",)) as w:
        for row in rows:
            w.write(row)
    with ShardWriter(tmp_path / "plain.parquet", make_metadata("f", {})) as w:
        w.write(rows[0])  # a shard of a run without the pose teacher: no such column
    people = qa_statistics([Location(tmp_path / "pose.parquet"),
                            Location(tmp_path / "plain.parquet")], None)["people"]
    assert people["total"] == 4  # ground truth: 2 + 2
    assert people["teacher"] == {"rows": 3, "total": 3,
                                 "by_box_source": {"detector": 1, "gt": 2}}


@pytest.mark.slow
def test_a_plain_folder_labelled_with_the_pose_teacher_gives_joint_targets(tmp_path,
                                                                          ray_address):
    """generate-labels on a plain folder (no annotations) with the tiny vitpose teacher alone:
    every row has the teacher's people (the whole image, as vitpose has no detector) with
    provenance, and the student's loader draws joints from them with `gt+teacher`, none with
    `gt`."""
    from PIL import Image

    from distill.config import TrainConfig
    from distill.shards import read_metadata
    from distill.student.data import ShardStream
    from pipelines.generate_labels import RunOptions, generate_labels
    from tests.conftest import label_config, shard_rows

    folder = tmp_path / "photos" / "val2017"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)).save(folder / f"{k}.png")
    off = [f"teachers.{role}.enabled=false" for role in ("depth", "panoptic", "text", "caption")]
    pose = ["teachers.pose.enabled=true", "teachers.pose.backend=vitpose",
            "teachers.pose.variant=tiny",
            'teachers.pose.checkpoint=""', "teachers.pose.batch_size=2"]
    out = tmp_path / "out"
    generate_labels(label_config(tmp_path / "photos", "data.split=val2017", *off, *pose),
                    RunOptions(out=out, live=False))
    rows = shard_rows(out)
    assert len(rows) == 2
    for sample in rows.values():
        assert not sample.persons
        (person,) = sample.teacher_persons
        assert person.box_source == "image"
        assert person.box.tolist() == [0, 0, 64, 48]
    shard = next((out / "shards").glob("*.parquet"))
    assert read_metadata(shard)["provenance"]["pose"]["backend"] == "vitpose"

    def joints(source: str) -> int:
        stream = ShardStream(out, 32, config=TrainConfig(pose_source=source), train=False)
        return sum(int(ex["target"][:17].bool().sum()) for ex in stream)

    assert joints("gt+teacher") > 0 and joints("teacher") > 0
    assert joints("gt") == 0


def _shard_of_teacher_people(path, variant: str):
    """A one-row shard of a plain 120 x 90 photo with one teacher person (a detector box) and
    the pose teacher's provenance of `variant`."""
    from tests.test_viz import make_labelled_sample

    sample = make_labelled_sample(1, people=0)
    person = _seen([0.9] * 17)
    person.keypoints[:, :2] *= 1.5  # the 64 x 48 figure spread over 120 x 90
    person.box = np.array([6, 3, 110, 80], np.float32)
    sample.teacher_persons = [person]
    prov = {"pose": {"backend": "x", "variant": variant, "checkpoint": "", "revision": "main",
                     "weights_sha256": {}}}
    with ShardWriter(path, make_metadata("f" * 16, prov), roles=("pose",)) as w:
        w.write(sample)
    return path, sample


def test_show_and_view_draw_the_teacher_people_in_their_own_style(tmp_path):
    """A row with teacher people gets a "people: pose teacher" panel (white limbs, hollow
    joints, the box in its source's colour) after ground truth's; a row of a run without the
    pose teacher keeps its sheet. The viewer lists the layer and draws it; a random-weight pose
    teacher puts the red banner on the sheet."""
    from distill.layers.form import from_sample
    from distill.layers.pose import BOX_COLORS, TEACHER_COLOR, VIEW_NAME
    from distill.view.render import layer_names, layer_png
    from distill.viz import row_warning, sheet_for_row, sheet_layout

    path, sample = _shard_of_teacher_people(tmp_path / "val2017-00000.parquet", "tiny")
    labels = from_sample(next(iter(iter_samples(path))))
    assert len(labels.teacher_people) == 1
    layout = sheet_layout(labels, banner=True)
    keys = [p.key for p in layout.panels]
    assert keys[-1] == "teacher_people" and keys.index("people") < keys.index("teacher_people")
    pixels = np.asarray(sheet_for_row(path, 0).convert("RGB")).astype(int)
    left, top, right, bottom = layout.boxes["teacher_people"]
    panel = pixels[top:bottom, left:right]
    white = (panel == TEACHER_COLOR).all(axis=-1).mean()
    boxed = (panel == BOX_COLORS["detector"]).all(axis=-1).mean()
    assert white > 0.005 and boxed > 0.005  # the skeleton and its detector box
    ground_truth = pixels[slice(*layout.boxes["people"][1::2]),
                          slice(*layout.boxes["people"][0::2])]
    assert (ground_truth == TEACHER_COLOR).all(axis=-1).mean() < white / 10
    assert "pose teacher was not pretrained" in row_warning(path, 0)

    sample.teacher_persons = None  # a run without the pose teacher: the sheet it always had
    plain = from_sample(sample)
    assert "teacher_people" not in [p.key for p in sheet_layout(plain).panels]

    assert VIEW_NAME in layer_names(labels) and VIEW_NAME not in layer_names(plain)
    names = layer_names(labels)
    assert names.index("people") < names.index(VIEW_NAME)
    import io

    from PIL import Image

    drawn = np.asarray(Image.open(io.BytesIO(layer_png(labels, VIEW_NAME, (240, 180)))))
    assert drawn.shape == (180, 240, 4)
    assert (drawn[..., 3] > 0).mean() > 0.01 and (drawn[..., 3] == 0).mean() > 0.5


@pytest.mark.slow
def test_a_plain_folder_labelled_with_the_demo_preset_trains_on_blazepose_people(tmp_path,
                                                                                ray_address):
    """Issue 28's "done when": the demo preset (every teacher, blazepose for pose) on a plain
    folder of scikit-image's photos finds the astronaut with its own detector (the demo's
    random panoptic teacher gives no boxes), stores real keypoints, and a student trains on
    joint targets drawn from them."""
    import shutil

    from distill.config import load_config
    from distill.demo import _skimage_data_dir
    from distill.shards import read_metadata
    from distill.student.data import ShardStream
    from distill.student.train import TrainOptions, train_student
    from pipelines.generate_labels import RunOptions, generate_labels
    from tests.conftest import label_config, shard_rows

    pytest.importorskip("ai_edge_litert")
    folder = tmp_path / "photos" / "val2017"
    folder.mkdir(parents=True)
    for name in ("astronaut.png", "chelsea.png"):
        shutil.copy(_skimage_data_dir() / name, folder / name)
    out = tmp_path / "out"
    cfg = label_config(tmp_path / "photos", "data.split=val2017")
    assert cfg.teachers.pose.backend == "blazepose"
    generate_labels(cfg, RunOptions(out=out, live=False))
    rows = {s.file_name: s for s in shard_rows(out).values()}
    assert rows["chelsea.png"].teacher_persons == []
    (astronaut,) = rows["astronaut.png"].teacher_persons
    assert astronaut.box_source == "detector" and astronaut.score > 0.5
    nose = astronaut.keypoints[0]  # the hand-placed nose of the demo set is at (224, 128)
    assert nose[2] > 0.5 and np.hypot(nose[0] - 224, nose[1] - 128) < 8
    shard = next((out / "shards").glob("*.parquet"))
    prov = read_metadata(shard)["provenance"]["pose"]
    assert (prov["backend"], prov["variant"]) == ("blazepose", "pretrained")

    train = load_config("demo", overrides=["train.epochs=1"])
    stream = ShardStream(out, 32, config=train.train, train=False)
    assert sum(int(ex["target"][:17].bool().sum()) for ex in stream) > 0
    train_student(train, TrainOptions(shards=out / "shards", out=tmp_path / "student",
                                      progress=False))
    assert (tmp_path / "student" / "checkpoints" / "last").is_dir()
