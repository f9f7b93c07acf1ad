"""Dataset reader: a COCO 2017 folder (images + keypoint and caption annotations) or a plain
folder of images, into image records. Samples that cannot be used become `Problem`s, not errors.
The root may be a local path or a URI (`s3://bucket/coco`): the image folder is listed once,
and images are read later, by whichever node decodes them (`distill.storage`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import re
import stat
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from distill.errors import DatasetLayoutError, StorageError, UnsafePathError
from distill.labels.keypoints import NUM_JOINTS
from distill.storage import Location

__all__ = [
    "IMAGE_SUFFIXES",
    "Dataset",
    "Dropped",
    "ImageRecord",
    "Person",
    "Problem",
    "coco_splits",
    "dataset_kind",
    "follows_exif_orientation",
    "local_file_problem",
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
    # Decode with the EXIF orientation applied (plain folders: the pixels a viewer shows), not
    # the stored pixels (COCO: its annotations refer to those). See `follows_exif_orientation`.
    exif_transpose: bool = False


@dataclass(frozen=True)
class Problem:
    """A sample the reader could not use, and why (becomes a quarantine row)."""

    image_id: int
    stage: str
    error_type: str
    message: str


@dataclass(frozen=True)
class Dropped:
    """An annotation entry the reader left out without quarantining an image: one that names no
    usable image id (missing, not an integer, beyond int64 — no quarantine row can carry it) or
    a caption that is not text. `distill data check` lists them; reading logs a warning."""

    source: str  # the annotation file's name
    where: str  # the entry, e.g. "images[3] (id 'abc') in captions_val2017.json"
    error_type: str  # InvalidImageId | BadEntry | NotACaption
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
    dropped: list[Dropped] = field(default_factory=list)
    _by_id: dict[int, ImageRecord] | None = field(default=None, init=False, repr=False,
                                                  compare=False)
    _problem_by_id: dict[int, Problem] | None = field(default=None, init=False, repr=False,
                                                      compare=False)

    def by_id(self) -> dict[int, ImageRecord]:
        """Image id → record. Built once (one pass over the records) and shared: do not
        change it, nor `records` once it is built."""
        if self._by_id is None:
            self._by_id = {r.image_id: r for r in self.records}
        return self._by_id

    def problem_by_id(self) -> dict[int, Problem]:
        """Image id → the first problem met reading it, built once like `by_id`."""
        if self._problem_by_id is None:
            self._problem_by_id = {}
            for p in self.problems:
                self._problem_by_id.setdefault(p.image_id, p)
        return self._problem_by_id


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
    if dataset_kind(loc) == "coco":
        return _read_coco(loc, split)
    return _read_folder(loc, split)


def coco_splits(root: str | Path | Location) -> list[str]:
    """The splits a COCO folder has, sorted: those with both annotation files
    (`person_keypoints_<split>.json` and `captions_<split>.json`)."""
    ann_dir = Location(root) / "annotations"
    if not ann_dir.is_dir():
        return []
    names = {f.name for f in ann_dir.files("*.json")}
    prefix, suffix = "person_keypoints_", ".json"
    return sorted(n[len(prefix):-len(suffix)] for n in names
                  if n.startswith(prefix) and f"captions_{n[len(prefix):]}" in names)


def dataset_kind(root: str | Path | Location) -> Literal["coco", "folder"]:
    """How `open_dataset` reads a dataset root: as COCO when it has `annotations/`, else as a
    plain folder of images."""
    return "coco" if (Location(root) / "annotations").is_dir() else "folder"


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
    for key in ("images", "annotations"):
        if not isinstance(doc[key], list):
            raise DatasetLayoutError(
                f"{path}: '{key}' is {_show(doc[key])}, not a list of {key[:-1]} entries")
    return doc


# ---------------------------------------------------------------------------------------------
# One annotation entry's fields. JSON written by other tools is not always what COCO's own is:
# integers may come as "424" or 424.0. Both are read as the number they spell; anything else
# (true, "abc", 12.5, null where a value is required) is refused with the field and the value.

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the shards' and the quarantine's image_id column
_INTEGER = re.compile(r"[+-]?[0-9]{1,40}")  # 40 digits: past int64, within int()'s limits
_MISSING = object()


class _Invalid(ValueError):
    """A field of an annotation entry that cannot be used; the message names it."""


def _show(value: Any) -> str:
    """A value as the JSON file spells it (null, true, "abc"), cut to 60 characters."""
    if value is _MISSING:
        return "missing"
    text = json.dumps(value, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_int(value: Any, what: str) -> int:
    if value is _MISSING:
        raise _Invalid(f"it has no {what}")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    raise _Invalid(f"{what} is {_show(value)}, not an integer")


def _as_id(value: Any, what: str) -> int:
    number = _as_int(value, what)
    if not INT64_MIN <= number <= INT64_MAX:
        raise _Invalid(f"{what} {number} does not fit in 64 bits (image ids are int64 in the "
                       "shards and the quarantine)")
    return number


def _as_number(value: Any, what: str) -> float:
    if not isinstance(value, bool):
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = math.nan
        else:
            number = math.nan
        if math.isfinite(number):
            return number
    raise _Invalid(f"{what} is {_show(value)}, not a finite number")


def _numbers(value: Any, what: str, count: int) -> list[float]:
    if not isinstance(value, list):
        raise _Invalid(f"{what} is {_show(value)}, not a list of {count} numbers")
    if len(value) != count:
        raise _Invalid(f"{what} has {len(value)} values, not {count}")
    return [_as_number(v, f"{what}[{i}]") for i, v in enumerate(value)]


@dataclass(frozen=True)
class _ImageEntry:
    """One entry of an 'images' list, checked."""

    where: str  # e.g. "images[3] in captions_val2017.json"
    file_name: str
    width: int | None
    height: int | None

    @property
    def key(self) -> tuple[str, int | None, int | None]:
        return self.file_name, self.width, self.height

    def describe(self) -> str:
        size = f"{self.width}x{self.height}" if self.width or self.height else "no size"
        return f"{self.file_name!r} {size}"


def _side(img: dict[str, Any], key: str) -> int | None:
    value = img.get(key)
    if value is None:
        return None  # not given: the decoded size is not checked against it
    number = _as_int(value, f"'{key}'")
    if number <= 0:
        raise _Invalid(f"'{key}' is {number}; an image side is a positive number of pixels")
    return number


def _image_entry(img: dict[str, Any], where: str) -> _ImageEntry:
    name = img.get("file_name", _MISSING)
    if not isinstance(name, str):
        raise _Invalid(f"'file_name' is {_show(name)}, not text")
    return _ImageEntry(where, name, _side(img, "width"), _side(img, "height"))


def _annotation_name(ann: dict[str, Any]) -> str:
    return f"annotation {_show(ann['id'])}" if "id" in ann else "an annotation without an 'id'"


def _where(kind: str, index: int, source: str, entry: Any) -> str:
    """`annotations[17] (id 4521) in captions_val2017.json`: where a person finds the entry."""
    named = f" (id {_show(entry['id'])})" if isinstance(entry, dict) and "id" in entry else ""
    return f"{kind}[{index}]{named} in {source}"


@dataclass
class _Reader:
    """The state of reading one split's two annotation files."""

    problems: list[Problem] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)

    def drop(self, source: str, where: str, error_type: str, message: str) -> None:
        self.dropped.append(Dropped(source, where, error_type, message))

    def entry_id(self, kind: str, index: int, source: str, entry: Any, key: str) -> int | None:
        """The entry's image id, or None (and the entry dropped) when it has no usable one."""
        where = _where(kind, index, source, entry)
        if not isinstance(entry, dict):
            self.drop(source, where, "BadEntry",
                      f"{where} is {_show(entry)}, not an object with an {key!r}")
            return None
        try:
            return _as_id(entry.get(key, _MISSING), f"'{key}'")
        except _Invalid as exc:
            extra = f" (file_name {_show(entry['file_name'])})" if "file_name" in entry else ""
            self.drop(source, where, "InvalidImageId",
                      f"{where}{extra}: {exc}; no image can be labelled or quarantined under it")
            return None

    def images(self, docs: list[tuple[str, dict[str, Any]]]) -> tuple[
            dict[int, _ImageEntry], set[int]]:
        """Every listed image id → its one entry, and the ids listed but unusable (a bad field,
        or two different entries: those are quarantined, never given another's annotations).
        The same entry in both files (as COCO's own files have it) is one entry."""
        seen: dict[int, list[_ImageEntry]] = {}
        bad: dict[int, list[str]] = {}
        for source, doc in docs:
            for index, img in enumerate(doc["images"]):
                image_id = self.entry_id("images", index, source, img, "id")
                if image_id is None:
                    continue
                where = f"images[{index}] in {source}"
                seen.setdefault(image_id, [])
                try:
                    seen[image_id].append(_image_entry(img, where))
                except _Invalid as exc:
                    bad.setdefault(image_id, []).append(f"{where}: {exc}")
        chosen: dict[int, _ImageEntry] = {}
        for image_id, entries in seen.items():
            if image_id in bad:
                self.problems.append(Problem(image_id, "read", "BadImageEntry",
                                             "; ".join(bad[image_id])))
                continue
            distinct: dict[tuple[str, int | None, int | None], list[str]] = {}
            for e in entries:
                distinct.setdefault(e.key, []).append(e.where)
            if len(distinct) == 1:
                chosen[image_id] = entries[0]
                continue
            shown = "; ".join(
                f"{_ImageEntry('', *key).describe()} ({', '.join(wheres)})"
                for key, wheres in list(distinct.items())[:5])
            more = f"; and {len(distinct) - 5} more" if len(distinct) > 5 else ""
            self.problems.append(Problem(
                image_id, "read", "DuplicateImageId",
                f"image id {image_id} has {len(distinct)} different entries: {shown}{more}. "
                "None is used: annotations name images by id, so either image could get the "
                "other's keypoints and captions"))
        return chosen, set(seen) - set(chosen)

    def annotation_target(self, index: int, source: str, ann: Any,
                          listed: set[int]) -> int | None:
        """The listed image an annotation belongs to, or None (dropped, or quarantined as an
        unknown image id)."""
        image_id = self.entry_id("annotations", index, source, ann, "image_id")
        if image_id is None:
            return None
        if image_id not in listed:
            self.problems.append(Problem(
                image_id=image_id, stage="read", error_type="UnknownImageId",
                message=f"{_annotation_name(ann)} in {source} refers to image id {image_id}, "
                "which no 'images' entry lists"))
            return None
        return image_id


