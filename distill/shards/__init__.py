"""Label shards (DESIGN.md §5): the Arrow schema and one sample's encode/decode
(`distill.shards.rows`), file metadata, an atomic writer and a reader (`distill.shards.files`).
The image columns are this package's; each label layer's columns and their codec are that
layer's (`distill.layers`), which the schema and encode/decode iterate (shard *file* names
belong to `distill.runfolder`, with every other run-file name).

Reading a shard needs nothing from distill: `pyarrow.parquet.read_table(path)`, then PIL for the
PNG and image columns and numpy for the rest (see README.md, "Reading a shard").
"""

from __future__ import annotations

from distill.labels.groups import Segment
from distill.labels.text import TextRegion
from distill.shards.files import (
    ShardWriter,
    column_bytes,
    footer_column_bytes,
    iter_samples,
    make_metadata,
    open_shard,
    read_metadata,
    read_shard,
    shard_identity,
)
from distill.shards.rows import (
    ANNOTATION_COLUMNS,
    OPTIONAL_COLUMNS,
    PICTURE_COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    Sample,
    annotation_digest,
    annotation_row,
    annotations_digest,
    decode_row,
    encode_sample,
    optional_columns,
    schema,
)

__all__ = [
    "ANNOTATION_COLUMNS",
    "OPTIONAL_COLUMNS",
    "PICTURE_COLUMNS",
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
    "optional_columns",
    "read_metadata",
    "read_shard",
    "schema",
    "shard_identity",
]
