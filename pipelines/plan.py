"""What one generate-labels invocation does (DESIGN.md §5): the plan of a run folder (images
sorted by id → shards, `manifest.json`) read back or made, and per shard whether it is complete,
needs labelling, needs only a newly enabled teacher, or (retry-failed) needs its quarantined
samples again. Planning reads the dataset and the run folder; it starts nothing."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pyarrow.parquet as pq

from distill.coco import Dataset, Problem, open_dataset
from distill.config import Config
from distill.errors import ConfigError, FingerprintMismatch
from distill.identity import check_fingerprint, label_fingerprint, label_view, teacher_additions
from distill.manifest import (
    Manifest,
    ShardEntry,
    make_plan,
    read_manifest,
    shard_is_complete,
    write_manifest,
)
from distill.quarantine import Failure, read_quarantine, replace_failures
from distill.runfolder import LabelRun
from distill.shards import (
    ANNOTATION_COLUMNS,
    annotation_digest,
    annotation_row,
    annotations_digest,
    read_shard,
)
from distill.storage import Location
from distill.writelock import Lease
from pipelines.stages import Item

__all__ = ["RunOptions", "RunPlan", "ShardJob", "plan_run"]

logger = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """What one invocation asks for, beyond the config."""

    out: str | os.PathLike[str] | Location  # a local path or a URI
    limit: int | None = None
    image_ids: list[int] | None = None
    new_run: bool = False
    retry_failed: bool = False
    retry_ids: list[int] | None = None  # retry-failed --ids: these images, not the quarantined
    dry_run: bool = False  # plan only: nothing is written
    verify_shards: bool = False  # hash every committed shard, not only its size and footer
    address: str | None = None
    live: bool | None = None  # live table (None: when stderr is a terminal)
    verbose: bool = False


@dataclass
class ShardJob:
    """The work one shard needs in this invocation. Its `items` (records with their people and
    captions) are made when first asked for: a plan of a million images holds ids only."""

    entry: ShardEntry
    count: int  # images it sends through the stages
    roles: tuple[str, ...]  # the teachers they need
    make: Callable[[], list[Item]] = field(repr=False)
    keep_committed: bool = False  # retry-failed: the shard's other rows are kept as they are
    kind: str = "label"  # label | add-teacher | retry
    _items: list[Item] | None = field(default=None, init=False, repr=False)

    @property
    def items(self) -> list[Item]:
        if self._items is None:
            self._items = self.make()
        return self._items


@dataclass
class RunPlan:
    run: LabelRun
    config: Config
    manifest: Manifest
    roles: list[str]  # enabled teachers
    jobs: list[ShardJob]
    skipped: list[str] = field(default_factory=list)  # complete shards
    added_roles: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def images_to_process(self) -> int:
        return sum(j.count for j in self.jobs)

    def stage_names(self) -> list[str]:
        needed = {r for j in self.jobs if j.count for r in j.roles}
        return ["decode", *[r for r in self.roles if r in needed], "postprocess"]


def _enabled_roles(config: Config) -> list[str]:
    roles = [r for r, t in config.teachers.roles().items() if t.enabled]
    if not roles:
        raise ConfigError("every teacher is disabled (teachers.<role>.enabled = false); enable "
                          "at least one of depth, panoptic, text, caption")
    return roles


def _select(dataset: Dataset, options: RunOptions, planned: set[int] | None = None,
            run: LabelRun | None = None) -> list[int]:
    """The image ids this invocation adds to the plan, sorted (every id for a new plan).

    Candidates are every image entry of the split (also those the reader could not use: they
    get a slot and a quarantine row, and retry-failed can pick them up once fixed), restricted
    by --image-ids. A run only grows: --image-ids must name every image already planned, and
    --limit N means "the plan holds N images": those it has, then the lowest unplanned ids up to
    N (images that joined the split with lower ids than planned ones come first), so the same
    --limit never adds anything and a smaller one is refused."""
    planned = planned or set()
    ids = sorted(set(dataset.record_ids()) |
                 {p.image_id for p in dataset.problems if p.error_type != "UnknownImageId"})
    if options.limit is not None and options.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {options.limit}")
    if options.image_ids is not None:
        wanted = set(options.image_ids)
        unknown = sorted(wanted - set(ids) - planned)  # a planned id the split lost stays planned
        if unknown:
            raise ConfigError(
                f"{len(unknown)} of the requested --image-ids are not in {dataset.split}: "
                f"{unknown[:10]}{' …' if len(unknown) > 10 else ''}")
        left_out = sorted(planned - wanted)
        if left_out:
            raise FingerprintMismatch(
                f"{run} already plans {len(left_out)} image(s) that --image-ids leaves out "
                f"(ids {_some(left_out)}); a run only grows: pass --image-ids with every id it "
                "holds plus the new ones, or no --image-ids for the whole split; or choose "
                "another --out, or pass --new-run to start over")
        ids = [i for i in ids if i in wanted]
    new = [i for i in ids if i not in planned]
    if options.limit is not None:
        if options.limit < len(planned):
            raise FingerprintMismatch(
                f"{run} already plans {len(planned)} images and --limit {options.limit} would "
                f"drop {len(planned) - options.limit} of them; a run only grows: pass --limit "
                f"{len(planned)} or more, or no --limit for the whole split; or choose another "
                "--out, or pass --new-run to start over")
        new = new[:options.limit - len(planned)]
    if not new and not planned:
        raise ConfigError(f"no images to label in {dataset.root} split {dataset.split}")
    return new


def _some(ids: list[int], most: int = 10) -> str:
    return ", ".join(map(str, ids[:most])) + (" …" if len(ids) > most else "")


def _selection(options: RunOptions) -> dict[str, Any]:
    return {"limit": options.limit,
            "image_ids": sorted(options.image_ids) if options.image_ids is not None else None}


def _unlisted_problems(dataset: Dataset) -> list[Failure]:
    """Annotation problems that name no image entry (e.g. an unknown image id): quarantined
    once, at planning, in no shard."""
    return [Failure(p.image_id, "", "", p.stage, p.error_type, p.message)
            for p in dataset.problems if p.error_type == "UnknownImageId"]


def _open_manifest(run: LabelRun, config: Config, options: RunOptions, dataset: Dataset,
                   notes: list[str]) -> tuple[Manifest, list[str]]:
    """The run's manifest: read and checked when resuming, else planned and written."""
    view = label_view(config)
    fingerprint = label_fingerprint(view)
    exists = run.is_run()
    start_over = exists and options.new_run and not options.retry_failed
    if exists and not start_over:
        manifest = read_manifest(run.manifest)
        if manifest.split != config.data.split:
            raise FingerprintMismatch(
                f"{run} holds a run over split {manifest.split!r}, not {config.data.split!r}; "
                "choose another --out or pass --new-run")
        added: list[str] = []
        if manifest.fingerprint != fingerprint:
            found = teacher_additions(manifest.config, view)
            if not found:
                check_fingerprint(manifest, fingerprint, view, run)  # raises, naming changes
            added = found or []
            notes.append(f"teacher(s) {', '.join(added)} added to a planned run: only they run "
                         "on the shards already written")
            manifest.fingerprint, manifest.config = fingerprint, view
            for entry in manifest.shards:
                for role in added:
                    entry.teachers[role] = "pending"
        grown = _grow(run, manifest, dataset, options, notes)
        if (added or grown) and not options.dry_run:
            write_manifest(run.manifest, manifest)
        return manifest, added
    # A new plan. Everything that can refuse it is checked before an old run is cleared.
    run.check_target()
    ids = _select(dataset, options)
    manifest = Manifest(split=config.data.split, fingerprint=fingerprint, config=view,
                        shard_size=config.shards.shard_size,
                        shards=make_plan(ids, config.data.split, config.shards.shard_size),
                        selection=_selection(options))
    old = _planned_names(run) if start_over else []
    run.check_new_shards([e.name for e in manifest.shards], old)
    if start_over:
        if options.dry_run:
            notes.append(f"--new-run would clear {len(run.own_files(old))} file(s) of the "
                         f"previous run in {run}")
        else:
            notes.append(f"--new-run: cleared {run.clear(old)} file(s) of the previous run in "
                         f"{run}")
    if not options.dry_run:
        write_manifest(run.manifest, manifest)  # first: from here on the folder is a run
    return manifest, []


