"""The generate-labels stages (DESIGN.md §1, §5) as plain functions over `Item`s.

    decode (CPU task) → one stage per teacher (actor pool, GPU or CPU) → post-process (CPU task)

Each stage takes a list of items and returns it, filling its part. A sample that fails gets a
`Failure` (stage, error type, message) and is passed through untouched by the later stages, so a
bad image never stops a batch. Nothing here imports Ray: `pipelines.generate_labels` wraps these
functions in Ray Data operators, and the tests call them directly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.coco import ImageRecord, Problem, local_file_problem
from distill.config import DataConfig, LabelsConfig, TeacherConfig
from distill.errors import DistillError
from distill.images import decode_image, without_addresses
from distill.quarantine import Failure
from distill.shards import Sample, decode_row, encode_sample
from distill.storage import Location
from pipelines.postprocess import LabelContext, apply_outputs, build_sample, changed_columns

__all__ = [
    "Item",
    "TeacherStage",
    "decode_items",
    "decode_records",
    "is_out_of_memory",
    "labels_context",
    "postprocess_items",
    "predict_resilient",
]

logger = logging.getLogger(__name__)


@dataclass
class Item:
    """One image on its way through the stages."""

    image_id: int
    shard: str
    split: str
    roles: tuple[str, ...]  # the teachers this image still needs
    file_name: str = ""
    record: ImageRecord | None = None  # ground truth, for an image read from the dataset
    problem: Problem | None = None  # the reader's reason when it could not use this image
    shard_path: str | None = None  # a committed shard holding this image's row (add a teacher)
    image: bytes | None = None  # the original encoded bytes
    array: np.ndarray | None = None  # decoded RGB, until the last teacher that needs it is done
    size: tuple[int, int] | None = None  # (width, height) decoded: what post-processing needs
    row: dict[str, Any] | None = None  # the committed row being extended
    outputs: dict[str, Any] = field(default_factory=dict)  # role → teacher result
    seconds: dict[str, float] = field(default_factory=dict)  # stage → seconds spent on this image
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    halvings: dict[str, int] = field(default_factory=dict)  # role → OOM batch halvings seen
    failure: Failure | None = None
    encoded: dict[str, Any] | None = None  # the finished shard row

    def fail(self, stage: str, error_type: str, message: str) -> None:
        self.failure = Failure(self.image_id, self.file_name, self.shard, stage, error_type,
                               message)
        self.array, self.outputs, self.row = None, {}, None  # nothing more travels

    @property
    def ok(self) -> bool:
        return self.failure is None


def _describe(exc: BaseException) -> tuple[str, str]:
    """(error type, message) for a quarantine row: no traceback, no memory addresses (a
    `<_io.BytesIO object at 0x7f…>` differs on every run and tells a reader nothing)."""
    message = without_addresses(str(exc).strip() or repr(exc))
    return type(exc).__name__, message[:2000]


# ---------------------------------------------------------------------------------------------
# decode


def _committed_rows(items: list[Item]) -> dict[tuple[str, int], dict[str, Any]]:
    """Rows of committed shards that items extend, read once per shard (row-group pruning on
    the sorted image_id column keeps this to the row groups that hold them)."""
    import pyarrow.parquet as pq

    wanted: dict[str, list[int]] = {}
    for item in items:
        if item.shard_path is not None:
            wanted.setdefault(item.shard_path, []).append(item.image_id)
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for path, ids in wanted.items():
        table = pq.read_table(path, filters=[("image_id", "in", ids)])
        for row in table.to_pylist():
            rows[(path, row["image_id"])] = row
    return rows


class NotARegularFile(OSError):
    """A local image path that is a directory, a FIFO or a device, not a file."""


def _read_image(path: str) -> bytes:
    """The bytes of a dataset image. On a local disk only a regular file is read: a FIFO put in
    an image's place after planning would block the worker forever."""
    location = Location(path)
    if location.is_local:
        bad = local_file_problem(path)
        if bad is not None and bad[0] == "NotARegularFile":
            raise NotARegularFile(bad[1])
    return location.read_bytes()


