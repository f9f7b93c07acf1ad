"""Run folders (DESIGN.md §5): the one owner of what a label run and a student run hold.

Every file name of a run folder, shard discovery for every command that takes shards, the
single-writer lock, temp names and their clean-up, and what distill may delete live here; no
other module spells a run file's name. Run folders may be local paths or URIs
(`distill.storage`).

Ownership. A folder is a label run when it holds distill's `manifest.json`, a student run when
it holds distill's `run.json` (kind "student"). distill writes into a folder only when it is
its own kind of run, or empty, or new; it deletes only the files a run recorded as its own
(the fixed run files, the shards its manifest planned, their commit records, and temp
names of those), never
anything else under the run's folder or prefix.

One writer per run: the lock and lease are `distill.writelock`'s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

from distill.errors import DistillError, ShardError, StorageError
from distill.storage import Location, atomic_write_bytes, is_temp_name, s3_client, written_here
from distill.writelock import LEASE, LOCK, Lease, local_lock, object_lease

__all__ = [
    "CONFIG",
    "MANIFEST",
    "QUARANTINE",
    "SUMMARY",
    "VIEW_STATS",
    "VOCAB",
    "LabelRun",
    "StudentRun",
    "find_label_run",
    "parse_shard_name",
    "resolve_shards",
    "shard_name",
]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RECORDS = "manifest.d"  # one commit record per shard committed since manifest.json was written
QUARANTINE = "quarantine.parquet"
VOCAB = "vocab.parquet"
SUMMARY = "summary.json"
CONFIG = "config.toml"
AUDIT = "audit.json"
VIEW_STATS = "view-stats.parquet"  # `distill view`'s per-row statistics (distill.view.stats)
SHARDS = "shards"
RUN_MARKER = "run.json"  # a student run's ownership mark
METRICS = "metrics.jsonl"
EVALUATION = "evaluation.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"  # a student run's TensorBoard event files (distill.student.curves)
TRACKERS = "trackers.json"  # a student run's MLflow / W&B run ids, so a resume continues them
MODEL = "model.safetensors"  # in a student checkpoint folder: the weights
STATE = "state.pt"  # in a student checkpoint folder: the training state
_GLOB = set("*?[")
# `val2017-00042.parquet`; runs planned before runs could grow named theirs
# `val2017-00042-of-00118.parquet`, and those names stay valid (see `shard_name`).
_SHARD_RE = re.compile(r"^(?P<split>.+?)-(?P<index>\d{5,})(?:-of-(?P<total>\d{5,}))?\.parquet$")


def shard_name(split: str, index: int) -> str:
    """`<split>-00042.parquet`: a shard's name is its 0-based index in the plan, never the
    plan's size. A run grows (new images get new shards after the committed ones), and a name
    with the total in it (`-of-00118`, what distill wrote before) would have to change under
    shards that are committed and byte-identical, or go stale. Five digits, more past 99999."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return f"{split}-{index:05d}.parquet"


def parse_shard_name(name: str) -> tuple[str, int, int | None]:
    """Invert `shard_name`: (split, index, None); an older run's `-of-` name gives its total."""
    m = _SHARD_RE.match(os.path.basename(name))
    if not m:
        raise ShardError(f"{name!r} is not a shard name like 'val2017-00000.parquet'")
    return m["split"], int(m["index"]), int(m["total"]) if m["total"] else None


# ---------------------------------------------------------------------------------------------
# Ownership


def _leftovers(root: Location, ours: set[str]) -> list[str]:
    """What `root` holds besides distill's own bookkeeping (names of files and folders)."""
    found = []
    for child in root.iterdir():
        name = child.name
        if name in ours or is_temp_name(name):
            continue
        if name in (SHARDS, RECORDS) and child.is_dir() and not child.iterdir():
            continue
        found.append(name + ("/" if child.is_dir() else ""))
    return found


def _refuse_foreign(root: Location, what: str, marker: str, ours: set[str]) -> None:
    """Refuse to write a run into a folder that holds somebody else's files."""
    if root.is_file():
        raise StorageError(f"--out {root} is a file, not a folder; choose a folder for the {what}")
    found = _leftovers(root, ours)
    if found:
        shown = ", ".join(found[:6]) + (" …" if len(found) > 6 else "")
        raise DistillError(
            f"--out {root} is not empty and is not a distill {what} (no {marker}): it holds "
            f"{shown}. distill never writes into a folder it did not make; choose an empty or "
            "new folder")


