"""The label runs behind a student's training shards, and the vocabulary of its token targets.

One label run per student. `--shards` whose footers carry different label fingerprints (made
with different teachers, settings, data roots or splits), or that come from label run folders
whose `vocab.parquet` files differ, are refused in one line naming each fingerprint (or
vocabulary) with one of its shards, unless `--allow-mixed`. `--val-shards` are not held to this:
a held-out split is another label run by construction (`data.split` is in the fingerprint), and
validation scores its rows against the training vocabulary.

The vocabulary, in order:
1. `--vocab`, when given;
2. the `vocab.parquet` of the label run folder the shards are in (one fingerprint, one
   vocabulary);
3. otherwise (shards copied into a plain folder, a label run whose vocabulary is missing, or
   several runs with `--allow-mixed`), rebuilt from the `tokens` column of all the shards with
   the training config's `labels.glove` and `labels.vocab_size`, as generate-labels builds it
   (`vocabulary_from_shards`; the shards of a whole run give that run's vocabulary back), with a
   warning line;
4. none when no shard has caption tokens (the caption teacher was off): the student learns no
   tokens, as its label run had none.
The student run keeps a copy (`TrainingVocabulary.save`), which predict and evaluate decode with.

Checked before training writes anything (the refusals are listed in `distill.student.train`):
`check_streams` (rows to train on, for every rank) and `verify_shards` (`--verify-shards`: each
shard's sha256 against its label run's manifest).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from distill.config import Config, load_config, preset_of
from distill.errors import ConfigError, DistillError, MixedLabelRuns, ShardError, StorageError
from distill.labels.tokens import (
    Vocabulary,
    read_vocabulary,
    vocabulary_from_shards,
    write_vocabulary_file,
)
from distill.progress import Progress
from distill.runfolder import LabelRun, find_label_run, resolve_shards
from distill.shards import read_metadata
from distill.storage import Location, atomic_write_bytes, file_sha256

if TYPE_CHECKING:
    from distill.student.data import ShardSpec, ShardStream
    from distill.student.train import TrainOptions

__all__ = [
    "TrainingVocabulary",
    "check_one_label_run",
    "check_streams",
    "shown_shards",
    "training_vocabulary",
    "verify_shards",
]

logger = logging.getLogger(__name__)


@dataclass
class _Origin:
    """The shards of one label fingerprint (or one vocabulary), in --shards order."""

    key: str
    shards: list[Location] = field(default_factory=list)

    def described(self) -> str:
        n = len(self.shards)
        return f"{self.key} ({n} shard{'s' if n != 1 else ''}, e.g. {self.shards[0]})"


@dataclass
class TrainingVocabulary:
    """The vocabulary a student trains with, and where it comes from."""

    vocab: Vocabulary | None
    file: Location | None = None  # the vocab.parquet it was read from; None: rebuilt, or none
    meta: dict[str, str] = field(default_factory=dict)  # a rebuilt one's file metadata
    described: str = "no vocabulary"

    @property
    def dim(self) -> int:
        return self.vocab.dim if self.vocab is not None else 0

    def save(self, target: Location) -> None:
        """Keep a copy in the student run (predict and evaluate decode tokens with it)."""
        if self.vocab is None or self.file == target:
            return
        if self.file is not None:
            atomic_write_bytes(target, self.file.read_bytes())
        else:
            write_vocabulary_file(target, self.vocab, self.vocab.dim, self.meta)


def _origins(paths: Sequence[Location]) -> tuple[list[_Origin], list[_Origin]]:
    """The shards grouped by label fingerprint (from their footers), and grouped by the
    `vocab.parquet` of the label run folder they are in (shards in none are left out)."""
    by_fingerprint: dict[str, _Origin] = {}
    by_vocab: dict[str, _Origin] = {}
    runs: dict[Location, LabelRun | None] = {}
    digests: dict[Location, str] = {}
    for path in paths:
        fingerprint = read_metadata(path).get("fingerprint")
        key = str(fingerprint) if fingerprint is not None else "(no fingerprint recorded)"
        by_fingerprint.setdefault(key, _Origin(key)).shards.append(path)
        if path.parent not in runs:  # whether a file is a run's shard depends on its folder
            runs[path.parent] = find_label_run(path)
        run = runs[path.parent]
        if run is None or not run.vocab.is_file():
            continue
        if run.vocab not in digests:
            digests[run.vocab] = file_sha256(run.vocab)
        by_vocab.setdefault(digests[run.vocab], _Origin(str(run.vocab))).shards.append(path)
    return list(by_fingerprint.values()), list(by_vocab.values())


def check_one_label_run(paths: Sequence[Location], allow_mixed: bool = False,
                        vocab_given: bool = False) -> tuple[list[_Origin], list[_Origin]]:
    """Refuse shards of several label runs (module docstring) unless `allow_mixed`; differing
    vocabularies of one fingerprint are no conflict when `vocab_given` (--vocab) picks one.
    Returns the shards grouped by fingerprint and by their label run's vocabulary."""
    fingerprints, vocabularies = _origins(paths)
    if len(fingerprints) > 1 and not allow_mixed:
        raise MixedLabelRuns(
            f"--shards mixes {len(fingerprints)} label runs with different label fingerprints: "
            f"{_listed([o.described() for o in fingerprints])}. Their labels were made with other settings or data, and "
            "each run has its own vocabulary; train on one label run's shards, or pass "
            "--allow-mixed to train on all of them with a vocabulary rebuilt from all their "
            "caption tokens")
    if len(vocabularies) > 1 and not (allow_mixed or vocab_given):
        raise MixedLabelRuns(
            f"--shards mixes {len(vocabularies)} label runs with different vocabularies: "
            f"{_listed([o.described() for o in vocabularies])}. Pass --vocab to choose one, or --allow-mixed to rebuild "
            "one from all the shards' caption tokens")
    return fingerprints, vocabularies


