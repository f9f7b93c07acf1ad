"""Label shards (DESIGN.md §5): the Arrow schema, one sample's encode/decode, file metadata, an
atomic writer and a reader. The only module that knows column names (shard *file* names belong
to `distill.runfolder`, with every other run-file name).

Reading a shard needs nothing from distill: `pyarrow.parquet.read_table(path)`, then PIL for the
PNG and image columns and numpy for the rest (see README.md, "Reading a shard").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import struct
import sys
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distill.coco import ImageRecord, Person
from distill.errors import ShardError, StorageError
from distill.images import decode_png, encode_png
from distill.labels.groups import Segment
from distill.labels.keypoints import NUM_JOINTS
from distill.labels.text import TextRegion
from distill.provenance import library_versions
from distill.storage import AtomicOutput, Location, atomic_output

__all__ = [
    "ANNOTATION_COLUMNS",
    "OPTIONAL_COLUMNS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "Sample",
    "Segment",
    "ShardWriter",
    "TextRegion",
    "annotation_digest",
    "annotation_row",
    "annotations_digest",
    "column_bytes",
    "decode_row",
    "encode_sample",
    "footer_column_bytes",
    "iter_samples",
    "make_metadata",
    "open_shard",
    "read_metadata",
    "read_shard",
    "shard_identity",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
META_PREFIX = "distill."

_SEGMENT = pa.struct([
    ("category_id", pa.int32()),  # COCO-panoptic category id
    ("score", pa.float32()),
    ("isthing", pa.bool_()),
    ("area", pa.int64()),  # pixels at the original resolution
])  # fmt: skip
_TEXT_REGION = pa.struct([
    ("points", pa.list_(pa.float32())),  # x0, y0, x1, y1, ... in original pixels
    ("score", pa.float32()),
])  # fmt: skip
_PERSON = pa.struct([
    ("keypoints", pa.list_(pa.float32(), 3 * NUM_JOINTS)),  # x, y, v for the 17 COCO joints
    ("bbox", pa.list_(pa.float32(), 4)),  # x, y, w, h
    ("area", pa.float32()),
    ("iscrowd", pa.bool_()),
    ("num_keypoints", pa.int32()),
])  # fmt: skip

# Image-like columns are PNG bytes at the ORIGINAL resolution; a teacher that did not run leaves
# its columns null.
SCHEMA = pa.schema([
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("file_name", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("image", pa.binary(), nullable=False),  # the original encoded file, byte for byte
    pa.field("depth_png", pa.binary()),  # uint16 PNG: round((d - min) / (max - min) * 65535)
    pa.field("depth_min", pa.float64()),
    pa.field("depth_max", pa.float64()),
    pa.field("normals_png", pa.binary()),  # RGB8 PNG: (n + 1) / 2 * 255
    pa.field("panoptic_png", pa.binary()),  # uint8 PNG of COCO-panoptic category ids, 255 = void
    pa.field("segments", pa.list_(_SEGMENT)),
    pa.field("groups_png", pa.binary()),  # uint16 PNG, bit k = group k (distill.labels.groups)
    pa.field("text_png", pa.binary()),  # uint8 PNG, 255 = text
    pa.field("text_regions", pa.list_(_TEXT_REGION)),
    pa.field("teacher_captions", pa.list_(pa.string())),
    pa.field("coco_captions", pa.list_(pa.string())),
    pa.field("tokens", pa.list_(pa.string())),  # stop-word-filtered, GloVe-known, caption order
    pa.field("persons", pa.list_(_PERSON)),  # COCO ground truth, original pixels
    # True: `image` is decoded with its EXIF orientation applied (a plain folder's photo, as a
    # viewer shows it) and every label, width and height refer to those pixels; False or null
    # (COCO, and shards written before this column): the stored pixels.
    pa.field("exif_transpose", pa.bool_()),
])  # fmt: skip

# Columns added after the first shards were written: a shard without one still opens (and reads
# as if the column were null). New columns go at the end of SCHEMA.
OPTIONAL_COLUMNS = frozenset({"exif_transpose"})


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
    exif_transpose: bool = False  # decode `image` with its EXIF orientation (SCHEMA's comment)


# ---------------------------------------------------------------------------------------------
# One sample


def _check_hw(sample: Sample, name: str, array: np.ndarray) -> None:
    if array.shape[:2] != (sample.height, sample.width):
        raise ShardError(
            f"image {sample.image_id}: {name} is {array.shape[1]}x{array.shape[0]}, the image is "
            f"{sample.width}x{sample.height}; labels are stored at the original resolution"
        )


def _png(sample: Sample, name: str, array: np.ndarray | None, level: int) -> bytes | None:
    if array is None:
        return None
    _check_hw(sample, name, array)
    return encode_png(array, level)


# PNG columns: (the name errors use, the Sample field). Encoding them is the costly part.
_PNG_COLUMNS = {
    "depth_png": ("depth", "depth16"),
    "normals_png": ("normals", "normals"),
    "panoptic_png": ("panoptic", "panoptic"),
    "groups_png": ("groups", "groups"),
    "text_png": ("text mask", "text_mask"),
}


def encode_sample(sample: Sample, compress_level: int = 1,
                  columns: Collection[str] | None = None) -> dict[str, Any]:
    """A `Sample` → a dict of Python values matching `SCHEMA` (one row). With `columns`, only
    those are encoded (a teacher added to a stored row re-encodes only what it changed)."""
    wanted = set(SCHEMA.names) if columns is None else set(columns)
    row: dict[str, Any] = {}
    for column in wanted & _PNG_COLUMNS.keys():
        label, attr = _PNG_COLUMNS[column]
        array = getattr(sample, attr)
        if attr == "text_mask" and array is not None:
            array = array.astype(np.uint8) * 255
        row[column] = _png(sample, label, array, compress_level)
    row.update({  # cheap: always built, then filtered
        "image_id": sample.image_id,
        "file_name": sample.file_name,
        "split": sample.split,
        "width": sample.width,
        "height": sample.height,
        "image": sample.image,
        "depth_min": sample.depth_min,
        "depth_max": sample.depth_max,
        "segments": None if sample.segments is None else [vars(s) for s in sample.segments],
        "text_regions": None if sample.text_regions is None else [
            {"points": np.asarray(r.points, np.float32).reshape(-1).tolist(), "score": r.score}
            for r in sample.text_regions
        ],
        "teacher_captions": sample.teacher_captions,
        "coco_captions": sample.coco_captions,
        "tokens": sample.tokens,
        "persons": [
            {
                "keypoints": p.keypoints.reshape(-1).tolist(),
                "bbox": list(p.bbox),
                "area": p.area,
                "iscrowd": p.iscrowd,
                "num_keypoints": p.num_keypoints,
            }
            for p in sample.persons
        ],
        "exif_transpose": sample.exif_transpose,
    })
    unknown = wanted - set(SCHEMA.names)
    if unknown:
        raise ShardError(f"not shard columns: {sorted(unknown)}")
    return {name: row[name] for name in SCHEMA.names if name in wanted}  # schema order


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


def _unpng(value: bytes | None) -> np.ndarray | None:
    return None if value is None else decode_png(value)


_NULL_ROW: dict[str, Any] = dict.fromkeys(SCHEMA.names)


def decode_row(row: dict[str, Any]) -> Sample:
    """One row (as from `Table.to_pylist()`) → `Sample`. A row read with only some columns
    decodes too: the columns it lacks are None (no PNG is decoded for them)."""
    row = {**_NULL_ROW, **row}
    text = _unpng(row["text_png"])
    return Sample(
        image_id=row["image_id"],
        file_name=row["file_name"],
        split=row["split"],
        width=row["width"],
        height=row["height"],
        image=row["image"],
        depth16=_unpng(row["depth_png"]),
        depth_min=row["depth_min"],
        depth_max=row["depth_max"],
        normals=_unpng(row["normals_png"]),
        panoptic=_unpng(row["panoptic_png"]),
        segments=None if row["segments"] is None else [Segment(**s) for s in row["segments"]],
        groups=_unpng(row["groups_png"]),
        text_mask=None if text is None else text > 0,
        text_regions=None if row["text_regions"] is None else [
            TextRegion(np.asarray(r["points"], np.float32).reshape(-1, 2), r["score"])
            for r in row["text_regions"]
        ],
        teacher_captions=row["teacher_captions"],
        coco_captions=row["coco_captions"] or [],
        tokens=row["tokens"],
        persons=[
            Person(
                keypoints=np.asarray(p["keypoints"], np.float32).reshape(NUM_JOINTS, 3),
                bbox=tuple(p["bbox"]),
                area=p["area"],
                iscrowd=p["iscrowd"],
                num_keypoints=p["num_keypoints"],
            )
            for p in row["persons"] or []
        ],
        exif_transpose=bool(row["exif_transpose"]),  # null (an older shard): the stored pixels
    )


# ---------------------------------------------------------------------------------------------
# File metadata


def shard_identity(path: Location) -> dict[str, Any]:
    """What names a shard's data wherever it is copied: its path, its file name and the label
    fingerprint in its footer (one label run's shard of one name holds the same rows)."""
    fingerprint = read_metadata(path).get("fingerprint")
    return {"path": str(path), "name": path.name,
            "fingerprint": str(fingerprint) if fingerprint is not None else None}


def make_metadata(
    fingerprint: str, provenance: dict[str, Any], extra: dict[str, Any] | None = None
) -> dict[str, str]:
    """File-level key/value metadata: schema version, config fingerprint, every teacher's
    provenance, package versions, plus `extra` (all values JSON-encoded)."""
    meta = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fingerprint,
        "provenance": provenance,
        "versions": library_versions(),
        **(extra or {}),
    }
    return {f"{META_PREFIX}{k}": json.dumps(v, sort_keys=True) for k, v in meta.items()}