class _RunFolder:
    """Shared by label and student runs: the root, the lock, what is ours."""

    kind = ""
    marker = ""
    fixed: tuple[str, ...] = ()

    def __init__(self, root: str | os.PathLike[str] | Location) -> None:
        self.root = Location(root)

    def __str__(self) -> str:
        return str(self.root)

    def file(self, name: str) -> Location:
        return self.root / name

    def is_run(self) -> bool:
        return (self.root / self.marker).is_file()

    def is_new(self) -> bool:
        """Whether the folder holds nothing yet but distill's lock: new, or empty. A failed
        first run into such a folder may remove all it wrote."""
        return not self.root.exists() or all(c.name in (LOCK, LEASE) for c in self.root.iterdir())

    def check_target(self) -> None:
        """Before a first write: the folder is new, empty, or already this kind of run."""
        if self.is_run():
            return
        for other in (LabelRun, StudentRun):  # distill made it, for the other kind of run
            if other.kind != self.kind and other(self.root).is_run():
                raise DistillError(
                    f"--out {self.root} is a distill {other.kind} ({other.marker}); a "
                    f"{self.kind.removesuffix(' folder')} goes into a folder of its own: choose "
                    "an empty or new folder")
        _refuse_foreign(self.root, self.kind, self.marker, {LOCK, LEASE})

    @contextlib.contextmanager
    def lock(self) -> Iterator[Lease]:
        """Hold the single-writer lock (or lease) for the duration of the block. A folder this
        call created is removed again when nothing but the lock was written into it."""
        existed = self.root.is_local and self.root.exists()
        lease = local_lock(self.root) if self.root.is_local else object_lease(self.root)
        try:
            yield lease
        finally:
            # (a forked child leaving its parent's block: the lock and its file are the parent's)
            if lease.pid == os.getpid():
                lease.release()
                if self.root.is_local and not self.is_run():
                    _remove_lock(self.root, remove_folder=not existed)


def _remove_lock(root: Location, remove_folder: bool) -> None:
    """A run that never got as far as its plan leaves nothing: not the folder it made for it
    (its lock file went with the lock, `local_lock`)."""
    path = root.as_path()
    with contextlib.suppress(OSError):
        if remove_folder and not any(path.iterdir()):
            path.rmdir()


