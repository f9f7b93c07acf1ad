"""Image records and how a split's records are held: as columns (numbers in arrays, captions in
one UTF-8 buffer), each `ImageRecord` made when it is asked for. A planning driver holds every
record of a split; as Python objects (a `Person` with its own array and tuple, a `str` per
caption) that was ~3.5 kB an image, 3.5 GB at a million images; as columns it is the data's
own size (~280 bytes a person, ~75 a caption)."""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np

from distill.labels.keypoints import NUM_JOINTS

__all__ = ["CaptionColumns", "ImageRecord", "Person", "PersonColumns", "RecordTable"]


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


class _Grouped:
    """Rows appended in any order, each under an image id and a sequence number (its index in
    the annotation file); `finish` groups them by image, in sequence order within an image."""

    def __init__(self) -> None:
        self._image, self._seq = array("q"), array("q")
        self._order = self._ids = self._starts = np.zeros(0, np.int64)

    def _add(self, image_id: int, seq: int) -> None:
        self._image.append(image_id)
        self._seq.append(seq)

    def finish(self) -> None:
        image = np.frombuffer(self._image, np.int64)
        self._order = np.lexsort((np.frombuffer(self._seq, np.int64), image))
        self._ids, self._starts = np.unique(image[self._order], return_index=True)
        self._starts = np.append(self._starts, len(image))
        self._image, self._seq = array("q"), array("q")  # the order holds what they said

    def rows(self, image_id: int) -> np.ndarray:
        """The rows of one image, in sequence order."""
        at = int(np.searchsorted(self._ids, image_id))
        if at == len(self._ids) or self._ids[at] != image_id:
            return self._order[:0]
        return self._order[self._starts[at]:self._starts[at + 1]]


class PersonColumns(_Grouped):
    """The people of a split, a row each."""

    def __init__(self) -> None:
        super().__init__()
        self._keypoints, self._bbox, self._area = array("f"), array("d"), array("d")
        self._crowd: list[bool] = []
        self._count: list[int] = []  # num_keypoints: any integer the file says

    def add(self, image_id: int, seq: int, person: Person) -> None:
        self._add(image_id, seq)
        self._keypoints.frombytes(np.ascontiguousarray(person.keypoints, np.float32).tobytes())
        self._bbox.extend(person.bbox)
        self._area.append(person.area)
        self._crowd.append(person.iscrowd)
        self._count.append(person.num_keypoints)

    def of(self, image_id: int) -> list[Person]:
        keypoints = np.frombuffer(self._keypoints, np.float32).reshape(-1, NUM_JOINTS, 3)
        bbox = np.frombuffer(self._bbox, np.float64).reshape(-1, 4)
        return [Person(keypoints=keypoints[i].copy(),
                       bbox=tuple(bbox[i].tolist()),
                       area=self._area[i], iscrowd=self._crowd[i],
                       num_keypoints=self._count[i])
                for i in self.rows(image_id).tolist()]

    def __len__(self) -> int:
        return len(self._area)


class CaptionColumns(_Grouped):
    """The captions of a split, a row each, their text in one buffer."""

    def __init__(self) -> None:
        super().__init__()
        self._text = bytearray()
        self._ends = array("q")

    def add(self, image_id: int, seq: int, caption: str) -> None:
        self._add(image_id, seq)
        self._text += caption.encode("utf-8", "surrogatepass")  # any str JSON can spell
        self._ends.append(len(self._text))

    def of(self, image_id: int) -> list[str]:
        out = []
        for i in self.rows(image_id).tolist():
            start = self._ends[i - 1] if i else 0
            out.append(self._text[start:self._ends[i]].decode("utf-8", "surrogatepass"))
        return out

    def __len__(self) -> int:
        return len(self._ends)


class RecordTable(Sequence[ImageRecord]):
    """The records of a COCO split, sorted by image id, made when asked for. Images whose path
    is `<base>/<file_name>` (all of a plain local folder) keep only their file name."""

    def __init__(self, ids: list[int], file_names: list[str], paths: dict[int, str],
                 base: str, sizes: tuple[list[int | None], list[int | None]],
                 persons: PersonColumns, captions: CaptionColumns) -> None:
        self._ids = np.asarray(ids, np.int64)  # sorted
        self._file_names, self._paths, self._base = file_names, paths, base
        self._widths, self._heights = _sides(sizes[0]), _sides(sizes[1])
        self.persons, self.captions = persons, captions

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> ImageRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[ImageRecord]: ...
    def __getitem__(self, index: int | slice) -> ImageRecord | list[ImageRecord]:
        if isinstance(index, slice):
            return [self._record(i) for i in range(len(self))[index]]
        return self._record(range(len(self))[index])

    def __iter__(self) -> Iterator[ImageRecord]:
        return (self._record(i) for i in range(len(self)))

    def ids(self) -> list[int]:
        return self._ids.tolist()

    def get(self, image_id: int) -> ImageRecord | None:
        at = int(np.searchsorted(self._ids, image_id))
        if at == len(self._ids) or self._ids[at] != image_id:
            return None
        return self._record(at)

    def by_id(self) -> Mapping[int, ImageRecord]:
        return _ById(self)

    def _record(self, at: int) -> ImageRecord:
        image_id, name = int(self._ids[at]), self._file_names[at]
        width, height = self._widths[at] or None, self._heights[at] or None
        path = self._paths.get(image_id) or os.path.join(self._base, name)
        return ImageRecord(image_id=image_id, file_name=name, path=path, width=width,
                           height=height, persons=self.persons.of(image_id),
                           captions=self.captions.of(image_id))


def _sides(values: list[int | None]) -> array[int] | list[int]:
    """Image sides as int64 (0: not annotated); a list where one does not fit in 64 bits."""
    sides = [v or 0 for v in values]
    try:
        return array("q", sides)
    except OverflowError:
        return sides


class _ById(Mapping[int, ImageRecord]):
    """Image id → record, each made when looked up."""

    def __init__(self, table: RecordTable) -> None:
        self._table = table

    def __getitem__(self, image_id: int) -> ImageRecord:
        record = self._table.get(image_id)
        if record is None:
            raise KeyError(image_id)
        return record

    def __iter__(self) -> Iterator[int]:
        return iter(self._table.ids())

    def __len__(self) -> int:
        return len(self._table)
