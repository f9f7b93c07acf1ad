"""`OUT/quarantine.parquet` (DESIGN.md §5): every sample that failed, and why.

One row per failure: image id, file name, the shard it was planned in ("" for annotation problems
that name no image entry), the stage that failed, the error type and a message a person can act
on. The file is rewritten atomically; the rows of a shard are replaced whenever that shard is
(re)processed, so a resumed or retried run never lists a sample twice or keeps a stale reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from distill.errors import ShardError
from distill.storage import Location, atomic_write_table

__all__ = ["QUARANTINE_SCHEMA", "Failure", "read_quarantine", "replace_failures", "summarise"]

QUARANTINE_SCHEMA = pa.schema([
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("file_name", pa.string()),
    pa.field("shard", pa.string()),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("error_type", pa.string(), nullable=False),
    pa.field("message", pa.string(), nullable=False),
])


@dataclass(frozen=True)
class Failure:
    """One quarantined sample."""

    image_id: int
    file_name: str
    shard: str
    stage: str  # read | decode | teacher:<role> | postprocess
    error_type: str
    message: str


def read_quarantine(path: str | Path | Location) -> list[Failure]:
    """The failures recorded so far (none when the file does not exist yet)."""
    path = Location(path)
    if not path.is_file():
        return []
    try:
        rows = pq.read_table(path.open_input()).to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"cannot read quarantine file {path}: {exc}") from exc
    return [Failure(**row) for row in rows]


def replace_failures(path: str | Path | Location, shards: Iterable[str], image_ids: Iterable[int],
                     failures: Iterable[Failure]) -> list[Failure]:
    """Drop the recorded failures of `image_ids` in `shards` (they were just processed again),
    add `failures`, and rewrite the file atomically. Returns the whole new list. A shard that
    failed nothing and had nothing recorded leaves the file as it is: most commits write no
    quarantine at all (on S3, no PUT), however many failures the run holds."""
    path = Location(path)
    shards, ids = set(shards), set(image_ids)
    failures = list(failures)
    recorded = read_quarantine(path)
    kept = [f for f in recorded if not (f.shard in shards and f.image_id in ids)]
    if not failures and len(kept) == len(recorded) and (recorded or path.is_file()):
        return recorded
    rows = sorted([*kept, *failures], key=lambda f: (f.image_id, f.stage, f.message))
    table = pa.Table.from_pylist([asdict(f) for f in rows], schema=QUARANTINE_SCHEMA)
    atomic_write_table(path, table)
    return rows


def summarise(failures: Iterable[Failure]) -> dict[str, int]:
    """Counts by `stage/error_type`, most common first."""
    counts = Counter(f"{f.stage}/{f.error_type}" for f in failures)
    return dict(counts.most_common())
