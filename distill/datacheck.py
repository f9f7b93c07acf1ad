"""`distill data check`: a dataset read the way generate-labels reads it, summarised — records,
people, captions, every sample that would be quarantined (with its reason), the annotation
entries left out and, after decoding, the images that do not decode. The decoding itself is the
label run's own (`pipelines.stages.decode_records`, called by `distill.check_data`)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from distill.coco import Dataset, Dropped, Problem, open_dataset
from distill.config import DataConfig
from distill.quarantine import Failure
from distill.storage import Location

__all__ = ["DataCheck", "read_dataset"]

logger = logging.getLogger(__name__)


def read_dataset(root: str | Location, split: str) -> Dataset:
    """`open_dataset` without its warning about left-out entries (a check lists them)."""
    reader_log = logging.getLogger("distill.coco")
    level = reader_log.level
    reader_log.setLevel(logging.ERROR)
    try:
        return open_dataset(root, split)
    finally:
        reader_log.setLevel(level)


@dataclass
class DataCheck:
    """A dataset's summary: `dataset` as read (records, problems, dropped entries); with
    `decoded`, the images that fail to decode under `data` (`failures`)."""

    dataset: Dataset
    decoded: bool = False
    data: DataConfig | None = None
    failures: list[Failure] = field(default_factory=list)

    @property
    def images(self) -> int:
        return len(self.dataset.records)

    @property
    def persons(self) -> int:
        return sum(len(r.persons) for r in self.dataset.records)

    @property
    def with_keypoints(self) -> int:
        """People with at least one labelled keypoint."""
        return sum(1 for r in self.dataset.records for p in r.persons if p.num_keypoints > 0)

    @property
    def captions(self) -> int:
        return sum(len(r.captions) for r in self.dataset.records)

    def problem_kinds(self) -> list[tuple[str, int, Problem]]:
        """Each kind of problem (a sample that would be quarantined): count and an example,
        commonest first."""
        problems = self.dataset.problems
        return [(kind, n, next(p for p in problems if p.error_type == kind))
                for kind, n in Counter(p.error_type for p in problems).most_common()]

    def dropped_kinds(self) -> list[tuple[str, int]]:
        """Each kind of left-out annotation entry and its count, commonest first."""
        return Counter(d.error_type for d in self.dataset.dropped).most_common()

    @property
    def dropped(self) -> list[Dropped]:
        return self.dataset.dropped

    @property
    def usable(self) -> int | None:
        """Images a label run will label (decoded only: else None)."""
        return self.images - len(self.failures) if self.decoded else None
