"""AP^p, AP^p_vol and PCP on crafted people, against values computed by hand (issue 29;
upstream semantics: cjm-sfw/Uniparser mmdet/core/evaluation/eval_mhp.py)."""

from __future__ import annotations

import numpy as np
import pytest

from distill.labels.parts import CIHP_PARTS, MHP_PARTS, PART_GROUPS, group_map, group_table
from distill.parts_metrics import THRESHOLDS, parsing_scores, part_ious, persons_of, voc_ap


def m(*ids: int) -> np.ndarray:
    return np.array([ids], np.uint8)  # a 1 x N part map


def test_part_iou_is_per_class_with_background_and_nan_for_absent_classes():
    ious = part_ious(m(0, 1, 2, 2), m(0, 1, 1, 2), 4)
    # background 1/1, class 1: 1 of 2, class 2: 1 of 2, class 3 in neither
    assert ious[:3].tolist() == [1.0, 0.5, 0.5] and np.isnan(ious[3])


def test_one_person_is_a_hit_up_to_its_mean_iou_and_pcp_counts_parts_strictly_above():
    scores = parsing_scores([[(m(0, 1, 2, 2), 0.9)]], [[m(0, 1, 1, 2)]], 3)
    # mean IoU (1 + 0.5 + 0.5) / 3 = 2/3: a true positive for t = 0.1 … 0.6 only
    assert scores.ap == (1.0,) * 6 + (0.0,) * 3
    assert scores.ap50 == 1.0 and scores.ap_vol == pytest.approx(6 / 9)
    # both parts have IoU 0.5: not above 0.5, above 0.4
    assert scores.pcp50 == 0.0 and scores.pcp[THRESHOLDS.index(0.4)] == 1.0
    assert scores.mean_iou == pytest.approx(2 / 3)


def test_ranking_duplicates_and_recall_over_every_person():
    truth = [[m(1, 1, 0, 0), m(0, 0, 2, 2)]]
    preds = [[(m(0, 0, 2, 0), 0.7), (m(1, 1, 0, 0), 0.9), (m(1, 1, 0, 0), 0.8)]]
    scores = parsing_scores(preds, truth, 3)
    # 0.9: person A exactly (IoU 1); 0.8: A again, a false positive; 0.7: B at (2/3 + 1/2) / 2
    # = 7/12. t <= 0.5: TP FP TP → VOC AP 0.5 · 1 + 0.5 · 2/3 = 5/6; t >= 0.6: TP FP FP → 1/2
    assert scores.ap == pytest.approx((5 / 6,) * 5 + (0.5,) * 4)
    assert scores.ap_vol == pytest.approx(37 / 54)
    # PCP_50: A's one part IoU 1 → 1; B's part IoU 1/2, not above 0.5 → 0
    assert scores.pcp50 == pytest.approx(0.5) and scores.pcp[0] == pytest.approx(1.0)
    assert (scores.people, scores.predictions) == (2, 3)


def test_predictions_without_truth_are_false_positives_and_empty_people_do_not_count():
    truth = [[m(1, 1, 0, 0), m(0, 0, 0, 0)], []]
    preds = [[(m(1, 1, 0, 0), 0.5)], [(m(1, 0, 0, 0), 0.9)]]
    scores = parsing_scores(preds, truth, 3)
    # FP (0.9, no truth) then TP: recall 0, 1; precision 0, 1/2 → AP 1/2; one person
    assert scores.people == 1 and scores.ap50 == pytest.approx(0.5) and scores.pcp50 == 1.0
    assert parsing_scores([[]], [[]], 3).ap50 == 0.0


def test_voc_ap_is_the_area_under_the_precision_envelope():
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(5 / 6)


def test_persons_of_splits_a_part_map_by_instance():
    parts, inst = m(1, 2, 3, 0), m(1, 1, 2, 0)
    a, b = persons_of(parts, inst, 2)
    assert a.tolist() == [[1, 2, 0, 0]] and b.tolist() == [[0, 0, 3, 0]]


def test_label_sets_and_groups():
    assert len(CIHP_PARTS) == 20 and len(MHP_PARTS) == 59
    assert CIHP_PARTS[13] == "face" and MHP_PARTS[3] == "face" and MHP_PARTS[58].startswith("other-lower")
    head, feet = PART_GROUPS.index("head") + 1, PART_GROUPS.index("feet") + 1
    assert group_map(np.array([[13, 19, 0]], np.uint8), "cihp").tolist() == [[head, feet, 0]]
    # every CIHP part has a group; MHP's carried objects (ball, umbrella) have none
    assert (group_table("cihp")[1:20] > 0).all()
    assert group_table("mhp")[MHP_PARTS.index("ball")] == 0


def test_ground_truth_in_either_layout_and_the_audit_scores_the_teacher(tmp_path):
    from PIL import Image

    from distill.audit_parts import PartsAudit, load_parts_gt
    from distill.errors import DistillError
    from distill.shards import Sample

    mhp, cihp = tmp_path / "mhp", tmp_path / "cihp"
    (cihp / "Category_ids").mkdir(parents=True)
    (cihp / "Human_ids").mkdir()
    mhp.mkdir()
    a, b = np.array([[1, 1, 0, 0]], np.uint8), np.array([[0, 0, 2, 2]], np.uint8)
    Image.fromarray(a).save(mhp / "7_02_01.png")
    Image.fromarray(np.stack([b] * 3, -1)).save(mhp / "7_02_02.png")  # RGB: first channel
    Image.fromarray(a + b).save(cihp / "Category_ids" / "7.png")
    Image.fromarray(np.array([[1, 1, 2, 2]], np.uint8)).save(cihp / "Human_ids" / "7.png")
    for root in (mhp, cihp):
        got = load_parts_gt(root, "7.jpg")
        assert got is not None and [g.tolist() for g in got] == [a.tolist(), b.tolist()]
    assert load_parts_gt(mhp, "8.jpg") is None

    sample = Sample(image_id=7, file_name="7.jpg", split="val", width=4, height=1, image=b"")
    sample.plugins.update(part_map=a + b, part_instances=np.array([[1, 1, 2, 0]], np.uint8),
                          part_persons=[{"score": 0.9}, {"score": 0.7}], parts_label_set="cihp")
    audit = PartsAudit(mhp)
    audit.add(sample)
    audit.add(Sample(image_id=9, file_name="9.jpg", split="val", width=4, height=1, image=b""))
    report = audit.report()
    # person A exactly; person B half (background 2/3, part 2 1/2 over 20 classes → 7/12)
    assert report["AP^p_50"] == pytest.approx(1.0) and report["PCP_50"] == pytest.approx(0.5)
    assert (report["images"], report["rows_without_parts"]) == (1, 1)
    with pytest.raises(DistillError, match="--parts-gt"):
        PartsAudit(tmp_path / "none")
