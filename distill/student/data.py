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

Bad rows (`bad_rows`). By default a row that cannot be made into an example (a PNG column with
garbage bytes, an undecodable image) raises `ShardError` naming the shard, the row group and the
image id (`distill run evaluate` scores every row or none). Training uses `bad_rows="skip"`: one
bad row out of 118k should not end a run, so the row is skipped and the stream yields a *record*
in its place, `{"skipped": message}`; the trainer logs each message once and counts the skipped
rows in `metrics.jsonl` and `summary.json` (`skipped_rows`). A damaged shard still stops: when
more than half of a row group's rows (and at least two) fail, the stream yields
`{"error": message}` and ends, and so does any other `DistillError` while reading (a row group
that cannot be read). Records travel through DataLoader workers like examples (`collate` keeps
them apart from the batched tensors), so the main process raises the error itself, as one line,
instead of the DataLoader's re-raise of a worker exception wrapped in its tracebacks. A record
takes an example's place in a batch, so every rank still gets the same number of batches.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from os import PathLike
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from distill.config import TrainConfig
from distill.errors import DistillError, ShardError
from distill.images import decode_png, without_addresses
from distill.labels.pose import training_persons
from distill.labels.tokens import Vocabulary
from distill.layers.registry import layers, undecoded_columns
from distill.layers.registry import loader_columns as layer_columns
from distill.runfolder import resolve_shards
from distill.shards import PICTURE_COLUMNS, decode_row, open_shard
from distill.storage import Location
from distill.student.targets import build_example, heatmap_schedule, present_keys

__all__ = ["BadRows", "ShardSpec", "ShardStream", "Unit", "collate", "loader_columns"]

logger = logging.getLogger(__name__)

Unit = tuple[int, int]  # (index into ShardStream.paths, row group)
_BUFFER_STREAM = 1  # keeps the shuffle buffer's generator apart from any per-example one
BadRows = Literal["raise", "skip"]


def loader_columns() -> tuple[str, ...]:
    """The columns an example is built from (`build_example`): the picture's and those every
    registered label layer's target reads (`LabelLayer.loader_columns`). The others (panoptic
    ids and their segments, text polygons, captions) are not read, nor their PNGs decoded."""
    return (*PICTURE_COLUMNS, *layer_columns())
# What decoding a damaged row raises: distill's own errors, Pillow's (OSError, SyntaxError for a
# broken PNG chunk, its decompression-bomb guard), zlib's and numpy's. Anything else is a bug.
_ROW_ERRORS = (DistillError, ValueError, OSError, SyntaxError, EOFError, zlib.error,
               Image.DecompressionBombError)
# What --shards may be: a run folder, a shards folder, a glob, a file (paths or URIs), or a list.
ShardSpec = str | PathLike[str] | Location | Sequence[str | PathLike[str] | Location]