def read_metadata(path: str | Path | Location) -> dict[str, Any]:
    """The distill metadata of a shard, decoded (reads only the footer)."""
    schema = _open(Location(path)).schema_arrow
    raw = schema.metadata or {}
    out = {}
    for key, value in raw.items():
        k = key.decode()
        if k.startswith(META_PREFIX):
            out[k[len(META_PREFIX):]] = json.loads(value)
    return out


# ---------------------------------------------------------------------------------------------
# Writing and reading


# The image and PNG columns are already compressed: zstd and dictionary encoding on them cost the
# single writer CPU and gain ~0.3 % of bytes. The other columns (ids, captions, polygons,
# keypoints) keep zstd and dictionaries.
_ENCODED_COLUMNS = ("image", *_PNG_COLUMNS)
_COMPRESSION = {f.name: "none" if f.name in _ENCODED_COLUMNS else "zstd" for f in SCHEMA}
_DICTIONARY = [f.name for f in SCHEMA if f.name not in _ENCODED_COLUMNS]


class ShardWriter:
    """Writes one shard so that it appears under its final name only when complete.

    Rows stream into a hidden temp file (or object) beside the target through
    `distill.storage.atomic_output`; `close()` finishes the file and commits it (rename on a
    disk, completed upload + server-side move on an object store). An exception inside the
    `with` block (or `abort()`) drops the temp: a crash never leaves a partial file under a
    final name. `sha256` and `size` of the committed file are known without reading it back.
    """

    def __init__(
        self,
        path: str | Path | Location,
        metadata: dict[str, str],
        row_group_size: int = 64,
        compress_level: int = 1,
    ) -> None:
        self.path = Location(path)
        self.row_group_size = row_group_size
        self.compress_level = compress_level
        self.rows = 0
        self.sha256 = ""
        self.size = 0
        self._buffer: list[dict[str, Any]] = []
        self._output = atomic_output(self.path)
        sink: AtomicOutput = self._output.__enter__()
        self._sink = sink
        try:
            self._writer = pq.ParquetWriter(sink.stream, SCHEMA.with_metadata(metadata),
                                            compression=_COMPRESSION,
                                            use_dictionary=_DICTIONARY)
        except BaseException:
            self._output.__exit__(*sys.exc_info())
            raise
        self._closed = False

    def write(self, sample: Sample) -> None:
        self.write_row(encode_sample(sample, self.compress_level))

    def write_row(self, row: dict[str, Any]) -> None:
        """Write a row already encoded by `encode_sample` (the pipeline encodes on its CPU
        workers; the writer only appends)."""
        self._buffer.append(row)
        if len(self._buffer) >= self.row_group_size:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            table = pa.Table.from_pylist(self._buffer, schema=self._writer.schema)
            self._writer.write_table(table, row_group_size=self.row_group_size)
            self.rows += len(self._buffer)
            self._buffer = []

    def close(self) -> Location:
        """Finish the file and move it to its final name; returns that location. A failure
        here (a full disk, a lost connection, Ctrl-C) drops the temp and raises."""
        if self._closed:
            return self.path
        self._closed = True
        try:
            self._flush()
            self._close_parquet()
        except BaseException:
            try:
                with contextlib.suppress(Exception):
                    self._close_parquet()
            finally:
                self._output.__exit__(*sys.exc_info())
            raise
        self._output.__exit__(None, None, None)
        self.sha256, self.size = self._sink.sha256, self._sink.size
        logger.debug("committed %s (%d rows)", self.path, self.rows)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far."""
        if self._closed:
            return
        self._closed = True
        try:
            with contextlib.suppress(Exception):
                self._close_parquet()
        finally:
            with contextlib.suppress(_Abort):
                self._output.__exit__(_Abort, _Abort(), None)

    def _close_parquet(self) -> None:
        """Close the ParquetWriter exactly once, before the temp file under it closes: it counts
        as closed even when closing raised (an interrupt in the footer write), or pyarrow's
        finalizer would close it again later onto the closed temp file ("Exception ignored in
        ParquetWriter.__del__ … write to closed file")."""
        if not self._writer.is_open:
            return
        try:
            self._writer.close()
        finally:
            self._writer.is_open = False

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _Abort(Exception):
    """Thrown into the atomic output to drop it."""


def footer_column_bytes(meta: pq.FileMetaData) -> dict[str, int]:
    """Compressed bytes per top-level column of one Parquet file, from its footer."""
    totals: dict[str, int] = defaultdict(int)
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            col = group.column(c)
            totals[col.path_in_schema.split(".")[0]] += col.total_compressed_size
    return dict(totals)


def column_bytes(shard_paths: Iterable[str | Path | Location]) -> tuple[dict[str, int], int]:
    """Compressed bytes per top-level column over all shards, and the row count."""
    totals: dict[str, int] = defaultdict(int)
    rows = 0
    for path in shard_paths:
        meta = _open(Location(path)).metadata
        rows += meta.num_rows
        for name, n in footer_column_bytes(meta).items():
            totals[name] += n
    return dict(totals), rows


def _open(path: Location) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path.open_input())
    except StorageError as exc:
        raise ShardError(f"shard {path} does not exist" if "does not exist" in str(exc)
                         else str(exc)) from exc
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"shard {path} is not a readable Parquet file: {exc}") from exc


