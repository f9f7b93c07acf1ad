"""The one commit protocol every file distill writes goes through, and what this process wrote.

Commit protocol (`atomic_output`): a file appears under its final name only when complete.
- On a local disk: bytes go to a hidden temp name beside the final one (`.NAME.tmp-PID-HEX`,
  which no `*.parquet` / `*.json` pattern matches), then fsync, `os.replace`, fsync the folder.
- On S3: bytes are spooled to a local file (`distill.spool`: a folder per process, removed at
  exit, a killed process's by the next one), then uploaded to the final key in one go — a single
  PUT, or a multipart upload that S3 shows only once it is completed (boto3 aborts it on an
  error). A killed writer leaves at most an unfinished multipart upload, which is invisible; the
  run-folder owner aborts those on resume (`distill.runfolder`).
- On other object stores: the temp object is completed, then moved to the final key (a
  server-side copy, so the final key appears only whole) and the temp deleted; a killed writer
  can leave a temp object, removed on resume.

What this process wrote (`written_here`): every file `atomic_output` completes is remembered by
its identity — the local file's inode, size and mtime, or on S3 a token of this process stored
in the object's metadata — so that undoing a failed run removes only what is still this
process's own bytes, never a file another writer has since replaced (even with equal bytes).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO

import pyarrow as pa

from distill.errors import StorageError
from distill.spool import spool_folder
from distill.storage.location import Location, _boto3, s3_client

__all__ = [
    "AtomicOutput",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_table",
    "fsync_dir",
    "is_temp_name",
    "temp_name",
    "written_here",
]

_TEMP_RE = re.compile(r"^\.(?P<final>.+)\.tmp-\d+-[0-9a-f]{8}$")


def temp_name(final: str) -> str:
    """A hidden temp name for `final` that no `*.parquet` / `*.json` glob matches."""
    return f".{final}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def is_temp_name(name: str, final: str | None = None) -> str | None:
    """The final name a temp name stands for (and, with `final`, only if it is that one)."""
    m = _TEMP_RE.match(name)
    if m is None or (final is not None and m["final"] != final):
        return None
    return m["final"]


def _write_error(loc: Location, exc: BaseException) -> StorageError:
    """`cannot write LOC: CAUSE` — the final name (not the temp's) and the OS's words for what
    went wrong (`No space left on device`, `Read-only file system`)."""
    cause = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return StorageError(f"cannot write {loc}: {cause}")


class _HashingSink:
    """A binary sink that hashes what passes through (sha256 without reading the file back).
    A failed write (a full disk) raises `StorageError` naming the final location."""

    def __init__(self, raw: Any, where: Location) -> None:
        self.raw, self.hash, self.written, self.closed = raw, hashlib.sha256(), 0, False
        self.where = where

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.hash.update(view)
        try:
            self.raw.write(view)
        except (OSError, pa.ArrowException) as exc:
            raise _write_error(self.where, exc) from exc
        self.written += len(view)
        return len(view)

    def tell(self) -> int:
        return self.written

    def flush(self) -> None:
        try:
            self.raw.flush()
        except (OSError, pa.ArrowException) as exc:
            raise _write_error(self.where, exc) from exc

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True  # the owner (atomic_output) closes the raw stream


class AtomicOutput:
    """The sink `atomic_output` yields: write to it; `sha256` and `size` are final once the
    block exits without error."""

    def __init__(self, sink: _HashingSink) -> None:
        self._sink = sink
        self.sha256 = ""
        self.size = 0

    @property
    def stream(self) -> BinaryIO:
        return self._sink  # type: ignore[return-value]


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike[str] | Location) -> Iterator[AtomicOutput]:
    """Write `final` so that it appears only complete (see the module docstring); an exception
    inside the block, or a failure to finish the file (a full disk at flush, fsync or rename),
    leaves the old file (or none) and no temp behind. Errors of the storage itself are raised as
    `StorageError` naming `final` and the cause."""
    loc = Location(final)
    direct = loc.scheme == "s3" and _boto3() is not None
    tmp = loc.with_name(temp_name(loc.name))
    try:
        loc.parent.mkdir()
        if loc.is_local:
            raw: Any = open(tmp.path, "wb")  # noqa: SIM115 (closed below, on every path)
        elif direct:  # spooled locally, then one upload that S3 completes atomically
            raw = tempfile.NamedTemporaryFile(prefix="distill-upload-", dir=spool_folder(),  # noqa: SIM115
                                              delete=False)
        else:
            raw = loc.fs.open_output_stream(tmp.path)
    except (OSError, pa.ArrowException) as exc:
        raise _write_error(loc, exc) from exc
    sink = _HashingSink(raw, loc)
    out = AtomicOutput(sink)
    ok = False
    try:
        yield out
        out.sha256, out.size = sink.hash.hexdigest(), sink.written
        try:
            if loc.is_local:
                raw.flush()
                os.fsync(raw.fileno())
                stamp: tuple[Any, ...] = _local_stamp(os.fstat(raw.fileno()))
                raw.close()
                os.replace(tmp.path, loc.path)
                fsync_dir(loc.parent.path)
                _WRITTEN[loc] = stamp
            elif direct:
                raw.close()
                _s3_upload(raw.name, loc)
                _WRITTEN[loc] = (_writer_token(), out.size)
            else:
                raw.close()  # the temp object is complete only now
                loc.fs.move(tmp.path, loc.path)
        except (OSError, pa.ArrowException) as exc:
            raise _write_error(loc, exc) from exc
        ok = True
    finally:
        if direct:
            with contextlib.suppress(Exception):
                raw.close()
            with contextlib.suppress(OSError):
                os.unlink(raw.name)
        elif not ok:
            with contextlib.suppress(Exception):
                raw.close()
            with contextlib.suppress(Exception):
                tmp.delete()


def _s3_upload(filename: str, loc: Location) -> None:
    """One upload to the final key: a single PUT, or a multipart upload that S3 makes visible
    only when it completes (boto3 aborts it on an error). No partial object is ever visible, and
    unlike a temp key + copy, no second pass over the bytes. The object carries this process's
    writer token (`written_here`)."""
    bucket, _, key = loc.path.partition("/")
    try:
        s3_client().upload_file(filename, bucket, key,
                                ExtraArgs={"Metadata": {_WRITER_META: _writer_token()}})
    except Exception as exc:
        raise StorageError(f"cannot write {loc}: {exc}") from exc


# -- what this process wrote ------------------------------------------------------------------

_WRITER_META = "distill-writer"  # S3 user metadata: the token of the process that wrote it
_WRITTEN: dict[Location, tuple[Any, ...]] = {}  # final location -> identity of what we wrote
_token: list[str] = []


def _writer_token() -> str:
    """A random token naming this process as a writer (a forked child gets its own)."""
    if not _token:
        _token.append(secrets.token_hex(8))
    return _token[0]


def _local_stamp(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _forget_writes() -> None:
    _WRITTEN.clear()
    _token.clear()


os.register_at_fork(after_in_child=_forget_writes)


def written_here(final: str | os.PathLike[str] | Location) -> bool:
    """Whether `final` still holds what this process last wrote there with `atomic_output`:
    the same local file (inode, size, mtime), or an S3 object carrying this process's writer
    token. A file another writer has replaced since — even with the same bytes — is not."""
    loc = Location(final)
    stamp = _WRITTEN.get(loc)
    if stamp is None:
        return False
    if loc.is_local:
        try:
            return _local_stamp(os.stat(loc.path)) == stamp
        except OSError:
            return False
    bucket, _, key = loc.path.partition("/")
    try:
        head = s3_client().head_object(Bucket=bucket, Key=key)
    except Exception:  # gone, or unreachable: not known to be ours
        return False
    return (head.get("Metadata", {}).get(_WRITER_META), head.get("ContentLength")) == stamp


def fsync_dir(folder: str) -> None:
    """Persist a rename in a local `folder` (the directory entry itself)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(final: str | os.PathLike[str] | Location, data: bytes) -> Location:
    """Write `data` to `final` through a temp; a crash leaves the old file or none."""
    with atomic_output(final) as out:
        out.stream.write(data)
    return Location(final)


def atomic_write_table(final: str | os.PathLike[str] | Location, table: Any) -> Location:
    """A small pyarrow Table as one Parquet file, atomically (quarantine, vocabulary)."""
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return atomic_write_bytes(final, sink.getvalue().to_pybytes())
