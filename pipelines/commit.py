"""The commit protocol of generate-labels (DESIGN.md §5): the driver gathers each shard's rows
and, once all its images are in (labelled or quarantined), writes

    1. the shard (temp, then its final name: `distill.storage`),
    2. its quarantine rows,
    3. its manifest entry (row count, size, sha256, local inode and mtime, teachers done) as a
       commit record beside the manifest (`distill.manifest.record_commit`: a few hundred
       bytes, not the whole plan),

in that order, so a crash at any point leaves nothing half-written under a final name, and a
re-run redoes only what did not commit: a shard whose file the manifest does not know is
labelled again, and its quarantine rows replaced."""

from __future__ import annotations

import logging
from typing import Any

import pyarrow.parquet as pq

from distill.identity import check_dtype
from distill.manifest import local_identity, record_commit
from distill.quarantine import replace_failures
from distill.shards import ShardWriter, annotations_digest, make_metadata, read_metadata
from distill.writelock import Lease
from pipelines.plan import RunPlan, ShardJob
from pipelines.stages import Item

__all__ = ["Committer"]

logger = logging.getLogger(__name__)


class Committer:
    """Gathers rows per shard on the driver and commits each shard once all its images are in."""

    def __init__(self, plan: RunPlan, lease: Lease | None = None) -> None:
        self.plan = plan
        self.lease = lease
        self.jobs = {j.entry.name: j for j in plan.jobs}
        self.expected = {name: j.count for name, j in self.jobs.items()}
        self.got: dict[str, list[Item]] = {}
        self.written = 0  # images accounted for (labelled or quarantined) this invocation
        self.shards_done = 0

    def commit_empty(self) -> None:
        """Jobs with nothing to send through the stages (a teacher added to a shard whose images
        were all quarantined) commit at once."""
        for name, n in self.expected.items():
            if n == 0:
                self.commit(self.jobs[name], [])

    def add(self, item: Item) -> None:
        bucket = self.got.setdefault(item.shard, [])
        bucket.append(item)
        if len(bucket) == self.expected[item.shard]:
            self.commit(self.jobs[item.shard], self.got.pop(item.shard))

    def _check_lease(self) -> None:
        if self.lease is not None:
            self.lease.check()

    def commit(self, job: ShardJob, items: list[Item]) -> None:
        plan, run = self.plan, self.plan.run
        entry = job.entry
        path = run.shard(entry.name)
        failures = [it.failure for it in items if it.failure is not None]
        rows = [it.encoded for it in items if it.failure is None and it.encoded is not None]
        provenance: dict[str, Any] = {}
        if job.kind != "label" and path.is_file():
            provenance.update(read_metadata(path).get("provenance", {}))
            if job.keep_committed:
                redo = {it.image_id for it in items}
                kept = pq.read_table(path.open_input()).to_pylist()
                rows += [r for r in kept if r["image_id"] not in redo]
        for it in items:
            provenance.update(it.provenance)
        for role, prov in provenance.items():
            if role in plan.roles and isinstance(prov, dict) and prov.get("dtype"):
                check_dtype(role, plan.manifest.dtypes.get(role), prov)
                plan.manifest.dtypes.setdefault(role, str(prov["dtype"]))
        rows.sort(key=lambda r: r["image_id"])
        halvings: dict[str, int] = {}
        for it in items:
            for role, n in it.halvings.items():
                halvings[role] = max(halvings.get(role, 0), n)
        stats = entry.stats or {"seconds": {}, "images": {}, "oom_halvings": {}}
        for it in items:
            for stage, s in it.seconds.items():
                stats["seconds"][stage] = stats["seconds"].get(stage, 0.0) + s
                stats["images"][stage] = stats["images"].get(stage, 0) + 1
        for role, n in halvings.items():
            stats["oom_halvings"][role] = stats["oom_halvings"].get(role, 0) + n
        meta = make_metadata(plan.manifest.fingerprint, provenance, extra={
            "shard": entry.name, "split": plan.manifest.split, "planned_images": entry.image_ids,
            "teachers": plan.roles, "oom_batch_halvings": stats["oom_halvings"],
        })
        self._check_lease()  # a writer that lost its lease commits nothing more
        with ShardWriter(path, meta, plan.config.shards.row_group_size,
                         roles=plan.roles) as writer:
            for row in rows:
                writer.write_row(row)
        self._check_lease()  # nor after a shard upload it was paused in
        replace_failures(run.quarantine, [entry.name], [it.image_id for it in items], failures)
        entry.rows, entry.sha256, entry.size = len(rows), writer.sha256, writer.size
        entry.inode, entry.mtime_ns = local_identity(path)
        entry.annotations = annotations_digest(rows)
        entry.teachers = {**entry.teachers, **{r: "done" for r in plan.roles}}
        entry.stats = stats
        record_commit(run.manifest, plan.manifest, entry)
        self.written += len(items)  # read by the progress thread; an int store is atomic
        self.shards_done += 1
        logger.info("committed %s: %d rows, %d quarantined (%s)", entry.name, len(rows),
                    len(failures), job.kind)