def open_shard(path: str | Path | Location) -> pq.ParquetFile:
    """Open a shard reading only its footer, checking it is Parquet with the distill schema;
    every error names the file. A shard written before a column of `OPTIONAL_COLUMNS` existed
    opens too (`decode_row` reads the missing column as null)."""
    path = Location(path)
    pf = _open(path)
    names = pf.schema_arrow.names
    missing = [f.name for f in SCHEMA if f.name not in names and f.name not in OPTIONAL_COLUMNS]
    if missing:
        raise ShardError(f"shard {path} does not have the distill schema: missing {missing}")
    for f in SCHEMA:
        if f.name not in names:
            continue
        got = pf.schema_arrow.field(f.name).type
        if got != f.type:
            raise ShardError(f"shard {path}: column {f.name!r} is {got}, expected {f.type}")
    return pf


def read_shard(path: str | Path | Location, columns: list[str] | None = None) -> pa.Table:
    """Read a shard, checking its schema against the one distill writes."""
    pf = open_shard(path)
    try:
        return pf.read(columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"shard {path} cannot be read: {exc}") from exc


def iter_samples(path: str | Path | Location,
                 columns: Sequence[str] | None = None) -> Iterator[Sample]:
    """Decoded samples of a shard, reading one row group at a time (only `columns`, when
    given: the others decode as None)."""
    pf = open_shard(path)
    for group in range(pf.num_row_groups):
        try:
            table = pf.read_row_group(group, columns=list(columns) if columns else None)
        except (OSError, pa.ArrowException) as exc:
            raise ShardError(f"shard {path} cannot be read: {exc}") from exc
        for row in table.to_pylist():
            yield decode_row(row)
