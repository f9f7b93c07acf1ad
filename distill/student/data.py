"""Streaming the label shards into the student (DESIGN.md §6, "Data"): an IterableDataset split
by row group across distributed ranks and DataLoader workers, with a shuffle buffer.

Shards are found by the one rule every command uses (`distill.runfolder.resolve_shards`: a label
run folder, its shards folder, a glob, files; local paths or URIs) and read through pyarrow
filesystems (`Location.open_input()`), so s3:// shards stream like local ones. The stream keeps
only `Location`s, which pickle as their URIs: DataLoader workers and Ray Train workers open their
own clients.

Every epoch the (file, row group) units of all shards are listed in a fixed order, shuffled with
(seed, epoch) when training, then rank r of W takes every W-th unit and DataLoader worker k of K
every K-th of those: each row is read exactly once per epoch across ranks × workers. Ranks may
get a few rows more or fewer than each other (row groups differ in size). Augmentation draws
from a generator seeded by (seed, epoch, image_id), so an example is the same whatever the split.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from os import PathLike
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from distill.config import TrainConfig
from distill.errors import DistillError, ShardError
from distill.labels.tokens import Vocabulary
from distill.runfolder import resolve_shards
from distill.shards import decode_row, open_shard
from distill.storage import Location
from distill.student.targets import PRESENT_KEYS, build_example, heatmap_schedule

__all__ = ["ShardSpec", "ShardStream", "Unit"]

logger = logging.getLogger(__name__)

Unit = tuple[int, int]  # (index into ShardStream.paths, row group)
_BUFFER_STREAM = 1  # keeps the shuffle buffer's generator apart from any per-example one
# What --shards may be: a run folder, a shards folder, a glob, a file (paths or URIs), or a list.
ShardSpec = str | PathLike[str] | Location | Sequence[str | PathLike[str] | Location]


class ShardStream(IterableDataset[dict[str, torch.Tensor]]):
    """Examples from label shards as dicts of tensors:

    image uint8 (3, S, S), target uint8 (44, S, S) in `distill.student.layout` order, tokens
    float32 (max_tokens, D), present bool (len(PRESENT_KEYS),), image_id int64 ().

    Training (`train=True`) shuffles the row groups with (seed, epoch), mixes rows in a buffer
    of `shuffle_buffer` rows and augments; evaluation reads in file order, unaugmented. Call
    `set_epoch` before each epoch: it reseeds the shuffle and moves the heatmap schedule.
    """

    def __init__(
        self,
        shards: ShardSpec,
        size: int,
        vocab: Vocabulary | None = None,
        config: TrainConfig | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int | None = None,
        seed: int | None = None,
        train: bool = True,
        max_tokens: int = 8,
        token_dim: int = 0,
    ) -> None:
        super().__init__()
        self.config = config or TrainConfig()
        if size <= 0:
            raise DistillError(f"ShardStream size must be > 0, got {size}")
        if not 0 <= rank < world_size:
            raise DistillError(f"rank {rank} is outside world_size {world_size}")
        self.paths: list[Location] = resolve_shards(shards)
        self.size = size
        self.vocab = vocab
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = self.config.shuffle_buffer if shuffle_buffer is None else shuffle_buffer
        self.seed = self.config.seed if seed is None else seed
        if self.seed < 0:
            raise DistillError(f"seed must be >= 0, got {self.seed}")
        self.train = train
        self.max_tokens = max_tokens
        self.token_dim = token_dim
        self.epoch = 0
        # Footers only: checks every shard up front and remembers its row-group sizes.
        self.group_rows: list[list[int]] = []
        for path in self.paths:
            meta = open_shard(path).metadata
            self.group_rows.append([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: its shuffle order, augmentation draws and heatmap sizes."""
        self.epoch = epoch

    def count_rows(self) -> int:
        """Rows in all shards (from the footers), what one epoch yields over all ranks."""
        return sum(sum(groups) for groups in self.group_rows)

    def units(self) -> list[Unit]:
        """Every (file, row group) of the epoch: fixed order, shuffled with (seed, epoch) when
        training."""
        units = [(f, g) for f, groups in enumerate(self.group_rows) for g in range(len(groups))]
        if self.train:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(units))
            units = [units[i] for i in order]
        return units

    def assigned_units(self, worker: int = 0, num_workers: int = 1) -> list[Unit]:
        """The units this rank's DataLoader worker `worker` of `num_workers` reads."""
        return self.units()[self.rank :: self.world_size][worker::num_workers]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        rows = self._rows(self.assigned_units(worker, workers))
        if self.train and self.shuffle_buffer > 1:
            rng = np.random.default_rng(
                [self.seed, self.epoch, self.rank, worker, _BUFFER_STREAM])
            rows = _shuffled(rows, self.shuffle_buffer, rng)
        for path, row in rows:
            yield self._tensors(path, row)

    def _rows(self, units: list[Unit]) -> Iterator[tuple[Location, dict[str, Any]]]:
        files: dict[int, pq.ParquetFile] = {}
        for f, g in units:
            path = self.paths[f]
            if f not in files:
                files[f] = open_shard(path)
            try:
                table = files[f].read_row_group(g)
            except (OSError, pa.ArrowException) as exc:
                raise ShardError(f"shard {path}: row group {g} cannot be read: {exc}") from exc
            for row in table.to_pylist():
                yield path, row

    def _tensors(self, path: Location, row: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.config
        try:
            sample = decode_row(row)
            rng = np.random.default_rng([self.seed, self.epoch, int(sample.image_id)])
            example = build_example(
                sample,
                self.size,
                self.vocab,
                self.max_tokens,
                heatmap_schedule(self.epoch, cfg.heatmaps),
                rng if self.train else None,
                cfg.augment if self.train else None,
                token_dim=self.token_dim,
            )
        except (DistillError, ValueError, OSError) as exc:
            raise ShardError(
                f"shard {path}: image {row.get('image_id')} cannot be made into an example: {exc}"
            ) from exc
        return {
            "image": torch.from_numpy(example.image),
            "target": torch.from_numpy(example.target),
            "tokens": torch.from_numpy(example.tokens),
            "present": torch.from_numpy(example.present_vector()),
            "image_id": torch.tensor(example.image_id, dtype=torch.int64),
        }

    @staticmethod
    def present_keys() -> tuple[str, ...]:
        """Names of the `present` flags, in order."""
        return PRESENT_KEYS


def _shuffled(
    items: Iterator[tuple[Location, dict[str, Any]]], capacity: int, rng: np.random.Generator
) -> Iterator[tuple[Location, dict[str, Any]]]:
    """Hold up to `capacity` items; once full, each new item swaps out a random held one.
    Holds rows (encoded PNG bytes), not built examples, which are ~3 MB each at 256 px."""
    buffer: list[tuple[Location, dict[str, Any]]] = []
    for item in items:
        if len(buffer) < capacity:
            buffer.append(item)
            continue
        i = int(rng.integers(capacity))
        yield buffer[i]
        buffer[i] = item
    for i in rng.permutation(len(buffer)):
        yield buffer[int(i)]
