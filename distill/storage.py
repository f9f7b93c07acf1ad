"""Where bytes live: local paths and URIs (`s3://`, `gs://`, `hdfs://`, `file://`) behind one
small path type, and the one commit protocol every file distill writes goes through.

A `Location` is a file or folder on a pyarrow filesystem (`pyarrow.fs`); pyarrow rather than
fsspec because pyarrow already reads and writes every shard, its S3/GCS/HDFS clients are in the
wheel we depend on, and it reads endpoints and credentials from the standard environment
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, the GCS default credentials), so nothing
secret ever passes through distill's config, manifest or logs.

Commit protocol (`atomic_output`): a file appears under its final name only when complete.
- On a local disk: bytes go to a hidden temp name beside the final one (`.NAME.tmp-PID-HEX`,
  which no `*.parquet` / `*.json` pattern matches), then fsync, `os.replace`, fsync the folder.
- On S3: bytes are spooled to a local file (`distill.spool`: a folder per process, removed at
  exit, a killed process's by the next one), then uploaded to the final key in one go — a single
  PUT, or a multipart upload that S3 shows only once it is completed (boto3 aborts it on an
  error). A killed writer leaves at most an unfinished multipart upload, which is invisible; the
  run-folder owner aborts those on resume (`distill.runfolder`). Deletes go through boto3 too:
  pyarrow's `delete_file`/`delete_dir` put an empty "folder" object (`RUN/`) in place of a
  prefix they leave empty.
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
import posixpath
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from fnmatch import fnmatch
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from distill.errors import DistillError, StorageError
from distill.provenance import file_sha256 as local_sha256
from distill.provenance import stream_sha256
from distill.spool import spool_folder

__all__ = [
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

REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
_MANGLED = re.compile(rf"^({'|'.join(REMOTE_SCHEMES)}):/([^/].*)$", re.IGNORECASE)
_TEMP_RE = re.compile(r"^\.(?P<final>.+)\.tmp-\d+-[0-9a-f]{8}$")


# Credentials in a URI (RFC 3986 user information, which holds no `/`): `any://USER:SECRET@`,
# and on S3 and GCS any `s3://KEY@` (`hdfs://user@` names a user, `abfs://container@` a
# container: no secret).
_CREDENTIALS = ("s3", "gs", "gcs")
_USERINFO = re.compile(rf"(?i)\b(?:((?:{'|'.join(_CREDENTIALS)})://)[^\s/@]+@"
                       r"|([a-z][a-z0-9+.-]*://)[^\s/@:]*:[^\s/@]*@)")


def redact_credentials(text: str) -> str:
    """`text` with the credentials of every URI in it replaced by `***`: for what is shown of
    a URI a user gave (`Location` refuses one that holds credentials)."""
    return _USERINFO.sub(lambda m: f"{m[1] or m[2]}***@", text)


@lru_cache(maxsize=32)
def _filesystem(scheme: str, authority: str) -> pafs.FileSystem:
    """One client per bucket / namenode per process (building an S3 client resolves the
    bucket's region, a round trip)."""
    try:
        fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{authority}/")
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise StorageError(f"cannot open {scheme}://{authority}: {exc}") from exc
    return fs


# A forked child (DataLoader workers) builds its own clients: never share the parent's pooled
# connections across processes.
os.register_at_fork(after_in_child=_filesystem.cache_clear)

_LOCAL = pafs.LocalFileSystem()


class Location:
    """A file or folder given as a local path or a URI; behaves like a small `pathlib.Path`.

    `str(loc)` is what a person reads (the path or the URI), `loc.path` what the filesystem
    takes. Pickles as its URI, so Ray tasks rebuild the client on their own node.
    """

    __slots__ = ("path", "scheme")
    path: str  # what the filesystem takes: an absolute local path, or "bucket/key"
    scheme: str  # "" on the local disk, else s3 / gs / hdfs / …

    def __init__(self, spec: str | os.PathLike[str] | Location) -> None:
        if isinstance(spec, Location):
            self.scheme, self.path = spec.scheme, spec.path
            return
        text = os.fspath(spec)
        m = _MANGLED.match(text)
        if m:  # `Path("s3://b/k")` collapses the double slash: undo it
            text = f"{m[1]}://{m[2]}"
        if not text:
            raise StorageError("an empty path was given")
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme == "file":
            self.scheme, self.path = "", os.path.abspath(parts.path)
        elif scheme in REMOTE_SCHEMES:
            if not parts.netloc:
                raise StorageError(f"{text!r} names no bucket or host: write it as "
                                   f"{scheme}://BUCKET/path")
            if parts.password is not None or (parts.username is not None
                                              and scheme in _CREDENTIALS):
                raise StorageError(
                    f"{redact_credentials(text)!r} holds credentials: a URI is written to logs, "
                    "the run's config and its manifest. Give them through the environment "
                    "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, the GCS default "
                    f"credentials) and write it as {scheme}://BUCKET/path")
            key = posixpath.normpath("/" + parts.path).lstrip("/") if parts.path.strip("/") \
                else ""
            self.scheme = "gs" if scheme == "gcs" else scheme
            self.path = f"{parts.netloc}/{key}".rstrip("/")
        elif len(scheme) > 1 and "://" in text:
            raise StorageError(f"{text!r}: unknown scheme {scheme!r}; use a local path or one "
                               f"of file://, {', '.join(s + '://' for s in REMOTE_SCHEMES)}")
        else:
            self.scheme, self.path = "", os.path.abspath(os.path.expanduser(text))

    # -- names ----------------------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def fs(self) -> pafs.FileSystem:
        if self.is_local:
            return _LOCAL
        return _filesystem(self.scheme, self.path.split("/", 1)[0])

    @property
    def name(self) -> str:
        return posixpath.basename(self.path) if self.scheme else os.path.basename(self.path)

    @property
    def suffix(self) -> str:
        return os.path.splitext(self.name)[1]

    @property
    def parent(self) -> Location:
        if self.is_local:
            return Location(os.path.dirname(self.path))
        head = posixpath.dirname(self.path)
        return _remote(self.scheme, head or self.path)

    def __truediv__(self, name: str) -> Location:
        if self.is_local:
            return Location(os.path.join(self.path, name))
        return _remote(self.scheme, posixpath.normpath(f"{self.path}/{name}"))

    def with_name(self, name: str) -> Location:
        return self.parent / name

    def as_path(self) -> Path:
        """The local path (for code that needs one: fcntl, PIL on a file name)."""
        if not self.is_local:
            raise StorageError(f"{self} is not on a local disk")
        return Path(self.path)

    def __str__(self) -> str:
        return self.path if self.is_local else f"{self.scheme}://{self.path}"

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def __fspath__(self) -> str:
        return str(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and (self.scheme, self.path) == (other.scheme,
                                                                            other.path)

    def __hash__(self) -> int:
        return hash((self.scheme, self.path))

    def __lt__(self, other: Location) -> bool:
        return str(self) < str(other)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Location, (str(self),))

    # -- queries --------------------------------------------------------------------------

    def _info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path)
        except (pa.ArrowException, OSError) as exc:
            raise StorageError(f"cannot reach {self}: {exc}") from exc

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def size(self) -> int:
        info = self._info()
        if info.type != pafs.FileType.File:
            raise StorageError(f"{self} is not a file")
        return int(info.size or 0)

    def iterdir(self) -> list[Location]:
        """Direct children, sorted by name ([] when the folder does not exist)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        except (pa.ArrowException, OSError) as exc:
            raise StorageError(f"cannot list {self}: {exc}") from exc
        kids = [self / posixpath.basename(i.path.rstrip("/")) for i in infos]
        return sorted(kids)

    def files(self, pattern: str = "*") -> list[Location]:
        """Regular files directly under this folder whose name matches `pattern`, sorted."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        except (pa.ArrowException, OSError) as exc:
            raise StorageError(f"cannot list {self}: {exc}") from exc
        names = [posixpath.basename(i.path.rstrip("/")) for i in infos
                 if i.type == pafs.FileType.File]
        return sorted(self / n for n in names if fnmatch(n, pattern))

    # -- reading --------------------------------------------------------------------------

    def open_input(self) -> pa.NativeFile:
        """A random-access reader (what `pyarrow.parquet.ParquetFile` takes)."""
        try:
            return self.fs.open_input_file(self.path)
        except FileNotFoundError as exc:
            raise StorageError(f"{self} does not exist") from exc
        except (pa.ArrowException, OSError) as exc:
            raise StorageError(f"cannot read {self}: {exc}") from exc

    def read_bytes(self) -> bytes:
        if self.is_local:
            return Path(self.path).read_bytes()  # errors keep their errno for the caller
        with self.open_input() as fh:
            return fh.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    # -- writing --------------------------------------------------------------------------

    def mkdir(self) -> None:
        """Create this folder and its parents (object stores have no folders: a no-op)."""
        if self.is_local:
            os.makedirs(self.path, exist_ok=True)

    def delete(self) -> None:
        """Remove this file; a missing one is fine."""
        if self.is_local:
            Path(self.path).unlink(missing_ok=True)
            return
        if self.scheme == "s3" and _boto3() is not None:  # no folder marker left behind
            bucket, _, key = self.path.partition("/")
            try:
                s3_client().delete_object(Bucket=bucket, Key=key)
            except Exception as exc:
                raise StorageError(f"cannot remove {self}: {exc}") from exc
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path)

    def write_bytes(self, data: bytes) -> None:
        atomic_write_bytes(self, data)