def _read_coco(root: Location, split: str) -> Dataset:
    ann_dir = root / "annotations"
    kp_path = ann_dir / f"person_keypoints_{split}.json"
    cap_path = ann_dir / f"captions_{split}.json"
    missing = [p for p in (kp_path, cap_path) if not p.is_file()]
    splits = coco_splits(root)
    if len(missing) == 2 and splits:  # a split name the folder does not have: name the ones it has
        raise DatasetLayoutError(
            f"split {split!r} is not in {root}: its splits are {', '.join(splits)} (from "
            f"{ann_dir}/person_keypoints_<split>.json and captions_<split>.json)")
    if missing:
        raise DatasetLayoutError(
            f"missing annotation file(s): {', '.join(str(p) for p in missing)}.\n{COCO_LAYOUT}"
        )
    image_dir = _image_dir(root, split)
    kp_doc, cap_doc = _load_json(kp_path), _load_json(cap_path)
    present = _listing(image_dir)

    reader = _Reader()
    images, unusable = reader.images([(kp_path.name, kp_doc), (cap_path.name, cap_doc)])
    listed = set(images) | unusable
    persons: dict[int, list[Person]] = {}
    for index, ann in enumerate(kp_doc["annotations"]):
        category_error: _Invalid | None = None
        if isinstance(ann, dict) and "category_id" in ann:
            try:
                if _as_int(ann["category_id"], "'category_id'") != PERSON_CATEGORY:
                    continue  # another category (COCO's keypoint file has only people)
            except _Invalid as exc:
                category_error = exc  # reported against its image, below
        image_id = reader.annotation_target(index, kp_path.name, ann, listed)
        if image_id is None:
            continue
        try:
            if category_error is not None:
                raise category_error
            person = _person(ann)
        except _Invalid as exc:
            reader.problems.append(Problem(
                image_id, "read", "BadAnnotation",
                f"{_where('annotations', index, kp_path.name, ann)}: {exc}; the image's "
                "people would be incomplete"))
            unusable.add(image_id)
            continue
        persons.setdefault(image_id, []).append(person)
    captions: dict[int, list[str]] = {}
    for index, ann in enumerate(cap_doc["annotations"]):
        image_id = reader.annotation_target(index, cap_path.name, ann, listed)
        if image_id is None:
            continue
        caption = ann.get("caption")
        if not isinstance(caption, str):
            where = _where("annotations", index, cap_path.name, ann)
            reader.drop(cap_path.name, where, "NotACaption",
                        f"{where}: 'caption' is {_show(caption)}, not text; left out (image "
                        f"{image_id} keeps its other captions)")
            continue
        captions.setdefault(image_id, []).append(caption.strip())

    problems = reader.problems
    records = []
    for image_id in sorted(images):
        if image_id in unusable:
            continue
        entry = images[image_id]
        record = _record(image_dir, image_id, entry.file_name, problems, present)
        if record is None:
            continue
        record.width, record.height = entry.width, entry.height
        record.persons = persons.get(image_id, [])
        record.captions = captions.get(image_id, [])
        records.append(record)
    logger.info("read %d %s records from %s (%d problems)", len(records), split, root,
                len(problems))
    if reader.dropped:
        kinds = Counter(d.error_type for d in reader.dropped)
        logger.warning(
            "left out %d annotation entr%s of %s (%s), e.g. %s; `distill data check %s --split "
            "%s` lists them", len(reader.dropped), "y" if len(reader.dropped) == 1 else "ies",
            split, ", ".join(f"{k} {n}" for k, n in kinds.most_common()),
            reader.dropped[0].message, root, split)
    return Dataset(root, split, "coco", image_dir, records, problems, reader.dropped)


