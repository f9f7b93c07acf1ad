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


def test_a_split_the_folder_lacks_lists_the_splits_it_has(synthetic_coco):
    """`--split val2071` on a folder with val2017 (and a second, complete split): one line
    naming the wrong split and both real ones; a split with one annotation file only is not a
    split."""
    from distill.coco import coco_splits

    ann = synthetic_coco / "annotations"
    for name in ("person_keypoints_train2017.json", "captions_train2017.json",
                 "captions_test2017.json"):
        (ann / name).write_text((ann / name.replace("train2017", "val2017")
                                 .replace("test2017", "val2017")).read_text())
    assert coco_splits(synthetic_coco) == ["train2017", "val2017"]
    with pytest.raises(DatasetLayoutError) as err:
        open_dataset(synthetic_coco, "val2071")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("split 'val2071' is not in ")
    assert "its splits are train2017, val2017 " in message


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


# ---------------------------------------------------------------------------------------------
# Every bad annotation entry is data: a Problem (its image quarantined), or left out and listed
# (no usable id), or — for a file unusable as a whole — one DatasetLayoutError line.


def _jpg(path: Path, w: int = 16, h: int = 12) -> None:
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def _write(root: Path, kp: dict, cap: dict, files: tuple[str, ...] = ()) -> Path:
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for name in files:
        _jpg(root / "val2017" / name)
    (root / "annotations" / "person_keypoints_val2017.json").write_text(json.dumps(kp))
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps(cap))
    return root


def _img(i, name: str, w=16, h=12) -> dict:
    return {"id": i, "file_name": name, "width": w, "height": h}


def _kp(ann_id: int, image_id, **kw) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "keypoints": [0] * 51,
            "num_keypoints": 0, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0, **kw}


def test_duplicate_image_ids_quarantine_every_entry_and_attach_nothing(tmp_path):
    files = ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg")
    same = [_img(1, "a.jpg"), _img(2, "b.jpg")]
    kp = {"images": [*same, _img(3, "c.jpg"), _img(3, "d.jpg")],  # two entries, one file
          "annotations": [_kp(10, 3), _kp(11, 4), _kp(12, 1)]}
    cap = {"images": [*same, _img(4, "d.jpg")], "annotations": [
        {"id": 20, "image_id": 3, "caption": "a cat"},
        {"id": 21, "image_id": 4, "caption": "a dog"},
        {"id": 22, "image_id": 1, "caption": "a bus"}]}
    kp["images"].append(_img(4, "e.jpg"))  # id 4: d.jpg in captions, e.jpg in keypoints
    ds = open_dataset(_write(tmp_path / "c", kp, cap, files), "val2017")
    # The same entry once in each file (as COCO's own files have it) is one entry.
    assert [r.image_id for r in ds.records] == [1, 2]
    assert ds.records[0].captions == ["a bus"] and len(ds.records[0].persons) == 1
    dup = {p.image_id: p for p in ds.problems}
    assert set(dup) == {3, 4} and {p.error_type for p in dup.values()} == {"DuplicateImageId"}
    assert "'c.jpg'" in dup[3].message and "'d.jpg'" in dup[3].message
    assert "images[2] in person_keypoints_val2017.json" in dup[3].message
    assert "'d.jpg'" in dup[4].message and "'e.jpg'" in dup[4].message
    assert "captions_val2017.json" in dup[4].message
    assert ds.dropped == []


def test_an_entry_equal_but_for_an_integer_written_as_text_is_the_same_entry(tmp_path):
    kp = {"images": [{"id": 5, "file_name": "a.jpg", "width": 16, "height": 12}],
          "annotations": [_kp(1, "5")]}
    cap = {"images": [{"id": "5", "file_name": "a.jpg", "width": "16", "height": 12.0}],
           "annotations": [{"id": 2, "image_id": 5, "caption": "x"}]}
    ds = open_dataset(_write(tmp_path / "c", kp, cap, ("a.jpg",)), "val2017")
    (r,) = ds.records
    assert (r.image_id, r.width, r.height) == (5, 16, 12)
    assert type(r.width) is int and len(r.persons) == 1 and r.captions == ["x"]
    assert ds.problems == [] and ds.dropped == []


