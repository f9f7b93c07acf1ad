"""`distill run generate-labels` (DESIGN.md §1, §5): teachers label a COCO split on Ray into
resumable, self-describing Parquet shards.

    plan      images sorted by id → shards of `shards.shard_size` → OUT/manifest.json
    stages    decode (CPU tasks) → one actor pool per teacher → post-process (CPU tasks)
    commit    the driver gathers each shard's rows; when all its images are in (labelled or
              quarantined) it writes quarantine rows, then the shard (temp file, fsync,
              rename), then the manifest entry — in that order, so a crash at any point
              leaves nothing half-written under a final name and a re-run redoes only what
              did not commit
    finalize  OUT/vocab.parquet and OUT/summary.json from the committed shards

Re-running the same command skips complete shards (footer, row count and checksum checked); a
teacher enabled since the last run labels only what it is missing; `retry_failed` re-runs only
the quarantined samples.
"""

from __future__ import annotations

import fcntl
import logging
import math
import pickle
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from distill.atomic import file_sha256
from distill.coco import Dataset, Problem, open_dataset
from distill.config import Config, TeacherConfig, dump_toml
from distill.errors import ConfigError, DistillError
from distill.shards import ShardWriter, make_metadata, read_metadata
from pipelines.cluster import ClusterInfo, ray_session
from pipelines.finalize import summarise_run, write_vocabulary
from pipelines.manifest import (
    FingerprintMismatch,
    Manifest,
    ShardEntry,
    check_fingerprint,
    label_fingerprint,
    label_view,
    make_plan,
    read_manifest,
    shard_is_complete,
    teacher_additions,
    write_manifest,
)
from pipelines.progress import ProgressBoard, ProgressDisplay
from pipelines.quarantine import Failure, read_quarantine, replace_failures
from pipelines.stages import Item, TeacherStage, decode_items, postprocess_items

__all__ = ["RunOptions", "RunPlan", "generate_labels", "plan_run", "run_folder_files"]

logger = logging.getLogger(__name__)

DECODE_BATCH = 8  # images per decode / post-process task


@dataclass
class RunOptions:
    """What one invocation asks for, beyond the config."""

    out: Path
    limit: int | None = None
    image_ids: list[int] | None = None
    new_run: bool = False
    retry_failed: bool = False
    dry_run: bool = False  # plan only: nothing is written
    address: str | None = None
    live: bool | None = None  # live table (None: when stderr is a terminal)
    verbose: bool = False


@dataclass
class ShardJob:
    """The work one shard needs in this invocation."""

    entry: ShardEntry
    items: list[Item]
    keep_committed: bool = False  # retry-failed: the shard's other rows are kept as they are
    kind: str = "label"  # label | add-teacher | retry


@dataclass
class RunPlan:
    out: Path
    config: Config
    manifest: Manifest
    roles: list[str]  # enabled teachers
    jobs: list[ShardJob]
    skipped: list[str] = field(default_factory=list)  # complete shards
    added_roles: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def images_to_process(self) -> int:
        return sum(len(j.items) for j in self.jobs)

    def stage_names(self) -> list[str]:
        needed = {r for j in self.jobs for it in j.items for r in it.roles}
        return ["decode", *[r for r in self.roles if r in needed], "postprocess"]


def run_folder_files(out: Path) -> list[Path]:
    """The files a run writes in OUT (what --new-run clears; nothing else is touched)."""
    names = ("manifest.json", "quarantine.parquet", "vocab.parquet", "summary.json")
    files = [out / n for n in names]
    shard_dir = out / "shards"
    if shard_dir.is_dir():
        files += sorted(shard_dir.glob("*.parquet")) + sorted(shard_dir.glob(".*.tmp-*"))
    return [f for f in files if f.exists()]


def clear_run(out: Path) -> int:
    """Remove a run's files (manifest, shards, quarantine, vocab, summary); returns how many."""
    files = run_folder_files(out)
    for f in files:
        f.unlink()
    return len(files)


