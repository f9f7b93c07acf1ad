"""`distill run generate-labels` (DESIGN.md §1, §5): teachers label a COCO split on Ray into
resumable, self-describing Parquet shards. This module only wires the pieces:

    lock      one writer per run folder                         distill.runfolder
    check     GloVe and the teachers' weights are here          pipelines.preflight
    plan      images sorted by id → shards → OUT/manifest.json   pipelines.plan
    stages    decode → teachers → post-process (fused, or pools)   pipelines.graph (Ray), .stages
    commit    shard → quarantine → commit record, per shard      pipelines.commit
    compact   commit records → one whole OUT/manifest.json        distill.manifest
    finalize  OUT/vocab.parquet and OUT/summary.json             pipelines.finalize

Re-running the same command skips complete shards (footer, row count, size and the file's
identity checked; every checksum with `verify_shards`); a
teacher enabled since the last run labels only what it is missing; `retry_failed` re-runs only
the quarantined samples.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from distill.config import Config, dump_toml
from distill.manifest import compact_manifest, read_manifest
from distill.provenance import unpinned_warning
from distill.runfolder import LabelRun
from distill.shards import read_metadata
from distill.writelock import Lease
from pipelines.cluster import ray_session
from pipelines.commit import Committer
from pipelines.finalize import summarise_run, write_vocabulary
from pipelines.graph import execute
from pipelines.plan import RunOptions, RunPlan, plan_run
from pipelines.postprocess import import_plugins
from pipelines.preflight import check_sources
from pipelines.progress import announce

__all__ = ["RunOptions", "RunPlan", "RunResult", "generate_labels", "plan_run"]

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    plan: RunPlan
    summary: dict[str, Any]  # as written to OUT/summary.json
    ray_logs: str = ""  # where this run's Ray session kept its logs (this machine); "" if no Ray


def _undo_first_run(run: LabelRun, lease: Lease) -> None:
    """A first run (into a new or empty folder) that failed before committing a shard leaves
    nothing: its plan, config and quarantine go (`LabelRun.undo_writes`: only files this
    process wrote that still hold what it wrote), and the lock then takes the folder it made.
    One that committed a shard keeps everything, to resume; one that lost its write lease
    touches nothing (the run is another writer's now)."""
    try:
        if not lease.holds():
            logger.info("left %s as it is: another writer holds it now", run)
            return
        planned = read_manifest(run.manifest).shards if run.manifest.is_file() else []
        names = [e.name for e in planned]
        if any(e.sha256 for e in planned) or any(run.shard(n).is_file() for n in names):
            return
        removed = run.undo_writes(names)
        if run.shards.is_local and run.shards.is_dir() and not run.shards.iterdir():
            run.shards.as_path().rmdir()
    except Exception:  # the original failure is the one to report
        logger.debug("could not remove the files of the failed first run", exc_info=True)
        return
    logger.info("removed the %d file(s) of a first run that committed no shard", removed)


def generate_labels(config: Config, options: RunOptions) -> RunResult:
    """Plan, run the stages, commit shards, finalize. Safe to re-run after any crash."""
    started = time.monotonic()
    check_sources(config)  # GloVe and every teacher's weights, in seconds, before anything
    import_plugins(config.labels)  # their columns are in the shards' schema from here on
    run = LabelRun(options.out)
    with run.lock() as lease:
        first = run.is_new()
        try:
            plan = plan_run(config, options, lease)
            lease.check()  # (checking every shard's footer takes a while on a large run)
            run.remove_stale_temps([e.name for e in plan.manifest.shards])
            for note in plan.notes:
                logger.warning(note)
            run.write_config(f"# resolved config of this run (label fingerprint "
                             f"{plan.manifest.fingerprint})\n{dump_toml(config)}")
            committer = Committer(plan, lease)
            committer.commit_empty()
            ray_logs = ""
            if plan.images_to_process:
                if not options.address:  # (joining is checked in a second, then says so)
                    announce("starting Ray (a private one on 127.0.0.1)")
                with ray_session(config.ray, options.address, options.verbose) as cluster:
                    ray_logs = cluster.logs
                    execute(plan, options, cluster, committer)
        except Exception:  # a failure; Ctrl-C and SIGTERM keep the plan (a re-run resumes)
            if first:
                _undo_first_run(run, lease)
            raise
        elapsed = time.monotonic() - started
        processed = committer.written
        invocation = {
            "seconds": round(elapsed, 2),
            "images_processed": processed,
            "images_per_second": round(processed / elapsed, 3) if processed else None,
            "shards_skipped": len(plan.skipped),
            "shards_written": committer.shards_done,
            "added_teachers": plan.added_roles,
            "retry_failed": options.retry_failed,
        }
        lease.check()  # the vocabulary and summary are commits too
        compact_manifest(run.manifest, plan.manifest)  # the commit records into manifest.json
        present = {f.name for f in run.shards.files("*.parquet")}
        written = [run.shard(e.name) for e in plan.manifest.shards
                   if e.sha256 and e.name in present]
        write_vocabulary(run, written, config)
        if written:  # the teachers' loads resolved their commits: say which were not pinned
            for role, prov in sorted((read_metadata(written[0]).get("provenance") or {}).items()):
                warning = unpinned_warning(role, prov)
                if warning:
                    logger.warning(warning)
        summary = summarise_run(run, plan.manifest, plan.roles, invocation)
    return RunResult(plan, summary, ray_logs)