class LabelRun(_RunFolder):
    """A generate-labels run folder."""

    kind = "label run folder"
    marker = MANIFEST
    fixed = (MANIFEST, QUARANTINE, VOCAB, SUMMARY, CONFIG, AUDIT, VIEW_STATS)

    @property
    def manifest(self) -> Location:
        return self.root / MANIFEST

    @property
    def quarantine(self) -> Location:
        return self.root / QUARANTINE

    @property
    def vocab(self) -> Location:
        return self.root / VOCAB

    @property
    def summary(self) -> Location:
        return self.root / SUMMARY

    @property
    def config(self) -> Location:
        return self.root / CONFIG

    @property
    def audit(self) -> Location:
        return self.root / AUDIT

    @property
    def view_stats(self) -> Location:
        return self.root / VIEW_STATS

    @property
    def shards(self) -> Location:
        return self.root / SHARDS

    def shard(self, name: str) -> Location:
        return self.root / SHARDS / name

    @property
    def records(self) -> Location:
        """`manifest.d/`: the commit records (`distill.manifest.record_commit`)."""
        return self.root / RECORDS

    def commit_record(self, shard: str) -> Location:
        """`manifest.d/val2017-00042.json`: the commit record of shard `val2017-00042.parquet`."""
        return self.records / (shard.removesuffix(".parquet") + ".json")

    def commit_records(self, shard_names: Sequence[str]) -> list[Location]:
        """The commit records there are of these shards (one listing)."""
        ours = {self.commit_record(n).name for n in shard_names}
        return [f for f in self.records.files("*.json") if f.name in ours]

    def write_config(self, text: str) -> None:
        atomic_write_bytes(self.config, text.encode())

    def own_files(self, shard_names: Sequence[str]) -> list[Location]:
        """Existing files this run wrote: the fixed run files, the planned shards, and temp
        names of any of them. Nothing else in the folder is distill's."""
        shard_set = set(shard_names)
        files = [self.root / n for n in self.fixed if (self.root / n).is_file()]
        files += [f for f in self.root.files(".*") if is_temp_name(f.name) in self.fixed]
        for f in self.shards.files():
            if f.name in shard_set or is_temp_name(f.name) in shard_set:
                files.append(f)
        records = {self.commit_record(n).name for n in shard_set}
        files += [f for f in self.records.files()
                  if f.name in records or is_temp_name(f.name) in records]
        return files

    def check_new_shards(self, new: Sequence[str], planned: Sequence[str] = ()) -> None:
        """Before a plan adds shards named `new` (a first plan, growth, `--new-run`): none of
        them may already be held by a file, unless an earlier plan of this run (`planned`) named
        it, which makes it distill's own (e.g. a crash's leftover). Any other file there was
        not written by distill: refused in one line naming it, never replaced (one listing)."""
        ours = set(planned)
        taken = sorted(c for c in self.shards.iterdir() if c.name in set(new) - ours)
        if taken:
            more = f" (and {len(taken) - 1} more under planned shard names)" if len(taken) > 1 \
                else ""
            raise DistillError(
                f"{taken[0]} is not a shard of this run{more}: distill did not write it, and the "
                f"plan puts its shard {taken[0].name} there. distill never replaces a file it "
                f"did not write: move it out of {self.shards}, or choose another --out")

    def clear(self, shard_names: Sequence[str]) -> int:
        """`--new-run`: remove exactly this run's own files; returns how many."""
        files = self.own_files(shard_names)
        for f in files:
            f.delete()
        return len(files)

    def undo_writes(self, shard_names: Sequence[str]) -> int:
        """A failed first run: remove the run files this process wrote, each only while it
        still holds what this process wrote (`storage.written_here`: by name and by identity,
        so a file another writer has replaced since stays); returns how many."""
        files = [f for f in self.own_files(shard_names) if written_here(f)]
        for f in files:
            f.delete()
        return len(files)

    def remove_stale_temps(self, shard_names: Sequence[str]) -> int:
        """Temp files a killed run left behind under our names (also unfinished multipart
        uploads on S3). Only called while holding the lock, so no live writer owns them."""
        finals = set(self.fixed) | set(shard_names) | \
            {self.commit_record(n).name for n in shard_names}
        stale = [f for f in [*self.root.files(".*"), *self.shards.files(".*"),
                             *self.records.files(".*")] if is_temp_name(f.name) in finals]
        for f in stale:
            f.delete()
        stale_uploads = _abort_uploads(self.root, finals) if self.root.scheme == "s3" else 0
        if stale or stale_uploads:
            logger.info("removed %d temp file(s) and %d unfinished upload(s) left by an "
                        "interrupted run", len(stale), stale_uploads)
        return len(stale) + stale_uploads

    def committed_shards(self) -> list[Location]:
        """The shards the manifest (with its commit records) records as committed, in plan
        order."""
        from distill.manifest import read_manifest  # (it names its files through this module)

        return [self.shard(e.name) for e in read_manifest(self.manifest).shards if e.sha256]