def remove_stale_temps(out: Path) -> int:
    """Temp files a killed run left behind (hidden names, never a final one). Only called while
    holding the run lock, so no live writer owns them."""
    stale = [*out.glob(".*.tmp-*"), *(out / "shards").glob(".*.tmp-*")]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        logger.info("removed %d temp file(s) left by an interrupted run", len(stale))
    return len(stale)


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """One writer per run folder: a second invocation on the same OUT fails fast."""
    out.mkdir(parents=True, exist_ok=True)
    fh = (out / ".lock").open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        fh.close()
        raise DistillError(f"another distill run is writing to {out}; wait for it or use "
                           "another --out") from exc
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


# ---------------------------------------------------------------------------------------------
# Planning


def _enabled_roles(config: Config) -> list[str]:
    roles = [r for r, t in config.teachers.roles().items() if t.enabled]
    if not roles:
        raise ConfigError("every teacher is disabled (teachers.<role>.enabled = false); enable "
                          "at least one of depth, panoptic, text, caption")
    return roles


def _select(dataset: Dataset, options: RunOptions) -> list[int]:
    """Planned image ids: every image entry of the split (also those the reader could not use:
    they get a slot and a quarantine row, and retry-failed can pick them up once fixed),
    restricted by --image-ids, then --limit."""
    ids = sorted({r.image_id for r in dataset.records} |
                 {p.image_id for p in dataset.problems if p.error_type != "UnknownImageId"})
    if options.image_ids is not None:
        wanted = set(options.image_ids)
        unknown = sorted(wanted - set(ids))
        if unknown:
            raise ConfigError(
                f"{len(unknown)} of the requested --image-ids are not in {dataset.split}: "
                f"{unknown[:10]}{' …' if len(unknown) > 10 else ''}")
        ids = [i for i in ids if i in wanted]
    if options.limit is not None:
        if options.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {options.limit}")
        ids = ids[:options.limit]
    if not ids:
        raise ConfigError(f"no images to label in {dataset.root} split {dataset.split}")
    return ids


def _selection(options: RunOptions) -> dict[str, Any]:
    return {"limit": options.limit,
            "image_ids": sorted(options.image_ids) if options.image_ids is not None else None}


def _unlisted_problems(dataset: Dataset) -> list[Failure]:
    """Annotation problems that name no image entry (e.g. an unknown image id): quarantined
    once, at planning, in no shard."""
    return [Failure(p.image_id, "", "", p.stage, p.error_type, p.message)
            for p in dataset.problems if p.error_type == "UnknownImageId"]


def _open_manifest(config: Config, options: RunOptions, dataset: Dataset,
                   notes: list[str]) -> tuple[Manifest, list[str]]:
    """The run's manifest: read and checked when resuming, else planned and written."""
    out = options.out
    view = label_view(config)
    fingerprint = label_fingerprint(view)
    path = out / "manifest.json"
    start_over = path.is_file() and options.new_run and not options.retry_failed
    if path.is_file() and not start_over:
        manifest = read_manifest(path)
        if manifest.split != config.data.split:
            raise FingerprintMismatch(
                f"{out} holds a run over split {manifest.split!r}, not {config.data.split!r}; "
                "choose another --out or pass --new-run")
        if not options.retry_failed and manifest.selection != _selection(options):
            raise FingerprintMismatch(
                f"{out} was planned with {manifest.selection}, this run asks for "
                f"{_selection(options)}; re-run with the same --limit/--image-ids, choose "
                "another --out, or pass --new-run")
        added: list[str] = []
        if manifest.fingerprint != fingerprint:
            found = teacher_additions(manifest.config, view)
            if not found:
                check_fingerprint(manifest, fingerprint, view, out)  # raises, naming changes
            added = found or []
            notes.append(f"teacher(s) {', '.join(added)} added to a planned run: only they run "
                         "on the shards already written")
            manifest.fingerprint, manifest.config = fingerprint, view
            for entry in manifest.shards:
                for role in added:
                    entry.teachers[role] = "pending"
            if not options.dry_run:
                write_manifest(path, manifest)
        return manifest, added
    # A new plan. Everything that can refuse it is checked before an old run is cleared.
    ids = _select(dataset, options)
    manifest = Manifest(split=config.data.split, fingerprint=fingerprint, config=view,
                        shard_size=config.shards.shard_size,
                        shards=make_plan(ids, config.data.split, config.shards.shard_size),
                        selection=_selection(options))
    if start_over:
        if options.dry_run:
            notes.append(f"--new-run would clear {len(run_folder_files(out))} file(s) in {out}")
        else:
            notes.append(f"--new-run: cleared {clear_run(out)} file(s) of the previous run in "
                         f"{out}")
    if not options.dry_run:
        replace_failures(out / "quarantine.parquet", [""],
                         [p.image_id for p in dataset.problems], _unlisted_problems(dataset))
        write_manifest(path, manifest)
    return manifest, []


