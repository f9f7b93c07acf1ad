"""`distill run evaluate` as a library function: load a student, score it on label shards
(`distill.student.evaluate`) and write the JSON report."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from distill.storage import Location, atomic_write_bytes

__all__ = ["Evaluation", "evaluate_checkpoint"]

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """A student's scores (`report`: the JSON written to `path`: HDM and MSE per modality,
    token cosines, keypoint AP, the checkpoint and shards), and the shards it was trained on
    among those scored (`trained_on`: scores on training data overstate it)."""

    report: dict[str, Any]
    path: Location
    trained_on: list[str]
    shards: int  # how many shards were scored


def evaluate_checkpoint(checkpoint: str, shards: str, *, out: str | None = None,
                        batch_size: int = 16, limit: int | None = None, pose: bool = True,
                        workers: int = 0, device: str = "cpu", vocab: str | None = None,
                        overrides: list[str] | None = None,
                        progress: bool = False) -> Evaluation:
    """Score the student `checkpoint` on `shards` (a label run folder, its shards/, a glob or
    one shard; paths or URIs) and write the report to `out` (default: evaluation.json in the
    student run folder). Without a vocabulary of its own or `vocab`, the labelling run's is
    used; without any, token cosines are not scored."""
    from distill.progress import Progress
    from distill.runfolder import find_label_run, resolve_shards
    from distill.shards import open_shard
    from distill.student.evaluate import evaluate, trained_on
    from distill.student.persons_eval import person_masks
    from distill.student.predict import load_student, run_folder

    sets = list(overrides or [])
    student = load_student(checkpoint, device, vocab=vocab, overrides=sets)
    paths = resolve_shards(shards)  # the one discovery rule: run folder, shards/, glob, files
    labels = find_label_run(shards) or find_label_run(paths[0])
    seen = trained_on(run_folder(student.checkpoint), paths)
    if student.vocab is None and vocab is None:  # as training found it: the labelling run's
        beside = labels.vocab if labels is not None else None
        if beside is not None and beside.is_file():
            student = load_student(checkpoint, device, vocab=beside, overrides=sets)
        else:
            logger.warning("no vocabulary for %s: token cosines are not scored", checkpoint)
    total = sum(open_shard(p).metadata.num_rows for p in paths)
    total = min(total, limit) if limit is not None else total
    with Progress("evaluate", total, "images", enabled=progress) as bar:
        report = evaluate(student.model, student.config, paths, vocab=student.vocab,
                          epoch=student.epoch, device=device, batch_size=batch_size,
                          workers=workers, limit=limit, pose=pose, progress=bar.advance,
                          person_masks=person_masks(labels) if pose else None)
    report = {"checkpoint": str(student.checkpoint), "shards": str(shards),
              "trained_on": seen, **report}
    path = Location(out) if out else run_folder(student.checkpoint).evaluation
    atomic_write_bytes(path, (json.dumps(report, indent=1) + "\n").encode())
    return Evaluation(report=report, path=path, trained_on=seen, shards=len(paths))
