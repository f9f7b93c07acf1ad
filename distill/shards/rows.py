"""One shard row: the Arrow schema, `Sample` (a row decoded), its encode/decode and the digest of
a row's COCO annotations. The image columns are this module's; each label layer's columns and
their codec are that layer's (`distill.layers`), which the schema and encode/decode iterate.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from distill.coco import ImageRecord, Person
from distill.errors import ShardError
from distill.labels.groups import Segment
from distill.labels.keypoints import NUM_JOINTS
from distill.labels.pose import TeacherPerson
from distill.labels.text import TextRegion
from distill.layers.registry import BUILTIN, LabelLayer, builtin_layers, layers

__all__ = [
    "ANNOTATION_COLUMNS",
    "OPTIONAL_COLUMNS",
    "PICTURE_COLUMNS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "Sample",
    "annotation_digest",
    "annotation_row",
    "annotations_digest",
    "decode_row",
    "encode_sample",
    "optional_columns",
    "schema",
]

SCHEMA_VERSION = "1"

_HEAD = (
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("file_name", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("image", pa.binary(), nullable=False),  # the original encoded file, byte for byte
)
# True: `image` is decoded with its EXIF orientation applied (a plain folder's photo, as a viewer
# shows it) and every label, width and height refer to those pixels; False or null (COCO, and
# shards written before this column): the stored pixels.
_TAIL = (pa.field("exif_transpose", pa.bool_()),)
# What decoding a row's picture needs (the student's loader reads these besides its layers').
PICTURE_COLUMNS = ("image_id", "width", "height", "image", "exif_transpose")


def schema(roles: Collection[str] | None = ()) -> pa.Schema:
    """The shard schema of a run whose teachers are `roles`: the image columns, then every
    built-in label layer's columns in registry order (`distill.layers`), then the columns added
    later (`optional_columns`): a layer's that is written only where its teacher ran
    (`LabelLayer.only_when_run`, the pose layer) when `roles` has that teacher, and the plug-in
    layers'. `roles=None`: every column a shard may have (what a reader checks and decodes).
    Image-like columns are PNG bytes at the ORIGINAL resolution; a teacher that did not run
    leaves its columns null."""
    fields = [*_HEAD, *(c.field for layer in builtin_layers() if not layer.only_when_run
                        for c in layer.columns), *_TAIL,
              *(c.field for layer in layers() if _later(layer)
                and (roles is None or not layer.only_when_run or set(layer.roles) & set(roles))
                for c in layer.columns)]
    return pa.schema(fields)


def _later(layer: LabelLayer) -> bool:
    """Whether a layer's columns come after schema version 1's (and are optional on read)."""
    return layer.name not in BUILTIN or layer.only_when_run


def optional_columns() -> frozenset[str]:
    """Columns added after the first shards were written (`exif_transpose`, the pose layer's, a
    plug-in layer's): a shard without one still opens (and reads as if the column were null).
    New columns go at the end of the schema."""
    return frozenset({f.name for f in _TAIL} | {c.name for layer in layers() if _later(layer)
                                                 for c in layer.columns})


# The schema of the built-in layers (version 1); `schema()` adds a registered plug-in's columns.
SCHEMA = schema()
OPTIONAL_COLUMNS = optional_columns()


@dataclass
class Sample:
    """One shard row, decoded. Label arrays are at the original resolution (height, width)."""

    image_id: int
    file_name: str
    split: str
    width: int
    height: int
    image: bytes
    depth16: np.ndarray | None = None  # uint16 (H, W)
    depth_min: float | None = None
    depth_max: float | None = None
    normals: np.ndarray | None = None  # uint8 (H, W, 3)
    panoptic: np.ndarray | None = None  # uint8 (H, W) category ids
    segments: list[Segment] | None = None
    groups: np.ndarray | None = None  # uint16 (H, W) group bits
    text_mask: np.ndarray | None = None  # bool (H, W)
    text_regions: list[TextRegion] | None = None
    teacher_captions: list[str] | None = None
    coco_captions: list[str] = field(default_factory=list)
    tokens: list[str] | None = None
    persons: list[Person] = field(default_factory=list)
    teacher_persons: list[TeacherPerson] | None = None  # the pose teacher's (None: not run)
    exif_transpose: bool = False  # decode `image` with its EXIF orientation (SCHEMA's comment)
    # Plug-in layers' values (`fill` sets them, `encode` reads them): what a plug-in's `decode`
    # returns under names that are no field above.
    plugins: dict[str, Any] = field(default_factory=dict)


_SAMPLE_FIELDS = frozenset(Sample.__dataclass_fields__)


# ---------------------------------------------------------------------------------------------
# One sample


def encode_sample(sample: Sample, compress_level: int = 1,
                  columns: Collection[str] | None = None) -> dict[str, Any]:
    """A `Sample` → a dict of Python values matching `schema()` (one row). With `columns`, only
    those are encoded (a teacher added to a stored row re-encodes only what it changed). Each
    label layer encodes its own columns (`LabelLayer.encode`)."""
    names = schema(None).names
    wanted = set(names) if columns is None else set(columns)
    row: dict[str, Any] = {
        "image_id": sample.image_id,
        "file_name": sample.file_name,
        "split": sample.split,
        "width": sample.width,
        "height": sample.height,
        "image": sample.image,
        "exif_transpose": sample.exif_transpose,
    }
    for layer in layers():
        row.update(layer.encode(sample, compress_level, wanted))
    unknown = wanted - set(names)
    if unknown:
        raise ShardError(f"not shard columns: {sorted(unknown)}")
    return {name: row[name] for name in names if name in wanted}  # schema order


# ---------------------------------------------------------------------------------------------
# The annotation columns: what a row copies from its image's annotations, not from a teacher

ANNOTATION_COLUMNS = ("image_id", "file_name", "width", "height", "coco_captions", "persons")
_KEYPOINTS = struct.Struct(f"<{3 * NUM_JOINTS}f")  # as float32, what a shard stores
_PERSON_REST = struct.Struct("<5f?i")  # bbox, area, iscrowd, num_keypoints


def annotation_row(record: ImageRecord) -> dict[str, Any]:
    """The annotation columns a row labelled from `record` holds, for `annotation_digest`
    (keypoints stay float32 arrays). Width and height are None where the annotations give
    none (a plain folder): the row then holds the decoded size."""
    return {"image_id": record.image_id, "file_name": record.file_name, "width": record.width,
            "height": record.height, "coco_captions": record.captions,
            "persons": [{"keypoints": p.keypoints, "bbox": p.bbox, "area": p.area,
                         "iscrowd": p.iscrowd, "num_keypoints": p.num_keypoints}
                        for p in record.persons]}


def annotation_digest(row: dict[str, Any]) -> bytes:
    """16 bytes that change with any annotation column of one row (`ANNOTATION_COLUMNS`), from
    a shard row or an `annotation_row`; numbers compare as the float32 a shard stores."""
    persons = row["persons"] or []
    h = hashlib.blake2b(repr((row["image_id"], row["file_name"], row["width"], row["height"],
                              tuple(row["coco_captions"] or ()), len(persons))).encode(),
                        digest_size=16)
    for p in persons:
        kp = p["keypoints"]
        h.update(kp.astype("<f4", copy=False).tobytes() if isinstance(kp, np.ndarray)
                 else _KEYPOINTS.pack(*kp))
        h.update(_PERSON_REST.pack(*p["bbox"], p["area"], bool(p["iscrowd"]),
                                   p["num_keypoints"]))
    return h.digest()


def annotations_digest(rows: Iterable[dict[str, Any]]) -> str:
    """The annotation columns of a shard's rows, in image id order, as 16 hex digits."""
    h = hashlib.blake2b(digest_size=8)
    for row in sorted(rows, key=lambda r: int(r["image_id"])):
        h.update(annotation_digest(row))
    return h.hexdigest()


def decode_row(row: dict[str, Any]) -> Sample:
    """One row (as from `Table.to_pylist()`) → `Sample`. A row read with only some columns
    decodes too: the columns it lacks are None (no PNG is decoded for them). Each label layer
    decodes its own columns (`LabelLayer.decode`)."""
    row = {**dict.fromkeys(schema(None).names), **row}
    fields: dict[str, Any] = {}
    for layer in layers():
        fields.update(layer.decode(row))
    # (a layer whose columns the row lacks or left null gives no plug-in value)
    plugins = {k: v for k in [k for k in fields if k not in _SAMPLE_FIELDS]
               if (v := fields.pop(k)) is not None}
    return Sample(
        plugins=plugins,
        image_id=row["image_id"],
        file_name=row["file_name"],
        split=row["split"],
        width=row["width"],
        height=row["height"],
        image=row["image"],
        exif_transpose=bool(row["exif_transpose"]),  # null (an older shard): the stored pixels
        **fields,
    )