def _listed(items: Sequence[str], most: int = 4) -> str:
    return "; ".join(items[:most]) + (f"; and {len(items) - most} more" if len(items) > most
                                      else "")


def training_vocabulary(config: Config, options: TrainOptions) -> TrainingVocabulary:
    """The vocabulary of `options.shards` (module docstring), after refusing mixed label runs;
    its dimension must be `student.token_dim`."""
    paths = resolve_shards(options.shards)
    fingerprints, vocabularies = check_one_label_run(paths, options.allow_mixed,
                                                     options.vocab is not None)
    if options.vocab:
        loc = Location(options.vocab)
        if not loc.is_file():
            raise DistillError(f"--vocab {loc} does not exist")
        chosen = TrainingVocabulary(read_vocabulary(loc), loc, described=str(loc))
    elif len(fingerprints) == 1 and len(vocabularies) == 1:
        loc = Location(vocabularies[0].key)
        chosen = TrainingVocabulary(read_vocabulary(loc), loc, described=str(loc))
    else:
        chosen = _rebuilt(config, paths, mixed=len(fingerprints) > 1 or len(vocabularies) > 1)
    if chosen.vocab is not None and chosen.dim != config.student.token_dim:
        raise ConfigError(
            f"student.token_dim = {config.student.token_dim} but {chosen.described} is a "
            f"{chosen.dim}-d vocabulary (labels.glove); "
            f"{_token_dim_hint(config, chosen.dim, options)}")
    return chosen