class _BadRow(Exception):
    """A row that cannot be made into an example (message names shard, row group, image);
    `detail` is the image and what is wrong with it."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class ShardStream(IterableDataset[dict[str, Any]]):
    """Examples from label shards as dicts of tensors:

    image uint8 (3, S, S), target uint8 (44, S, S) in `distill.student.layout` order, tokens
    float32 (max_tokens, D), present bool (len(present_keys()),), image_id int64 ().

    Training (`train=True`) shuffles the row groups with (seed, epoch), mixes rows in a buffer
    of `shuffle_buffer` rows and augments; evaluation reads in file order, unaugmented. Call
    `set_epoch` before each epoch: it reseeds the shuffle and moves the heatmap schedule.
    `bad_rows="skip"` yields records for bad rows and errors instead of raising (module
    docstring); batch such a stream with `collate`.
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
        bad_rows: BadRows = "raise",
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
        if bad_rows not in ("raise", "skip"):
            raise DistillError(f"bad_rows must be 'raise' or 'skip', got {bad_rows!r}")
        self.bad_rows = bad_rows
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

    def rows_per_rank(self) -> list[int]:
        """Rows each rank reads this epoch (from the footers' row-group sizes)."""
        rows = [0] * self.world_size
        for k, (f, g) in enumerate(self.units()):
            rows[k % self.world_size] += self.group_rows[f][g]
        return rows

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

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        rows = self._rows(self.assigned_units(worker, workers))
        if self.train and self.shuffle_buffer > 1:
            rng = np.random.default_rng(
                [self.seed, self.epoch, self.rank, worker, _BUFFER_STREAM])
            rows = _shuffled(rows, self.shuffle_buffer, rng)
        if self.bad_rows == "raise":
            for unit, row in rows:
                try:
                    yield self._tensors(unit, row)
                except _BadRow as exc:
                    raise ShardError(str(exc)) from exc.__cause__
            return
        yield from self._skipping(rows)

    def _skipping(self, rows: Iterator[tuple[Unit, dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        """`bad_rows="skip"`: examples, and records for skipped rows and for the error that
        ends the stream (module docstring)."""
        failed: Counter[Unit] = Counter()
        try:
            for unit, row in rows:
                try:
                    example = self._tensors(unit, row)
                except _BadRow as exc:
                    failed[unit] += 1
                    total = self.group_rows[unit[0]][unit[1]]
                    if failed[unit] >= 2 and 2 * failed[unit] > total:
                        yield {"error": (
                            f"shard {self.paths[unit[0]]}, row group {unit[1]}: {failed[unit]} "
                            f"of its {total} rows cannot be made into examples, so the shard "
                            f"looks damaged (the latest, {exc.detail}); re-label it, or leave "
                            "it out of --shards")}
                        return
                    yield {"skipped": str(exc)}
                    continue
                yield example
        except DistillError as exc:  # a row group that cannot be read, a shard that vanished
            yield {"error": str(exc)}

    def _rows(self, units: list[Unit]) -> Iterator[tuple[Unit, dict[str, Any]]]:
        files: dict[int, pq.ParquetFile] = {}
        for f, g in units:
            path = self.paths[f]
            if f not in files:
                files[f] = open_shard(path)
            names = files[f].schema_arrow.names  # an older shard may lack exif_transpose
            try:
                table = files[f].read_row_group(g, [c for c in loader_columns() if c in names])
            except (OSError, pa.ArrowException) as exc:
                raise ShardError(f"shard {path}: row group {g} cannot be read: {exc}") from exc
            for row in table.to_pylist():
                yield (f, g), row

    def _tensors(self, unit: Unit, row: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.config
        try:
            # Depth and normals PNGs go straight into the letterbox (build_example's `encoded`).
            encoded = {c: row.pop(c, None) for c in undecoded_columns()}
            sample = decode_row(row)
            # Whose people the joints and PAFs are drawn from (train.pose_source).
            sample.persons = training_persons(sample.persons, sample.teacher_persons,
                                              cfg.pose_source, cfg.pose_score_threshold)
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
                encoded=encoded,
            )
        except _ROW_ERRORS as exc:
            row.update(encoded)
            cause = _cause(row, exc)
            raise _BadRow(
                f"shard {self.paths[unit[0]]}, row group {unit[1]}: image {row.get('image_id')} "
                f"cannot be made into an example: {cause}",
                f"image {row.get('image_id')}: {cause}",
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
        return present_keys()


def _cause(row: dict[str, Any], exc: BaseException) -> str:
    """What was wrong with a row, one line: the first PNG column that does not decode, if that
    was it (decode_row does not say which), and the error without memory addresses."""
    if not isinstance(exc, DistillError):
        for column in (c.name for layer in layers() for c in layer.columns if c.encoded):
            value = row.get(column)
            if value is None:
                continue
            try:
                decode_png(value)
            except Exception as probe:
                text = "not a PNG Pillow can read" \
                    if isinstance(probe, Image.UnidentifiedImageError) else \
                    f"{type(probe).__name__}: {without_addresses(str(probe))}"
                return f"column {column} ({len(value)} bytes): {text}"
    text = " ".join(without_addresses(str(exc)).split())
    return text if isinstance(exc, DistillError) else f"{type(exc).__name__}: {text}"


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of a `bad_rows="skip"` stream: the examples' tensors batched as the default
    collate does (absent when the batch holds only records), plus `skipped` and `errors`, the
    messages of the records among the items."""
    examples = [item for item in items if "image" in item]
    batch: dict[str, Any] = default_collate(examples) if examples else {}
    batch["skipped"] = [item["skipped"] for item in items if "skipped" in item]
    batch["errors"] = [item["error"] for item in items if "error" in item]
    return batch


def _shuffled(
    items: Iterator[tuple[Unit, dict[str, Any]]], capacity: int, rng: np.random.Generator
) -> Iterator[tuple[Unit, dict[str, Any]]]:
    """Hold up to `capacity` items; once full, each new item swaps out a random held one.
    Holds rows (encoded PNG bytes), not built examples, which are ~3 MB each at 256 px."""
    buffer: list[tuple[Unit, dict[str, Any]]] = []
    for item in items:
        if len(buffer) < capacity:
            buffer.append(item)
            continue
        i = int(rng.integers(capacity))
        yield buffer[i]
        buffer[i] = item
    for i in rng.permutation(len(buffer)):
        yield buffer[int(i)]