def _fresh_items(entry: ShardEntry, ids: list[int], dataset: Dataset, split: str,
                 roles: list[str]) -> list[Item]:
    records = dataset.by_id()
    problems: dict[int, Problem] = {}
    for p in dataset.problems:
        problems.setdefault(p.image_id, p)
    items = []
    for image_id in ids:
        record = records.get(image_id)
        problem = None if record is not None else problems.get(image_id) or Problem(
            image_id, "read", "MissingImage",
            f"image {image_id} was planned but {dataset.root} split {split} no longer lists it")
        items.append(Item(image_id=image_id, shard=entry.name, split=split, roles=tuple(roles),
                          file_name=record.file_name if record else "", record=record,
                          problem=problem))
    return items


def _accounted(path: Path, entry: ShardEntry, quarantined: dict[str, set[int]]) -> bool:
    """A committed shard's rows plus its quarantined images must be exactly its planned images;
    anything else (a commit interrupted between the shard and the quarantine, a file edited by
    hand) sends the shard back to be labelled again."""
    rows = pq.read_table(path, columns=["image_id"]).column("image_id").to_pylist()
    seen = set(rows) | quarantined.get(entry.name, set())
    if len(rows) == len(set(rows)) and seen == set(entry.image_ids):
        return True
    missing = sorted(set(entry.image_ids) - seen)
    logger.warning("shard %s does not account for its planned images (missing %s, extra %s); "
                   "it will be labelled again", entry.name, missing[:5],
                   sorted(seen - set(entry.image_ids))[:5])
    return False


def plan_run(config: Config, options: RunOptions) -> RunPlan:
    """Decide what this invocation does: which shards are complete, which need labelling,
    which need only a newly added teacher, and (retry-failed) which samples to retry."""
    out = options.out
    roles = _enabled_roles(config)
    notes: list[str] = []
    dataset = open_dataset(config.data.root, config.data.split)
    manifest, added = _open_manifest(config, options, dataset, notes)
    shard_dir = out / "shards"
    quarantined: dict[str, set[int]] = {}
    failures = read_quarantine(out / "quarantine.parquet")
    for f in failures:
        quarantined.setdefault(f.shard, set()).add(f.image_id)
    if options.retry_failed:
        unlisted = sum(1 for f in failures if not f.shard)
        if unlisted:
            notes.append(f"{unlisted} quarantined annotation problem(s) name no image entry "
                         "(e.g. an unknown image id); fix the annotation files and start a "
                         "--new-run to include them")
    jobs: list[ShardJob] = []
    skipped: list[str] = []
    for entry in manifest.shards:
        path = shard_dir / entry.name
        complete = shard_is_complete(path, entry) and _accounted(path, entry, quarantined)
        if not complete:
            entry.teachers, entry.stats = {}, {}  # labelled again from scratch
            jobs.append(ShardJob(entry, _fresh_items(entry, entry.image_ids, dataset,
                                                     manifest.split, roles)))
            continue
        missing_roles = [r for r in roles if entry.teachers.get(r) != "done"]
        retry = sorted(quarantined.get(entry.name, set())) if options.retry_failed else []
        if not missing_roles and not retry:
            skipped.append(entry.name)
            continue
        items = _fresh_items(entry, retry, dataset, manifest.split, roles)
        if missing_roles:  # every committed row goes through the new teacher(s)
            items += _extend_items(entry, path, manifest.split, missing_roles)
        kind = "add-teacher" if missing_roles else "retry"
        if missing_roles and retry:
            kind = "add-teacher+retry"
        # Retrying alone: the rows not retried stay as they are.
        jobs.append(ShardJob(entry, items, keep_committed=not missing_roles, kind=kind))
    return RunPlan(out, config, manifest, roles, jobs, skipped, added, notes)