def decode_items(items: list[Item], data: DataConfig) -> list[Item]:
    """Read each image's bytes (from the dataset, or from the committed shard row it extends)
    and decode them to RGB. Unreadable, corrupt, oversized (decompression bomb) and too-small
    images, and images whose size disagrees with their annotations (or, for a committed row,
    with the size the row was labelled at), fail here.

    A COCO image decodes to its stored pixels (what its annotations refer to); a plain
    folder's with its EXIF orientation applied (`ImageRecord.exif_transpose`); a committed
    row's as the row says (its `exif_transpose` column; null or absent in an older shard: as
    stored)."""
    start = time.perf_counter()
    try:
        committed = _committed_rows(items)
    except Exception as exc:  # the shard vanished or broke since it was planned
        committed = {}
        logger.warning("cannot read committed rows: %s", exc)
    for item in items:
        if not item.ok:
            continue
        if item.problem is not None:
            item.fail("read", item.problem.error_type, item.problem.message)
            continue
        try:
            if item.shard_path is not None:
                row = committed.get((item.shard_path, item.image_id))
                if row is None:
                    raise FileNotFoundError(
                        f"committed shard {Path(item.shard_path).name} has no row for image "
                        f"{item.image_id}")
                item.row, item.image = row, row["image"]
                upright = bool(row.get("exif_transpose"))
                expected = (row.get("width"), row.get("height"))
                said = "its shard row says"
                why = "the new labels would not line up with the stored ones"
            else:
                assert item.record is not None
                item.image = _read_image(item.record.path)
                upright = item.record.exif_transpose
                expected = (item.record.width, item.record.height)
                said, why = "its annotations say", "keypoints would not line up with the labels"
            array = decode_image(item.image, data.max_image_pixels, data.min_image_side,
                                 exif_transpose=upright)
        except (DistillError, OSError, ValueError) as exc:
            item.fail("decode", *_describe(exc))
            continue
        h, w = array.shape[:2]
        if expected[0] and expected[1] and (w, h) != expected:
            item.fail("decode", "SizeMismatch",
                      f"the image is {w}x{h} but {said} {expected[0]}x{expected[1]}; {why}")
            continue
        item.array, item.size = array, (w, h)
    _share_seconds(items, "decode", time.perf_counter() - start)
    return items


def decode_records(records: Sequence[ImageRecord], split: str, data: DataConfig,
                   progress: Callable[[int, int, int], None] | None = None) -> list[Failure]:
    """Decode a dataset's images one by one exactly as a label run's decode stage does
    (`decode_items`; `distill data check --decode`), and return those that fail. `progress` is
    called after each image with (images done, images in all, failures so far)."""
    failures: list[Failure] = []
    for done, record in enumerate(records, 1):
        item = Item(image_id=record.image_id, shard="", split=split, roles=(),
                    file_name=record.file_name, record=record)
        decode_items([item], data)
        if item.failure is not None:
            failures.append(item.failure)
        if progress is not None:
            progress(done, len(records), len(failures))
    return failures


def _share_seconds(items: list[Item], stage: str, seconds: float) -> None:
    live = [it for it in items if it.ok]
    for item in live:
        item.seconds[stage] = item.seconds.get(stage, 0.0) + seconds / len(live)