def test_ids_that_are_not_int64_integers_are_left_out_and_listed_never_planned(tmp_path):
    huge = 2**63
    kp = {"images": [_img(1, "a.jpg"), _img(huge, "b.jpg"), _img("abc", "c.jpg"),
                     {"file_name": "d.jpg", "width": 16, "height": 12}, _img(True, "e.jpg"),
                     _img(2.5, "f.jpg"), _img(-(2**63) - 1, "g.jpg"), "not an object"],
          "annotations": [_kp(1, huge), _kp(2, 1), {"id": 3, "category_id": 1}]}
    cap = {"images": [_img(1, "a.jpg")], "annotations": [
        {"id": 4, "image_id": huge, "caption": "x"}, {"id": 5, "image_id": "abc", "caption": "y"},
        {"id": 6, "image_id": 1, "caption": "z"}, 7]}
    ds = open_dataset(_write(tmp_path / "c", kp, cap, ("a.jpg", "b.jpg", "c.jpg")), "val2017")
    assert [r.image_id for r in ds.records] == [1]
    assert ds.records[0].captions == ["z"] and len(ds.records[0].persons) == 1
    assert ds.problems == []  # nothing that would be planned or quarantined under an id
    by_where = {d.where: d for d in ds.dropped}
    assert len(ds.dropped) == 12
    big = by_where[f"images[1] (id {huge}) in person_keypoints_val2017.json"]
    assert big.error_type == "InvalidImageId" and "does not fit in 64 bits" in big.message
    assert '"b.jpg"' in big.message
    assert "'id' is \"abc\", not an integer" in by_where[
        'images[2] (id "abc") in person_keypoints_val2017.json'].message
    assert "it has no 'id'" in by_where["images[3] in person_keypoints_val2017.json"].message
    assert "true, not an integer" in by_where[
        "images[4] (id true) in person_keypoints_val2017.json"].message
    assert "not an object" in by_where["images[7] in person_keypoints_val2017.json"].message
    assert "it has no 'image_id'" in by_where[
        "annotations[2] (id 3) in person_keypoints_val2017.json"].message
    assert by_where["annotations[3] in captions_val2017.json"].error_type == "BadEntry"
    # Everything that reaches the plan or the quarantine fits their int64 columns.
    assert all(-(2**63) <= i < 2**63 for i in [r.image_id for r in ds.records] +
               [p.image_id for p in ds.problems])


def test_bad_fields_quarantine_their_image_with_the_field_and_the_value(tmp_path):
    files = tuple(f"{c}.jpg" for c in "abcdefg")
    kp = {"images": [_img(1, "a.jpg"), _img(2, "b.jpg"), _img(3, "c.jpg"),
                     _img(4, "d.jpg", w="424"), _img(5, "e.jpg", w="abc"), _img(6, "f.jpg", h=0),
                     {"id": 7, "width": 16, "height": 12}, _img(8, "g.jpg", w=None, h=None)],
          "annotations": [
              _kp(1, 1, keypoints=[0] * 50),
              _kp(2, 2, bbox=[1, 2, 3]),
              _kp(3, 3, keypoints=[0] * 50 + [None]),
              _kp(4, 3, category_id=2, keypoints="junk"),  # not a person: ignored as before
              _kp(5, 8, category_id="x"),
          ]}
    cap = {"images": [], "annotations": [
        {"id": 9, "image_id": 4, "caption": None}, {"id": 10, "image_id": 4, "caption": " ok "},
        {"id": 11, "image_id": 4, "caption": 42}]}
    ds = open_dataset(_write(tmp_path / "c", kp, cap, files), "val2017")
    (r,) = ds.records
    assert (r.image_id, r.width, r.height, r.captions) == (4, 424, 12, ["ok"])  # "424" → 424
    problems = {p.image_id: p for p in ds.problems}
    expected = {
        1: ("BadAnnotation", "'keypoints' has 50 values, not 51"),
        2: ("BadAnnotation", "'bbox' has 3 values, not 4"),
        3: ("BadAnnotation", "'keypoints'[50] is null, not a finite number"),
        5: ("BadImageEntry", "'width' is \"abc\", not an integer"),
        6: ("BadImageEntry", "'height' is 0"),
        7: ("BadImageEntry", "'file_name' is missing"),
        8: ("BadAnnotation", "'category_id' is \"x\", not an integer"),
    }
    assert {i: p.error_type for i, p in problems.items()} == {i: t for i, (t, _) in
                                                               expected.items()}
    for image_id, (_, words) in expected.items():
        assert words in problems[image_id].message, problems[image_id].message
    assert "annotations[0] (id 1) in person_keypoints_val2017.json" in problems[1].message
    # Null and non-text captions are left out (listed), the image keeps its other captions.
    assert [(d.error_type, d.where) for d in ds.dropped] == [
        ("NotACaption", "annotations[0] (id 9) in captions_val2017.json"),
        ("NotACaption", "annotations[2] (id 11) in captions_val2017.json")]
    assert "'caption' is null, not text" in ds.dropped[0].message


