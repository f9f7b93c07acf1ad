"""COCO annotation files read entry by entry: the people and captions of each listed image,
every field checked (JSON written by other tools is not always what COCO's own is), and what
cannot be used kept as `Problem`s (the image is quarantined) or `Dropped` entries (no image to
quarantine). `distill.coco` reads the files and the image folder and makes the records."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distill.labels.keypoints import NUM_JOINTS

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "Annotations",
    "Dropped",
    "Person",
    "Problem",
    "read_annotations",
    "show_value",
]

PERSON_CATEGORY = 1


@dataclass
class Person:
    """One COCO person annotation, in original pixel coordinates."""

    keypoints: np.ndarray  # (17, 3) float32: x, y, v (v: 0 unlabelled, 1 occluded, 2 visible)
    bbox: tuple[float, float, float, float]  # x, y, w, h
    area: float
    iscrowd: bool
    num_keypoints: int



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



# ---------------------------------------------------------------------------------------------
# One annotation entry's fields. JSON written by other tools is not always what COCO's own is:
# integers may come as "424" or 424.0. Both are read as the number they spell; anything else
# (true, "abc", 12.5, null where a value is required) is refused with the field and the value.

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the shards' and the quarantine's image_id column
_INTEGER = re.compile(r"[+-]?[0-9]{1,40}")  # 40 digits: past int64, within int()'s limits
_MISSING = object()


class _Invalid(ValueError):
    """A field of an annotation entry that cannot be used; the message names it."""


def show_value(value: Any) -> str:
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
    raise _Invalid(f"{what} is {show_value(value)}, not an integer")


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
    raise _Invalid(f"{what} is {show_value(value)}, not a finite number")


def _numbers(value: Any, what: str, count: int) -> list[float]:
    if not isinstance(value, list):
        raise _Invalid(f"{what} is {show_value(value)}, not a list of {count} numbers")
    if len(value) != count:
        raise _Invalid(f"{what} has {len(value)} values, not {count}")
    return [_as_number(v, f"{what}[{i}]") for i, v in enumerate(value)]


_JSON_NUMBERS = {int, float}  # exactly: bool is an int subclass, and is refused


def _number_array(value: Any, what: str, count: int) -> np.ndarray:
    """`_numbers` as float32, without a Python call per value when every value is already a
    JSON number (as in COCO's own files); anything else goes through `_numbers`, which names
    the value it refuses."""
    if isinstance(value, list) and len(value) == count and set(map(type, value)) <= _JSON_NUMBERS:
        try:
            array = np.array(value, np.float64)
        except OverflowError:  # an integer beyond a float: refused by `_numbers`
            array = np.array([math.nan])
        if np.isfinite(array).all():
            return array.astype(np.float32)
    return np.asarray(_numbers(value, what, count), np.float32)


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
        raise _Invalid(f"'file_name' is {show_value(name)}, not text")
    return _ImageEntry(where, name, _side(img, "width"), _side(img, "height"))


def _annotation_name(ann: dict[str, Any]) -> str:
    return f"annotation {show_value(ann['id'])}" if "id" in ann else "an annotation without an 'id'"


def _where(kind: str, index: int, source: str, entry: Any) -> str:
    """`annotations[17] (id 4521) in captions_val2017.json`: where a person finds the entry."""
    named = f" (id {show_value(entry['id'])})" if isinstance(entry, dict) and "id" in entry else ""
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
        if not isinstance(entry, dict):
            where = _where(kind, index, source, entry)
            self.drop(source, where, "BadEntry",
                      f"{where} is {show_value(entry)}, not an object with an {key!r}")
            return None
        try:
            return _as_id(entry.get(key, _MISSING), f"'{key}'")
        except _Invalid as exc:
            where = _where(kind, index, source, entry)  # made only for a dropped entry
            extra = f" (file_name {show_value(entry['file_name'])})" if "file_name" in entry else ""
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

def _person(ann: dict[str, Any]) -> Person:
    raw = ann.get("keypoints")
    kp = np.zeros((NUM_JOINTS, 3), np.float32) if raw is None or raw == [] else \
        _number_array(raw, "'keypoints'", 3 * NUM_JOINTS).reshape(NUM_JOINTS, 3)
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



@dataclass
class Annotations:
    """What one split's two annotation files say, checked."""

    images: dict[int, _ImageEntry]  # every usable image entry
    unusable: set[int]  # listed, but quarantined (a bad entry, or a bad person annotation)
    persons: dict[int, list[Person]]
    captions: dict[int, list[str]]
    problems: list[Problem]
    dropped: list[Dropped]


def read_annotations(kp_name: str, kp_doc: dict[str, Any], cap_name: str,
                     cap_doc: dict[str, Any]) -> Annotations:
    """Read a split's keypoint and caption documents (`json.loads` of each file, checked to
    have 'images' and 'annotations' lists); `kp_name` and `cap_name` name them in messages."""
    reader = _Reader()
    images, unusable = reader.images([(kp_name, kp_doc), (cap_name, cap_doc)])
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
        image_id = reader.annotation_target(index, kp_name, ann, listed)
        if image_id is None:
            continue
        try:
            if category_error is not None:
                raise category_error
            person = _person(ann)
        except _Invalid as exc:
            reader.problems.append(Problem(
                image_id, "read", "BadAnnotation",
                f"{_where('annotations', index, kp_name, ann)}: {exc}; the image's "
                "people would be incomplete"))
            unusable.add(image_id)
            continue
        persons.setdefault(image_id, []).append(person)
    captions: dict[int, list[str]] = {}
    for index, ann in enumerate(cap_doc["annotations"]):
        image_id = reader.annotation_target(index, cap_name, ann, listed)
        if image_id is None:
            continue
        caption = ann.get("caption")
        if not isinstance(caption, str):
            where = _where("annotations", index, cap_name, ann)
            reader.drop(cap_name, where, "NotACaption",
                        f"{where}: 'caption' is {show_value(caption)}, not text; left out (image "
                        f"{image_id} keeps its other captions)")
            continue
        captions.setdefault(image_id, []).append(caption.strip())
    return Annotations(images, unusable, persons, captions, reader.problems, reader.dropped)
