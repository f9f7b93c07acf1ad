"""COCO annotation files read entry by entry: the people and captions of each listed image,
every field checked (JSON written by other tools is not always what COCO's own is), and what
cannot be used kept as `Problem`s (the image is quarantined) or `Dropped` entries (no image to
quarantine). `distill.coco` reads the files and the image folder and makes the records."""

from __future__ import annotations

import json
import math
import re
from array import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distill.labels.keypoints import NUM_JOINTS
from distill.records import CaptionColumns, Person, PersonColumns

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "AnnotationReader",
    "Annotations",
    "Dropped",
    "Person",
    "Problem",
    "show_value",
]

PERSON_CATEGORY = 1


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


@dataclass(frozen=True, slots=True)
class _ImageEntry:
    """One entry of an 'images' list, checked."""

    source: str  # the annotation file's name
    index: int  # in its 'images' list
    file_name: str
    width: int | None
    height: int | None

    @property
    def where(self) -> str:  # e.g. "images[3] in captions_val2017.json"
        return f"images[{self.index}] in {self.source}"

    @property
    def key(self) -> tuple[str, int | None, int | None]:
        return self.file_name, self.width, self.height


def _describe(key: tuple[str, int | None, int | None]) -> str:
    name, width, height = key
    size = f"{width}x{height}" if width or height else "no size"
    return f"{name!r} {size}"


def _side(img: dict[str, Any], key: str) -> int | None:
    value = img.get(key)
    if value is None:
        return None  # not given: the decoded size is not checked against it
    number = _as_int(value, f"'{key}'")
    if number <= 0:
        raise _Invalid(f"'{key}' is {number}; an image side is a positive number of pixels")
    return number


def _image_entry(img: dict[str, Any], source: str, index: int) -> _ImageEntry:
    name = img.get("file_name", _MISSING)
    if not isinstance(name, str):
        raise _Invalid(f"'file_name' is {show_value(name)}, not text")
    return _ImageEntry(source, index, name, _side(img, "width"), _side(img, "height"))


def _entry_id(entry: Any) -> Any:
    """An entry's own 'id' as the file spells it (_MISSING: none), for messages."""
    return entry.get("id", _MISSING) if isinstance(entry, dict) else _MISSING


def _annotation_name(raw_id: Any) -> str:
    return "an annotation without an 'id'" if raw_id is _MISSING else \
        f"annotation {show_value(raw_id)}"


def _where(kind: str, index: int, source: str, raw_id: Any) -> str:
    """`annotations[17] (id 4521) in captions_val2017.json`: where a person finds the entry."""
    named = "" if raw_id is _MISSING else f" (id {show_value(raw_id)})"
    return f"{kind}[{index}]{named} in {source}"


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
    persons: PersonColumns
    captions: CaptionColumns
    problems: list[Problem]
    dropped: list[Dropped]


# What `AnnotationReader.finish` settles once every image entry is known: an annotation of an
# image not (yet) listed, or one that cannot be used. (image id, its own id, index, person or
# caption, the reason it cannot be used)
_Pending = tuple[int, Any, int, Any, str | None]
_IMAGES, _KP_IMAGES, _CAP_IMAGES, _PERSONS, _CAPTIONS = "images", 0, 1, 2, 3


