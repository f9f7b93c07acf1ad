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
from distill.runfolder import LabelRun, find_label_run, resolve_shards
from distill.shards import read_metadata
from distill.storage import Location, atomic_write_bytes, file_sha256

if TYPE_CHECKING:
    from distill.student.data import ShardSpec
    from distill.student.train import TrainOptions

__all__ = ["TrainingVocabulary", "check_one_label_run", "training_vocabulary"]

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
            f"{_listed(fingerprints)}. Their labels were made with other settings or data, and "
            "each run has its own vocabulary; train on one label run's shards, or pass "
            "--allow-mixed to train on all of them with a vocabulary rebuilt from all their "
            "caption tokens")
    if len(vocabularies) > 1 and not (allow_mixed or vocab_given):
        raise MixedLabelRuns(
            f"--shards mixes {len(vocabularies)} label runs with different vocabularies: "
            f"{_listed(vocabularies)}. Pass --vocab to choose one, or --allow-mixed to rebuild "
            "one from all the shards' caption tokens")
    return fingerprints, vocabularies


def _listed(origins: list[_Origin], most: int = 4) -> str:
    return "; ".join(o.described() for o in origins[:most]) + \
        (f"; and {len(origins) - most} more" if len(origins) > most else "")


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