def _person(ann: dict[str, Any]) -> Person:
    raw = ann.get("keypoints")
    values = [0.0] * (3 * NUM_JOINTS) if raw is None or raw == [] else \
        _numbers(raw, "'keypoints'", 3 * NUM_JOINTS)
    kp = np.asarray(values, np.float32).reshape(NUM_JOINTS, 3)
    box = ann.get("bbox")
    x, y, w, h = (0.0, 0.0, 0.0, 0.0) if box is None else _numbers(box, "'bbox'", 4)
    area = ann.get("area")
    crowd = ann.get("iscrowd")
    count = ann.get("num_keypoints")
    return Person(
        keypoints=kp,
        bbox=(x, y, w, h),
        area=w * h if area is None else _as_number(area, "'area'"),
        iscrowd=crowd if isinstance(crowd, bool) else
        crowd is not None and _as_int(crowd, "'iscrowd'") != 0,
        num_keypoints=int((kp[:, 2] > 0).sum()) if count is None else
        _as_int(count, "'num_keypoints'"),
    )


def _listing(image_dir: Location) -> set[str] | None:
    """Names of the files directly in an object-store image folder (one listing instead of a
    request per image); None on a local disk, where each file is checked as it is resolved."""
    return None if image_dir.is_local else {f.name for f in image_dir.files()}


