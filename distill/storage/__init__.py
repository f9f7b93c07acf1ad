"""Where bytes live and how they are written: `Location` (a local path or a URI on a pyarrow
filesystem, `distill.storage.location`) and the one commit protocol every file distill writes
goes through, with what this process wrote (`distill.storage.atomic`)."""

from __future__ import annotations

from distill.storage.atomic import (
    AtomicOutput,
    atomic_output,
    atomic_write_bytes,
    atomic_write_table,
    fsync_dir,
    is_temp_name,
    temp_name,
    written_here,
)
from distill.storage.location import (
    Location,
    file_sha256,
    redact_credentials,
    remove_tree,
    s3_client,
)

__all__ = [
    "AtomicOutput",
    "Location",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_table",
    "file_sha256",
    "fsync_dir",
    "is_temp_name",
    "redact_credentials",
    "remove_tree",
    "s3_client",
    "temp_name",
    "written_here",
]