class StudentRun(_RunFolder):
    """A train-student run folder."""

    kind = "student run folder"
    marker = RUN_MARKER
    fixed = (RUN_MARKER, CONFIG, METRICS, SUMMARY, VOCAB, EVALUATION, TRACKERS)

    @property
    def config(self) -> Location:
        return self.root / CONFIG

    @property
    def metrics(self) -> Location:
        return self.root / METRICS

    @property
    def summary(self) -> Location:
        return self.root / SUMMARY

    @property
    def vocab(self) -> Location:
        return self.root / VOCAB

    @property
    def evaluation(self) -> Location:
        return self.root / EVALUATION

    @property
    def tensorboard(self) -> Location:
        """`tensorboard/`: the event files of `train.trackers = ["tensorboard"]`."""
        return self.root / TENSORBOARD

    @property
    def trackers(self) -> Location:
        """`trackers.json`: the MLflow and W&B run ids of this run."""
        return self.root / TRACKERS

    def checkpoint(self, which: str) -> Location:
        """`checkpoints/last` or `checkpoints/best`."""
        return self.root / CHECKPOINTS / which

    def staged_checkpoint(self, which: str) -> Location:
        """`checkpoints/.<which>.next`: where a checkpoint is written before it is published."""
        return self.root / CHECKPOINTS / f".{which}.next"

    def retired_checkpoint(self, which: str) -> Location:
        """`checkpoints/.<which>.old`: a local checkpoint folder being swapped out."""
        return self.root / CHECKPOINTS / f".{which}.old"

    @staticmethod
    def model_file(checkpoint: Location) -> Location:
        """The weights of a checkpoint folder."""
        return checkpoint / MODEL

    @staticmethod
    def state_file(checkpoint: Location) -> Location:
        """The training state of a checkpoint folder."""
        return checkpoint / STATE

    def is_run(self) -> bool:
        """Marked by `run.json`, or made by a distill older than the mark (config.toml beside
        checkpoints/)."""
        return super().is_run() or ((self.root / CONFIG).is_file() and
                                    (self.root / CHECKPOINTS).is_dir())

    def mark(self) -> None:
        """Claim the folder as a student run (written before anything else; also upgrades a
        run made by an older distill)."""
        if not (self.root / RUN_MARKER).is_file():
            atomic_write_bytes(self.root / RUN_MARKER,
                               json.dumps({"kind": "student", "by": "distill"}).encode())

    def record_training_shards(self, shards: list[dict[str, Any]]) -> None:
        """Add `shards` (each {"path", "name", "fingerprint", "random_weights"}) to the training shards `run.json`
        records, so `evaluate` can tell when it scores a student on its own training data. A
        resumed run adds the shards it trains on to those of the runs before it."""
        doc = _read_json(self.root / RUN_MARKER) if (self.root / RUN_MARKER).is_file() else {}
        known = doc.get("train_shards") or []
        known += [s for s in shards if s not in known]
        doc = {"kind": "student", "by": "distill", **doc, "train_shards": known}
        atomic_write_bytes(self.root / RUN_MARKER, json.dumps(doc, indent=1).encode())

    def training_shards(self) -> list[dict[str, Any]]:
        """The shards `record_training_shards` recorded ([] for a run made before it)."""
        marker = self.root / RUN_MARKER
        if not marker.is_file():
            return []
        shards = _read_json(marker).get("train_shards")
        return [s for s in shards if isinstance(s, dict)] if isinstance(shards, list) else []

    def random_weight_roles(self) -> list[str]:
        """The roles whose teacher had random weights in any shard the run trained on (as
        `record_training_shards` recorded them; [] for a run made before that)."""
        return sorted({str(role) for s in self.training_shards()
                       for role in s.get("random_weights") or []})

    @classmethod
    def holding(cls, path: Location) -> StudentRun | None:
        """The student run a checkpoint folder or file sits in, if any."""
        for up in (path, path.parent, path.parent.parent, path.parent.parent.parent):
            if (up / CONFIG).is_file() and ((up / RUN_MARKER).is_file() or
                                            (up / CHECKPOINTS).is_dir()):
                return cls(up)
        return None


def _read_json(loc: Location) -> dict[str, Any]:
    try:
        doc = json.loads(loc.read_bytes())
    except (OSError, ValueError, StorageError) as exc:
        raise ShardError(f"cannot read {loc}: {exc}") from exc
    return doc if isinstance(doc, dict) else {}


# ---------------------------------------------------------------------------------------------
# Shard discovery: one rule for every command that takes shards


def find_label_run(spec: str | os.PathLike[str] | Location) -> LabelRun | None:
    """The label run a run folder, its shards folder or one of its shards belongs to."""
    loc = Location(spec)
    for up in (loc, loc.parent, loc.parent.parent):
        run = LabelRun(up)
        if run.is_run() and (up == loc or loc in (run.shards, *run.shards.files())):
            return run
    return None