def _rebuilt(config: Config, paths: Sequence[Location], mixed: bool) -> TrainingVocabulary:
    """Rule 3 of the module docstring: the vocabulary rebuilt from the shards' tokens."""
    glove, size = config.labels.glove, config.labels.vocab_size
    folders = ", ".join(sorted({str(p.parent) for p in paths})[:3])
    why = "several label runs (--allow-mixed)" if mixed else \
        f"no vocab.parquet comes with the shards in {folders} (no label run folder beside them has one)"
    try:
        built = vocabulary_from_shards(paths, glove, size)
    except ConfigError as exc:
        raise ConfigError(
            f"--shards: {why}, so train-student rebuilds the vocabulary from their caption "
            f"tokens with labels.glove, and {exc}; or pass --vocab with the label run's "
            "vocab.parquet") from exc
    if built is None:
        logger.info("--shards: no row has caption tokens; the student learns no tokens")
        return TrainingVocabulary(None)
    vocab, meta = built
    described = (f"the vocabulary rebuilt from the caption tokens of {len(paths)} shard(s) "
                 f"(labels.glove = {glove!r})")
    (logger.info if mixed else logger.warning)(
        "--shards: %s; training with %s: %d words (labels.vocab_size = %d), kept as the student "
        "run's vocab.parquet", why, described, len(vocab.words), size)
    return TrainingVocabulary(vocab, None, meta, described)


def _token_dim_hint(config: Config, dim: int, options: TrainOptions) -> str:
    """What to pass when the vocabulary's dimension is not the student's: the preset the shards
    were labelled with when its student fits them (`--set student.token_dim` alone would keep,
    say, the paper's 297M-parameter student for a demo run's shards)."""
    run = _label_run(options.shards)
    preset = preset_of(run.config) if run is not None else None
    if run is not None and preset is not None and preset != config.preset \
            and load_config(preset).student.token_dim == dim:
        return (f"the shards were labelled with preset {preset!r} ({run.config}): pass "
                f"--preset {preset}, or --set student.token_dim={dim} to keep preset "
                f"{config.preset!r}")
    return f"set --set student.token_dim={dim}"


def _label_run(shards: ShardSpec) -> LabelRun | None:
    """The label run of a run folder / shards folder / shard, else of the first shard found."""
    if isinstance(shards, (str, os.PathLike, Location)):
        with contextlib.suppress(StorageError):
            run = find_label_run(shards)
            if run is not None:
                return run
    try:
        first = resolve_shards(shards)[0]
    except ShardError:
        return None
    return find_label_run(first)


# ---------------------------------------------------------------------------------------------
# Checks before training


def shown_shards(paths: Sequence[Location], most: int = 4) -> str:
    """Shard paths for a one-line message: all in one folder are named once."""
    folders = {p.parent for p in paths}
    names = [p.name for p in paths] if len(folders) == 1 else [str(p) for p in paths]
    text = ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most
                                      else "")
    return f"{text} in {next(iter(folders))}" if len(folders) == 1 else text


def check_streams(train: ShardStream, val: ShardStream | None) -> None:
    """Refuse shards that would train on nothing (`distill.student.train`'s docstring): no rows
    in all, or a rank of a data-parallel run with no rows. Reads only what the footers gave."""
    for stream, option in ((train, "--shards"), (val, "--val-shards")):
        if stream is None:
            continue
        if stream.count_rows() == 0:
            what = "holds" if len(stream.paths) == 1 else "hold"
            raise DistillError(
                f"{option}: {shown_shards(stream.paths)} {what} 0 rows, nothing to "
                f"{'train' if stream is train else 'validate'} on; label some images first, or "
                "pass other shards")
        for path, groups in zip(stream.paths, stream.group_rows, strict=True):
            if sum(groups) == 0:
                logger.warning("shard %s holds 0 rows", path)
        rows = stream.rows_per_rank()
        if min(rows) == 0:
            units = sum(1 for groups in stream.group_rows for n in groups if n > 0)
            raise DistillError(
                f"{option}: {shown_shards(stream.paths)} hold {units} non-empty row group(s), "
                f"too few for {stream.world_size} training workers (row groups are dealt to workers "
                f"whole; {rows.count(0)} would get no rows); use at most {units} workers, or "
                "labels written with a smaller shards.row_group_size")