def _grow(run: LabelRun, manifest: Manifest, dataset: Dataset, options: RunOptions,
          notes: list[str]) -> bool:
    """Add the images this request selects beyond the plan, in new shards (retry-failed never
    grows a run). True when the plan grew."""
    if options.retry_failed:
        return False
    before = len(manifest.shards)
    new = _select(dataset, options, manifest.planned_ids(), run)
    if not new:
        return False
    planned = [e.name for e in manifest.shards]
    entries = manifest.grow(new, _selection(options))
    run.check_new_shards([e.name for e in entries], planned)
    names = entries[0].name + (f" … {entries[-1].name}" if len(entries) > 1 else "")
    notes.append(f"the run grows by {len(new)} image(s) in {len(entries)} new shard(s) "
                 f"({names}); its {before} planned shard(s) stay as they are")
    return True


def _planned_names(run: LabelRun) -> list[str]:
    """The shard names an existing run's manifest planned (what --new-run may remove)."""
    try:
        return [e.name for e in read_manifest(run.manifest).shards]
    except Exception as exc:  # an unreadable manifest: clear only the fixed run files
        logger.warning("cannot read the previous plan (%s); its shards are left in place", exc)
        return []


def _record_unlisted(run: LabelRun, dataset: Dataset) -> None:
    """Quarantine annotation problems that name no image entry (idempotent: every planning
    rewrites them, so a crash between the manifest and this write loses nothing)."""
    replace_failures(run.quarantine, [""], [p.image_id for p in dataset.problems],
                     _unlisted_problems(dataset))