_TAKES = "a generate-labels run folder, its shards/ folder, a glob or .parquet shards"
# Parquet files a run keeps beside its shards that are never shards themselves.
_RUN_TABLES = {VOCAB: "vocabulary", QUARANTINE: "quarantine table",
               VIEW_STATS: "viewer statistics"}


def _not_labels(loc: Location) -> str | None:
    """Why `loc` is something distill wrote that holds no labels — a train-student run folder,
    its checkpoints, a run's vocabulary or quarantine table — or None."""
    if loc.is_file():  # by its name alone (a list of shards on S3: no request per file)
        return (f"{loc} is a run's {_RUN_TABLES[loc.name]} ({loc.name}), not a label shard"
                if loc.name in _RUN_TABLES else None)
    run = StudentRun.holding(loc)
    if run is None or loc not in (run.root, run.root / CHECKPOINTS, *(
            run.root / CHECKPOINTS).iterdir()):
        return None
    what = (f"{loc} is a train-student run folder ({CHECKPOINTS}/, {METRICS}, {VOCAB})"
            if loc == run.root else f"{loc} holds the checkpoints of the train-student run {run}"
            if loc == run.root / CHECKPOINTS else
            f"{loc} is a checkpoint of the train-student run {run}")
    trained = {os.path.dirname(s["path"]) for s in run.training_shards() if "path" in s}
    return what + ", not labels" + (f"; it was trained on the shards in {trained.pop()}"
                                    if len(trained) == 1 else "")


def resolve_shards(spec: str | os.PathLike[str] | Location |
                   Sequence[str | os.PathLike[str] | Location]) -> list[Location]:
    """Shard files from what a user passes to --shards (or `show`, `inspect`, `evaluate`):

    - a label run folder, or its `shards/` folder: the shards its manifest records as committed
      (a user's own files beside them are not shards of the run);
    - any other folder: its `*.parquet` files, sorted, but a run's vocab.parquet and
      quarantine.parquet; a train-student run folder or its checkpoints are refused, saying
      what they are;
    - a glob (`runs/a/shards/val2017-0000*.parquet`, `s3://b/run/shards/*.parquet`): the
      matching files, sorted;
    - one file, or a list of any of these, in order.
    Local paths and URIs alike; an empty result is an error naming what was looked at."""
    if not isinstance(spec, (str, os.PathLike, Location)):
        found = [p for s in spec for p in resolve_shards(s)]
        if not found:
            raise ShardError("no shards given: pass a run folder, a shards folder, a glob or "
                             "shard files")
        return found
    text = str(spec)
    if _GLOB & set(os.path.basename(text)):
        folder = Location(os.path.dirname(text) or ".")
        found = folder.files(os.path.basename(text))
        if not found:
            raise ShardError(f"no shard matches {text}")
        return found
    loc = Location(spec)
    if not loc.exists():
        raise ShardError(f"{loc} does not exist (expected {_TAKES})")
    run = find_label_run(loc) if loc.is_dir() else None
    if run is not None:
        found = run.committed_shards()
        if not found:
            raise ShardError(f"run {run} has no committed shards yet")
        return found
    why = _not_labels(loc)
    if why is not None:
        raise ShardError(f"{why}: pass {_TAKES}")
    if loc.is_file():
        return [loc]
    found = [f for f in loc.files("*.parquet") if f.name not in _RUN_TABLES]
    if not found:
        raise ShardError(f"no *.parquet shards in {loc}: pass {_TAKES}")
    return found


def _abort_uploads(root: Location, finals: set[str]) -> int:
    """Abort unfinished multipart uploads of temp objects under `root` (a SIGKILLed upload)."""
    try:
        client = s3_client()
        bucket, _, prefix = root.path.partition("/")
        uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    except Exception as exc:
        logger.debug("cannot list multipart uploads of %s: %s", root, exc)
        return 0
    n = 0
    for up in uploads:  # ours under a temp name, or one of our final names (a killed upload)
        name = up["Key"].rsplit("/", 1)[-1]
        if name in finals or is_temp_name(name) in finals:
            with contextlib.suppress(Exception):
                client.abort_multipart_upload(Bucket=bucket, Key=up["Key"],
                                              UploadId=up["UploadId"])
                n += 1
    return n
