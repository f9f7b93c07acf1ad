"""Where bytes live: local paths and URIs (`s3://`, `gs://`, `hdfs://`, `file://`) behind one
small path type, `Location`; removing files and folders; the boto3 S3 client.

A `Location` is a file or folder on a pyarrow filesystem (`pyarrow.fs`); pyarrow rather than
fsspec because pyarrow already reads and writes every shard, its S3/GCS/HDFS clients are in the
wheel we depend on, and it reads endpoints and credentials from the standard environment
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, the GCS default credentials), so nothing
secret ever passes through distill's config, manifest or logs. Deletes on S3 go through boto3:
pyarrow's `delete_file`/`delete_dir` put an empty "folder" object (`RUN/`) in place of a prefix
they leave empty.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
from fnmatch import fnmatch
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from distill.errors import DistillError, StorageError
from distill.provenance import file_sha256 as local_sha256
from distill.provenance import stream_sha256

__all__ = [
    "REMOTE_SCHEMES",
    "Location",
    "file_sha256",
    "redact_credentials",
    "remove_tree",
    "s3_client",
]

REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
_MANGLED = re.compile(rf"^({'|'.join(REMOTE_SCHEMES)}):/([^/].*)$", re.IGNORECASE)

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
        from distill.storage.atomic import atomic_write_bytes

        atomic_write_bytes(self, data)


def _remote(scheme: str, path: str) -> Location:
    loc = Location.__new__(Location)
    loc.scheme, loc.path = scheme, path
    return loc


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


def file_sha256(path: str | os.PathLike[str] | Location) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    loc = Location(path)
    if loc.is_local:
        return local_sha256(loc.path)
    with loc.open_input() as fh:
        return stream_sha256(fh)