def verify_shards(specs: Sequence[ShardSpec], progress: bool = True) -> None:
    """`--verify-shards`: every shard's sha256 against the one its label run's manifest
    records. Refuses (one `DistillError` naming the shards) a mismatch, a shard its run's
    manifest does not record as committed, and a shard in no label run (nothing to check it
    against), the last two before hashing anything."""
    from distill.manifest import Manifest, read_manifest

    shards = list(dict.fromkeys(p for spec in specs for p in resolve_shards(spec)))
    runs: dict[Location, LabelRun | None] = {}
    manifests: dict[Location, Manifest] = {}
    expected: dict[Location, tuple[str, int | None]] = {}  # sha256, size
    problems: list[str] = []
    for shard in shards:
        if shard.parent not in runs:  # whether a file is a run's shard depends on its folder
            runs[shard.parent] = find_label_run(shard)
        run = runs[shard.parent]
        if run is None:
            problems.append(f"{shard} is in no label run folder (no manifest.json above it), so "
                            "no checksum was recorded for it")
            continue
        if run.root not in manifests:
            manifests[run.root] = read_manifest(run.manifest)
        entry = next((e for e in manifests[run.root].shards if e.name == shard.name), None)
        if entry is None or entry.sha256 is None:
            problems.append(f"{shard} is not a committed shard of {run.manifest}"
                            if entry is None else
                            f"{shard} is not committed yet in {run.manifest} (no checksum)")
            continue
        expected[shard] = entry.sha256, entry.size
    if problems:
        raise DistillError(f"--verify-shards: cannot verify {len(problems)} of {len(shards)} "
                           f"shard(s): {_listed(problems)}")
    sizes = {shard: shard.size() for shard in expected}
    bar = _HashProgress(sum(sizes.values()), len(expected), enabled=progress)
    try:
        for k, (shard, (sha256, size)) in enumerate(expected.items()):
            bar.start(shard, k)
            before = len(problems)
            if size is not None and sizes[shard] != size:
                problems.append(f"{shard} is {sizes[shard]} bytes, {_run_of(runs, shard)} "
                                f"recorded {size}")
            else:
                try:
                    digest = file_sha256(shard)
                except OSError as exc:
                    raise StorageError(f"--verify-shards: cannot read {shard}: {exc}") from exc
                if digest != sha256:
                    problems.append(f"{shard} has sha256 {digest[:12]}…, "
                                    f"{_run_of(runs, shard)} recorded {sha256[:12]}…")
            bar.done(shard, sizes[shard], ok=len(problems) == before)
    finally:
        bar.close()
    if problems:
        raise DistillError(f"--verify-shards: {len(problems)} of {len(shards)} shard(s) differ "
                           f"from their label run's manifest (changed or damaged after "
                           f"labelling): {_listed(problems)}")
    logger.info("--verify-shards: %d shard(s) match their manifests", len(shards))


def _run_of(runs: dict[Location, LabelRun | None], shard: Location) -> str:
    run = runs[shard.parent]
    return f"the manifest of {run}" if run is not None else "its manifest"


class _HashProgress:
    """A bar over the bytes `--verify-shards` hashes (`distill.progress`); without one on the
    screen, a log line per shard."""

    def __init__(self, total_bytes: int, shards: int, enabled: bool) -> None:
        self.shards = shards
        self.bar = Progress("verify-shards", total_bytes, "bytes", data=True,
                            enabled=enabled and shards > 0).__enter__()

    def start(self, shard: Location, k: int) -> None:
        self.bar.describe(f"verify {shard.name} ({k + 1}/{self.shards})")

    def done(self, shard: Location, size: int, ok: bool) -> None:
        self.bar.advance(size)
        if not self.bar.live:
            logger.info("--verify-shards: %s %s", shard, "matches" if ok else "DIFFERS")

    def close(self) -> None:
        self.bar.close()
