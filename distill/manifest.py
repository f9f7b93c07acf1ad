"""The run manifest (DESIGN.md §5): the deterministic plan (shard → image ids), the config
fingerprint it was made with, per-shard per-teacher status and checksums, and each time the run
grew (new images in new shards after the committed ones).

On disk, so that a commit costs the same at 5k images as at a million:

- `OUT/manifest.json`, the whole manifest, written atomically when the plan is made or changes
  (growth, an added teacher) and once at the end of an invocation (`compact_manifest`);
- `OUT/manifest.d/<shard>.json`, one small commit record per shard committed since (its entry
  without the image ids, and the teachers' dtypes): what `Committer.commit` writes, atomically,
  instead of the whole manifest.

`read_manifest` returns the two together, as one manifest. Every whole write bumps the
manifest's `generation`; a record names the generation it was written under, so a record the
whole file already holds (a kill between writing manifest.json and removing the records) is
never applied over a newer state. A crash at any point loses no committed shard and leaves
nothing half-written."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from distill.errors import ShardError
from distill.runfolder import LabelRun, shard_name
from distill.storage import Location, atomic_write_bytes, file_sha256

__all__ = [
    "MANIFEST_VERSION",
    "Manifest",
    "ShardEntry",
    "compact_manifest",
    "local_identity",
    "make_plan",
    "read_manifest",
    "record_commit",
    "shard_is_complete",
    "write_manifest",
]

logger = logging.getLogger(__name__)

# 2: runs can grow (`extensions`, index-only shard names). Version 1 manifests read as runs
# that never grew; a distill that reads only 1 refuses a 2 in one line instead of misreading it.
# 3: shard entries record `annotations`; entries of 1 and 2 read with none (checked by reading).
# 4: commit records beside the manifest (`generation`), and each committed shard's local inode
# and mtime; entries of 1 to 3 read with none (their shards are checked by sha256 at resume).
MANIFEST_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)


@dataclass
class ShardEntry:
    """One planned shard."""

    name: str
    image_ids: list[int]
    teachers: dict[str, str] = field(default_factory=dict)  # role → "done" | "pending"
    rows: int | None = None  # rows written (planned images minus quarantined ones)
    sha256: str | None = None  # of the committed file
    size: int | None = None  # bytes of the committed file
    # `distill.shards.annotations_digest` of the committed rows: the annotations they were
    # labelled from, compared with the dataset's at every planning (pipelines.plan)
    annotations: str | None = None
    # Work done on this shard, summed over runs: {"seconds": {stage: s}, "images": {stage: n},
    # "oom_halvings": {role: n}}. Feeds summary.json's per-teacher images/s.
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    # On a local disk, the committed file's inode and mtime (ns) as the commit left them: while
    # they, its size and its footer still match, a resume trusts the file without hashing it
    inode: int | None = None
    mtime_ns: int | None = None

    def done(self, roles: list[str]) -> bool:
        return self.sha256 is not None and all(self.teachers.get(r) == "done" for r in roles)


@dataclass
class Manifest:
    """`OUT/manifest.json`."""

    split: str
    fingerprint: str
    config: dict[str, Any]  # the fingerprinted view of the config, to report what changed
    shard_size: int
    shards: list[ShardEntry]
    selection: dict[str, Any] = field(default_factory=dict)  # --limit / --image-ids, first plan
    # role → the dtype its teacher resolved to at the first commit (part of the run's identity)
    dtypes: dict[str, str] = field(default_factory=dict)
    # Each time the run grew, in order: {"at" (UTC), "selection", "images", "shards" (names)}.
    extensions: list[dict[str, Any]] = field(default_factory=list)
    generation: int = 0  # bumped at every whole write (commit records name theirs)
    version: int = MANIFEST_VERSION

    def entry(self, name: str) -> ShardEntry:
        for shard in self.shards:
            if shard.name == name:
                return shard
        raise ShardError(f"shard {name} is not in the manifest's plan")

    def planned_ids(self) -> set[int]:
        return {i for shard in self.shards for i in shard.image_ids}

    def grow(self, image_ids: list[int], selection: dict[str, Any]) -> list[ShardEntry]:
        """Plan new images in new shards after the last one, and record the extension. Shards
        already planned are left exactly as they are (committed ones stay byte-identical), so
        the new shards hold only new images: a grown run is sorted by id within each shard and
        within each extension, not across the whole run."""
        again = sorted(set(image_ids) & self.planned_ids())
        if again:
            raise ShardError(f"images {again[:5]} are already planned in {self.split}")
        entries = make_plan(image_ids, self.split, self.shard_size, first=len(self.shards))
        taken = {s.name for s in self.shards} & {e.name for e in entries}
        if taken:  # an index-only name cannot repeat; a hand-edited manifest might
            raise ShardError(f"the manifest already plans shards named {sorted(taken)}")
        self.shards += entries
        self.extensions.append({
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "selection": selection,
            "images": len(set(image_ids)), "shards": [e.name for e in entries]})
        return entries


def make_plan(image_ids: list[int], split: str, shard_size: int,
              first: int = 0) -> list[ShardEntry]:
    """Images sorted by id, cut into shards of `shard_size` numbered from `first`: the same ids
    always give the same plan, whatever order the dataset listed them in."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    ids = sorted(set(image_ids))
    count = -(-len(ids) // shard_size)
    return [
        ShardEntry(shard_name(split, first + i), ids[i * shard_size:(i + 1) * shard_size])
        for i in range(count)
    ]


def write_manifest(path: str | Path | Location, manifest: Manifest) -> None:
    """Atomically (re)write the whole manifest under a new generation, then remove the commit
    records it now holds (`compact_manifest`). Compact JSON: the C encoder (an `indent` would
    force the pure-Python one, ~4x slower)."""
    path = Location(path)
    manifest.generation += 1
    data = json.dumps(asdict(manifest), sort_keys=True, separators=(",", ":")).encode()
    atomic_write_bytes(path, data)
    run = LabelRun(path.parent)
    # only records named after this plan's shards are distill's own (and stale from here on)
    for record in run.commit_records([e.name for e in manifest.shards]):
        record.delete()
    if run.records.is_local:  # the folder too, so a finished run holds what it always did
        with contextlib.suppress(OSError):
            os.rmdir(run.records.path)


def record_commit(path: str | Path | Location, manifest: Manifest, entry: ShardEntry) -> int:
    """After a shard commits: its commit record beside the manifest at `path`, atomically (a
    small file whatever the plan's size); returns the bytes written."""
    fields = {k: v for k, v in asdict(entry).items() if k != "image_ids"}
    doc = {"version": MANIFEST_VERSION, "generation": manifest.generation,
           "dtypes": manifest.dtypes, "entry": fields}
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    atomic_write_bytes(LabelRun(Location(path).parent).commit_record(entry.name), data)
    return len(data)


def compact_manifest(path: str | Path | Location, manifest: Manifest) -> bool:
    """At the end of an invocation: fold the commit records into one whole `manifest.json`
    (what users and older tools read), when there are any; True when it did."""
    path = Location(path)
    if not LabelRun(path.parent).commit_records([e.name for e in manifest.shards]):
        return False
    write_manifest(path, manifest)
    return True


def read_manifest(path: str | Path | Location) -> Manifest:
    """The manifest at `path` with the commit records beside it applied."""
    path = Location(path)
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ShardError(f"cannot read run manifest {path}: {exc}") from exc
    if doc.get("version") not in READABLE_VERSIONS:
        raise ShardError(f"{path} has manifest version {doc.get('version')!r}; this distill "
                         f"reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    doc["shards"] = [ShardEntry(**s) for s in doc["shards"]]
    doc["version"] = MANIFEST_VERSION  # written back as the current one: older ones are cases of it
    manifest = Manifest(**doc)
    _apply_records(path, manifest)
    return manifest


def _apply_records(path: Location, manifest: Manifest) -> None:
    """Overlay the commit records of this generation (one listing, then one read per record:
    only shards committed since the last whole write have one)."""
    by_name = {e.name: e for e in manifest.shards}
    for record in LabelRun(path.parent).commit_records(list(by_name)):
        try:
            doc = json.loads(record.read_bytes())
            fields, generation = doc["entry"], int(doc["generation"])
            entry = by_name[fields["name"]]
        except Exception as exc:  # (written atomically: only a hand edit gets here)
            logger.warning("ignoring the unreadable commit record %s (%s); its shard is checked "
                           "against manifest.json alone", record, exc)
            continue
        if generation < manifest.generation:
            continue  # already in the whole file (a kill before the records were removed)
        for key, value in fields.items():
            if key in ShardEntry.__dataclass_fields__ and key != "image_ids":
                setattr(entry, key, value)
        for role, dtype in doc.get("dtypes", {}).items():
            manifest.dtypes.setdefault(role, dtype)


def local_identity(path: str | Path | Location) -> tuple[int | None, int | None]:
    """(inode, mtime in ns) of a local file, as `ShardEntry` records them; (None, None) on an
    object store."""
    path = Location(path)
    if not path.is_local:
        return None, None
    st = os.stat(path.path)
    return st.st_ino, st.st_mtime_ns


def shard_is_complete(path: str | Path | Location, entry: ShardEntry,
                      verify: bool = False) -> bool:
    """A committed shard counts as done when its file exists, its footer reads, and its row
    count and size equal the manifest's, and either `verify` is off and the file is the one
    the commit wrote (on a local disk: the same inode and mtime; on an object store objects
    appear only whole, so the size stands for it), or its sha256 equals the manifest's. So a
    resume costs a footer read per shard, not a pass over every byte; `verify`
    (`--verify-shards`) hashes every shard, and so does an entry written before inodes and
    mtimes were recorded, or a file that was copied or touched since."""
    path = Location(path)
    if entry.sha256 is None or entry.rows is None:
        return False
    try:
        st = os.stat(path.path) if path.is_local else None
        if st is None and not path.is_file():
            return False
    except OSError:  # gone
        return False
    try:
        with path.open_input() as fh:
            size = fh.size()
            rows = pq.ParquetFile(fh).metadata.num_rows
    except Exception as exc:  # any unreadable footer means "not done"
        logger.warning("shard %s has an unreadable footer (%s); it will be rewritten", path, exc)
        return False
    if rows != entry.rows:
        logger.warning("shard %s has %d rows, the manifest says %d; it will be rewritten",
                       path, rows, entry.rows)
        return False
    if entry.size is not None and size != entry.size:
        logger.warning("shard %s has %d bytes, the manifest says %d; it will be rewritten",
                       path, size, entry.size)
        return False
    if st is not None:
        unchanged = entry.size is not None and \
            (entry.inode, entry.mtime_ns) == (st.st_ino, st.st_mtime_ns)
    else:
        unchanged = entry.size is not None
    if not verify and unchanged:
        return True
    if file_sha256(path) != entry.sha256:
        logger.warning("shard %s does not match its manifest checksum; it will be rewritten", path)
        return False
    if st is not None:  # a copy or a touch with the same bytes: trusted by identity from here
        entry.inode, entry.mtime_ns = st.st_ino, st.st_mtime_ns
    return True