@dataclass
class AnnotationReader:
    """Reads a split's keypoint file (file 0) and caption file (file 1) entry by entry, in any
    order of their top-level arrays (`feed`), holding only what the records keep; `finish`
    gives what they say. Problems and left-out entries come out in the order of reading the
    'images' lists of both files, then the keypoint file's annotations, then the captions'."""

    kp_name: str
    cap_name: str
    persons: PersonColumns = field(default_factory=PersonColumns)
    captions: CaptionColumns = field(default_factory=CaptionColumns)
    _first: dict[int, _ImageEntry | None] = field(default_factory=dict)  # every listed id
    _bad: dict[int, list[str]] = field(default_factory=dict)
    _others: dict[int, list[_ImageEntry]] = field(default_factory=dict)  # unlike the first
    # per file: (index, image id) of every entry with a usable id, to name duplicates' places
    _listed_at: tuple[array[int], array[int]] = field(
        default_factory=lambda: (array("q"), array("q")))
    _pending: tuple[list[_Pending], list[_Pending]] = field(default_factory=lambda: ([], []))
    _dropped: list[tuple[int, int, Dropped]] = field(default_factory=list)  # (phase, index, …)

    def feed(self, file: int, kind: str, index: int, entry: Any) -> None:
        if kind == _IMAGES:
            self._image(file, index, entry)
        elif file == 0:
            self._person(index, entry)
        else:
            self._caption(index, entry)

    def _drop(self, phase: int, index: int, source: str, where: str, error_type: str,
              message: str) -> None:
        self._dropped.append((phase, index, Dropped(source, where, error_type, message)))

    def _entry_id(self, phase: int, kind: str, index: int, source: str, entry: Any,
                  key: str) -> int | None:
        """The entry's image id, or None (and the entry dropped) when it has no usable one."""
        if not isinstance(entry, dict):
            where = _where(kind, index, source, _MISSING)
            self._drop(phase, index, source, where, "BadEntry",
                       f"{where} is {show_value(entry)}, not an object with an {key!r}")
            return None
        try:
            return _as_id(entry.get(key, _MISSING), f"'{key}'")
        except _Invalid as exc:
            where = _where(kind, index, source, _entry_id(entry))  # made only when dropped
            extra = f" (file_name {show_value(entry['file_name'])})" if "file_name" in entry else ""
            self._drop(phase, index, source, where, "InvalidImageId",
                       f"{where}{extra}: {exc}; no image can be labelled or quarantined under it")
            return None

    def _image(self, file: int, index: int, img: Any) -> None:
        source = (self.kp_name, self.cap_name)[file]
        image_id = self._entry_id(file, "images", index, source, img, "id")
        if image_id is None:
            return
        self._listed_at[file].extend((index, image_id))
        first = self._first.setdefault(image_id, None)
        try:
            entry = _image_entry(img, source, index)
        except _Invalid as exc:
            self._bad.setdefault(image_id, []).append(f"images[{index}] in {source}: {exc}")
            return
        if first is None:
            self._first[image_id] = entry
        elif entry.key != first.key:
            self._others.setdefault(image_id, []).append(entry)

    def _person(self, index: int, ann: Any) -> None:
        category_error: _Invalid | None = None
        if isinstance(ann, dict) and "category_id" in ann:
            try:
                if _as_int(ann["category_id"], "'category_id'") != PERSON_CATEGORY:
                    return  # another category (COCO's keypoint file has only people)
            except _Invalid as exc:
                category_error = exc  # reported against its image, once it is known listed
        image_id = self._entry_id(_PERSONS, "annotations", index, self.kp_name, ann, "image_id")
        if image_id is None:
            return
        person, bad = None, None
        try:
            if category_error is not None:
                raise category_error
            person = _person(ann)
        except _Invalid as exc:
            bad = str(exc)
        if bad is None and image_id in self._first:
            self.persons.add(image_id, index, person)  # type: ignore[arg-type]
        else:
            self._pending[0].append((image_id, _entry_id(ann), index, person, bad))

    def _caption(self, index: int, ann: Any) -> None:
        image_id = self._entry_id(_CAPTIONS, "annotations", index, self.cap_name, ann,
                                  "image_id")
        if image_id is None:
            return
        caption = ann.get("caption")
        if image_id in self._first:
            self._add_caption(image_id, index, caption, _entry_id(ann))
        else:
            self._pending[1].append((image_id, _entry_id(ann), index, caption, None))

    def _add_caption(self, image_id: int, index: int, caption: Any, raw_id: Any) -> None:
        if isinstance(caption, str):
            self.captions.add(image_id, index, caption.strip())
            return
        where = _where("annotations", index, self.cap_name, raw_id)
        self._drop(_CAPTIONS, index, self.cap_name, where, "NotACaption",
                   f"{where}: 'caption' is {show_value(caption)}, not text; left out (image "
                   f"{image_id} keeps its other captions)")

    def _duplicates(self) -> dict[int, list[str]]:
        """For each image id with different entries, where each entry is (in reading order)."""
        wheres: dict[int, list[str]] = {i: [] for i in self._others}
        if not wheres:
            return wheres
        ids = list(wheres)
        for file, source in enumerate((self.kp_name, self.cap_name)):
            at = np.asarray(self._listed_at[file], np.int64).reshape(-1, 2)
            for index, image_id in at[np.isin(at[:, 1], ids)].tolist():
                wheres[image_id].append(f"images[{index}] in {source}")
        return wheres

    def _images(self, problems: list[Problem]) -> tuple[dict[int, _ImageEntry], set[int]]:
        """Every listed image id → its one entry, and the ids listed but unusable (a bad field,
        or two different entries: those are quarantined, never given another's annotations).
        The same entry in both files (as COCO's own files have it) is one entry."""
        chosen: dict[int, _ImageEntry] = {}
        wheres = self._duplicates()
        for image_id, first in self._first.items():
            if image_id in self._bad:
                problems.append(Problem(image_id, "read", "BadImageEntry",
                                        "; ".join(self._bad[image_id])))
                continue
            assert first is not None  # an id with no bad entry has a good one
            others = self._others.get(image_id)
            if not others:
                chosen[image_id] = first
                continue
            unlike = {o.where for o in others}
            distinct: dict[tuple[str, int | None, int | None], list[str]] = {
                first.key: [w for w in wheres[image_id] if w not in unlike]}
            for o in others:
                distinct.setdefault(o.key, []).append(o.where)
            shown = "; ".join(f"{_describe(key)} ({', '.join(w)})"
                              for key, w in list(distinct.items())[:5])
            more = f"; and {len(distinct) - 5} more" if len(distinct) > 5 else ""
            problems.append(Problem(
                image_id, "read", "DuplicateImageId",
                f"image id {image_id} has {len(distinct)} different entries: {shown}{more}. "
                "None is used: annotations name images by id, so either image could get the "
                "other's keypoints and captions"))
        return chosen, set(self._first) - set(chosen)

    def _unknown(self, image_id: int, raw_id: Any, source: str) -> Problem:
        return Problem(image_id=image_id, stage="read", error_type="UnknownImageId",
                       message=f"{_annotation_name(raw_id)} in {source} refers to image id "
                       f"{image_id}, which no 'images' entry lists")

    def finish(self) -> Annotations:
        problems: list[Problem] = []
        images, unusable = self._images(problems)
        listed = self._first
        for image_id, raw_id, index, person, bad in self._pending[0]:
            if image_id not in listed:
                problems.append(self._unknown(image_id, raw_id, self.kp_name))
            elif bad is not None:
                problems.append(Problem(
                    image_id, "read", "BadAnnotation",
                    f"{_where('annotations', index, self.kp_name, raw_id)}: {bad}; the "
                    "image's people would be incomplete"))
                unusable.add(image_id)
            else:
                self.persons.add(image_id, index, person)
        for image_id, raw_id, index, caption, _ in self._pending[1]:
            if image_id not in listed:
                problems.append(self._unknown(image_id, raw_id, self.cap_name))
            else:
                self._add_caption(image_id, index, caption, raw_id)
        self.persons.finish()
        self.captions.finish()
        dropped = [d for _, _, d in sorted(self._dropped, key=lambda d: d[:2])]
        self._first, self._others, self._listed_at = {}, {}, (array("q"), array("q"))
        self._pending = ([], [])
        return Annotations(images, unusable, self.persons, self.captions, problems, dropped)
