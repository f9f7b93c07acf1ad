"""The run manifest (DESIGN.md §5): the deterministic plan (shard → image ids), the config
fingerprint it was made with, per-shard per-teacher status and checksums, and each time the run
grew (new images in new shards after the committed ones). `OUT/manifest.json` is
rewritten atomically after every committed shard, so a crash never loses a finished shard and
never leaves a half-written manifest."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from distill.errors import ShardError
from distill.runfolder import shard_name
from distill.storage import Location, atomic_write_bytes, file_sha256

__all__ = [
    "MANIFEST_VERSION",
    "Manifest",
    "ShardEntry",
    "make_plan",
    "read_manifest",
    "shard_is_complete",
    "write_manifest",
]

logger = logging.getLogger(__name__)

# 2: runs can grow (`extensions`, index-only shard names). Version 1 manifests read as runs
# that never grew; a distill that reads only 1 refuses a 2 in one line instead of misreading it.
# 3: shard entries record `annotations`; entries of 1 and 2 read with none (checked by reading).
MANIFEST_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)


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
    """Atomically (re)write the manifest. Compact JSON: the C encoder (an `indent` would force
    the pure-Python one, ~4x slower) — it is rewritten after every shard of a 118k-image plan."""
    data = json.dumps(asdict(manifest), sort_keys=True, separators=(",", ":")).encode()
    atomic_write_bytes(path, data)


def read_manifest(path: str | Path | Location) -> Manifest:
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
    return Manifest(**doc)


def shard_is_complete(path: Location, entry: ShardEntry) -> bool:
    """A committed shard counts as done only if its file exists, its footer reads, and its row
    count and checksum equal the manifest's. On an object store the size stands in for the
    checksum (objects appear only whole, and hashing would download every shard on every
    resume); the sha256 is still recorded, for `--verify-shards` and for users."""
    path = Location(path)
    if entry.sha256 is None or entry.rows is None or not path.is_file():
        return False
    try:
        rows = pq.ParquetFile(path.open_input()).metadata.num_rows
    except Exception as exc:  # any unreadable footer means "not done"
        logger.warning("shard %s has an unreadable footer (%s); it will be rewritten", path, exc)
        return False
    if rows != entry.rows:
        logger.warning("shard %s has %d rows, the manifest says %d; it will be rewritten",
                       path, rows, entry.rows)
        return False
    if not path.is_local and entry.size is not None:
        same = path.size() == entry.size
    else:
        same = file_sha256(path) == entry.sha256
    if not same:
        logger.warning("shard %s does not match its manifest checksum; it will be rewritten", path)
        return False
    return True