def _extend_items(entry: ShardEntry, path: Path, split: str, roles: list[str]) -> list[Item]:
    """Items for every committed row of a shard, needing only `roles` (newly enabled teachers);
    the image comes from the row itself."""
    meta = pq.read_table(path, columns=["image_id", "file_name"]).to_pylist()
    return [Item(image_id=r["image_id"], shard=entry.name, split=split, roles=tuple(roles),
                 file_name=r["file_name"], shard_path=str(path)) for r in meta]


# ---------------------------------------------------------------------------------------------
# Ray Data operators (module-level so Ray can pickle them by reference)


def _load(batch: dict[str, np.ndarray]) -> list[Item]:
    return [pickle.loads(b) for b in batch["item"]]


def _dump(items: list[Item]) -> dict[str, np.ndarray]:
    out = np.empty(len(items), dtype=object)
    out[:] = [pickle.dumps(it, protocol=5) for it in items]
    return {"item": out}


def _report(board: Any, stage: str, n: int) -> None:
    if board is not None:
        try:
            board.add.remote(stage, n)
        except Exception:  # progress is best effort; never fail a batch over it
            logger.debug("progress report failed", exc_info=True)


def _decode_op(batch: dict[str, np.ndarray], data: Any, board: Any) -> dict[str, np.ndarray]:
    items = decode_items(_load(batch), data)
    _report(board, "decode", len(items))
    return _dump(items)


def _postprocess_op(batch: dict[str, np.ndarray], labels: Any,
                    board: Any) -> dict[str, np.ndarray]:
    items = postprocess_items(_load(batch), labels)
    _report(board, "postprocess", len(items))
    return _dump(items)


class TeacherOp:
    """A teacher stage as a Ray Data actor: the model loads once per actor."""

    def __init__(self, role: str, config: TeacherConfig, threads: int, board: Any) -> None:
        self.stage = TeacherStage(role, config, threads)
        self.board = board

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = self.stage(_load(batch))
        _report(self.board, self.stage.role, len(items))
        return _dump(items)


def _actor_cpus(config: Config, roles: list[str], cluster: ClusterInfo) -> dict[str, float]:
    """CPUs per teacher actor. On a cluster too small for every pool at its configured CPUs
    (a laptop, CI), all are scaled down together to half the cluster, leaving the rest to the
    decode/post-process tasks: otherwise Ray would wait forever for CPUs no node has.

    Scaled shares are rounded down to a power-of-two fraction (1/2, 1/4, ...). Shares like 0.75
    fragment nodes: two of them leave 0.5 free on a 2-CPU node, and a 1-CPU task then fits on
    no node even though the cluster as a whole has CPUs free."""
    teachers = config.teachers.roles()
    want = {r: teachers[r].num_cpus for r in roles}
    total = sum(want[r] * teachers[r].concurrency for r in roles)
    room = min(cluster.cpus - 1.0, cluster.cpus / 2) if cluster.cpus > 2 else cluster.cpus / 2
    if total <= room or total == 0:
        return want
    scale = room / total
    out = {r: 2.0 ** math.floor(math.log2(want[r] * scale)) for r in roles}
    logger.info("teacher pools want %g CPUs, the cluster has %g: each actor gets %s CPUs so "
                   "that every stage fits", total, cluster.cpus,
                   ", ".join(f"{r} {c:g}" for r, c in out.items()))
    return out


def _task_cpus(config: Config, roles: list[str], cpus: dict[str, float]) -> float:
    """CPUs per decode / post-process task: 1, unless the actor shares were scaled down to fit a
    small cluster. Then the smallest share: scaled actors can leave every node a fraction of a
    CPU free (1-CPU nodes each holding two 0.25 actors), where a 1-CPU task would wait forever;
    power-of-two shares leave free room in multiples of the smallest one, so such a task fits
    wherever anything is free."""
    teachers = config.teachers.roles()
    scaled = [c for r, c in cpus.items() if r in roles and c < teachers[r].num_cpus]
    return min([1.0, *scaled])