@pytest.mark.parametrize("images,annotations,words", [
    (None, [], "'images' is null, not a list of image entries"),
    ([], {"a": 1}, "'annotations' is {\"a\": 1}, not a list of annotation entries"),
    ("abc", [], "'images' is \"abc\", not a list"),
])  # fmt: skip
def test_an_annotation_file_unusable_as_a_whole_is_one_line_naming_it(tmp_path, images,
                                                                       annotations, words):
    good = {"images": [], "annotations": []}
    root = _write(tmp_path / "c", {"images": images, "annotations": annotations}, good)
    with pytest.raises(DatasetLayoutError) as info:
        open_dataset(root, "val2017")
    message = str(info.value)
    assert "\n" not in message and words in message
    assert "person_keypoints_val2017.json" in message


def test_a_directory_or_fifo_named_like_an_image_is_not_a_regular_file(tmp_path):
    root = _write(tmp_path / "c", {"images": [_img(1, "dir.jpg"), _img(2, "fifo.jpg"),
                                              _img(3, "gone.jpg")], "annotations": []},
                  {"images": [], "annotations": []})
    (root / "val2017" / "dir.jpg").mkdir()
    os.mkfifo(root / "val2017" / "fifo.jpg")
    ds = open_dataset(root, "val2017")
    got = {p.image_id: (p.error_type, p.message) for p in ds.problems}
    assert got[1][0] == "NotARegularFile" and "is not a regular file (a directory)" in got[1][1]
    assert got[2][0] == "NotARegularFile" and "(a FIFO (named pipe))" in got[2][1]
    assert got[3][0] == "FileNotFoundError" and "does not exist" in got[3][1]


def test_plain_folder_ids_fall_back_to_1_to_n_when_a_stem_is_no_int64(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("7.jpg", f"{2**63}.jpg"):
        _jpg(folder / name)
    ds = open_dataset(folder, "")
    assert sorted(r.image_id for r in ds.records) == [1, 2]
    assert all(r.exif_transpose for r in ds.records)  # plain folders: as a viewer shows them
    (folder / f"{2**63}.jpg").rename(folder / "\u00b2.jpg")  # "²".isdigit(), but no int
    assert sorted(r.image_id for r in open_dataset(folder, "").records) == [1, 2]
    (folder / "\u00b2.jpg").unlink()
    assert [r.image_id for r in open_dataset(folder, "").records] == [7]


def test_coco_records_keep_the_stored_pixels(synthetic_coco):
    assert not any(r.exif_transpose for r in open_dataset(synthetic_coco, "val2017").records)


def test_a_dataset_on_an_object_store_reports_the_same_problems(tmp_path, s3_bucket):
    from distill.config import DataConfig
    from pipelines.stages import Item, decode_items
    from tests.conftest import upload_folder

    kp = {"images": [_img(1, "a.jpg"), _img(2, "b.jpg"), _img(2, "c.jpg"), _img(2**63, "a.jpg"),
                     _img(3, "gone.jpg"), _img(4, "a.jpg", w="16")], "annotations": []}
    root = _write(tmp_path / "c", kp, {"images": [], "annotations": []},
                  ("a.jpg", "b.jpg", "c.jpg"))
    uri = upload_folder(root, f"{s3_bucket}/coco")
    ds = open_dataset(uri, "val2017")
    assert [r.image_id for r in ds.records] == [1, 4]
    assert ds.records[0].path == f"{uri}/val2017/a.jpg" and not ds.records[0].exif_transpose
    assert {p.image_id: p.error_type for p in ds.problems} == {
        2: "DuplicateImageId", 3: "FileNotFoundError"}
    assert [d.error_type for d in ds.dropped] == ["InvalidImageId"]
    items = [Item(r.image_id, "s", "val2017", ("depth",), r.file_name, r) for r in ds.records]
    decode_items(items, DataConfig(root=uri))
    assert all(it.ok and it.array.shape == (12, 16, 3) for it in items)