def follows_exif_orientation(kind: str) -> bool:
    """Whether a dataset kind's images are labelled as a viewer shows them (EXIF orientation
    applied: a plain folder of photos) rather than as stored (COCO: its keypoints, boxes and
    sizes refer to the stored pixels, whatever the EXIF tag says)."""
    return kind == "folder"


def local_file_problem(path: str) -> tuple[str, str] | None:
    """(error type, message) saying why a local path cannot be read as an image file
    (missing, unreadable, a directory or a FIFO named like an image), or None when it can."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "FileNotFoundError", f"{path} does not exist"
    except OSError as exc:
        return type(exc).__name__, f"{path} cannot be read: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    what = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if
            stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")
    return "NotARegularFile", f"{path} is not a regular file ({what})"


def _record(
    image_dir: Location, image_id: int, file_name: str, problems: list[Problem],
    present: set[str] | None = None,
) -> ImageRecord | None:
    try:
        path = resolve_inside(image_dir, file_name)
    except UnsafePathError as exc:
        problems.append(Problem(image_id, "read", "UnsafePathError", str(exc)))
        return None
    if Location(path).is_local:
        bad = local_file_problem(path)
    elif present is not None and "/" not in file_name.strip("/"):
        bad = None if file_name in present else ("FileNotFoundError", f"{path} does not exist")
    else:  # an object store: a key exists or it does not
        bad = None if Location(path).is_file() else ("FileNotFoundError", f"{path} does not exist")
    if bad is not None:
        problems.append(Problem(image_id, "read", *bad))
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
    for r in records:
        r.exif_transpose = follows_exif_orientation("folder")
    records.sort(key=lambda r: r.image_id)
    return Dataset(root, split or image_dir.name, "folder", image_dir, records, problems)


def _folder_ids(names: Iterable[str]) -> list[int]:
    """COCO-style numeric stems keep their number; otherwise (a name that is not all ASCII
    digits, a number beyond int64, two names for one number) 1..N in sorted-name order."""
    names = list(names)
    stems = [Path(n).stem for n in names]
    if all(s.isascii() and s.isdigit() for s in stems):
        ids = [int(s) for s in stems]
        if len(set(ids)) == len(ids) and all(i <= INT64_MAX for i in ids):
            return ids
    return list(range(1, len(names) + 1))