def _fresh_items(entry: ShardEntry, ids: list[int], dataset: Dataset, split: str,
                 roles: list[str]) -> list[Item]:
    records, problems = dataset.by_id(), dataset.problem_by_id()  # built once per dataset
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


def _job_items(entry: ShardEntry, retry: list[int], dataset: Dataset, split: str,
               roles: list[str], path: Location, missing_roles: list[str]) -> list[Item]:
    """A committed shard's items: its images to retry, then (a teacher added) every committed
    row, through the new teacher(s) only."""
    items = _fresh_items(entry, retry, dataset, split, roles)
    if missing_roles:
        items += _extend_items(entry, path, split, missing_roles)
    return items


def _accounted(path: Location, entry: ShardEntry, quarantined: dict[str, set[int]]) -> bool:
    """A committed shard's rows plus its quarantined images must be exactly its planned images;
    anything else (a commit interrupted between the shard and the quarantine, a file edited by
    hand) sends the shard back to be labelled again."""
    rows = pq.read_table(path.open_input(), columns=["image_id"]).column(
        "image_id").to_pylist()
    seen = set(rows) | quarantined.get(entry.name, set())
    if len(rows) == len(set(rows)) and seen == set(entry.image_ids):
        return True
    missing = sorted(set(entry.image_ids) - seen)
    logger.warning("shard %s does not account for its planned images (missing %s, extra %s); "
                   "it will be labelled again", entry.name, missing[:5],
                   sorted(seen - set(entry.image_ids))[:5])
    return False


def plan_run(config: Config, options: RunOptions, lease: Lease | None = None) -> RunPlan:
    """Decide what this invocation does: which shards are complete, which need labelling,
    which need only a newly added teacher, and (retry-failed) which samples to retry. With the
    writer's `lease`, it is confirmed before the plan is written (reading a large split's
    annotations takes long enough for a paused writer to lose the run)."""
    run = LabelRun(options.out)
    roles = _enabled_roles(config)
    notes: list[str] = []
    dataset = open_dataset(config.data.root, config.data.split)
    if lease is not None:
        lease.check()
    manifest, added = _open_manifest(run, config, options, dataset, notes)
    if not options.dry_run:
        _record_unlisted(run, dataset)
    quarantined: dict[str, set[int]] = {}
    failures = read_quarantine(run.quarantine)
    for f in failures:
        quarantined.setdefault(f.shard, set()).add(f.image_id)
    if options.retry_failed:
        unlisted = sum(1 for f in failures if not f.shard)
        if unlisted:
            notes.append(f"{unlisted} quarantined annotation problem(s) name no image entry "
                         "(e.g. an unknown image id); fix the annotation files and start a "
                         "--new-run to include them")
    wanted = _retry_ids(options, manifest)
    jobs: list[ShardJob] = []
    skipped: list[str] = []
    committed: list[ShardEntry] = []
    present = {f.name for f in run.shards.files("*.parquet")}  # one listing, not one per shard
    for entry in manifest.shards:
        path = run.shard(entry.name)
        complete = entry.name in present and \
            shard_is_complete(path, entry, options.verify_shards) and \
            _accounted(path, entry, quarantined)

        if not complete:
            entry.teachers, entry.stats = {}, {}  # labelled again from scratch
            jobs.append(ShardJob(entry, len(entry.image_ids), tuple(roles), partial(
                _fresh_items, entry, entry.image_ids, dataset, manifest.split, roles)))
            continue
        committed.append(entry)
        missing_roles = [r for r in roles if entry.teachers.get(r) != "done"]
        retry = sorted(quarantined.get(entry.name, set())) if options.retry_failed else []
        if wanted is not None:
            retry = sorted(wanted.intersection(entry.image_ids))
        if not missing_roles and not retry:
            skipped.append(entry.name)
            continue
        rows = pq.ParquetFile(path.open_input()).metadata.num_rows if missing_roles else 0
        kind = "add-teacher" if missing_roles else "retry"
        if missing_roles and retry:
            kind = "add-teacher+retry"
        # Retrying alone: the rows not retried stay as they are.
        jobs.append(ShardJob(
            entry, len(retry) + rows, tuple(roles if retry else missing_roles),
            partial(_job_items, entry, retry, dataset, manifest.split, roles, path,
                    missing_roles), keep_committed=not missing_roles, kind=kind))
    stale = sorted(set(_changed_annotations(run, dataset, committed, quarantined)) -
                   (wanted or set()))
    if stale:
        notes.append(_relabel_note(run, stale))
    return RunPlan(run, config, manifest, roles, jobs, skipped, added, notes)