# ---------------------------------------------------------------------------------------------
# teachers


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (or other accelerator) out-of-memory, whatever wrapper raised it."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def predict_resilient(
    predict: Callable[[list[Any]], list[Any]],
    config: TeacherConfig,
    images: list[Any],
    on_halve: Callable[[int], None] | None = None,
) -> list[Any]:
    """`predict(images)` that survives what a long run meets:

    - out of memory: `config.batch_size` (which the teacher reads per call) is halved and the
      whole list retried, down to 1; the smaller size sticks for later batches;
    - any other error, or OOM at batch size 1: each image is retried alone, so one bad image
      costs only itself.

    Returns one entry per image: the teacher's result, or the exception that image raised.
    (An "image" is whatever `predict` takes one of per result: a pose teacher's is an image
    with its boxes.)
    """
    while True:
        try:
            results = predict(images)
            if len(results) != len(images):
                raise RuntimeError(f"teacher returned {len(results)} results for "
                                   f"{len(images)} images")
            return results
        except Exception as exc:
            if is_out_of_memory(exc) and config.batch_size > 1 and len(images) > 1:
                _free_accelerator_memory()
                config.batch_size = max(1, config.batch_size // 2)
                logger.warning("out of memory; batch size halved to %d and retried",
                               config.batch_size)
                if on_halve is not None:
                    on_halve(config.batch_size)
                continue
            if len(images) == 1:
                return [exc]
            logger.warning("a batch of %d failed (%s: %s); retrying image by image",
                           len(images), type(exc).__name__, exc)
            break
    out: list[Any] = []
    for image in images:
        try:
            single = predict([image])
            if len(single) != 1:
                raise RuntimeError(f"teacher returned {len(single)} results for 1 image")
            out.append(single[0])
        except Exception as exc:
            if is_out_of_memory(exc):
                _free_accelerator_memory()
            out.append(exc)
    return out


class TeacherStage:
    """One teacher role as a stateful stage: the model loads once, then labels batches.
    `last`: no later teacher needs the decoded image, so items leave without it (post-processing
    needs only its size), and the next boundary does not carry it."""

    def __init__(self, role: str, config: TeacherConfig, threads: int = 0,
                 last: bool = False) -> None:
        import torch

        from teachers.registry import create_teacher

        if threads > 0:
            torch.set_num_threads(threads)
        self.role = role
        self.config = dataclasses.replace(config)  # batch_size may shrink on OOM
        self.teacher = create_teacher(role, self.config)  # reads config.batch_size per call
        self.provenance = self.teacher.provenance.to_dict()
        self.halvings = 0
        self.last = last

    def _halved(self, size: int) -> None:  # `size`: the new batch size (logged by the caller)
        self.halvings += 1

    def __call__(self, items: list[Item]) -> list[Item]:
        labelled = self._label(items)
        if self.last:
            for item in labelled:
                item.array = None
        return labelled

    def _label(self, items: list[Item]) -> list[Item]:
        todo = [it for it in items if it.ok and self.role in it.roles and it.array is not None]
        if not todo:
            return items
        halved: list[int] = []  # this call's halvings (threads of a fused worker share a stage)

        def on_halved(size: int) -> None:
            halved.append(size)
            self._halved(size)

        start = time.perf_counter()
        images = [it.array for it in todo if it.array is not None]  # all of them
        if self.role == "pose":  # top-down: each image with its person boxes
            results = predict_resilient(_with_boxes(self.teacher.predict), self.config,
                                        [(it.array, *_pose_boxes(it, self.config.boxes))
                                         for it in todo],
                                        on_halved)
        else:
            results = predict_resilient(self.teacher.predict, self.config, images, on_halved)
        per_image = (time.perf_counter() - start) / len(todo)
        for item, result in zip(todo, results, strict=True):
            if isinstance(result, BaseException):
                item.fail(f"teacher:{self.role}", *_describe(result))
                continue
            item.outputs[self.role] = result
            item.seconds[self.role] = per_image
            item.provenance[self.role] = self.provenance
            if halved:
                item.halvings[self.role] = len(halved)
        return items


def _pose_boxes(item: Item, mode: str) -> tuple[np.ndarray | None, list[str]]:
    """The person boxes the pose teacher gets for one image (`distill.labels.pose.pose_boxes`,
    `mode` = `teachers.pose.boxes`): its annotations' when it has any (a COCO image; a stored
    row extended with the pose teacher when it holds annotated people), else the panoptic
    teacher's people, from this run's panoptic output (pose runs after panoptic) or the stored
    row's class map."""
    from distill.labels.pose import pose_boxes

    if item.record is not None:
        annotated, persons = item.record.width is not None, item.record.persons
    else:
        assert item.row is not None
        persons = decode_row({"persons": item.row.get("persons")}).persons
        annotated = bool(persons)
    panoptic = item.outputs.get("panoptic")
    class_map = panoptic.class_map if panoptic is not None else None
    if class_map is None and item.row is not None and item.row.get("panoptic_png") is not None:
        class_map = decode_row({"panoptic_png": item.row["panoptic_png"]}).panoptic
    return pose_boxes(annotated, persons, class_map, mode)


def _with_boxes(predict: Callable[..., list[Any]]) -> Callable[[list[Any]], list[Any]]:
    """A pose teacher's `predict(images, boxes, box_sources)` over (image, boxes, sources)
    triples, so `predict_resilient` can retry them one by one."""
    def run(inputs: list[Any]) -> list[Any]:
        return predict([i[0] for i in inputs], boxes=[i[1] for i in inputs],
                       box_sources=[i[2] for i in inputs])
    return run


# ---------------------------------------------------------------------------------------------
# post-processing


@functools.lru_cache(maxsize=4)
def _context(labels_json: str) -> LabelContext:
    """One `LabelContext` per worker process and labels config (GloVe words load once)."""
    from distill.config.toml import _build

    return LabelContext.from_config(_build(LabelsConfig, json.loads(labels_json), "labels."))


def labels_key(labels: LabelsConfig) -> str:
    """A hashable form of the labels config, for `_context`'s cache."""
    return json.dumps(dataclasses.asdict(labels), sort_keys=True)


def labels_context(labels: LabelsConfig) -> LabelContext:
    """This process's `LabelContext` for `labels`, loaded on first use."""
    return _context(labels_key(labels))


def postprocess_items(items: list[Item], labels: LabelsConfig) -> list[Item]:
    """Teacher outputs → label arrays → the encoded shard row (PNG encoding happens here, on
    the CPU workers, not in the single writer)."""
    start = time.perf_counter()
    ctx = labels_context(labels)
    for item in items:
        if not item.ok:
            continue
        try:
            assert item.image is not None
            if item.size is not None:
                w, h = item.size
            else:  # an item that did not come through `decode_items`
                assert item.array is not None
                h, w = item.array.shape[:2]
            if item.row is not None:  # a stored row: re-encode only what the new teachers set
                sample: Sample = apply_outputs(decode_row(item.row), item.outputs, ctx)
                item.encoded = {**item.row, **encode_sample(
                    sample, labels.png_compress_level, changed_columns(item.outputs))}
            else:
                assert item.record is not None
                sample = build_sample(item.record, item.split, item.image, (w, h), item.outputs,
                                      ctx)
                item.encoded = encode_sample(sample, labels.png_compress_level)
        except Exception as exc:
            item.fail("postprocess", *_describe(exc))
            continue
        item.array, item.outputs, item.row, item.record = None, {}, None, None
    _share_seconds(items, "postprocess", time.perf_counter() - start)
    return items
