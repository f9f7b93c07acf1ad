"""Files on disk: commit by rename (a file appears under its final name only when complete)
and content checksums."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_table",
    "commit",
    "file_sha256",
    "fsync_dir",
    "temp_path",
]


def temp_path(final: Path) -> Path:
    """A hidden temp name beside `final` (same filesystem, so the rename is atomic) that no
    `*.parquet` / `*.json` glob matches."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(folder: Path) -> None:
    """Persist a rename in `folder` (the directory entry itself)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, final: Path) -> Path:
    """fsync `tmp`, rename it to `final`, fsync the folder."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


def atomic_write_bytes(final: str | Path, data: bytes) -> Path:
    """Write `data` to `final` through a temp file; a crash leaves the old file or none."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    try:
        tmp.write_bytes(data)
        return commit(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_table(final: str | Path, table: Any) -> Path:
    """Write a small pyarrow Table as one Parquet file, atomically (quarantine, vocabulary)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return atomic_write_bytes(final, sink.getvalue().to_pybytes())


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