def _remote(scheme: str, path: str) -> Location:
    loc = Location.__new__(Location)
    loc.scheme, loc.path = scheme, path
    return loc


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


@lru_cache(maxsize=1)
def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        return None
    return boto3


@lru_cache(maxsize=1)
def s3_client() -> Any:
    """A boto3 S3 client from the standard environment (endpoint, credentials, region); one per
    process (boto3 clients are thread-safe, and making one costs tens of milliseconds)."""
    boto3 = _boto3()
    if boto3 is None:
        raise DistillError("this needs boto3 (pip install 'distill[s3]')")
    return boto3.client("s3")


os.register_at_fork(after_in_child=s3_client.cache_clear)


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


def remove_tree(folder: Location) -> None:
    """Remove a folder and everything under it (a missing one is fine). Callers own the folder:
    only distill's own staging folders are ever passed here."""
    if folder.is_local:
        shutil.rmtree(folder.path, ignore_errors=True)
    elif folder.scheme == "s3" and _boto3() is not None:  # no folder marker left behind
        _s3_remove_prefix(folder)
    elif folder.is_dir():
        try:
            folder.fs.delete_dir(folder.path)
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(f"cannot remove {folder}: {exc}") from exc


def _s3_remove_prefix(folder: Location) -> None:
    """Delete every object under `folder/` with boto3, a page (up to 1000 keys) per request."""
    bucket, _, prefix = folder.path.partition("/")
    if not prefix:
        raise StorageError(f"refusing to remove the whole bucket {folder}")
    client = s3_client()
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                  Prefix=f"{prefix}/")
        for page in pages:
            objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objects:
                client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
    except Exception as exc:
        raise StorageError(f"cannot remove {folder}: {exc}") from exc


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


def file_sha256(path: str | os.PathLike[str] | Location) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    loc = Location(path)
    if loc.is_local:
        return local_sha256(loc.path)
    with loc.open_input() as fh:
        return stream_sha256(fh)
