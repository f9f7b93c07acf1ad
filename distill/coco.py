"""Dataset reader: a COCO 2017 folder (images + keypoint and caption annotations) or a plain
folder of images, into image records. Samples that cannot be used become `Problem`s, not errors.
The root may be a local path or a URI (`s3://bucket/coco`): the image folder is listed once,
and images are read later, by whichever node decodes them (`distill.storage`).
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from distill.annotations import (
    INT64_MAX,
    AnnotationReader,
    Dropped,
    Problem,
    show_value,
)
from distill.errors import DatasetLayoutError, StorageError, UnsafePathError
from distill.jsonstream import top_level_arrays
from distill.records import ImageRecord, Person, RecordTable
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
class Dataset:
    """The records of one split, sorted by image id, plus the problems met reading it. A COCO
    split's records are a `RecordTable`: each record is made when it is read."""

    root: Location
    split: str
    kind: Literal["coco", "folder"]
    image_dir: Location
    records: Sequence[ImageRecord]
    problems: list[Problem]
    dropped: list[Dropped] = field(default_factory=list)
    _by_id: Mapping[int, ImageRecord] | None = field(default=None, init=False, repr=False,
                                                     compare=False)
    _problem_by_id: dict[int, Problem] | None = field(default=None, init=False, repr=False,
                                                      compare=False)

    def by_id(self) -> Mapping[int, ImageRecord]:
        """Image id → record. Built once (one pass over the records, none for a table) and
        shared: do not change `records` once it is built."""
        if self._by_id is None:
            self._by_id = self.records.by_id() if isinstance(self.records, RecordTable) else \
                {r.image_id: r for r in self.records}
        return self._by_id

    def record_ids(self) -> list[int]:
        """The records' image ids, sorted, without making the records."""
        if isinstance(self.records, RecordTable):
            return self.records.ids()
        return [r.image_id for r in self.records]

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
        looked = f" (looked in {loc.path})" \
            if loc.is_local and not os.path.isabs(os.path.expanduser(str(root))) else ""
        raise DatasetLayoutError(f"dataset root {str(root)!r}{looked} is not a folder."
                                 f"\n{COCO_LAYOUT}")
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


def _entries(path: Location) -> Iterator[tuple[str, int, Any]]:
    """(key, index, entry) of every entry of an annotation file's 'images' and 'annotations'
    lists, read a chunk at a time (`distill.jsonstream`); the file is checked to be a COCO
    annotation file once it has been read to its end."""
    if not path.is_file():
        raise DatasetLayoutError(f"missing annotation file {path}.\n{COCO_LAYOUT}")
    found: dict[str, Any] = {}
    try:
        with (open(path.path, "rb") if path.is_local else path.open_input()) as stream:
            for key, index, entry in top_level_arrays(stream, ("images", "annotations")):
                if key is None:
                    break
                if index < 0:
                    found[key] = entry
                else:
                    yield key, index, entry
    except (OSError, ValueError, StorageError) as exc:
        raise DatasetLayoutError(f"cannot read annotation file {path}: {exc}") from exc
    if any(k not in found for k in ("images", "annotations")):
        raise DatasetLayoutError(
            f"{path} is not a COCO annotation file (it needs 'images' and 'annotations')"
        )
    for key in ("images", "annotations"):
        if not isinstance(found[key], list):
            raise DatasetLayoutError(
                f"{path}: '{key}' is {show_value(found[key])}, not a list of {key[:-1]} entries")


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
    reader = AnnotationReader(kp_path.name, cap_path.name)
    for file, path in enumerate((kp_path, cap_path)):
        for key, index, entry in _entries(path):  # a chunk of the file at a time
            reader.feed(file, key, index, entry)
    notes = reader.finish()
    del reader
    present = _listing(image_dir)
    images, unusable, problems = notes.images, notes.unusable, notes.problems
    base = _real_base(image_dir)
    join_base = base if base is not None else str(image_dir)
    ids: list[int] = []
    names: list[str] = []
    widths: list[int | None] = []
    heights: list[int | None] = []
    paths: dict[int, str] = {}  # those that are not <base>/<file_name>
    for image_id in sorted(images):
        entry = images.pop(image_id)  # each entry gone as its record's columns are filled
        if image_id in unusable:
            continue
        record = _record(image_dir, image_id, entry.file_name, problems, present, base)
        if record is None:
            continue
        ids.append(image_id)
        names.append(entry.file_name)
        widths.append(entry.width)
        heights.append(entry.height)
        if record.path != os.path.join(join_base, entry.file_name):
            paths[image_id] = record.path
    records = RecordTable(ids, names, paths, join_base, (widths, heights), notes.persons,
                          notes.captions)
    logger.info("read %d %s records from %s (%d problems)", len(records), split, root,
                len(problems))
    if notes.dropped:
        kinds = Counter(d.error_type for d in notes.dropped)
        logger.warning(
            "left out %d annotation entr%s of %s (%s), e.g. %s; `distill data check %s --split "
            "%s` lists them", len(notes.dropped), "y" if len(notes.dropped) == 1 else "ies",
            split, ", ".join(f"{k} {n}" for k, n in kinds.most_common()),
            notes.dropped[0].message, root, split)
    return Dataset(root, split, "coco", image_dir, records, problems, notes.dropped)


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


def _real_base(image_dir: Location) -> str | None:
    """The real path of a local image folder (None on an object store)."""
    return os.path.realpath(image_dir.path) if image_dir.is_local else None


def _local_name(base: str | None, file_name: str) -> tuple[str, int] | None:
    """(path, st_mode) of a plain file name in a local image folder whose real path is `base`,
    from one `lstat` (not `realpath`'s walk over every folder of the path, image after image);
    None when the name needs the full check (a folder in it, a symlink, an error)."""
    if base is None or not file_name or file_name in (".", "..") or \
            any(c in file_name for c in "/\\\x00:"):
        return None
    path = os.path.join(base, file_name)
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISLNK(mode) else (path, mode)


def _record(
    image_dir: Location, image_id: int, file_name: str, problems: list[Problem],
    present: set[str] | None = None, base: str | None = None,
) -> ImageRecord | None:
    """The record of one image file, or None (and a problem) when it cannot be used. `base`:
    the real path of a local `image_dir`, computed once by the caller."""
    fast = _local_name(base, file_name)
    if fast is not None:
        path, mode = fast
        if stat.S_ISREG(mode):
            return ImageRecord(image_id=image_id, file_name=file_name, path=path)
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
    present, base = _listing(image_dir), _real_base(image_dir)
    records = [
        r for r in (_record(image_dir, i, n, problems, present, base)
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
