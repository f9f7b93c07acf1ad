"""The dataset reader: COCO layout, plain folders, layout errors, unsafe paths."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.coco import open_dataset, resolve_inside
from distill.errors import DatasetLayoutError, UnsafePathError
from tests.conftest import write_coco


def test_synthetic_coco_records_sorted_with_people_and_captions(synthetic_coco):
    ds = open_dataset(synthetic_coco, "val2017")
    assert ds.kind == "coco" and [r.image_id for r in ds.records] == [1, 2, 3]
    r1 = ds.records[0]
    assert (r1.width, r1.height) == (40, 30) and Path(r1.path).is_file()
    assert r1.captions == ["A man riding a horse.", "A person on a brown horse."]
    (p,) = r1.persons
    assert p.keypoints.shape == (17, 3) and p.keypoints[0].tolist() == [10, 12, 2]
    assert p.bbox == (5, 6, 20, 22) and p.num_keypoints == 2 and not p.iscrowd
    assert ds.records[1].persons == [] and ds.problems == []


def test_layout_errors_name_the_missing_file_and_the_layout(tmp_path, synthetic_coco):
    (synthetic_coco / "annotations" / "captions_val2017.json").unlink()
    with pytest.raises(DatasetLayoutError, match=r"captions_val2017\.json.*\n.*COCO 2017 folder"):
        open_dataset(synthetic_coco, "val2017")
    with pytest.raises(DatasetLayoutError, match=r"person_keypoints_train2017\.json"):
        open_dataset(synthetic_coco, "train2017")
    with pytest.raises(DatasetLayoutError, match="is not a folder"):
        open_dataset(tmp_path / "nowhere", "val2017")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="no images"):
        open_dataset(tmp_path / "empty", "val2017")


def test_bad_entries_become_problems_not_crashes(tmp_path):
    images = [
        {"id": 1, "file_name": "000000000001.jpg", "width": 20, "height": 20},
        {"id": 2, "file_name": "../../etc/passwd", "width": 20, "height": 20, "write": False},
        {"id": 3, "file_name": "/etc/hostname", "width": 20, "height": 20, "write": False},
        {"id": 4, "file_name": "000000000004.jpg", "width": 20, "height": 20, "write": False},
    ]
    captions = [{"id": 1, "image_id": 1, "caption": "ok"},
                {"id": 2, "image_id": 99, "caption": "orphan"}]
    root = write_coco(tmp_path / "c", "val2017", images, [], captions)
    ds = open_dataset(root, "val2017")
    assert [r.image_id for r in ds.records] == [1]
    kinds = {p.image_id: p.error_type for p in ds.problems}
    assert kinds == {2: "UnsafePathError", 3: "UnsafePathError", 4: "FileNotFoundError",
                     99: "UnknownImageId"}
    assert "annotation 2 in captions_val2017.json" in next(
        p.message for p in ds.problems if p.image_id == 99)


def test_resolve_inside_rejects_escapes_including_symlinks(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"x")
    assert resolve_inside(root, "a.jpg") == str((root / "a.jpg").resolve())
    assert resolve_inside(root, "sub/../a.jpg") == str((root / "a.jpg").resolve())
    for bad in ("../a.jpg", "/etc/passwd", "sub/../../x.jpg", ""):
        with pytest.raises(UnsafePathError):
            resolve_inside(root, bad)
    os.symlink(tmp_path, root / "link")
    with pytest.raises(UnsafePathError, match="outside"):
        resolve_inside(root, "link/secret.jpg")
    # object stores: the same rules, checked on the key (no symlinks there)
    assert resolve_inside("s3://b/coco/val2017", "sub/../a.jpg") == "s3://b/coco/val2017/a.jpg"
    for bad in ("../a.jpg", "/etc/passwd", "s3://other/x.jpg", "sub/../../x.jpg", ".."):
        with pytest.raises(UnsafePathError):
            resolve_inside("s3://b/coco/val2017", bad)


def test_plain_folder_of_images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        if name.endswith("txt"):
            (folder / name).write_text("x")
        else:
            Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(folder / name)
    ds = open_dataset(folder, "")
    assert ds.kind == "folder"
    assert [(r.image_id, r.file_name) for r in ds.records] == [(1, "a.jpg"), (2, "b.png")]
    assert all(r.persons == [] and r.captions == [] for r in ds.records)
    # COCO-style numeric names keep their ids; a split sub-folder is used when present.
    (tmp_path / "p" / "val2017").mkdir(parents=True)
    for i in (42, 7):
        Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "p" / "val2017" / f"{i:012d}.jpg")
    assert [r.image_id for r in open_dataset(tmp_path / "p", "val2017").records] == [7, 42]


@pytest.mark.parametrize("split,count", [("train2017", 80), ("val2017", 79)])
def test_coco_mini_records_match_the_annotation_files(coco_mini, split, count):
    ds = open_dataset(coco_mini, split)
    assert len(ds.records) == count and ds.problems == []
    kp_doc = json.loads((coco_mini / "annotations" / f"person_keypoints_{split}.json").read_text())
    cap_doc = json.loads((coco_mini / "annotations" / f"captions_{split}.json").read_text())
    by_id = ds.by_id()
    assert set(by_id) == {i["id"] for i in kp_doc["images"]}
    n_caps = 0
    for ann in cap_doc["annotations"]:
        assert ann["caption"].strip() in by_id[ann["image_id"]].captions
        n_caps += 1
    assert sum(len(r.captions) for r in ds.records) == n_caps
    persons = [a for a in kp_doc["annotations"] if a["category_id"] == 1]
    assert sum(len(r.persons) for r in ds.records) == len(persons)
    for ann in persons:
        match = [p for p in by_id[ann["image_id"]].persons
                 if np.array_equal(p.keypoints.reshape(-1), np.asarray(ann["keypoints"], np.float32))
                 and p.bbox == tuple(ann["bbox"])]
        assert match, ann["id"]
    for r in ds.records:
        with Image.open(r.path) as im:
            assert im.size == (r.width, r.height)