def _retry_ids(options: RunOptions, manifest: Manifest) -> set[int] | None:
    """retry-failed --ids: the images to relabel, all of them planned (None: the quarantined)."""
    if not options.retry_failed or options.retry_ids is None:
        return None
    wanted = set(options.retry_ids)
    unplanned = sorted(wanted - manifest.planned_ids())
    if unplanned:
        raise ConfigError(
            f"--ids names {len(unplanned)} image(s) this run does not plan: {_some(unplanned)}; "
            "retry-failed relabels planned images only (generate-labels --image-ids or --limit "
            "add new ones)")
    return wanted


def _changed_annotations(run: LabelRun, dataset: Dataset, committed: list[ShardEntry],
                         quarantined: dict[str, set[int]]) -> list[int]:
    """Committed images whose annotation columns (file name, size, captions, persons) differ
    from what the dataset's annotations say now. One pass over the records: each committed
    shard's recorded digest against one made from the records of its rows, so no shard is read
    while nothing changed; a shard that differs (or that a manifest older than the digest
    recorded none for) is read, its annotation columns only, to name the images. Images the
    split no longer lists are not counted (a relabel would quarantine them)."""
    if dataset.kind != "coco":  # a plain folder has no annotations that could change
        return []
    records = dataset.by_id()
    changed: list[int] = []
    for entry in committed:
        gone = quarantined.get(entry.name, set())
        mine = [records.get(i) for i in entry.image_ids if i not in gone]
        if entry.annotations is not None and all(mine) and entry.annotations == \
                annotations_digest(annotation_row(r) for r in mine if r is not None):
            continue
        rows = read_shard(run.shard(entry.name), list(ANNOTATION_COLUMNS)).to_pylist()
        entry.annotations = annotations_digest(rows)  # what the rows hold (kept at a next write)
        for row in rows:
            record = records.get(row["image_id"])
            if record is None:
                continue
            now = annotation_row(record)
            for side in ("width", "height"):  # not annotated: the row holds the decoded size
                now[side] = row[side] if now[side] is None else now[side]
            if annotation_digest(now) != annotation_digest(row):
                changed.append(row["image_id"])
    return changed


def _relabel_note(run: LabelRun, ids: list[int]) -> str:
    """One line: how many committed images have changed annotations, and how to relabel them."""
    if len(ids) > 20:
        logger.info("committed images with changed annotations: %s", ", ".join(map(str, ids)))
    listed = ",".join(map(str, ids)) if len(ids) <= 20 else "@ids.txt"
    where = "" if len(ids) <= 20 else " (ids.txt: those ids, which -v lists)"
    return (f"the annotations of {len(ids)} committed image(s) changed since they were labelled "
            f"(ids {_some(ids)}): their rows keep the file name, size, captions and persons they "
            f"were labelled with. Relabel them with `distill run retry-failed {run} --ids "
            f"{listed}`{where}, or start over with --new-run")


def _extend_items(entry: ShardEntry, path: Location, split: str,
                  roles: list[str]) -> list[Item]:
    """Items for every committed row of a shard, needing only `roles` (newly enabled teachers);
    the image comes from the row itself."""
    meta = pq.read_table(path.open_input(), columns=["image_id", "file_name"]).to_pylist()
    return [Item(image_id=r["image_id"], shard=entry.name, split=split, roles=tuple(roles),
                 file_name=r["file_name"], shard_path=str(path)) for r in meta]
