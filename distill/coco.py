"""Dataset reader: a COCO 2017 folder (images + keypoint and caption annotations) or a plain
folder of images, into image records. Samples that cannot be used become `Problem`s, not errors.
The root may be a local path or a URI (`s3://bucket/coco`): the image folder is listed once,
and images are read later, by whichever node decodes them (`distill.storage`).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from distill.errors import DatasetLayoutError, UnsafePathError
from distill.labels.keypoints import NUM_JOINTS
from distill.storage import Location, StorageError

__all__ = [
    "IMAGE_SUFFIXES",
    "Dataset",
    "ImageRecord",
    "Person",
    "Problem",
    "open_dataset",
    "resolve_inside",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PERSON_CATEGORY = 1

COCO_LAYOUT = """\
A COCO 2017 folder looks like this (images may also sit in <root>/images/<split>/):
  <root>/<split>/000000000139.jpg ...
  <root>/annotations/person_keypoints_<split>.json   (required)
  <root>/annotations/captions_<split>.json           (required)
  <root>/annotations/instances_<split>.json          (optional; used by `distill run audit`)
A folder without annotations/ is read as a plain folder of images. See datasets/README.md."""


@dataclass
class Person:
    """One COCO person annotation, in original pixel coordinates."""

    keypoints: np.ndarray  # (17, 3) float32: x, y, v (v: 0 unlabelled, 1 occluded, 2 visible)
    bbox: tuple[float, float, float, float]  # x, y, w, h
    area: float
    iscrowd: bool
    num_keypoints: int


@dataclass
class ImageRecord:
    """One image and its ground truth."""

    image_id: int
    file_name: str  # as in the annotations, relative to the image folder
    path: str  # resolved, inside the dataset root: a local path or a URI
    width: int | None = None  # from the annotations; None for plain folders
    height: int | None = None
    persons: list[Person] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Problem:
    """A sample the reader could not use, and why (becomes a quarantine row)."""

    image_id: int
    stage: str
    error_type: str
    message: str


@dataclass
class Dataset:
    """The records of one split, sorted by image id, plus the problems met reading it."""

    root: Location
    split: str
    kind: Literal["coco", "folder"]
    image_dir: Location
    records: list[ImageRecord]
    problems: list[Problem]

    def by_id(self) -> dict[int, ImageRecord]:
        return {r.image_id: r for r in self.records}


def resolve_inside(root: str | Path | Location, name: str) -> str:
    """`root / name`, refusing names that escape `root` (absolute paths, `..`, and on a local
    disk symlinks out). Returns a local path or a URI."""
    if not name or "\x00" in name:
        raise UnsafePathError(f"file name {name!r} is empty or contains NUL")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or "://" in name:
        raise UnsafePathError(f"file name {name!r} is absolute; it must be relative to {root}")
    loc = Location(root)
    if not loc.is_local:  # no symlinks on object stores: a lexical check is the whole check
        target = posixpath.normpath(posixpath.join(loc.path, name.replace("\\", "/")))
        if not (target + "/").startswith(loc.path.rstrip("/") + "/") or target == loc.path:
            raise UnsafePathError(f"file name {name!r} resolves to {target}, outside {loc}")
        return f"{loc.scheme}://{target}"
    base = os.path.realpath(loc.path)
    target = os.path.realpath(os.path.join(base, name))
    if os.path.commonpath([base, target]) != base:
        raise UnsafePathError(f"file name {name!r} resolves to {target}, outside {base}")
    return target


def open_dataset(root: str | Path | Location, split: str) -> Dataset:
    """Read `root` as a COCO folder (when it has `annotations/`) or as a plain image folder."""
    try:
        loc = Location(root)
        is_dir = loc.is_dir()
    except StorageError as exc:
        raise DatasetLayoutError(f"dataset root {str(root)!r} cannot be read: {exc}") from exc
    if not is_dir:
        raise DatasetLayoutError(f"dataset root {str(root)!r} is not a folder.\n{COCO_LAYOUT}")
    if (loc / "annotations").is_dir():
        return _read_coco(loc, split)
    return _read_folder(loc, split)


def _image_dir(root: Location, split: str) -> Location:
    for candidate in (root / split, root / "images" / split):
        if candidate.is_dir():
            return candidate
    raise DatasetLayoutError(
        f"no image folder for split {split!r}: neither {root / split} nor "
        f"{root / 'images' / split} exists.\n{COCO_LAYOUT}"
    )


def _load_json(path: Location) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetLayoutError(f"missing annotation file {path}.\n{COCO_LAYOUT}")
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, StorageError) as exc:
        raise DatasetLayoutError(f"cannot read annotation file {path}: {exc}") from exc
    if not isinstance(doc, dict) or "images" not in doc or "annotations" not in doc:
        raise DatasetLayoutError(
            f"{path} is not a COCO annotation file (it needs 'images' and 'annotations')"
        )
    return doc


def _read_coco(root: Location, split: str) -> Dataset:
    ann_dir = root / "annotations"
    kp_path = ann_dir / f"person_keypoints_{split}.json"
    cap_path = ann_dir / f"captions_{split}.json"
    missing = [p for p in (kp_path, cap_path) if not p.is_file()]
    if missing:
        raise DatasetLayoutError(
            f"missing annotation file(s): {', '.join(str(p) for p in missing)}.\n{COCO_LAYOUT}"
        )
    image_dir = _image_dir(root, split)
    kp_doc, cap_doc = _load_json(kp_path), _load_json(cap_path)
    present = _listing(image_dir)

    problems: list[Problem] = []
    images: dict[int, dict[str, Any]] = {}
    for doc in (kp_doc, cap_doc):
        for img in doc["images"]:
            images.setdefault(int(img["id"]), img)

    persons: dict[int, list[Person]] = {}
    for ann in kp_doc["annotations"]:
        if ann.get("category_id", PERSON_CATEGORY) != PERSON_CATEGORY:
            continue
        image_id = int(ann["image_id"])
        if image_id not in images:
            problems.append(_unknown_image(ann, kp_path.name))
            continue
        persons.setdefault(image_id, []).append(_person(ann))
    captions: dict[int, list[str]] = {}
    for ann in cap_doc["annotations"]:
        image_id = int(ann["image_id"])
        if image_id not in images:
            problems.append(_unknown_image(ann, cap_path.name))
            continue
        captions.setdefault(image_id, []).append(str(ann["caption"]).strip())

    records = []
    for image_id in sorted(images):
        img = images[image_id]
        record = _record(image_dir, image_id, str(img.get("file_name", "")), problems, present)
        if record is None:
            continue
        record.width, record.height = img.get("width"), img.get("height")
        record.persons = persons.get(image_id, [])
        record.captions = captions.get(image_id, [])
        records.append(record)
    logger.info("read %d %s records from %s (%d problems)", len(records), split, root,
                len(problems))
    return Dataset(root, split, "coco", image_dir, records, problems)


def _unknown_image(ann: dict[str, Any], source: str) -> Problem:
    return Problem(
        image_id=int(ann["image_id"]),
        stage="read",
        error_type="UnknownImageId",
        message=f"annotation {ann.get('id')} in {source} refers to image id {ann['image_id']}, "
        "which no 'images' entry lists",
    )


def _person(ann: dict[str, Any]) -> Person:
    kp = np.asarray(ann.get("keypoints") or [0.0] * (3 * NUM_JOINTS), np.float32)
    kp = kp.reshape(NUM_JOINTS, 3)
    x, y, w, h = (float(v) for v in ann.get("bbox", (0, 0, 0, 0)))
    return Person(
        keypoints=kp,
        bbox=(x, y, w, h),
        area=float(ann.get("area", w * h)),
        iscrowd=bool(ann.get("iscrowd", 0)),
        num_keypoints=int(ann.get("num_keypoints", int((kp[:, 2] > 0).sum()))),
    )


def _listing(image_dir: Location) -> set[str] | None:
    """Names of the files directly in an object-store image folder (one listing instead of a
    request per image); None on a local disk, where each file is checked as it is resolved."""
    return None if image_dir.is_local else {f.name for f in image_dir.files()}


def _record(
    image_dir: Location, image_id: int, file_name: str, problems: list[Problem],
    present: set[str] | None = None,
) -> ImageRecord | None:
    try:
        path = resolve_inside(image_dir, file_name)
    except UnsafePathError as exc:
        problems.append(Problem(image_id, "read", "UnsafePathError", str(exc)))
        return None
    if present is not None and "/" not in file_name.strip("/"):
        exists = file_name in present
    else:
        exists = Location(path).is_file()
    if not exists:
        problems.append(Problem(image_id, "read", "FileNotFoundError", f"{path} does not exist"))
        return None
    return ImageRecord(image_id=image_id, file_name=file_name, path=path)


def _read_folder(root: Location, split: str) -> Dataset:
    image_dir = root / split if split and (root / split).is_dir() else root
    names = [f.name for f in image_dir.files() if f.suffix.lower() in IMAGE_SUFFIXES]
    if not names:
        raise DatasetLayoutError(
            f"{image_dir} has no annotations/ folder and no images "
            f"({', '.join(IMAGE_SUFFIXES)}).\n{COCO_LAYOUT}"
        )
    problems: list[Problem] = []
    present = _listing(image_dir)
    records = [
        r for r in (_record(image_dir, i, n, problems, present)
                    for i, n in zip(_folder_ids(names), names, strict=True))
        if r is not None
    ]
    records.sort(key=lambda r: r.image_id)
    return Dataset(root, split or image_dir.name, "folder", image_dir, records, problems)


def _folder_ids(names: Iterable[str]) -> list[int]:
    """COCO-style numeric stems keep their number; otherwise 1..N in sorted-name order."""
    names = list(names)
    stems = [Path(n).stem for n in names]
    if all(s.isdigit() for s in stems) and len(set(map(int, stems))) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(names) + 1))