def _check_gpus(config: Config, roles: list[str], cluster: ClusterInfo) -> None:
    teachers = config.teachers.roles()
    need = sum(teachers[r].num_gpus * teachers[r].concurrency for r in roles)
    if need > cluster.gpus + 1e-9:
        msg = (f"the teacher pools need {need:g} GPUs (num_gpus x concurrency) but the cluster "
               f"has {cluster.gpus:g}; lower teachers.<role>.num_gpus / concurrency (fractions "
               "share a GPU), or join a cluster with GPUs via --address")
        if cluster.address in ("local", "existing"):
            raise ConfigError(msg)
        logger.warning("%s (waiting for an autoscaler to add them)", msg)


# ---------------------------------------------------------------------------------------------
# Running


_OUR_ERROR = re.compile(r"(?:distill|teachers|pipelines)(?:\.\w+)*\.(\w+(?:Error|Mismatch)): (.+)")


def _unwrap(exc: BaseException) -> DistillError | None:
    """The project's own error inside a Ray error chain (e.g. a teacher that cannot load).
    Ray keeps the original exception for task errors; for an actor that died in `__init__` only
    its traceback text survives, so the last line naming one of our errors is used."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, DistillError):
            return cur
        stack += [getattr(cur, "cause", None), cur.__cause__, cur.__context__]
    found = _OUR_ERROR.findall(str(exc))
    return DistillError(found[-1][1].strip()) if found else None


class _Committer:
    """Gathers rows per shard on the driver and commits each shard once all its images are in."""

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan
        self.jobs = {j.entry.name: j for j in plan.jobs}
        self.expected = {name: len(j.items) for name, j in self.jobs.items()}
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

    def commit(self, job: ShardJob, items: list[Item]) -> None:
        plan, out = self.plan, self.plan.out
        entry = job.entry
        path = out / "shards" / entry.name
        failures = [it.failure for it in items if it.failure is not None]
        rows = [it.encoded for it in items if it.failure is None and it.encoded is not None]
        provenance: dict[str, Any] = {}
        if job.kind != "label" and path.is_file():
            provenance.update(read_metadata(path).get("provenance", {}))
            if job.keep_committed:
                redo = {it.image_id for it in items}
                kept = pq.read_table(path).to_pylist()
                rows += [r for r in kept if r["image_id"] not in redo]
        for it in items:
            provenance.update(it.provenance)
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
        # 1. shard, 2. quarantine, 3. manifest. A crash after 1 leaves a shard whose checksum
        # the manifest does not know, so it is labelled again (and its quarantine rows replaced);
        # a crash after 2 likewise. The quarantine never loses a row its shard does not have.
        with ShardWriter(path, meta, plan.config.shards.row_group_size) as writer:
            for row in rows:
                writer.write_row(row)
        replace_failures(out / "quarantine.parquet", [entry.name], [it.image_id for it in items],
                         failures)
        entry.rows, entry.sha256 = len(rows), file_sha256(path)
        entry.teachers = {**entry.teachers, **{r: "done" for r in plan.roles}}
        entry.stats = stats
        write_manifest(out / "manifest.json", plan.manifest)
        self.written += len(items)  # read by the progress thread; an int store is atomic
        self.shards_done += 1
        logger.info("committed %s: %d rows, %d quarantined (%s)", entry.name, len(rows),
                    len(failures), job.kind)


def _build_dataset(plan: RunPlan, cluster: ClusterInfo, board: Any) -> Any:
    import ray.data

    config = plan.config
    items = [it for job in plan.jobs for it in job.items]
    stage_roles = plan.stage_names()[1:-1]
    cpus = _actor_cpus(config, stage_roles, cluster)
    tasks = _task_cpus(config, stage_roles, cpus)
    ds: Any = ray.data.from_items([{"item": pickle.dumps(it, protocol=5)} for it in items],
                             override_num_blocks=max(1, math.ceil(len(items) / DECODE_BATCH)))
    ds = ds.map_batches(_decode_op, batch_size=DECODE_BATCH, batch_format="numpy",
                        fn_kwargs={"data": config.data, "board": board}, num_cpus=tasks)
    _check_gpus(config, stage_roles, cluster)
    teachers = config.teachers.roles()
    for role in stage_roles:
        t = teachers[role]
        ds = ds.map_batches(
            TeacherOp, batch_size=t.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=t.concurrency),
            fn_constructor_kwargs={"role": role, "config": t,
                                   "threads": max(1, int(cpus[role])), "board": board},
            num_cpus=cpus[role], num_gpus=t.num_gpus or None,
        )
    return ds.map_batches(_postprocess_op, batch_size=DECODE_BATCH, batch_format="numpy",
                          fn_kwargs={"labels": config.labels, "board": board}, num_cpus=tasks)


def _quiet_ray_data_console() -> None:
    """Ray Data prints its plan and a note that its progress bars are off (ours draw instead)
    at INFO/WARNING on the console; its full debug log still goes to the session's ray-data.log.
    Raise the console handlers to WARNING and drop that one note."""
    def not_the_progress_note(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Progress bars disabled")

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
            handler.addFilter(not_the_progress_note)


def _execute(plan: RunPlan, options: RunOptions, cluster: ClusterInfo,
             committer: _Committer) -> None:
    import ray
    import ray.data
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not options.verbose:
        _quiet_ray_data_console()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = options.verbose
    ctx.execution_options.preserve_order = True  # shards finish in order: bounded driver memory
    ctx.actor_init_max_retries = 0  # a teacher that cannot load fails the run at once, clearly
    here = ray.get_runtime_context().get_node_id()
    board: Any = ray.remote(num_cpus=0)(ProgressBoard).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
    total = plan.images_to_process
    display = ProgressDisplay(plan.stage_names(), total, live=options.live)
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.5):
            try:
                counts = ray.get(board.snapshot.remote(), timeout=5)
            except Exception:
                continue
            display.update(counts, committer.written)

    with display:
        poller = threading.Thread(target=poll, name="progress", daemon=True)
        poller.start()
        try:
            ds = _build_dataset(plan, cluster, board)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy",
                                         prefetch_batches=2):
                for item in _load(batch):
                    committer.add(item)
        except DistillError:
            raise
        except Exception as exc:
            inner = _unwrap(exc)
            if inner is not None:
                raise type(inner)(str(inner)) from exc
            raise
        finally:
            stop.set()
            poller.join()
            with suppress(Exception):
                display.update(ray.get(board.snapshot.remote(), timeout=5), committer.written)
            with suppress(Exception):  # the cluster may be gone: keep the original error
                ray.kill(board)
    if committer.got:
        left = {k: f"{len(v)}/{committer.expected[k]}" for k, v in committer.got.items()}
        raise DistillError(f"the pipeline ended with shards still missing images: {left}; "
                           "re-run the same command to finish them")


@dataclass
class RunResult:
    plan: RunPlan
    summary: dict[str, Any]  # as written to OUT/summary.json


def generate_labels(config: Config, options: RunOptions) -> RunResult:
    """Plan, run the stages, commit shards, finalize. Safe to re-run after any crash."""
    out = options.out
    started = time.monotonic()
    with run_lock(out):
        remove_stale_temps(out)
        plan = plan_run(config, options)
        for note in plan.notes:
            logger.warning(note)
        (out / "config.toml").write_text(f"# resolved config of this run (label fingerprint "
                                         f"{plan.manifest.fingerprint})\n{dump_toml(config)}")
        committer = _Committer(plan)
        committer.commit_empty()
        if plan.images_to_process:
            with ray_session(config.ray, options.address, options.verbose) as cluster:
                _execute(plan, options, cluster, committer)
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
        shard_dir = out / "shards"
        written = [shard_dir / e.name for e in plan.manifest.shards
                   if e.sha256 and (shard_dir / e.name).is_file()]
        write_vocabulary(out, written, config)
        summary = summarise_run(out, plan.manifest, plan.roles, invocation)
    return RunResult(plan, summary)
